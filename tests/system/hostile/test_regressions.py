"""The product bugs the hostile-input tests found (ten, all fixed): one regression test each.
The service and the signers: tests/support/hostile.py."""

import base64
import json
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.store import Store
from call_ledger.worker.consumer import Consumer
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.hostile import (
    SOURCES,
    Req,
    platform_req,
    platform_status,
    plivo_req,
    raw_exchange,
    sid_path,
    stream_length,
    telnyx_req,
    twilio_req,
    vonage_req,
)
from tests.support.settings import AUTH

# -- the bugs this file found: one regression test each ----------------------------------------------------------


async def _post_and_burst(client: Any, consumer: Consumer, req: Req) -> int:
    with capture_logs():
        response = await req.send(client)
        await consumer.run_burst()
    return int(response.status)


@pytest.mark.parametrize("case", [
    "platform-call_sid",  # a constrained field (min_length): refused by validation since the fix
    "telnyx-call_control_id",
    "vonage-uuid",
    "platform-call_meta",
    "platform-assistant_name",
    "telnyx-from",
    "vonage-from",
])
async def test_lone_surrogate_escape_in_a_json_string_is_refused(client: Any, store: Store, case: str) -> None:
    """`"\\ud800"` is valid JSON text but no UTF-8 string: 400/422, never a 500."""
    lone = b"\\ud800"
    requests = {
        "platform-call_sid": lambda: platform_req(
            b'{"type":"call.status","call_sid":"CA' + lone + b'","data":{"status":"ringing"}}'),
        "platform-call_meta": lambda: platform_req(
            b'{"type":"call.metadata","call_sid":"CA1","data":{"call_meta":{"k":"' + lone + b'"}}}'),
        "platform-assistant_name": lambda: platform_req(
            b'{"type":"call.metadata","call_sid":"CA1","data":{"assistant_name":"' + lone + b'"}}'),
        "telnyx-call_control_id": lambda: telnyx_req(
            tx.encode(tx.hangup()).replace(tx.CALL_CONTROL_ID.encode(), b"v3:" + lone)),
        "telnyx-from": lambda: telnyx_req(tx.encode(tx.hangup()).replace(tx.CUSTOMER.encode(), lone)),
        "vonage-uuid": lambda: vonage_req(vn.encode(vn.completed()).replace(vn.CALL_UUID.encode(), lone)),
        "vonage-from": lambda: vonage_req(vn.encode(vn.completed()).replace(vn.OUR_NUMBER.encode(), lone)),
    }
    req = requests[case]()
    assert lone in req.body
    with capture_logs():
        response = await req.send(client)
    assert response.status in (400, 422)
    assert await stream_length(store) == 0


@pytest.mark.parametrize("source", ["platform", "telnyx", "vonage", "twilio", "plivo"])
async def test_timestamp_at_the_edge_of_the_datetime_range_is_not_a_500(client: Any, store: Store,
                                                                         source: str) -> None:
    """Found: OverflowError from `dt.astimezone(UTC)` in call_ledger/core/instants.py was a 500 on every source."""
    if source == "platform":
        req = platform_req(json.dumps({"type": "call.status", "call_sid": "CA1", "data": {"status": "ringing"},
                                       "occurred_at": "9999-12-31T23:59:59-23:59"}).encode())
    elif source == "telnyx":
        req = telnyx_req(tx.encode(tx.hangup(occurred_at="0001-01-01T00:00:00+23:59")))
    elif source == "vonage":
        req = vonage_req(vn.encode(vn.event("ringing", timestamp="9999-12-31T23:59:59-23:59")))
    elif source == "twilio":
        req = twilio_req("POST", tw.status_callback("ringing", timestamp="Fri, 31 Dec 9999 23:59:59 -2359"))
    else:
        req = plivo_req("POST", pl.hangup(end="9999-12-31 23:59:59-2359"))
    with capture_logs():
        response = await req.send(client)
    assert response.status in (200, 422), await response.text()


@pytest.mark.parametrize("field", ["duration", "assistant_id", "call_meta", "vonage-duration"])
async def test_integer_beyond_64_bits_never_takes_the_worker_down(client: Any, store: Store, consumer: Consumer,
                                                                   field: str) -> None:
    """Found: such an integer was stored (200), then orjson refused the call's state in Consumer._commit,
    outside the per-event error handling: the whole batch failed on every delivery, never dead-lettered."""
    big = 2**64
    if field == "duration":
        doc = {"type": "call.status", "call_sid": "CA1", "data": {"status": "completed", "duration": big}}
    elif field == "assistant_id":
        doc = {"type": "call.metadata", "call_sid": "CA1", "data": {"assistant_id": big}}
    else:
        doc = {"type": "call.metadata", "call_sid": "CA1", "data": {"call_meta": {"n": -big}}}
    req = (vonage_req(vn.encode(vn.completed(duration=big))) if field == "vonage-duration"  # type: ignore[arg-type]
           else platform_req(json.dumps(doc).encode()))
    innocent = platform_req(platform_status(call_sid="CA_innocent"))  # another call, same batch
    with capture_logs():
        response = await req.send(client)
        assert (await innocent.send(client)).status == 200
        try:
            await consumer.run_burst()
            crashed = False
        except TypeError:
            crashed = True
    # Refused at intake (422), or stored and applied (or dead-lettered) without taking the batch down.
    assert response.status in (200, 422)
    assert not crashed
    assert (await client.get(sid_path("CA_innocent"), headers=AUTH)).status == 200


