"""SPEC §8 in the apply loop and the read API: event ids namespaced by source, one telephony
provider per call, bounds per call, paginated /events, and a layout check at start-up.

Events go straight into the stream (what intake writes), so these tests hold whatever the
sources' own checks do; the worker runs in burst mode on fake Redis.
"""

import base64
from typing import Any

import orjson
import pytest

from call_ledger.core.errors import LayoutMismatch
from call_ledger.core.events import CallEvent
from call_ledger.core.instants import format_us
from call_ledger.core.rules import CallState, render_record
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import KnownCalls
from call_ledger.worker.consumer import Consumer
from tests.support.settings import AUTH, make_settings
from tests.support.signing import post_platform
from tests.support.workers import BASE, make_event, usage

TWILIO_SID = "CA0123456789abcdef0123456789abcdef"


def twilio(sequence: int, status: str, offset_s: int, **fields: Any) -> CallEvent:
    us = BASE.us + offset_s * 1_000_000
    return CallEvent(source="twilio", event_id=f"{TWILIO_SID}:{sequence}", call_sid=TWILIO_SID,
                     type=f"status.{status}", occurred_at=format_us(us), occurred_us=us, status=status, **fields)


async def append(store: Store, *events: CallEvent) -> None:
    for event in events:
        await store.append(event.model_dump_json().encode())


async def record(store: Store, sid: str, settings: Any = None) -> dict[str, Any] | None:
    found = await store.get_call(sid)
    if found is None:
        return None
    return render_record(sid, found[0], found[1], (settings or make_settings()).policy)


async def test_platform_webhook_id_equal_to_a_twilio_event_id_suppresses_nothing(store: Store, consumer: Any) -> None:
    ringing = twilio(1, "ringing", 0, direction="inbound", from_number="+15559876543",
                     to_number="+15551234567")
    # The platform's webhook-id is the very string of Twilio's completed event id.
    meta = make_event(TWILIO_SID, f"{TWILIO_SID}:3", 5_000_000, assistant_id=7)
    completed = twilio(3, "completed", 60, duration=55)
    await append(store, ringing, meta, completed)
    assert await consumer.run_burst() == 3
    rec = await record(store, TWILIO_SID)
    assert rec is not None
    assert (rec["status"], rec["duration"], rec["assistant_id"]) == ("completed", 55, 7)
    assert await store.applied_keys(TWILIO_SID) == {
        f"twilio:{TWILIO_SID}:1", f"twilio:{TWILIO_SID}:3", f"platform:{TWILIO_SID}:3"}


async def test_a_second_provider_cannot_take_over_a_call(store: Store, consumer: Any, guarantees: Any) -> None:
    await append(store, twilio(1, "ringing", 0, direction="inbound",
                               from_number="+15559876543", to_number="+15551234567"))
    await consumer.run_burst()
    before = await record(store, TWILIO_SID)
    intruder = CallEvent(source="telnyx", event_id="e6f1a0b4-0000-4000-8000-000000000001", call_sid=TWILIO_SID,
                         type="call.hangup", occurred_at=format_us(BASE.us + 10**8), occurred_us=BASE.us + 10**8,
                         status="completed", direction="outbound", from_number="+19990000000", to_number="+19990000001")
    platform = make_event(TWILIO_SID, "meta-1", 1_000_000, assistant_name="Bot")  # platform events attach anywhere
    await append(store, intruder, platform)
    assert await consumer.run_burst() == 2
    after = await record(store, TWILIO_SID)
    assert after == {**before, "assistant_name": "Bot"}  # type: ignore[dict-item]
    [dead] = await store.dead_letters()
    assert orjson.loads(dead["e"])["source"] == "telnyx"
    assert dead["reason"] == "call is attributed to twilio; a telnyx event cannot change it"
    assert f"telnyx:{intruder.event_id}" not in await store.applied_keys(TWILIO_SID)
    assert await store.group_stats() == (0, 0)  # dead-lettered at once, nothing left pending
    guarantees.record("another provider's event on a call (dead-lettered at once, record unchanged)",
                      sent=2, answered_2xx=2, applied=1, duplicates_suppressed=0, lost=0)


