"""The calls API's indexes are exact under redelivery, reordering, several workers and a worker
dying between commit and index update: whatever happened, they equal an index built once
from the final records, and the API's answers equal a model computed here from the records."""

import random
from typing import Any

import fakeredis
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from call_ledger.app import create_app
from call_ledger.core.errors import Unapplicable
from call_ledger.core.events import STATUSES as ALL_STATUSES
from call_ledger.core.events import TERMINAL_STATUSES, CallEvent, Cost
from call_ledger.core.indexes import (
    IndexBasis,
    IndexEntry,
    _delta_by_field,
    _increments,
    delta_from_stored,
    entry_delta,
    index_entry,
    shard_of,
)
from call_ledger.core.record_ids import counter_of
from call_ledger.core.rules import CallState, apply_event, fix_estimate, record_json, render_record
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.indexes import IndexStore, IndexWrite
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support import indexes_reference as reference
from tests.support.calls import ADMIN, BASE_US, TOKENS, auth, call, event, load
from tests.support.index_dump import dump_indexes
from tests.support.settings import make_settings
from tests.support.workers import fold

STATUSES = ("ringing", "ongoing", "completed", "failed", "busy", "canceled")


async def rebuilt(store: Store, settings: Settings, sids: list[str]) -> dict[bytes, Any]:
    """The index built once, from the final records, on a fresh Redis."""
    fresh = fakeredis.FakeAsyncRedis()
    entries = []
    for sid in sids:
        found = await store.get_call(sid)
        assert found is not None
        version = await store.event_count(sid)
        entries.append((shard_of(sid), index_entry(sid, found[0], found[1], settings.policy), version))
    await IndexStore(fresh).update(entries)
    dumped = await dump_indexes(fresh)
    await fresh.aclose()
    return dumped


