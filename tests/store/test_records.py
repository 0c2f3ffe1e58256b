"""The worker against a real redis-server: the Lua commit under contention, the consumer
group, taking over a dead consumer's entries, dead-lettering and replay, retention, and
Redis going away."""

import asyncio
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.events import CallEvent
from call_ledger.core.rules import render_record
from call_ledger.settings import Settings
from call_ledger.store import GROUP, CommitReply, CommitWrite, Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.guarantees import Guarantees
from tests.support.polling import until
from tests.support.redis_server import RedisServer, free_port
from tests.support.service import environment, start
from tests.support.settings import PLATFORM_SECRET, make_settings
from tests.support.workers import (
    assert_records_exact,
    call_events,
    make_event,
    usage,
    with_duplicates,
)

pytestmark = pytest.mark.real_redis

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "tests" / "support" / "workers.py"
S = 1_000_000  # microseconds
T = TypeVar("T")


class CountingStore(Store):
    """The real Store, counting the commits the Lua script refused (the call moved on meanwhile)."""

    conflicts = 0

    async def commit(self, writes: list[CommitWrite]) -> list[CommitReply]:
        results = await super().commit(writes)
        CountingStore.conflicts += [reply.ok for reply in results].count(False)
        return results


class Ledger:
    """Stores and consumers on the test's redis-server, each with its own connection pool."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._stores: list[Store] = []

    def settings(self, **overrides: Any) -> Settings:
        return make_settings(redis_url=self.server.url, **overrides)

    def store(self, cls: type[Store] = Store) -> Store:
        settings = self.settings()
        store = cls(open_redis(settings), settings.key_prefix)
        self._stores.append(store)
        return store

    def consumer(self, name: str, cls: type[Store] = Store, **overrides: Any) -> Consumer:
        return Consumer(self.store(cls), self.settings(consumer_name=name, **overrides), Metrics())

    async def close(self) -> None:
        for store in self._stores:
            await store.close()


@pytest.fixture
async def ledger(redis_server: RedisServer) -> AsyncIterator[Ledger]:
    harness = Ledger(redis_server)
    yield harness
    await harness.close()


async def fill(store: Store, payloads: list[bytes]) -> None:
    """XADD the payloads in order, as intake's Store.append does, pipelined for speed."""
    for i in range(0, len(payloads), 2000):
        pipe = store.redis.pipeline(transaction=False)
        for payload in payloads[i:i + 2000]:
            pipe.xadd(store.stream, {"e": payload})
        await pipe.execute()


def counter(consumer: Consumer, name: str) -> float:
    return consumer.metrics.registry.get_sample_value(name, {"source": "platform"}) or 0.0


