"""Records stored ready to serve at commit (SPEC §13), with the telephony estimate fixed when
applied (SPEC §11): what GET returns is byte for byte what rendering the state would give,
and a later change of the rate card changes no served number, list row or rollup."""

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.app import create_app
from call_ledger.core.events import CallEvent
from call_ledger.core.rules import record_json, render_record
from call_ledger.core.served import RECORD_FIELD, StoredCall
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import AUTH, make_settings
from tests.support.workers import BASE, make_event, usage

SID = "CA00000000000000000000000000000001"


def twilio(event_id: str, offset_s: int, **fields: Any) -> CallEvent:
    us = BASE.us + offset_s * 1_000_000
    from call_ledger.core.instants import format_us
    return CallEvent(source="twilio", event_id=event_id, call_sid=SID, type="call.status",
                     occurred_at=format_us(us), occurred_us=us, **fields)


async def apply(store: Store, events: list[CallEvent], **settings: Any) -> None:
    for event in events:
        await store.append(event.model_dump_json(exclude_defaults=True).encode(), event.call_sid)
    await Consumer(store, make_settings(**settings), Metrics()).run_burst()


async def rendered(store: Store, sid: str, **settings: Any) -> bytes:
    found = await store.get_call(sid)
    assert found is not None
    return record_json(render_record(sid, found[0], found[1], make_settings(**settings).policy))


async def test_get_serves_the_record_stored_at_commit_byte_for_byte(aiohttp_client: Any, store: Store) -> None:
    meta = {"zeta": [1, {"b": None}], "alpha": "x", 'quote"key': "\"call_meta\":{}", "émoji": "☎"}
    await apply(store, [
        twilio("s1", 0, status="initiated", direction="outbound", from_number="+15551234567",
               to_number="+15559876543"),
        make_event(SID, "m1", 1_000_000, call_meta=meta, assistant_id=7, assistant_name='Bot "1"'),
        usage(SID, "u1", 2_000_000, "llm", 1_234_567_891),
        twilio("s2", 65, status="completed", duration=61),
    ], telephony_rates="twilio:outbound=0.014")
    stored = await store.redis.hget(store.call_key(SID), RECORD_FIELD)
    assert stored is not None and stored.startswith(b"4\n") and b'"call_meta":{}' in stored  # spliced in when read
    client = await aiohttp_client(create_app(make_settings(telephony_rates="twilio:outbound=0.014"), "api", store))
    response = await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)
    assert response.status == 200
    body = await response.read()
    assert body == await rendered(store, SID, telephony_rates="twilio:outbound=0.014")
    record = orjson.loads(body)
    assert record["call_meta"] == meta and list(record["call_meta"]) == sorted(meta)
    assert record["telephony_cost"] == 0.028 and record["assistant_name"] == 'Bot "1"'


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12),
    st.lists(st.text(max_size=4), max_size=3)), max_size=6))
async def test_any_call_meta_is_spliced_exactly_as_rendering_would_write_it(meta: dict[str, Any]) -> None:
    import fakeredis
    store = Store(fakeredis.FakeAsyncRedis())
    await apply(store, [make_event(SID, "m", 0, call_meta=meta, flow_name="f"), usage(SID, "u", 1, "tts", 5)])
    fields = await store.call_fields(SID)
    assert fields is not None
    assert StoredCall(SID, fields).served(make_settings().policy) == await rendered(store, SID)


@pytest.mark.parametrize("written_by", ["a version without j", "a version that leaves j behind"])
async def test_a_record_whose_j_is_missing_or_stale_is_rendered_from_its_state(
        aiohttp_client: Any, store: Store, written_by: str) -> None:
    await apply(store, [make_event(SID, "m", 0, call_meta={"k": 1}), usage(SID, "u", 1, "stt", 40)])
    if written_by == "a version without j":
        await store.redis.hdel(store.call_key(SID), RECORD_FIELD)
    else:  # an older worker committed one more event: `s` and `v` moved on, `j` did not
        stale = await store.redis.hget(store.call_key(SID), RECORD_FIELD)
        await apply(store, [usage(SID, "u2", 2, "stt", 2)])
        await store.redis.hset(store.call_key(SID), RECORD_FIELD, stale)
    expected = await rendered(store, SID)
    client = await aiohttp_client(create_app(make_settings(), "api", store))
    response = await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)
    assert response.status == 200 and await response.read() == expected


@pytest.mark.parametrize("route", ["sid", "list", "costs", "rollups"])
async def test_the_estimate_is_the_one_fixed_when_applied_whatever_the_api_rates(
        aiohttp_client: Any, store: Store, route: str) -> None:
    events = [twilio("s1", 0, status="initiated", direction="inbound", from_number="+15551234567",
                     to_number="+15559876543"),
              twilio("s2", 130, status="completed", duration=121)]  # 3 billed minutes
    random.Random(1).shuffle(events)
    await apply(store, events, telephony_rates="twilio:inbound=0.01")
    # The API runs with another rate card: it serves what the worker fixed, 3 x 0.01.
    client = await aiohttp_client(create_app(make_settings(telephony_rates="twilio:inbound=0.5"), "api", store))
    if route == "sid":
        body = await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json()
        assert body["telephony_cost"] == 0.03 and body["total_cost"] == 0.03
    elif route == "list":
        body = await (await client.get("/api/v1/calls", headers=AUTH)).json()
        [item] = body["items"]
        assert item["telephony_cost"] == 0.03
    elif route == "costs":
        found = await store.get_call(SID)
        assert found is not None
        body = await (await client.get(f"/api/v1/calls/{found[0]}/costs", headers=AUTH)).json()
        [entry] = [e for e in body["detailed_entries"] if e["id"] == "estimate:telephony"]
        assert entry["total_cost"] == 0.03 and entry["unit_cost"] == 0.01
    else:  # the rollups the analytics sum: whole units and nano remainder
        totals = (await store.indexes.sum_hashes(["t:*"]))["t:*"]
        assert (totals.get("cw", 0), totals["cf"]) == (0, 30_000_000)  # a field at 0 is deleted