def random_calls(rng: random.Random, n: int) -> list[CallEvent]:
    events: list[CallEvent] = []
    for c in range(n):
        sid = f"CA-h-{c}"
        start = BASE_US + rng.randrange(3) * 86_400_000_000 + rng.randrange(5) * 1_000_000
        for k in range(rng.randrange(0, 4)):
            status = rng.choice(STATUSES)
            events.append(event(sid, f"{sid}-s{k}", start + rng.randrange(600) * 1_000_000, status=status,
                                **({"duration": rng.randrange(200)} if status == "completed" and rng.random() < .5
                                   else {})))
        for k in range(rng.randrange(0, 3)):
            events.append(event(sid, f"{sid}-m{k}", start + rng.randrange(-5, 600) * 1_000_000,
                                organization_id=rng.choice([7, 8]), assistant_id=rng.choice([1, 2, 3]),
                                assistant_name=rng.choice(["A", "B"]),
                                customer_phone_number=rng.choice(["+15551230001", "+15559990002"])))
        for k in range(rng.randrange(0, 3)):
            events.append(event(sid, f"{sid}-u{k}", start + rng.randrange(600) * 1_000_000,
                                costs=(Cost(component=rng.choice(["llm", "stt"]),
                                            amount_nano=rng.choice([1, 100_000_000, 10**13]), currency="USD"),)))
        if not any(e.call_sid == sid for e in events):
            events.append(event(sid, f"{sid}-only", start, status="ringing"))
    return events


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), layout=st.sampled_from(["2", "4", "5"]))
async def test_indexes_equal_a_fresh_build_and_the_api_equals_the_model(
        aiohttp_client: Any, seed: int, n: int, layout: str) -> None:
    """In a store of any layout: the entries' two forms (layout 5's lean payload) read the same."""
    rng = random.Random(seed)
    settings = make_settings(api_tokens=TOKENS, batch_size=rng.randint(1, 6))
    redis = fakeredis.FakeAsyncRedis()
    store = Store(redis)
    await redis.set(store.keys.layout, layout)
    await store.check_layout()
    events = random_calls(rng, n)
    deliveries = [e for e in events for _ in range(1 + (rng.random() < 0.3))]
    rng.shuffle(deliveries)
    workers = [Consumer(store, settings.model_copy(update={"consumer_name": f"w{i}"}), Metrics()) for i in range(2)]
    while deliveries:  # chunks applied by one worker or the other: many versions of each call indexed
        size = rng.randint(1, 8)
        chunk, deliveries = deliveries[:size], deliveries[size:]
        for e in chunk:
            await store.append(e.model_dump_json().encode())
        await rng.choice(workers).run_burst()

    sids = sorted({e.call_sid for e in events})
    assert await dump_indexes(redis) == await rebuilt(store, settings, sids)

    # The API against a model computed from the records (folded here, not read back).
    states = fold(events, settings)
    ids = {sid: (await store.get_call(sid) or (0, None))[0] for sid in sids}
    records = {sid: orjson.loads(record_json(render_record(sid, ids[sid], state, settings.policy)))
               for sid, state in states.items()}
    orgs = {sid: (s.registers.get("organization_id") or [None] * 4)[3] for sid, s in states.items()}
    times = {sid: (s.started[0] if s.started else s.first_seen) for sid, s in states.items()}
    newest_first = sorted(sids, key=lambda s: (times[s], ids[s]), reverse=True)
    client = await aiohttp_client(create_app(settings, "api", store))

    async def get(path: str, token: str = ADMIN, **params: Any) -> Any:
        response = await client.get(path, headers=auth(token), params=params)
        assert response.status == 200, await response.text()
        return await response.json()

    for status in (None, "completed", "ringing"):
        for assistant in (None, 1):
            params = {k: v for k, v in (("status", status), ("assistant_id", assistant)) if v is not None}
            expected = [records[s] for s in newest_first if (status is None or records[s]["status"] == status)
                        and (assistant is None or records[s]["assistant_id"] == assistant)]
            body = await get("/api/v1/calls", limit=1000, **params)
            assert (body["items"], body["total"]) == (expected, len(expected))
            scoped = [r for r in expected if orgs[r["call_sid"]] == 7]
            assert (await get("/api/v1/calls/count", token="org-seven-token", **params))["count"] == len(scoped)
            # The filters read from the entries' payloads, not the lists.
            lasting = [r for r in expected if r["duration"] is not None and r["duration"] >= 30]
            body = await get("/api/v1/calls", limit=1000, min_duration=30, **params)
            assert body["items"] == lasting
            named = [r for r in expected if r["assistant_name"] is not None and "a" in r["assistant_name"].lower()]
            assert (await get("/api/v1/calls", limit=1000, assistant_name="a", **params))["items"] == named
    stats = await get("/api/v1/calls/stats")
    durations = [r["duration"] for r in records.values() if r["duration"] is not None]
    assert stats["total_calls"] == len(records)
    assert stats["completed_calls"] == sum(r["status"] == "completed" for r in records.values())
    assert stats["failed_calls"] == sum(r["status"] in TERMINAL_STATUSES and r["status"] != "completed"
                                        for r in records.values())
    assert stats["total_duration"] == sum(durations)
    assert stats["average_duration"] == (sum(durations) / len(durations) if durations else None)
    await redis.aclose()


async def test_an_index_update_lost_to_a_crash_is_repaired_by_the_redelivery(
        store: Store, settings: Settings, aiohttp_client: Any) -> None:
    settings = make_settings(api_tokens=TOKENS)
    # Its own Store on the same Redis (as another process would have): only its index writes die.
    doomed = Consumer(Store(store.redis, store.prefix), settings.model_copy(update={"consumer_name": "doomed"}),
                      Metrics())

    async def die(*args: Any) -> list[bool]:
        raise RedisConnectionError("worker lost Redis between commit and index update")

    doomed.indexes.write = die  # type: ignore[method-assign]
    for e in call("CA-crash", BASE_US, assistant=2):
        await store.append(e.model_dump_json().encode())
    with pytest.raises(RedisConnectionError):
        await doomed.run_burst()
    assert await store.get_call("CA-crash") is not None  # committed ...
    client = await aiohttp_client(create_app(settings, "api", store))
    listed = await (await client.get("/api/v1/calls", headers=auth())).json()
    assert listed["total"] == 0  # ... not indexed yet, and not acknowledged
    survivor = Consumer(store, settings.model_copy(update={"consumer_name": "survivor"}), Metrics())
    assert await survivor.run_burst(claim_idle_ms=0) == 2  # both redelivered, both duplicates
    listed = await (await client.get("/api/v1/calls", headers=auth(), params={"assistant_id": 2})).json()
    assert [i["call_sid"] for i in listed["items"]] == ["CA-crash"]
    assert (await (await client.get("/api/v1/calls/stats", headers=auth())).json())["completed_calls"] == 1
    assert await store.group_stats() == (0, 0)


