"""A store moving to a later layout while its workers run (3: short members, core.members; 4: a call's core
as plain fields, core.plain): every event is applied once whichever form its first application wrote,
every record equals the reference fold, the journal reads back in both forms, and /events pages across them."""

import random
from typing import Any

import fakeredis
import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.core.members import short_member
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.index_dump import assert_indexes_exact
from tests.support.settings import AUTH, make_settings
from tests.support.workers import assert_records_exact, call_events


async def members(store: Store, sid: str) -> list[str]:
    return [member.decode() for member in await store.redis.zrange(store.order_key(sid), 0, -1)]


async def deliver(store: Store, consumer: Consumer, payloads: list[bytes]) -> None:
    for payload in payloads:
        await store.append(payload)
    await consumer.run_burst()


async def move(store: Store, consumer: Consumer, to: str = "3") -> None:
    """What `call-ledger layout --upgrade` does to the mark, then what the worker's maintenance learns."""
    await store.redis.set(store.keys.layout, to)
    await consumer.maintain()  # a later mark is taken once two maintenance ticks in a row read it
    await consumer.maintain()
    assert store.records.mark == to


async def test_events_applied_long_are_duplicates_after_the_move_and_new_ones_are_written_short(
        store: Store, consumer: Consumer, settings: Settings, client: Any) -> None:
    sid = "CA-move"
    events = call_events(sid, random.Random(7), usages=4)
    before, after = events[: len(events) // 2], events[len(events) // 2:]
    await store.redis.set(store.keys.layout, "2")  # a store the previous release wrote
    await store.check_layout()
    assert not store.records.short_members
    await deliver(store, consumer, [event.model_dump_json().encode() for event in before])
    assert await members(store, sid) and all(m.startswith("platform:") for m in await members(store, sid))

    await move(store, consumer)
    consumer.known.forget(sid)  # the redeliveries are then judged by Redis, not the worker's cache
    await deliver(store, consumer, [event.model_dump_json().encode() for event in events])  # all again, and the rest

    assert await assert_records_exact(store, events, settings) == len(events)
    found = set(await members(store, sid))
    assert found == {e.key for e in before} | {short_member(e.key, sid) for e in after}
    assert {short_member(e.key, sid) for e in after} == {f"0.{e.event_id[len(sid):]}" for e in after}
    assert await store.redis.xlen(store.dead) == 0
    # Registers and call_meta keys won after the move name their event by its short member; those
    # won before keep the long form (core.members.short_provenance): the record reads both.
    fields = await store.redis.hgetall(store.call_key(sid))
    provenance = {orjson.loads(value)[2] for name, value in fields.items() if name[:2] in (b"r:", b"m:")}
    assert provenance == {"platform", "0"}, provenance

    # /events, one event a page: every event once, in time order, across both forms of cursor.
    pages: list[dict[str, Any]] = []
    query = "limit=1"
    while True:
        response = await client.get(f"/api/v1/calls/sid/{sid}/events?{query}", headers=AUTH)
        assert response.status == 200, await response.text()
        pages.append(orjson.loads(await response.read()))
        if pages[-1]["next"] is None:
            break
        query = f"limit=1&after={pages[-1]['next']}"
    shown = [event for page in pages for event in page["events"]]
    expected = events  # in time order, ties by member
    assert shown == [orjson.loads(e.model_dump_json()) for e in sorted(  # as delivered, byte for byte
        expected, key=lambda e: (e.occurred_us, e.key if e in before else short_member(e.key, sid)))]


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), moved_after=st.floats(0, 1), lag=st.floats(0, 1), batch=st.integers(1, 40),
       cached=st.booleans(), layouts=st.sampled_from([("2", "3"), ("3", "4"), ("2", "4"), ("4", "5"), ("3", "5")]))
async def test_any_deliveries_around_the_move_apply_each_event_once(seed: int, moved_after: float, lag: float,
                                                                    batch: int, cached: bool,
                                                                    layouts: tuple[str, str]) -> None:
    """Events of several calls, each delivered one to three times, in any order and batches, taken by two
    workers in turn; the store moves at any point, and one worker learns it at once, the other only after
    `lag` of what is left (it writes the layout before meanwhile: the 5 s until its maintenance); each
    may or may not keep its cache across the move."""
    before, after = layouts
    settings = make_settings(batch_size=batch)
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    store, other = Store(redis, settings.key_prefix), Store(redis, settings.key_prefix)
    consumer, lagging = Consumer(store, settings, Metrics()), Consumer(other, settings, Metrics())
    rng = random.Random(seed)
    events = [e for n in range(4) for e in call_events(f"CA-p{n}", rng, usages=3)]
    payloads = [e.model_dump_json().encode() for e in events for _ in range(rng.choice((1, 1, 2, 3)))]
    rng.shuffle(payloads)
    cut = int(len(payloads) * moved_after)
    await store.redis.set(store.keys.layout, before)
    await store.check_layout()
    await other.check_layout()
    for i in range(0, cut, batch):
        await deliver(store, (consumer, lagging)[i // batch % 2], payloads[i:i + batch])
    await move(store, consumer, after)
    if not cached:
        consumer.known = type(consumer.known)(consumer.known.capacity_bytes)
    learned = cut + int((len(payloads) - cut) * lag)
    assert other.records.mark == before
    for i in range(cut, len(payloads), batch):
        if i >= learned and other.records.mark == before:
            await lagging.maintain()
            await lagging.maintain()
            assert other.records.mark == after
        await deliver(store, (consumer, lagging)[i // batch % 2], payloads[i:i + batch])
    assert await assert_records_exact(store, events, settings) == len(events)
    assert await store.redis.xlen(store.dead) == 0
    # The index is exact whichever form each entry was written in (layout 5: the payload alone), and by
    # whichever worker with whatever it remembered of the call.
    await assert_indexes_exact(store, settings, sorted({e.call_sid for e in events}))
    if after == "4" and other.records.mark == after:  # every call committed since is in plain fields
        for sid in {e.call_sid for e in events}:
            fields = await store.redis.hgetall(store.call_key(sid))
            assert b"s" not in fields or b"j" in fields, fields  # a core of layout 3 comes with its record
    await redis.aclose()


async def test_a_later_mark_is_taken_at_the_second_read_and_an_undone_one_never(store: Store,
                                                                                consumer: Consumer) -> None:
    """A move that found a late blocker puts the mark back within milliseconds (call_ledger.store.layout): a
    worker takes a later mark only when two of its reads in a row found it, so one read in that window
    writes nothing in the undone layout; an earlier mark (the undo) is taken at once."""
    await store.redis.set(store.keys.layout, "3")
    await store.check_layout()
    await store.redis.set(store.keys.layout, "4")  # the move sets the mark...
    await consumer.maintain()
    assert store.records.mark == "3"  # ...read once: not yet
    await store.redis.set(store.keys.layout, "3")  # ...and undoes it
    await consumer.maintain()
    await consumer.maintain()
    assert store.records.mark == "3"
    await store.redis.set(store.keys.layout, "4")  # moved for good
    await consumer.maintain()
    await consumer.maintain()
    assert store.records.mark == "4"
    await store.redis.set(store.keys.layout, "3")  # an undo reaches a worker that had taken it: at once
    await consumer.maintain()
    assert store.records.mark == "3"
