"""Cursors (call_ledger/core/cursors.py and the readers of what is inside them: `call_ledger.core.indexes` for the
list, `api.views` for /events and /costs): only exactly what this service writes is read; any
other text is 422 on every route that takes one, never a 503 from Redis reading a number
differently from Python (the `1_0` of an attacker's report), never a 500."""

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from call_ledger.api.views import decode_cursor as decode_event_cursor
from call_ledger.api.views import encode_cursor as encode_event_cursor
from call_ledger.app import create_app
from call_ledger.core import cursors
from call_ledger.core.errors import InvalidQuery
from call_ledger.core.indexes import MAX_LIST_CURSOR, decode_cursor, encode_cursor
from call_ledger.store import Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer
from tests.support.settings import AUTH, make_settings
from tests.support.workers import make_event, usage


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MEMBER = "0000000000000001"
# Well-formed base64 (or not) of anything but a cursor this service wrote.
MALFORMED = {
    "report: 1_0": b64(b"1_0/9999999999999999"),
    "underscore in score": b64(b"1_764_000_000_000_000/" + MEMBER.encode()),
    "space before score": b64(b" 1764000000000000/" + MEMBER.encode()),
    "plus sign": b64(b"+1764000000000000/" + MEMBER.encode()),
    "arabic-indic digits": b64("\u0661\u0660/".encode() + MEMBER.encode()),
    "inf": b64(b"inf/" + MEMBER.encode()),
    "nan": b64(b"nan/" + MEMBER.encode()),
    "huge exponent": b64(b"1e999/" + MEMBER.encode()),
    "huge number": b64(b"9" * 40 + b"/" + MEMBER.encode()),
    "beyond 2^53": b64(b"9007199254740993/" + MEMBER.encode()),
    "hex float": b64(b"0x1p52/" + MEMBER.encode()),
    "no member": b64(b"1764000000000000"),
    "short member": b64(b"1764000000000000/12"),
    "member not digits": b64(b"1764000000000000/abcdefghijklmnop"),
    "member with underscore": b64(b"1764000000000000/000000000000_001"),
    "event member": b64(b"platform:e1"),
    "not utf-8": b64(b"platform:\xff\xfe"),
    "not base64": "!!",
    "percent": "%%%",
    "one character": "a",
    "padded": base64.urlsafe_b64encode(b"1764000000000000/" + MEMBER.encode()).decode() + "==",
    "standard alphabet": base64.b64encode(b"\xfb\xff" * 9).decode(),
    "stray bits": b64(b"1764000000000000/" + MEMBER.encode())[:-1] + "B",
    "whitespace": " " + b64(b"1764000000000000/" + MEMBER.encode()),
    "very long": "A" * 7_000,  # past both bounds, within the 8 KiB request line
    "source too long": b64(b"p" * 40 + b":e1"),
    "event id too long": b64(b"platform:" + b"e" * 1025),
    "no event id": b64(b"platform:"),
    "no source": b64(b":e1"),
}


def test_a_cursor_is_read_back_only_in_the_form_it_was_written() -> None:
    assert cursors.decode(cursors.encode(b"x/y"), 10) == b"x/y"
    for bad in ("", "eA=", "eA==", "eB", "e", "e A", "eA\n", "eA" * 6):
        with pytest.raises(ValueError, match="not a cursor"):
            cursors.decode(bad, 10)


@given(st.integers(-(2**53), 2**53), st.integers(1, 2**53 - 1))
def test_every_list_cursor_written_reads_back(us: int, record_id: int) -> None:
    member = f"{record_id:016d}"
    assert decode_cursor(encode_cursor(str(us), member)) == (str(us), member)


@given(st.text(max_size=200))
def test_any_other_text_is_refused_or_is_a_cursor_of_its_own(text: str) -> None:
    """Whatever decodes is exactly the cursor of what it decodes to (it round-trips)."""
    try:
        score, member = decode_cursor(text)
    except ValueError:
        return
    assert encode_cursor(score, member) == text and len(text) <= MAX_LIST_CURSOR


@given(st.text(max_size=300))
def test_any_text_is_an_event_cursor_that_round_trips_or_invalid(text: str) -> None:
    try:
        member = decode_event_cursor(text)
    except InvalidQuery:
        return
    assert encode_event_cursor(member) == text


@given(st.text(min_size=1, max_size=32).filter(lambda s: ":" not in s), st.text(min_size=1, max_size=1024))
def test_every_event_cursor_written_reads_back(source: str, event_id: str) -> None:
    member = f"{source}:{event_id}"
    assert decode_event_cursor(encode_event_cursor(member)) == member


@pytest.mark.parametrize("cursor", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_cursors_are_refused_by_both_readers(cursor: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor(cursor)
    if cursor != MALFORMED["event member"]:  # the shape of an event's (a call that has it pages from it)
        with pytest.raises(InvalidQuery, match="after is not a cursor"):
            decode_event_cursor(cursor)


# -- every paged route, on a real Redis (where `1_0` was a 503) ------------------------------------

@pytest.fixture
async def api(aiohttp_client: Any, redis_server: RedisServer) -> AsyncIterator[tuple[Any, int]]:
    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    for event in [usage("CA-cur", "u1", 0, "llm", 5), make_event("CA-cur", "s1", 1, status="completed"),
                  usage("CA-other", "u1", 0, "llm", 5)]:
        await store.append(event.model_dump_json().encode(), event.call_sid)
    await Consumer(store, settings, Metrics()).run_burst()
    client = await aiohttp_client(create_app(settings, "api", store))
    record = await (await client.get("/api/v1/calls/sid/CA-cur", headers=AUTH)).json()
    yield client, record["id"]
    await store.close()


@pytest.mark.parametrize("cursor", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_cursor_is_422_on_every_paged_route(api: tuple[Any, int], cursor: str) -> None:
    client, record_id = api
    for path, name in (("/api/v1/calls", "cursor"), ("/api/v1/calls/sid/CA-cur/events", "after"),
                       ("/api/v1/calls/sid/CA-cur/costs", "after"), (f"/api/v1/calls/{record_id}/costs", "after")):
        response = await client.get(path, headers=AUTH, params={name: cursor})
        assert response.status == 422, (path, await response.text())
        body = await response.json()
        assert body["error"] == "invalid_parameter" and name in body["detail"], body
    # Search and export take no cursor (SPEC §9: search is one bounded answer, export streams every
    # match): one passed is ignored, never a 5xx.
    for path in ("/api/v1/calls/search?q=CA-", "/api/v1/calls/export?format=json"):
        response = await client.get(path, headers=AUTH, params={"cursor": cursor})
        assert response.status == 200, (path, await response.text())
        await response.read()


async def test_cursors_this_service_gave_out_still_page(api: tuple[Any, int]) -> None:
    client, _ = api
    first = await (await client.get("/api/v1/calls", headers=AUTH, params={"limit": "1"})).json()
    assert first["next_cursor"] is not None
    second = await (await client.get("/api/v1/calls", headers=AUTH, params={"limit": "1",
                                                                            "cursor": first["next_cursor"]})).json()
    assert [i["call_sid"] for i in first["items"] + second["items"]] == ["CA-cur", "CA-other"]
    page = await (await client.get("/api/v1/calls/sid/CA-cur/events", headers=AUTH, params={"limit": "1"})).json()
    rest = await (await client.get("/api/v1/calls/sid/CA-cur/events", headers=AUTH,
                                   params={"after": page["next"]})).json()
    assert len(page["events"]) == len(rest["events"]) == 1 and rest["next"] is None