async def test_events_past_the_per_call_bound_are_dead_lettered_then_replayable(store: Store) -> None:
    settings = make_settings(max_events_per_call=5)
    consumer = Consumer(store, settings, Metrics())
    await append(store, *(usage("CA-hot", f"u{i}", i, "llm", 1_000_000_000) for i in range(8)))
    assert await consumer.run_burst() == 8
    rec = await record(store, "CA-hot", settings)
    assert rec is not None and rec["llm_cost"] == 5_000_000_000
    assert await store.event_count("CA-hot") == 5
    dead = await store.dead_letters()
    assert [row["reason"] for row in dead] == ["call already has 5 events (LEDGER_MAX_EVENTS_PER_CALL)"] * 3
    # The operator raises the bound and replays: each refused event is applied once.
    raised = Consumer(store, make_settings(max_events_per_call=10), Metrics())
    assert len(await store.replay_dead()) == 3
    assert await raised.run_burst() == 3
    rec = await record(store, "CA-hot")
    assert rec is not None and rec["llm_cost"] == 8_000_000_000


async def test_call_meta_merge_past_the_per_call_bound_is_dead_lettered(store: Store) -> None:
    settings = make_settings(max_call_meta_keys=3)
    consumer = Consumer(store, settings, Metrics())
    await append(store, make_event("CA-meta", "m1", 0, call_meta={"a": 1, "b": 2}),
                 make_event("CA-meta", "m2", 1, call_meta={"a": 9}),  # replaces a key: still 2
                 make_event("CA-meta", "m3", 2, call_meta={"c": 3, "d": 4}))  # would make 4
    assert await consumer.run_burst() == 3
    rec = await record(store, "CA-meta", settings)
    assert rec is not None and rec["call_meta"] == {"a": 9, "b": 2}
    [dead] = await store.dead_letters()
    assert orjson.loads(dead["e"])["event_id"] == "m3"
    assert "call_meta of this call would exceed 3 keys" in dead["reason"]


async def test_call_meta_bytes_bound_counts_what_the_record_serves(store: Store) -> None:
    settings = make_settings(max_call_meta_bytes=100)
    consumer = Consumer(store, settings, Metrics())
    await append(store, make_event("CA-bytes", "m1", 0, call_meta={"k": "x" * 40}),
                 make_event("CA-bytes", "m2", 1, call_meta={"k": "y" * 80}),  # replaces k: 88 bytes, fits
                 make_event("CA-bytes", "m3", 2, call_meta={"j": "z" * 20}))  # 88 + 28: over
    await consumer.run_burst()
    rec = await record(store, "CA-bytes", settings)
    assert rec is not None and rec["call_meta"] == {"k": "y" * 80}
    assert len(orjson.dumps(rec["call_meta"])) <= 100
    assert [orjson.loads(d["e"])["event_id"] for d in await store.dead_letters()] == ["m3"]


@pytest.mark.parametrize("meta", [{f"k{i}": i for i in range(257)}, {"big": "x" * 16_400}])
async def test_an_event_whose_call_meta_alone_exceeds_the_bound_is_422(client: Any, store: Store,
                                                                        meta: dict[str, Any]) -> None:
    response = await post_platform(client, {"type": "call.metadata", "call_sid": "CA-m", "data": {"call_meta": meta}},
                                   "m-big")
    assert response.status == 422
    assert "call_meta exceeds 256 keys or 16384 bytes" in (await response.json())["detail"]
    assert await store.redis.xlen(store.stream) == 0


async def test_events_are_paged_oldest_first_with_a_cursor(client: Any, store: Store, consumer: Any) -> None:
    events = [usage("CA-pages", f"u{i:03d}", (250 - i) * 1_000, "llm", 1) for i in range(250)]
    await append(store, *events)
    await consumer.run_burst()
    seen: list[str] = []
    pages = []
    url = "/api/v1/calls/sid/CA-pages/events?limit=100"
    while True:
        response = await client.get(url, headers=AUTH)
        assert response.status == 200
        body = await response.json()
        assert set(body) == {"call_sid", "events", "next"} and body["call_sid"] == "CA-pages"
        pages.append(len(body["events"]))
        seen += [e["event_id"] for e in body["events"]]
        if body["next"] is None:
            break
        url = f"/api/v1/calls/sid/CA-pages/events?limit=100&after={body['next']}"
    assert pages == [100, 100, 50]
    assert seen == [f"u{i:03d}" for i in reversed(range(250))]  # oldest occurred_at first
    default = await (await client.get("/api/v1/calls/sid/CA-pages/events", headers=AUTH)).json()
    assert len(default["events"]) == 100


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "limit=1.5",
                                   "after=!!", "after=" + base64.urlsafe_b64encode(b"not a member").decode()])