async def test_an_older_or_repeated_version_changes_nothing(store: Store, settings: Settings) -> None:
    await load(store, settings, call("CA-v", BASE_US, status="ongoing", duration=None))
    found = await store.get_call("CA-v")
    assert found is not None
    indexes = IndexStore(store.redis)
    before = await dump_indexes(store.redis)
    await load(store, settings, [event("CA-v", "end", BASE_US + 10**7, status="completed")])
    after = await dump_indexes(store.redis)
    assert after != before
    old_entry = index_entry("CA-v", found[0], found[1], settings.policy)
    # A slow worker finishing version 1 after version 2 was indexed; and version 2 again.
    assert await indexes.update([(shard_of("CA-v"), old_entry, 1)]) == [False]
    final = await store.get_call("CA-v")
    assert final is not None
    final_entry = index_entry("CA-v", final[0], final[1], settings.policy)
    assert await indexes.update([(shard_of("CA-v"), final_entry, 2)]) == [False]
    assert await dump_indexes(store.redis) == after


def test_entries_spread_over_every_shard() -> None:
    assert {shard_of(f"CA{i:032x}") for i in range(500)} == set(range(16))


async def test_reindex_builds_the_indexes_of_records_written_before_them(
        store: Store, settings: Settings) -> None:
    from call_ledger.store.reindex import reindex

    events = call("CA-legacy-1", BASE_US, org=7, assistant=1, cost=5) + call("CA-legacy-2", BASE_US + 1)
    events.append(event("CA-legacy-3", "meta-only", BASE_US + 7, assistant_id=2))
    await load(store, settings, events)
    expected = await dump_indexes(store.redis)
    # As a store of an older version: no index at all, and no first_seen in the state.
    for key in await store.redis.keys("cl:ix:*"):
        await store.redis.delete(key)
    core = orjson.loads(await store.redis.hget(store.call_key("CA-legacy-3"), "s"))
    del core["first_seen"]
    await store.redis.hset(store.call_key("CA-legacy-3"), "s", orjson.dumps(core))
    assert await reindex(store, settings) == (3, 3)
    assert await dump_indexes(store.redis) == expected
    assert await reindex(store, settings) == (3, 0)  # current entries are left alone