async def pending_by_consumer(store: Store) -> dict[str, int]:
    summary = await store.redis.xpending(store.stream, GROUP)
    return {_text(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def assert_nothing_pending(store: Store) -> None:
    assert await store.group_stats() == (0, 0)
    assert (await store.redis.xpending(store.stream, GROUP))["pending"] == 0


async def drain(consumers: list[Consumer], store: Store, deadline_s: float = 20.0) -> None:
    """Run the consumers concurrently until the group has nothing left, re-claiming what
    a lost compare-and-set left pending."""
    deadline = time.monotonic() + deadline_s
    await asyncio.gather(*(c.run_burst() for c in consumers))
    while await store.group_stats() != (0, 0):
        assert time.monotonic() < deadline, f"still pending: {await store.group_stats()}"
        await asyncio.gather(*(c.run_burst(claim_idle_ms=0) for c in consumers))


def child_env(**ledger_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_vars)
    return env


# -- the Lua commit and the consumer group ----------------------------------------------------

async def test_concurrent_consumers_on_shared_calls_give_the_single_process_records(ledger: Ledger) -> None:
    rng = random.Random(20261124)
    events = [e for i in range(36) for e in call_events(f"CA{i:032x}", rng, usages=75)]
    payloads = with_duplicates(events, rng)
    assert len(events) >= 3000 and len(payloads) > len(events)
    producer = ledger.store()
    await fill(producer, payloads)

    CountingStore.conflicts = 0
    consumers = [ledger.consumer(f"worker-{i}", CountingStore, batch_size=16) for i in range(4)]
    await drain(consumers, producer)

    await assert_records_exact(producer, events, ledger.settings())
    await assert_nothing_pending(producer)
    # The consumers really raced on the same calls: the script refused stale versions...
    assert CountingStore.conflicts > 0
    # ...and still each event was applied once in all, every other copy seen as a duplicate.
    assert sum(counter(c, "ledger_events_applied_total") for c in consumers) == len(events)
    assert sum(counter(c, "ledger_events_duplicate_total") for c in consumers) >= len(payloads) - len(events)


async def test_one_batch_of_thousands_of_events_for_one_call_is_committed_whole(ledger: Ledger) -> None:
    sid = "CA-one-big-call"
    events = [make_event(sid, "e-ongoing", 0, status="ongoing")]
    events += [usage(sid, f"e{i:05d}", i, "llm", 100_000_000 + i) for i in range(6000)]
    producer = ledger.store()
    await fill(producer, [e.model_dump_json().encode() for e in events])

    consumer = ledger.consumer("bulk", batch_size=10_000)  # the largest LEDGER_BATCH_SIZE allowed
    assert await consumer.run_burst() == len(events)

    await assert_nothing_pending(producer)
    await assert_records_exact(producer, events, ledger.settings())


async def test_two_consumers_in_the_group_share_the_stream_and_acknowledge_everything(ledger: Ledger) -> None:
    rng = random.Random(7)
    events = [e for i in range(10) for e in call_events(f"CA-share-{i}", rng, usages=30)]
    payloads = with_duplicates(events, rng)
    producer = ledger.store()
    await fill(producer, payloads)

    first, second = ledger.consumer("first", batch_size=20), ledger.consumer("second", batch_size=20)
    await drain([first, second], producer)

    applied = [counter(c, "ledger_events_applied_total") for c in (first, second)]
    assert all(n > 0 for n in applied), applied
    assert sum(applied) == len(events)
    consumers = {_text(c["name"]): c for c in await producer.redis.xinfo_consumers(producer.stream, GROUP)}
    assert set(consumers) == {"first", "second"}
    assert all(int(c["pending"]) == 0 for c in consumers.values())
    await assert_nothing_pending(producer)
    await assert_records_exact(producer, events, ledger.settings())


# -- a consumer that dies ---------------------------------------------------------------------

async def test_entries_held_by_a_killed_consumer_are_claimed_and_applied_by_a_live_one(
    ledger: Ledger,
) -> None:
    rng = random.Random(11)
    events = [e for i in range(5) for e in call_events(f"CA-doomed-{i}", rng, usages=20)]
    payloads = with_duplicates(events, rng)
    producer = ledger.store()
    await fill(producer, payloads)
    await producer.ensure_group()

    doomed = start("doomed", environment(inherit_ledger=True),
                   command=[sys.executable, str(WORKERS), "doomed", ledger.server.url, str(len(payloads))])
    try:
        async def holds_everything() -> bool:
            assert doomed.alive(), doomed.errors()
            return (await pending_by_consumer(producer)).get("doomed") == len(payloads)

        await until(holds_everything, 15, "the doomed consumer to read the stream")
    finally:
        doomed.kill()
    # Everything was delivered to the dead consumer: nothing is new, all of it is pending.
    assert await producer.group_stats() == (0, len(payloads))

    survivor = ledger.consumer("survivor", claim_idle_ms=200)
    deadline = time.monotonic() + 15
    while await producer.group_stats() != (0, 0):
        assert time.monotonic() < deadline, f"not taken over: {await producer.group_stats()}"
        await survivor.step(block_ms=20)

    await assert_records_exact(producer, events, ledger.settings())
    await assert_nothing_pending(producer)
    assert counter(survivor, "ledger_events_applied_total") == len(events)
    assert await pending_by_consumer(producer) == {}


async def test_a_survivor_finishes_exactly_what_a_sigkilled_worker_process_left(ledger: Ledger) -> None:
    rng = random.Random(13)
    events = [e for i in range(30) for e in call_events(f"CA-victim-{i:02d}", rng, usages=250)]
    payloads = with_duplicates(events, rng, share=0.1)
    producer = ledger.store()
    await fill(producer, payloads)
    await producer.ensure_group()

    env = child_env(LEDGER_REDIS_URL=ledger.server.url, LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(free_port()),
                    LEDGER_PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET, LEDGER_CONSUMER_NAME="victim",
                    LEDGER_BATCH_SIZE="500", LEDGER_LOG_FORMAT="json")
    victim = start("worker", env, name="victim")
    try:
        # Kill it in the middle of its work: some batches acknowledged, one in hand.
        async def in_the_middle() -> bool:
            assert victim.alive(), victim.errors()
            lag, pending = await producer.group_stats()
            return bool(pending) and len(payloads) - lag - pending >= 1000

        await until(in_the_middle, 20, "the worker process to make progress", interval=0.005)
    finally:
        victim.kill()
    lag, pending = await producer.group_stats()
    assert lag > 0, "the worker finished before it was killed: make the stream larger"
    assert pending > 0, "the worker died holding no entries"

    survivor = ledger.consumer("survivor", claim_idle_ms=200, batch_size=1000)
    deadline = time.monotonic() + 20
    while await producer.group_stats() != (0, 0):
        assert time.monotonic() < deadline, f"not finished: {await producer.group_stats()}"
        await survivor.step(block_ms=20)

    await assert_records_exact(producer, events, ledger.settings())
    await assert_nothing_pending(producer)


# -- dead letters -----------------------------------------------------------------------------

def eur_to_usd(amount_nano: int, rate: str) -> int:
    return int((Decimal(amount_nano) * Decimal(rate)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


async def test_an_event_with_no_fx_rate_is_dead_lettered_after_max_deliveries_then_replayed_once(
    ledger: Ledger, guarantees: Guarantees,
) -> None:
    sid = "CA-dead-letter"
    eur = usage(sid, "e-eur", 30 * S, "tts", 12_345_678_901, currency="EUR")
    others = [
        usage(sid, "e-llm-1", 20 * S, "llm", 100_000_000),
        usage(sid, "e-llm-2", 40 * S, "llm", 200_000_000),
    ]
    others += [make_event(sid, "e-ongoing", 0, status="ongoing"),
               make_event(sid, "e-completed", 300 * S, status="completed", duration=300)]
    store = ledger.store()
    ids = {}
    for event in [others[0], eur, *others[1:]]:
        ids[event.event_id] = await store.append(event.model_dump_json().encode())
    eur_entry = ids["e-eur"]

    consumer = ledger.consumer("c1", max_deliveries=3)  # USD ledger, no LEDGER_FX_RATES
    usd = ledger.settings()
    assert await consumer.run_burst() == 5
    # The rest of the call and of the batch went through; the EUR cost waits, pending, with its reason.
    found = await store.get_call(sid)
    assert found is not None
    record = render_record(sid, found[0], found[1], usd.policy)
    assert (record["status"], record["llm_cost"], record["tts_cost"]) == ("completed", 300_000_000, None)
    assert await store.group_stats() == (0, 1)
    assert "EUR" in (await store.failure_reasons([eur_entry]))[eur_entry]

    for delivery in (2, 3):
        assert await store.dead_letters() == [], f"dead-lettered before delivery {delivery}"
        assert await consumer.run_burst(claim_idle_ms=0) == 1

    [dead] = await store.dead_letters()
    assert dead["original_id"] == eur_entry
    assert dead["deliveries"] == "3"
    assert "EUR" in dead["reason"] and "LEDGER_FX_RATES" in dead["reason"]
    assert CallEvent.model_validate_json(dead["e"]) == eur
    await assert_nothing_pending(store)
    assert await store.failure_reasons([eur_entry]) == {}
    assert await store.redis.xlen(store.stream) == 5  # acknowledged, not deleted

    # With a rate configured, replay applies it: multiplied, rounded half-even to nano-units.
    fixed = ledger.consumer("c2", fx_rates="EUR=1.08")
    moved = await store.replay_dead()
    assert [dead_id for dead_id, _ in moved] == [dead["id"]]
    assert await store.dead_letters() == []
    assert await fixed.run_burst() == 1
    tts = eur_to_usd(12_345_678_901, "1.08")
    assert tts == 13_333_333_213

    async def current() -> dict[str, Any]:
        found = await store.get_call(sid)
        assert found is not None
        return render_record(sid, found[0], found[1], fixed.settings.policy)

    record = await current()
    assert record["tts_cost"] == tts
    assert (record["llm_cost"], record["total_cost"]) == (300_000_000, tts + 300_000_000)
    await assert_nothing_pending(store)

    # The same dead letter listed (and replayed) twice changes nothing the second time.
    await store.redis.xadd(store.dead, {k: v for k, v in dead.items() if k != "id"})
    assert len(await store.replay_dead()) == 1
    assert await fixed.run_burst() == 1
    assert await current() == record
    assert int(await store.redis.hget(store.call_key(sid), "v")) == 5
    assert counter(fixed, "ledger_events_applied_total") == 1
    assert counter(fixed, "ledger_events_duplicate_total") == 1
    await assert_nothing_pending(store)
    stored_events = len(await store.applied_keys(sid))
    guarantees.record("poison event (no FX rate): dead-lettered after 3 deliveries, replayed twice once fixed",
                      sent=5, answered_2xx=5, applied=stored_events, duplicates_suppressed=1,
                      lost=5 - stored_events)


# -- retention --------------------------------------------------------------------------------

async def test_retention_trims_acknowledged_entries_but_never_pending_or_undelivered_ones(
    ledger: Ledger,
) -> None:
    sid = "CA-retention"
    events = [usage(sid, f"e{i:04d}", i * S, "llm", (i + 1) * 1_000_000) for i in range(604)]
    store = ledger.store()
    entry_ids = [await store.append(e.model_dump_json().encode()) for e in events[:600]]
    applier = ledger.consumer("applier", stream_retention=0, batch_size=1000)
    assert await applier.run_burst() == 600  # applied and acknowledged
    entry_ids += [await store.append(e.model_dump_json().encode()) for e in events[600:]]
    held = await store.read_new("gone", 2, block_ms=None)  # delivered, never acknowledged
    assert [e.entry_id for e in held] == entry_ids[600:602]  # and the last two never delivered
    assert await store.group_stats() == (2, 2)

    far_future = await store.now_ms() + 10 * 365 * 86_400_000
    trimmed = await store.trim(0, now_ms=far_future)
    left = [_text(entry_id) for entry_id, _ in await store.redis.xrange(store.stream)]
    assert left == entry_ids[trimmed:]  # oldest first, and only acknowledged ones
    assert trimmed <= 600
    # XTRIM MINID ~ drops whole stream nodes (at most stream-node-max-entries = 100 entries each).
    assert trimmed >= 600 - 100

    # What survived the trim is still there to be claimed and applied.
    finisher = ledger.consumer("finisher", stream_retention=0)
    assert await finisher.run_burst(claim_idle_ms=0) == 4
    await assert_nothing_pending(store)
    await assert_records_exact(store, events, ledger.settings())


# -- Redis going away -------------------------------------------------------------------------

async def test_store_reports_unavailable_while_redis_is_down_and_recovers_when_it_is_back(
    ledger: Ledger, redis_server: RedisServer
) -> None:
    store = ledger.store()
    raw = usage("CA-outage", "e1", 0, "llm", 1).model_dump_json().encode()
    await store.append(raw)

    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await store.append(raw)
    with pytest.raises(StoreUnavailable):
        await store.get_call("CA-outage")
    assert await store.ping() is False

    redis_server.start()  # same port, no persistence: the old data is gone
    entry_id = await store.append(raw)
    assert await store.ping() is True
    assert [_text(i) for i, _ in await store.redis.xrange(store.stream)] == [entry_id]


async def test_a_running_consumer_applies_again_after_redis_comes_back_empty(
    ledger: Ledger, redis_server: RedisServer
) -> None:
    store = ledger.store()
    consumer = ledger.consumer("long-running", claim_idle_ms=200)
    await consumer.start()
    try:
        before = usage("CA-before", "e1", 0, "llm", 100_000_000)
        await store.append(before.model_dump_json().encode())
        await wait_for_record(store, "CA-before", deadline_s=5)

        redis_server.stop()
        redis_server.start()  # no persistence: the stream and the consumer group are gone
        after = usage("CA-after", "e1", 0, "llm", 200_000_000)
        # A connection pooled before the restart may fail once (a 503 the sender retries).
        await until_available(lambda: store.append(after.model_dump_json().encode()))
        # SPEC §7: the worker keeps going through an outage; what is posted afterwards is applied.
        await wait_for_record(store, "CA-after", deadline_s=8)
        await assert_records_exact(store, [after], ledger.settings())
    finally:
        await consumer.stop()


async def until_available(operation: Callable[[], Awaitable[T]], deadline_s: float = 5.0) -> T:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await operation()
        except StoreUnavailable:
            assert time.monotonic() < deadline, "redis never came back"
            await asyncio.sleep(0.05)


async def wait_for_record(store: Store, sid: str, deadline_s: float) -> None:
    async def applied() -> bool:
        return await until_available(lambda: store.get_call(sid)) is not None

    await until(applied, deadline_s, f"{sid} to be applied", interval=0.05)