async def test_with_the_journal_off_duplicates_are_still_recognised_and_events_say_so(
        aiohttp_client: Any, store: Store) -> None:
    events = [make_event(SID, "m", 0, call_meta={"k": 1}), usage(SID, "u1", 1, "stt", 40),
              usage(SID, "u2", 2, "llm", 2)]
    await apply(store, events + events[::-1], journal="off")  # every event delivered twice
    await apply(store, events, journal="off")  # and again, in a later batch
    found = await store.get_call(SID)
    assert found is not None and found[1].costs == {"stt": 40, "llm": 2}
    assert await store.event_count(SID) == 3
    assert not await store.redis.exists(store.journal_key(SID))  # no copy of any event kept
    assert await store.redis.zcard(store.order_key(SID)) == 3
    client = await aiohttp_client(create_app(make_settings(journal="off"), "api", store))
    response = await client.get(f"/api/v1/calls/sid/{SID}/events", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"] == "journal_off"
    record = await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json()
    assert record["stt_cost"] == 0.00000004 and record["call_meta"] == {"k": 1}


async def test_a_call_whose_only_events_are_refused_gets_no_record(aiohttp_client: Any, store: Store) -> None:
    # Over the call_meta bound when applied (queued before the bound was lowered): dead-lettered.
    await apply(store, [make_event(SID, "big", 0, call_meta={f"k{i}": i for i in range(5)})],
                max_call_meta_keys=2)
    assert not await store.redis.exists(store.call_key(SID))  # no id, no state, no record
    assert len(await store.redis.xrange(store.dead)) == 1
    client = await aiohttp_client(create_app(make_settings(), "api", store))
    assert (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).status == 404
    assert (await (await client.get("/api/v1/calls/count", headers=AUTH)).json())["count"] == 0
    # Its first applicable event creates the call, with one id everywhere.
    await apply(store, [make_event(SID, "small", 1, call_meta={"k": 1})], max_call_meta_keys=2)
    record = await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json()
    by_id = await (await client.get(f"/api/v1/calls/{record['id']}", headers=AUTH)).json()
    assert by_id["call_sid"] == SID and by_id["id"] == record["id"]
    assert (await (await client.get("/api/v1/calls/count", headers=AUTH)).json())["count"] == 1


async def test_a_refused_event_after_a_rate_change_reprices_nothing(aiohttp_client: Any, store: Store) -> None:
    await apply(store, [twilio("s1", 0, status="initiated", direction="inbound", from_number="+15551234567",
                               to_number="+15559876543"), twilio("s2", 61, status="completed", duration=61)],
                telephony_rates="twilio:inbound=0.01")
    before = await store.redis.hgetall(store.call_key(SID))
    # A worker with new rates refuses an event over the call_meta bound (no redelivery can apply it).
    await apply(store, [make_event(SID, "big", 5, call_meta={f"k{i}": i for i in range(5)})],
                telephony_rates="twilio:inbound=0.5", max_call_meta_keys=2)
    assert len(await store.redis.xrange(store.dead)) == 1
    assert await store.redis.hgetall(store.call_key(SID)) == before  # not a byte rewritten
    client = await aiohttp_client(create_app(make_settings(), "api", store))
    assert (await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json())["telephony_cost"] == 0.02


async def test_an_events_cursor_that_is_not_unicode_is_a_422(aiohttp_client: Any, store: Store) -> None:
    import base64
    await apply(store, [usage(SID, "u", 0, "llm", 1)])
    client = await aiohttp_client(create_app(make_settings(), "api", store))
    cursor = base64.urlsafe_b64encode(b"platform:\xff\xfe").decode().rstrip("=")
    response = await client.get(f"/api/v1/calls/sid/{SID}/events", params={"after": cursor}, headers=AUTH)
    assert response.status == 422 and (await response.json())["error"] == "invalid_parameter"


async def test_the_estimate_entry_shows_the_pricing_file_rate_that_priced_it(
        aiohttp_client: Any, store: Store, tmp_path: Any) -> None:
    table = tmp_path / "prices.yaml"
    table.write_text('prices:\n  - {component: telephony, provider: twilio, model: "*", usage_type: inbound_minutes,'
                     ' unit_price: "0.02"}\n')
    rates = {"telephony_rates": "twilio:inbound=0.01", "pricing_file": str(table)}
    await apply(store, [twilio("s1", 0, status="initiated", direction="inbound", from_number="+15551234567",
                               to_number="+15559876543"), twilio("s2", 181, status="completed", duration=181)],
                **rates)
    found = await store.get_call(SID)
    assert found is not None
    client = await aiohttp_client(create_app(make_settings(**rates), "api", store))
    body = await (await client.get(f"/api/v1/calls/{found[0]}/costs", headers=AUTH)).json()
    [entry] = [e for e in body["detailed_entries"] if e["id"] == "estimate:telephony"]
    assert (entry["usage_amount"], entry["unit_cost"], entry["total_cost"]) == (4, 0.02, 0.08)
