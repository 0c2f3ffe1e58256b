"""Odd SIDs at the read routes: never a server error, always a JSON 404 or the call, read back by its
percent-encoded SID.
The service and the signers: tests/support/hostile.py."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from yarl import URL

from call_ledger.worker.consumer import Consumer
from tests.support.hostile import FUZZ, platform_req, platform_status, sid_path
from tests.support.settings import AUTH

# -- 6. odd SIDs at the read routes -----------------------------------------------------------------------------

ODD_SID_PATHS = ["", "%2F", "a%2Fb", "..", "%2E%2E", "%2E", "%00", "%00%01%1F%7F", "x" * 5000, "%E2%98%8E",
                 "%F0%9F%92%A5", "%ZZ", "%", "%C0%AF", "%ED%A0%80", "%FF%FE", "{x}", "a/b/c", "%20", "+", "%0D%0A",
                 "..%2F..%2Fetc%2Fpasswd", "events", "%3Fq=1", "%23f", ";a=b"]


@pytest.mark.parametrize("suffix", ["", "/events"])
@pytest.mark.parametrize("sid", ODD_SID_PATHS)
async def test_odd_sids_at_both_read_routes_never_cause_a_server_error(client: Any, sid: str, suffix: str) -> None:
    response = await client.get(URL("/api/v1/calls/sid/" + sid + suffix, encoded=True), headers=AUTH)
    assert response.status in (400, 404, 414), await response.text()
    if response.status == 404:
        assert (await response.json())["error"] == "not_found"


@hsettings(max_examples=60, **FUZZ)
@given(sid=st.text(max_size=300), suffix=st.sampled_from(["", "/events"]))
async def test_any_sid_string_at_both_read_routes_is_a_json_404(client: Any, sid: str, suffix: str) -> None:
    response = await client.get(sid_path(sid, suffix), headers=AUTH)
    assert response.status == 404, await response.text()
    assert (await response.json())["error"] == "not_found"


READABLE_SIDS = ["CA\x00\x01\x1f\x7f", "CA\r\t", "CA\r\n\t", "☎️ünïcödé💥", "\u202eevil", "a/b", "%2F", "..", ".",
                 "?x=1#y", "a" * 512, " ", "\ufeff", "\u2028", "events", "a/b/events", "%ZZ", "+"]


@pytest.mark.parametrize("sid", READABLE_SIDS)
async def test_a_call_with_an_odd_sid_posted_signed_reads_back_by_its_percent_encoded_sid(
        client: Any, consumer: Consumer, sid: str) -> None:
    body = platform_status(call_sid=sid)  # JSON-escaped: \u0000, \ud83d\udca5, ...
    assert body.isascii()
    response = await platform_req(body).send(client)
    assert response.status == 200, await response.text()
    await consumer.run_burst()
    record = await client.get(sid_path(sid), headers=AUTH)
    assert record.status == 200, await record.text()
    assert (await record.json())["call_sid"] == sid
    events = await client.get(sid_path(sid, "/events"), headers=AUTH)
    assert events.status == 200
    assert (await events.json())["call_sid"] == sid


@hsettings(max_examples=40, **FUZZ)
@given(sid=st.text(min_size=1, max_size=120))
async def test_any_sid_the_platform_posts_reads_back(client: Any, consumer: Consumer, sid: str) -> None:
    response = await platform_req(platform_status(call_sid=sid)).send(client)
    assert response.status == 200, await response.text()
    await consumer.run_burst()
    record = await client.get(sid_path(sid), headers=AUTH)
    assert record.status == 200, await record.text()
    assert (await record.json())["call_sid"] == sid
