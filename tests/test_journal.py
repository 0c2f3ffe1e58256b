"""The journal's compact entries: every event restored byte for byte, old (whole JSON) entries
still read, and /events and /costs answering exactly what they answered when the journal kept
each event's JSON whole."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import ledger.store as store_module
from api.views import encode_cursor
from ledger.events import COMPONENTS, STATUSES, CallEvent, Cost, PriceRef
from ledger.instants import text_at
from ledger.journal import compact, restore
from ledger.metrics import Metrics
from ledger.store import CommitWrite
from ledger.stream_store import _text
from tests.conftest import AUTH, make_settings
from tests.test_providers_end_to_end import (  # noqa: F401 (start_ledger is a fixture)
    Ledger,
    StartLedger,
    WholeCall,
    attributed_twilio_call,
    plivo_call,
    redelivered_and_shuffled,
    start_ledger,
    telnyx_call,
    twilio_call,
    vonage_call,
)
from worker.consumer import Consumer

# -- the codec alone ---------------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # quotes, backslashes, controls, é😀
KEYISH = st.one_of(TEXT, st.sampled_from(["twilio", "platform", "telnyx", "CA" + "0" * 32 + ":3"]))
US = st.one_of(st.integers(1_700_000_000_000_000, 1_900_000_000_000_000),  # now-ish
               st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999))  # year 1 to 9999
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                                          allow_infinity=False) | TEXT,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                       max_leaves=6)
PRICE = st.builds(PriceRef, component=st.sampled_from(COMPONENTS), provider=TEXT, model=TEXT, usage_type=TEXT,
                  effective_from=st.none() | TEXT, unit_price=TEXT, unit_quantity=TEXT, currency=TEXT)
COST = st.builds(Cost, component=st.sampled_from(COMPONENTS), amount_nano=st.integers(0, 2**63),
                 currency=st.sampled_from(["USD", "EUR", "GBP"]), provider=st.none() | TEXT,
                 model=st.none() | TEXT, usage_type=st.none() | TEXT, usage_amount=st.none() | TEXT,
                 unit_cost=st.none() | TEXT, price_entry=st.none() | PRICE)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def events(draw: st.DrawFn) -> CallEvent:
    """Any event the model allows, its instant written at any precision, or (as no intake writes it)
    text that is not its occurred_us at all."""
    us = draw(US)
    digits = draw(st.integers(0, 6))
    occurred_at = draw(st.one_of(st.just(text_at(us, digits)), TEXT))
    return CallEvent(
        source=draw(KEYISH), event_id=draw(KEYISH.filter(bool)), call_sid=draw(KEYISH.filter(bool)),
        type=draw(st.one_of(TEXT, st.sampled_from(["call.hangup", "status.completed", "call.usage"]))),
        occurred_at=occurred_at, occurred_us=us,
        status=draw(optional(st.sampled_from(STATUSES))),
        direction=draw(optional(st.sampled_from(["inbound", "outbound"]))),
        from_number=draw(optional(TEXT)), to_number=draw(optional(TEXT)),
        duration=draw(optional(st.integers(0, 10**9))),
        started_at=draw(optional(TEXT)), started_us=draw(optional(US)),
        answered_at=draw(optional(TEXT)), answered_us=draw(optional(US)),
        costs=tuple(draw(st.lists(COST, max_size=3))),
        assistant_id=draw(optional(st.integers(0, 2**63 - 1))),
        organization_id=draw(optional(st.integers(1, 2**63 - 1))),
        assistant_name=draw(optional(TEXT)), flow_name=draw(optional(TEXT)),
        to_phone_number=draw(optional(TEXT)), customer_phone_number=draw(optional(TEXT)),
        call_meta=draw(optional(st.dictionaries(TEXT, JSONISH, max_size=4))),
    )


def stored_and_back(event: CallEvent, raw: bytes | None = None) -> tuple[bytes, bytes]:
    raw = raw if raw is not None else event.model_dump_json(exclude_defaults=True).encode()
    stored = compact(raw, event.key, event.call_sid, event.occurred_us)
    return stored, restore(stored, event.key.encode(), event.call_sid, event.occurred_us)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events())
def test_any_event_is_restored_byte_for_byte_and_compacted_when_its_parts_are_as_intake_writes_them(
        event: CallEvent) -> None:
    raw = event.model_dump_json(exclude_defaults=True).encode()
    stored, restored = stored_and_back(event, raw)
    assert restored == raw
    usual = (":" not in event.source and orjson.dumps(event.type)[1:-1] == event.type.encode()
             and event.occurred_at in {text_at(event.occurred_us, d) for d in range(7)}
             and abs(event.occurred_us) < 2**53)
    assert (stored[:1] != b"{") == usual, stored
    if usual:
        assert len(stored) < len(raw) - len(event.key) - len(event.call_sid)


@given(event=events(), junk=st.binary(max_size=40))
def test_json_not_of_this_shape_is_kept_whole(event: CallEvent, junk: bytes) -> None:
    """Whatever a stream entry holds (another version's JSON, a hand-made replay), what is kept
    reads back as it was."""
    for raw in (junk, b"{" + junk, event.model_dump_json().encode(),  # defaults written out
                event.model_dump_json(exclude_defaults=True).encode() + junk, json.dumps(event.model_dump()).encode()):
        assert stored_and_back(event, raw)[1] == raw


def test_an_entry_written_whole_by_the_previous_version_reads_as_it_is() -> None:
    raw = (b'{"source":"twilio","event_id":"CA1:0","call_sid":"CA1","type":"status.initiated",'
           b'"occurred_at":"2026-11-24T10:00:00Z","occurred_us":1795514400000000,"status":"initiated"}')
    assert restore(raw, b"twilio:CA1:0", "CA1", 1795514400000000) == raw
    assert compact(raw, "twilio:CA1:0", "CA1", 1795514400000000) == b'0status.initiated"\x01initiated"}'


def test_a_priced_usage_event_keeps_its_price_entry_exactly() -> None:
    price = PriceRef(component="llm", provider="openai", model="*", usage_type="input_tokens",
                     effective_from="2026-01-01T00:00:00Z", unit_price="0.15", unit_quantity="1000000",
                     currency="USD")
    event = CallEvent(source="platform", event_id="msg_u1", call_sid="CA1", type="call.usage",
                      occurred_at="2026-11-24T10:02:00.250Z", occurred_us=1795514520250000,
                      costs=(Cost(component="llm", amount_nano=1_230_000, currency="USD", provider="openai",
                                  model="gpt-4o-mini", usage_type="input_tokens", usage_amount="8200",
                                  unit_cost="0.00000015", price_entry=price),
                             Cost(component="tts", amount_nano=0, currency="EUR", price_entry=price.model_copy(
                                 update={"effective_from": None}))))
    stored, restored = stored_and_back(event)
    assert restored == event.model_dump_json(exclude_defaults=True).encode()
    assert stored.startswith(b'3call.usage"') and b"price_entry" not in stored


# -- through the service: /events and /costs as they were -------------------------------------------------

def page_body(call_sid: str, events: list[bytes], cursor: str | None) -> bytes:
    """/events as the route writes it, from the events' JSON."""
    return (b'{"call_sid":' + orjson.dumps(call_sid) + b',"events":[' + b",".join(events) + b'],"next":'
            + (orjson.dumps(cursor) if cursor else b"null") + b"}")


async def events_bodies(service: Ledger, call_sid: str, limit: int = 100) -> list[bytes]:
    """Every /events page of the call, as answered."""
    bodies, after = [], None
    while True:
        query = {"limit": str(limit), **({"after": after} if after else {})}
        response = await service.client.get(f"/api/v1/calls/sid/{call_sid}/events", headers=AUTH, params=query)
        assert response.status == 200, await response.text()
        bodies.append(await response.read())
        after = json.loads(bodies[-1])["next"]
        if after is None:
            return bodies


async def intake_json(service: Ledger) -> dict[str, set[bytes]]:
    """Journal key -> the JSON intake wrote to the stream for it (a redelivery may differ, in its
    time of arrival: any of them is the one applied first)."""
    store = service.consumer.store
    written: dict[str, set[bytes]] = {}
    for _, fields in await store.redis.xrange(store.stream):
        event = CallEvent.model_validate_json(fields[b"e"])
        written.setdefault(event.key, set()).add(fields[b"e"])
    return written


def as_written(written: dict[str, set[bytes]], event: dict[str, Any]) -> bytes:
    """The JSON intake wrote for this listed event (the one of its deliveries it equals)."""
    [raw] = [raw for raw in written[f"{event['source']}:{event['event_id']}"] if orjson.loads(raw) == event]
    return raw


WHOLE_CALLS = {"twilio": twilio_call, "telnyx": telnyx_call, "vonage": vonage_call, "plivo": plivo_call,
               "twilio+platform": attributed_twilio_call}


@pytest.mark.parametrize("whole_call", WHOLE_CALLS.values(), ids=WHOLE_CALLS.keys())
async def test_events_route_answers_each_event_as_intake_wrote_it_and_the_journal_keeps_it_compact(
        start_ledger: StartLedger, whole_call: Any) -> None:  # noqa: F811
    call: WholeCall = whole_call()
    service = await start_ledger(**call.settings)
    await service.deliver(redelivered_and_shuffled(call.sends, seed=21))
    store = service.consumer.store

    [body] = await events_bodies(service, call.call_sid)
    written = await intake_json(service)
    listed = json.loads(body)["events"]
    # Byte for byte: the body is the JSON intake wrote for each event, joined.
    assert len(listed) == len(written)
    assert body == page_body(call.call_sid, [as_written(written, e) for e in listed], None)
    entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert entries and all(value[:1] != b"{" for value in entries.values()), entries


def written_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, journal entries are written as the previous version wrote them: whole JSON."""
    monkeypatch.setattr(store_module, "compact", lambda event_json, *_: event_json)


async def test_entries_the_previous_version_wrote_whole_still_serve_events_costs_and_dedupe(
        start_ledger: StartLedger) -> None:  # noqa: F811
    """A rolling upgrade: a call journaled by the previous version (whole JSON) gets more events
    from this one; /events and /costs read both kinds, and the old events are still duplicates."""
    call = attributed_twilio_call()
    service = await start_ledger(**call.settings)
    store = service.consumer.store
    first, rest = call.sends[:5], call.sends[5:]
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await service.deliver(first)
    old_entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert old_entries and all(v[:1] == b"{" for v in old_entries.values())
    await service.deliver(rest + first)  # the first ones again: duplicates, whichever form they are in
    entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert {k: v for k, v in entries.items() if k in old_entries} == old_entries
    assert any(v[:1] != b"{" for v in entries.values())
    written = await intake_json(service)
    assert await store.event_count(call.call_sid) == len(written)

    [body] = await events_bodies(service, call.call_sid)
    listed = json.loads(body)["events"]
    assert len(listed) == len(written)
    assert body == page_body(call.call_sid, [as_written(written, e) for e in listed], None)
    response = await service.client.get(f"/api/v1/calls/sid/{call.call_sid}/costs", headers=AUTH)
    assert response.status == 200, await response.text()
    costs = json.loads(await response.read())
    assert {e["service_type"] for e in costs["detailed_entries"]} >= {"llm", "tts", "stt", "telephony"}


def old_pages(events: list[tuple[str, bytes]], limit: int, budget: int) -> list[tuple[list[bytes], str | None]]:
    """How the previous version paged (ledger/events_page.lua on whole JSON): at most `limit`, and
    ending after the event whose JSON reaches `budget` bytes when another follows."""
    pages, start = [], 0
    while True:
        page, size, more = [], 0, False
        for i, (_, raw) in enumerate(events[start:start + limit + 1]):
            if i == limit:
                more = True
                break
            page.append(raw)
            size += len(raw)
            if size >= budget and start + i + 1 < len(events):
                more = True
                break
        start += len(page)
        pages.append((page, events[start - 1][0] if more else None))
        if not more:
            return pages


@pytest.mark.parametrize(("limit", "budget"), [(100, 600), (3, 10**6), (4, 900), (1000, 1), (2, 250)])
async def test_pages_end_where_the_events_json_reaches_the_byte_budget_as_before(
        start_ledger: StartLedger, monkeypatch: pytest.MonkeyPatch, limit: int, budget: int) -> None:  # noqa: F811
    call = attributed_twilio_call()
    service = await start_ledger(**call.settings)
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await service.deliver(call.sends[:3])  # some entries whole, the rest compact
    await service.deliver(call.sends[3:])
    monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", budget)

    bodies = await events_bodies(service, call.call_sid, limit)
    written = await intake_json(service)
    listed = [e for body in bodies for e in json.loads(body)["events"]]
    in_order = [(f"{e['source']}:{e['event_id']}", as_written(written, e)) for e in listed]
    assert len(in_order) == len(written)
    assert bodies == [page_body(call.call_sid, page, encode_cursor(cursor) if cursor else None)
                      for page, cursor in old_pages(in_order, limit, budget)]


async def test_instants_far_from_now_restore_exactly_through_a_real_redis_score(redis_server: Any) -> None:
    """The score is a double: occurred_us comes back from a real server's reply text exactly."""
    from ledger.store import Store, open_redis

    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        instants = [(-2_208_988_800_000_000, 0), (0, 1), (1795514400123456, 6), (2**53 - 1, 2),
                    (7_258_118_399_999_999, 3), (-(2**53) + 1, 5)]
        raws = []
        for i, (us, digits) in enumerate(instants):
            event = CallEvent(source="platform", event_id=f"e{i}", call_sid="CA-far", type="call.metadata",
                              occurred_at=text_at(us, digits), occurred_us=us, flow_name=f"f{i}")
            raws.append(event.model_dump_json(exclude_defaults=True).encode())
            await store.append(raws[-1], "CA-far")
        consumer = Consumer(store, settings, Metrics())
        assert await consumer.run_burst() == len(instants)
        entries = await store.redis.hvals(store.journal_key("CA-far"))
        assert all(value[:1] != b"{" for value in entries)
        assert await store.all_events("CA-far") == sorted(raws, key=lambda raw: orjson.loads(raw)["occurred_us"])
        page = await store.events_page("CA-far", "", 2)
        assert page is not None and _text(page[1] or "") == "platform:e0"
    finally:
        await store.close()


async def test_a_page_that_reaches_the_budget_before_events_kept_without_a_copy_says_there_is_more(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events applied with LEDGER_JOURNAL=off have no entry: the page still ends, with a cursor,
    after the event whose JSON reaches the budget, as when the budget counted whole JSON."""
    raws = [CallEvent(source="platform", event_id=f"e{i}", call_sid="CA1", type="call.metadata",
                      occurred_at=text_at(1795514400000000 + i, 6), occurred_us=1795514400000000 + i,
                      flow_name="x" * 20).model_dump_json(exclude_defaults=True).encode() for i in range(6)]
    events = [(f"platform:e{i}", 1795514400000000 + i, raw if i < 4 else b"") for i, raw in enumerate(raws)]
    assert await store.commit([CommitWrite("CA1", 0, 6, b"{}", 1, events, [])]) == [True]
    monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", sum(map(len, raws[:4])))
    entries = await store.redis.hgetall(store.journal_key("CA1"))
    assert sum(map(len, entries.values())) < store_module.EVENTS_PAGE_BYTES  # only the JSON reaches it

    assert await store.events_page("CA1", "", 100) == (raws[:4], "platform:e3")
    assert await store.events_page("CA1", "platform:e3", 100) == ([], None)


@pytest.mark.parametrize("whole_call", WHOLE_CALLS.values(), ids=WHOLE_CALLS.keys())
async def test_events_and_costs_bodies_are_the_bytes_served_when_entries_were_whole_json(
        start_ledger: StartLedger, whole_call: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same stream into a service that journals whole JSON (as the previous version did) and
    into this one: every /events page (small byte budgets included) and /costs, byte for byte."""
    call: WholeCall = whole_call()
    before, after = await start_ledger(**call.settings), await start_ledger(**call.settings)
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await before.deliver(redelivered_and_shuffled(call.sends, seed=22))
    store = after.consumer.store
    # The very entries (some sources stamp an event with its time of arrival), in their order.
    for _, fields in await before.consumer.store.redis.xrange(before.consumer.store.stream):
        await store.append(fields[b"e"])
    assert await after.consumer.run_burst() > 0
    assert all(v[:1] != b"{" for v in (await store.redis.hgetall(store.journal_key(call.call_sid))).values())

    for budget in (store_module.EVENTS_PAGE_BYTES, 700, 1):
        monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", budget)
        for limit in (100, 2):
            assert await events_bodies(after, call.call_sid, limit) == await events_bodies(before, call.call_sid, limit)
    costs = [await (await service.client.get(f"/api/v1/calls/sid/{call.call_sid}/costs", headers=AUTH)).read()
             for service in (before, after)]
    assert costs[0] == costs[1] and b"detailed_entries" in costs[0]