@pytest.mark.parametrize("depth", [210, 300])
async def test_deeply_nested_call_meta_is_refused_or_kept(client: Any, store: Store, consumer: Consumer,
                                                          depth: int) -> None:
    """Found: 200-255 levels were stored (200) then dead-lettered as undecodable; 256+ levels were a 500."""
    doc = {"type": "call.metadata", "call_sid": "CA_deep", "data": {"call_meta": {"x": "__DEEP__"}}}
    body = json.dumps(doc).replace('"__DEEP__"', "[" * depth + "]" * depth).encode()
    status = await _post_and_burst(client, consumer, platform_req(body))
    assert status in (200, 422)
    assert await store.dead_letters() == []


async def test_unsigned_platform_request_with_a_huge_timestamp_is_401(client: Any, store: Store) -> None:
    """Found: `abs(received_at - int(webhook-timestamp))` overflowed the float: a 500 for anyone."""
    headers = {"webhook-id": "x", "webhook-timestamp": "9" * 400, "webhook-signature": "v1,x"}
    with capture_logs():
        response = await client.post("/webhooks/platform", data=b"{}", headers=headers)
    assert response.status == 401
    assert await stream_length(store) == 0


@pytest.mark.parametrize("header", ["webhook-id", "webhook-signature"])
async def test_unsigned_platform_request_with_non_utf8_header_bytes_is_401(client: Any, store: Store,
                                                                           header: str) -> None:
    """Found: header bytes arrive as surrogates (surrogateescape); a strict UTF-8 encode of them was a 500."""
    values = {"webhook-id": b"msg_1", "webhook-timestamp": str(int(time.time())).encode(),
              "webhook-signature": b"v1,abc"}
    values[header] = b"\xff\xfe" if header == "webhook-id" else b"v1,\xff\xfe"
    head = b"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in values.items()) + b"\r\n"
    with capture_logs():
        answer, _ = await raw_exchange(client.server.port, head, b"{}")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:120]
    assert await stream_length(store) == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("source", SOURCES)
async def test_body_that_does_not_decompress_is_400(client: Any, store: Store, source: str, encoding: str) -> None:
    """Found: aiohttp's RequestPayloadError from request.read() reached no handler: a 500 for anyone."""
    with capture_logs():
        response = await client.post(f"/webhooks/{source}", data=b"not compressed at all",
                                     headers={"Content-Encoding": encoding, "Connection": "close"})
    assert response.status == 400
    assert await stream_length(store) == 0


@pytest.mark.parametrize("case", ["platform-number", "platform-string", "plivo", "telnyx", "vonage"])
async def test_amount_with_a_huge_exponent_is_422(client: Any, store: Store, case: str) -> None:
    """Found: `abs()` of a Decimal past Emax raised decimal.Overflow, which platform and Plivo did not catch."""
    if case == "plivo":
        req = plivo_req("POST", pl.hangup(total_cost="1e1000000"))
    elif case == "telnyx":
        req = telnyx_req(tx.encode(tx.cost(total_cost="1e1000000")))
    elif case == "vonage":
        req = vonage_req(vn.encode(vn.completed(price="1E+999999999")))
    else:
        cost = "1E+999999999" if case == "platform-number" else '"1e1000000"'
        req = platform_req(b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":'
                           + cost.encode() + b"}}")
    with capture_logs():
        response = await req.send(client)
    assert response.status == 422
    assert await stream_length(store) == 0


@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_call_id_with_a_line_feed_reads_back(client: Any, consumer: Consumer, suffix: str) -> None:
    """Found: the read routes' `{call_sid:.*}` did not match a line feed: the router's 404 for a stored call."""
    sid = "CA\n1"
    assert await _post_and_burst(client, consumer, platform_req(platform_status(call_sid=sid))) == 200
    assert (await client.get(sid_path(sid, suffix), headers=AUTH)).status == 200


@pytest.mark.parametrize("source", ["platform", "twilio"])
async def test_call_id_over_512_characters_is_refused_or_readable(client: Any, store: Store, consumer: Consumer,
                                                                 source: str) -> None:
    """Found: intake stored call ids of any length, but the read API answers 404 past 512 characters."""
    sid = "S" * 513
    if source == "platform":
        req = platform_req(platform_status(call_sid=sid))
    else:
        req = twilio_req("POST", tw.completed(call_sid=sid))
    status = await _post_and_burst(client, consumer, req)
    if status == 200:  # stored: then it must be readable
        assert (await client.get(sid_path(sid), headers=AUTH)).status == 200
    else:
        assert status == 422 and await stream_length(store) == 0


@pytest.mark.parametrize("segment", [0, 1, 2])
async def test_a_vonage_token_with_a_non_ascii_segment_is_401_not_an_error(client: Any, store: Store,
                                                                          segment: int) -> None:
    """Nobody signed it: a 401, and no `unhandled_error` line an attacker could flood the logs with."""
    parts = [base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("="), "eyJpYXQiOjF9",
             base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")]
    parts[segment] = parts[segment][:4] + "\u00e9" + parts[segment][4:]
    header = ("Bearer " + ".".join(parts)).encode().decode("latin-1")  # as the raw bytes arrive
    with capture_logs() as logs:
        response = await client.post("/webhooks/vonage", data=b"{}", headers={
            "Authorization": header, "Content-Type": "application/json"})
    assert response.status == 401, await response.text()
    assert (await response.json())["error"] == "invalid_signature"
    assert not [line for line in logs if line.get("log_level") == "error"], logs
    assert await stream_length(store) == 0