async def test_bad_events_parameters_are_422_naming_the_parameter(client: Any, store: Store, consumer: Any,
                                                                 query: str) -> None:
    await append(store, usage("CA-q", "u1", 0, "llm", 1))
    await consumer.run_burst()
    response = await client.get(f"/api/v1/calls/sid/CA-q/events?{query}", headers=AUTH)
    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_parameter" and query.split("=")[0] in body["detail"]


async def test_events_of_an_unknown_call_are_404(client: Any) -> None:
    response = await client.get("/api/v1/calls/sid/CA-none/events", headers=AUTH)
    assert response.status == 404


def test_worker_cache_is_bounded_in_bytes_not_entries() -> None:
    from call_ledger.core.rules import apply_event

    cache = KnownCalls(capacity_bytes=100_000)
    big = CallState()
    apply_event(big, make_event("CA-big", "m1", 0, call_meta={"k": "y" * 10_000}), make_settings().policy)
    for i in range(50):
        cache.remember(f"CA{i}", 1, i + 1, big, frozenset({"m:k"}))
        assert cache.bytes <= 100_000
    assert 1 <= len(cache) <= 9
    assert cache.get("CA49", ["m:k"]) is not None  # most recent kept
    assert cache.get("CA0", []) is None  # oldest evicted
    assert cache.get("CA49", ["m:other"]) is not None  # it holds the call's every key: m:other is unset
    partial = CallState.from_fields(big.core_json().replace(b'"meta_keys":1', b'"meta_keys":2'),
                                    {"m:k": orjson.dumps(big.meta["k"])})
    cache.remember("CA-partial", 1, 99, partial, frozenset({"m:k"}))
    assert cache.get("CA-partial", ["m:k"]) is not None
    assert cache.get("CA-partial", ["m:other"]) is None  # a key it may not hold: read Redis
    huge = CallState()
    apply_event(huge, make_event("CA-huge", "m1", 0, call_meta={"k": "x" * 200_000}),
                make_settings(max_call_meta_bytes=300_000).policy)
    cache.remember("CA-huge", 1, 1, huge, frozenset())  # alone above the budget
    assert cache.get("CA-huge", []) is None and cache.bytes <= 100_000


def test_the_worker_cache_hands_out_a_state_equal_to_the_one_committed_and_its_own() -> None:
    """A cached call is planned from its state as committed (equal, estimate included), in a copy
    the plan owns: folding into it leaves the cache as it was."""
    from call_ledger.core.rules import apply_event, fix_estimate

    policy = make_settings().policy
    state = CallState()
    apply_event(state, make_event("CA-s", "m1", 0, assistant_name="Bot", call_meta={"a": [1, {"b": None}]}), policy)
    fix_estimate(state, policy)
    state.changed.clear()
    cache = KnownCalls()
    cache.remember("CA-s", 3, 7, state, frozenset({"m:a"}), ("platform:m1",), "tok")
    found = cache.get("CA-s", ["m:a"])
    assert found is not None and found.cached and (found.version, found.record_id, found.token) == (3, 7, "tok")
    assert found.state == state and found.state.estimate == state.estimate and found.applied == {"platform:m1"}
    apply_event(found.state, make_event("CA-s", "m2", 5, assistant_name="Other"), policy)
    again = cache.get("CA-s", ["m:a"])
    assert again is not None and again.state == state
    cache.forget("CA-s")
    assert cache.get("CA-s", []) is None


async def test_a_store_with_data_of_an_older_layout_is_refused(fake_redis: Any) -> None:
    store = Store(fake_redis)
    await fake_redis.set("cl:ids", 41)  # ids handed out by a version that did not mark its layout
    with pytest.raises(LayoutMismatch, match="older key layout"):
        await store.check_layout()
    await fake_redis.set("cl:layout", "1")
    with pytest.raises(LayoutMismatch, match="layout '1'"):
        await store.check_layout()