async def test_the_shard_merge_is_the_same_whatever_the_read_sizes(store: Store, settings: Settings) -> None:
    from contextlib import aclosing

    from call_ledger.core.indexes import list_key

    events: list[CallEvent] = []
    for i in range(60):  # ties on the same microsecond too
        events += call(f"CA-merge-{i}", BASE_US + (i // 4))
    await load(store, settings, events)
    indexes = IndexStore(store.redis)

    async def order(**sizes: Any) -> list[str]:
        async with aclosing(indexes.iterate(list_key("*"), **sizes)) as items:
            return [item.member async for item in items]

    everything = await order(batch=1000)
    assert len(everything) == 60
    key = await store.redis.get(store.ids_key)
    status_us = [e.occurred_us for e in events if e.event_id.endswith("-s")]  # the n-th call got the n-th id
    assert everything == sorted(everything, key=lambda m: (
        status_us[counter_of(key, int(m)) - 1], int(m)), reverse=True)
    for sizes in ({"first": 1, "batch": 1}, {"first": 2, "batch": 3}, {"first": 50, "batch": 1}):
        assert await order(**sizes) == everything, sizes


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00Z", "0999-06-01T12:00:00Z", "9999-12-31T23:59:59Z"])
def test_calls_at_the_edges_of_the_calendar_get_day_and_week_buckets(at: str) -> None:
    """strftime("%Y") writes year 1 as "1": a bucket name must stay YYYY-MM-DD (found by the fuzzer)."""
    from call_ledger.core.indexes import day_of, week_of
    from call_ledger.core.instants import parse_iso

    day = day_of(parse_iso(at).us)
    assert day == at[:10]
    week = week_of(day)
    assert len(week) == 10 and week <= day


@pytest.mark.parametrize("poisoned", [False, True])
async def test_delta_updates_give_the_index_a_fresh_build_gives(
        store: Store, settings: Settings, poisoned: bool) -> None:
    """A worker sends a call's next index update as a delta from the entry it wrote last (index.lua);
    a base version that is not the one indexed is answered with the entry indexed, and the delta
    derived from it is sent again."""
    rng = random.Random(5)
    events = random_calls(rng, 20)
    consumer = Consumer(store, settings.model_copy(update={"batch_size": 3}), Metrics())
    sent: list[IndexWrite] = []
    write = consumer.indexes.write

    async def spy(writes: list[IndexWrite]) -> list[bool]:
        if poisoned:  # every remembered version one behind what the shard holds: never the base
            for sid in consumer.indexed.keys():
                version, entry = consumer.indexed.peek(sid) or (0, None)
                if entry is not None:
                    consumer.indexed.remember(sid, version - 1, entry)
        sent.extend(writes)
        return await write(writes)

    answered = 0  # writes the script answered with the entry it holds (their base was not the one indexed)
    run = consumer.indexes._run

    async def counted(writes: list[IndexWrite]) -> list[Any]:
        nonlocal answered
        answers = await run(writes)
        answered += sum(isinstance(answer, list) for answer in answers)
        return answers

    consumer.indexes.write = spy  # type: ignore[method-assign]
    consumer.indexes._run = counted  # type: ignore[method-assign]
    for e in sorted(events, key=lambda e: rng.random()):
        await store.append(e.model_dump_json().encode())
    await consumer.run_burst()
    assert sum(1 for w in sent if w.base) > 10  # the fast path was offered, many times
    # One worker: its bases (what it indexed, or what the batch in flight indexes) are always the version
    # indexed; poisoned, the calls not in the batch in flight are answered and resent.
    assert (answered > 0) == poisoned, answered
    sids = sorted({e.call_sid for e in events})
    assert await dump_indexes(store.redis) == await rebuilt(store, settings, sids)


# -- the entries' bytes: exactly those of the code they replaced (tests/support/indexes_reference.py) ------

_NAMES = st.one_of(st.none(), st.sampled_from(["A", "ServiceBot", "50% off", 'say "hi"\\', "n" * 129]),
                   st.text(max_size=40), st.text(min_size=129, max_size=300))
_DAYS_US = st.one_of(st.sampled_from([BASE_US, BASE_US + 86_400_000_000, 0, -1]),
                     st.integers(-(2**62), 2**62))
_AMOUNTS = st.one_of(st.none(), st.sampled_from([0, 1, 10**9, 10**9 + 1, 3 * 10**9, 999_999_999]),
                     st.integers(-(10**12), 10**20))
_ENTRY_FIELDS_NAMES = ("call_sid", "record_id", "list_us", "organization_id", "assistant_id", "assistant_name",
                       "status", "duration", "total_cost", "to_phone_number", "customer_phone_number")
_ENTRY_FIELDS = st.fixed_dictionaries({
    "call_sid": st.one_of(st.just("CA-p"), st.text(min_size=1, max_size=20)),
    "record_id": st.sampled_from([1, 2**53 - 1]),
    "list_us": _DAYS_US,
    "organization_id": st.one_of(st.none(), st.sampled_from([7, 8]), st.integers(1, 2**63 - 1)),
    "assistant_id": st.one_of(st.sampled_from([0, 1, 12]), st.integers(0, 2**63 - 1)),
    "assistant_name": _NAMES,
    "status": st.sampled_from(sorted(ALL_STATUSES)),
    "duration": st.one_of(st.none(), st.sampled_from([0, 54]), st.integers(0, 10**7)),
    "total_cost": _AMOUNTS,
    "to_phone_number": st.one_of(st.just("+15551234567"), st.text(max_size=20)),
    "customer_phone_number": st.one_of(st.just("+15559876543"), st.text(max_size=20)),
})


def _ops(delta: bytes | None) -> tuple[set[str], set[str], dict[tuple[str, str], int]]:
    """A delta as what it does: the memberships left, those joined, each field's change."""
    assert delta is not None
    left, joined, changes = orjson.loads(delta)
    return set(left), set(joined), {(key, name): int(d) for key, name, d in changes}


def _both(fields: dict[str, Any]) -> tuple[IndexEntry, reference.IndexEntry]:
    return IndexEntry(**fields), reference.IndexEntry(**fields)


@hsettings(max_examples=400, deadline=None)
@given(old=_ENTRY_FIELDS, changed=_ENTRY_FIELDS, which=st.sets(st.sampled_from(_ENTRY_FIELDS_NAMES)),
       more=st.tuples(st.sampled_from([0, 1, -3]), st.sampled_from([0, 5, -(10**9), 10**9 + 7, 2 * 10**9])))
def test_entries_and_deltas_are_the_bytes_the_reference_gives(
        old: dict[str, Any], changed: dict[str, Any], which: set[str], more: tuple[int, int]) -> None:
    """Two versions of a call's entry (the second has some of the first's fields changed, or
    only its duration and cost moved): encodings, memberships, increments and the delta from the
    first (whole, and as the basis the worker keeps) byte for byte those of the reference, same
    shape or not."""
    new = {**old, **{name: changed[name] for name in which}}
    for name, by in zip(("duration", "total_cost"), more, strict=True):
        if new[name] is not None:
            new[name] += by
    entry, expected = _both(new)
    before, before_expected = _both(old)
    assert entry.encode() == expected.encode()
    assert before.encode() == before_expected.encode()
    assert entry.encode(payload_only=True) == expected.encode(payload_only=True)
    assert entry.creation() == expected.creation()
    assert entry.memberships() == expected.memberships()
    assert entry.increments() == expected.increments()
    assert entry == IndexEntry(**new) and hash(entry) == hash(IndexEntry(**new))
    assert entry_delta(before, entry) == reference.entry_delta(before_expected, expected)
    assert entry_delta(IndexBasis(before), entry) == reference.entry_delta(
        reference.IndexBasis(before_expected), expected)
    other = before.record_id != entry.record_id  # no delta then
    if before.shape_key != entry.shape_key and not other:  # the fallback, were some fields ever not templated
        assert _delta_by_field(before.memberships(), _increments(before.increments()), entry,
                               rescored=before.list_us != entry.list_us) == reference.entry_delta(
                                   before_expected, expected)
    # What a writer without a basis derives from the entry a shard holds, in either form, is the same delta.
    if not other:
        for stored in (before.encode(), before.encode(payload_only=True)):
            assert _ops(delta_from_stored(stored, before.member, repr(float(before.list_us)), entry)) == _ops(
                reference.entry_delta(before_expected, expected)), stored


@hsettings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_index_entry_of_folded_states_is_the_reference_entry(seed: int) -> None:
    """Entries of states folded from events, at every version of each call, as the reference
    derives them, with the same deltas between consecutive versions."""
    rng = random.Random(seed)
    settings = make_settings()
    events = random_calls(rng, 6)
    rng.shuffle(events)
    states: dict[str, CallState] = {}
    last: dict[str, tuple[IndexEntry, reference.IndexEntry]] = {}
    for e in events:
        state = states.setdefault(e.call_sid, CallState())
        try:
            apply_event(state, e, settings.policy)
        except Unapplicable:
            continue
        fix_estimate(state, settings.policy)
        record = render_record(e.call_sid, 3, state, settings.policy)
        entry = index_entry(e.call_sid, 3, state, settings.policy, record)
        expected = reference.index_entry(e.call_sid, 3, state, settings, record)
        assert index_entry(e.call_sid, 3, state, settings.policy) == entry  # the record rendered inside
        assert entry.encode() == expected.encode()
        if e.call_sid in last:
            before, before_expected = last[e.call_sid]
            assert entry_delta(IndexBasis(before), entry) == reference.entry_delta(
                reference.IndexBasis(before_expected), expected)
        last[e.call_sid] = entry, expected