async def test_a_fresh_store_is_marked_with_the_layout(fake_redis: Any, consumer: Any, store: Store) -> None:
    await store.check_layout()
    assert await fake_redis.get("cl:layout") == b"5"  # short members, plain fields, lean index entries from the start
    await append(store, usage("CA-l", "u1", 0, "llm", 1))
    await consumer.run_burst()
    assert await fake_redis.zrange("cl:order:{CA-l}", 0, -1) == [b"0:u1"]
    await store.check_layout()  # its own data passes


def test_state_round_trips_through_its_fields() -> None:
    from call_ledger.core.rules import apply_event

    settings = make_settings()
    state = CallState()
    apply_event(state, make_event("CA-rt", "m1", 0, assistant_name="Bot", call_meta={"a": [1, {"b": None}]}),
                settings.policy)
    rebuilt = CallState.from_fields(state.core_json(), dict(state.changed_fields()))
    assert rebuilt == state


def test_the_worker_cache_counts_what_it_really_holds() -> None:
    """Real memory (tracemalloc) of what the cache keeps stays within what it counts: its bound in
    bytes means bytes, for calls as the consumer remembers them after a commit."""
    import gc
    import tracemalloc

    from call_ledger.core.rules import apply_event

    settings = make_settings()
    cache = KnownCalls(capacity_bytes=10**9)
    gc.collect()
    tracemalloc.start()
    for i in range(500):  # decoded states of calls with their registers and call_meta set
        state = CallState()
        apply_event(state, make_event(f"CA-mem-{i}", f"m{i}", 0, status="ongoing", assistant_id=5,
                                      assistant_name="Bot", flow_name="F", to_phone_number="+15551230000",
                                      call_meta={"customer_id": f"c{i}", "n": i, "tags": ["a", {"b": i}]}),
                    settings.policy)
        apply_event(state, make_event(f"CA-mem-{i}", f"u{i}", 5, costs=[{"component": "llm", "amount_nano": i,
                                                                         "currency": "USD"}]), settings.policy)
        state.changed.clear()
        cache.remember(f"CA-mem-{i}", 2, i + 1, state, frozenset({"m:customer_id", "m:n", "m:tags"}))
    del state
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(cache) == 500
    assert held <= cache.bytes, (held, cache.bytes)
    assert cache.bytes <= 2 * held, (held, cache.bytes)  # and not wildly over-counted either


@pytest.mark.parametrize("text", ["1_0", "\u0661", "\uff13", "\u00a06", " 2 ", "2\n", "0x10", "1e", ".", "--1"])
def test_amounts_are_plain_decimal_text_or_malformed(text: str) -> None:
    """Decimal() reads "1_0" as 10 and other scripts' digits as digits; an amount must be decimal text."""
    from call_ledger.core.money import parse_amount

    with pytest.raises(ValueError, match="not a decimal number"):
        parse_amount(text)


@pytest.mark.parametrize("text", ["0.00150000", "-0.013", "+4", "1e-3", "7", ".5", "5."])
def test_plain_decimal_text_is_an_amount(text: str) -> None:
    from decimal import Decimal

    from call_ledger.core.money import NANO, parse_amount

    assert parse_amount(text) == int(abs(Decimal(text)) * NANO)


@pytest.mark.parametrize("cost", ["1_0", "\uff13", " 2 "])
async def test_a_platform_cost_in_another_form_is_422_and_nothing_is_stored(client: Any, store: Store,
                                                                           cost: str) -> None:
    response = await post_platform(client, {"type": "call.usage", "call_sid": "CA-amt",
                                            "data": {"component": "llm", "cost": cost}}, "u-amt")
    assert response.status == 422
    assert await store.redis.xlen(store.stream) == 0


async def test_a_call_meta_key_that_is_not_unicode_is_422(client: Any, store: Store) -> None:
    body = b'{"type":"call.metadata","call_sid":"CA-sur","data":{"call_meta":{"\\ud800":"1"}}}'
    from tests.support.signing import sign_platform

    response = await client.post("/webhooks/platform", data=body, headers=sign_platform(body, "m-sur"))
    assert response.status == 422
    assert "Unicode" in (await response.json())["detail"]
    assert await store.redis.xlen(store.stream) == 0


def test_years_before_1000_keep_four_digits() -> None:
    from call_ledger.core.instants import format_us, parse_iso

    assert parse_iso("0001-01-01T00:00:00Z").text == "0001-01-01T00:00:00Z"
    assert format_us(parse_iso("0999-12-31T23:59:59.5Z").us) == "0999-12-31T23:59:59.500000Z"
