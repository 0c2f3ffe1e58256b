"""Stream shards (SPEC §12): events spread over K streams by call, every worker drains every
shard fairly, dead letters and lag per shard, and a change of K loses nothing."""

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from call_ledger.store import Store
from call_ledger.store.shards import SLOTS, all_shards, shard_index, shard_of_stream
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import assert_records_exact, call_events, usage


def test_a_calls_shard_is_stable_and_calls_spread_evenly() -> None:
    sids = [f"CA{i:032x}" for i in range(6000)]
    counts = Counter(shard_index(sid, 6) for sid in sids)
    assert set(counts) == set(range(6)) and min(counts.values()) > 800
    assert [shard_index(sid, 6) for sid in sids[:50]] == [shard_index(sid, 6) for sid in sids[:50]]
    assert {shard_index(sid, 1) for sid in sids} == {0}


@pytest.mark.parametrize("shards", [2, 3, 6, 16])
def test_shard_keys_spread_over_the_slots_so_an_evenly_split_cluster_spreads_them(shards: int) -> None:
    keys = all_shards("cl", shards)
    for i, shard in enumerate(keys):
        slots = {key_slot(k.encode()) for k in (shard.stream, shard.dead, shard.failures)}
        assert len(slots) == 1  # a shard's three keys live together
        assert i * SLOTS // shards <= slots.pop() < (i + 1) * SLOTS // shards
    # `redis-cli --cluster create` gives 3 masters a third of the slots each: 6 shards, 2 per master.
    thirds = Counter(key_slot(shard.stream.encode()) * 3 // SLOTS for shard in keys)
    assert len(thirds) == min(3, shards)
    assert [shard_of_stream("cl", shard.stream) for shard in keys] == keys


def test_one_shard_keeps_the_unsharded_key_names() -> None:
    [shard] = all_shards("cl", 1)
    assert (shard.name, shard.stream, shard.dead, shard.failures) == ("0", "cl:events", "cl:dead", "cl:failures")


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


def sharded(client: Any, shards: int) -> Store:
    return Store(client, stream_shards=shards)


@pytest.mark.real_redis
async def test_events_go_to_their_calls_shard_and_every_one_is_applied_exactly(client: Any) -> None:
    store = sharded(client, 4)
    rng = random.Random(7)
    events = [e for i in range(24) for e in call_events(f"CA{i:032x}", rng, usages=5)]
    rng.shuffle(events)
    for event in events:
        await store.append(event.model_dump_json().encode(), event.call_sid)
    lengths = {shard.name: await client.xlen(shard.stream) for shard in store.shards}
    assert all(n > 0 for n in lengths.values()) and sum(lengths.values()) == len(events)
    for shard in store.shards:  # each call's events sit in its own shard only
        sids = {e.call_sid for e in events if store.shard_for(e.call_sid) == shard}
        assert all(store.shard_for(sid).stream == shard.stream for sid in sids)
    consumer = Consumer(store, make_settings(stream_shards=4, batch_size=50), Metrics())
    assert await consumer.run_burst() == len(events)
    assert await assert_records_exact(store, events, consumer.settings) == len({(e.call_sid, e.key) for e in events})
    await consumer.maintain()
    assert await store.shard_stats() == {shard.name: (0, 0) for shard in store.shards}
    gauges = {s.labels["shard"]: s.value for m in consumer.metrics.registry.collect()
              if m.name == "ledger_consumer_shard_lag" for s in m.samples}
    assert gauges == {shard.name: 0.0 for shard in store.shards}


@pytest.mark.real_redis
async def test_a_busy_shard_does_not_starve_the_others(client: Any) -> None:
    store = sharded(client, 2)
    busy, quiet = (next(sid for sid in (f"CA-fair-{i}" for i in range(100)) if store.shard_for(sid) == shard)
                   for shard in store.shards)
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd(store.shard_for(busy).stream, {"e": usage(busy, f"b{i}", i, "llm", 1).model_dump_json()})
    await pipe.execute()
    await store.append(usage(quiet, "q0", 0, "llm", 1).model_dump_json().encode(), quiet)
    await store.ensure_group()
    batch = await store.read_new("fair", 100, block_ms=None)
    streams = Counter(entry.stream for entry in batch)
    assert streams[store.shard_for(quiet).stream] == 1  # read in the very first batch
    assert streams[store.shard_for(busy).stream] <= 100


@pytest.mark.real_redis
async def test_changing_the_shard_count_strands_nothing(client: Any) -> None:
    """Half of each call's events written with K=1, the rest with K=3: a K=3 worker drains both."""
    rng = random.Random(11)
    events = [e for i in range(12) for e in call_events(f"CA-k-{i}", rng, usages=6)]
    old, new = sharded(client, 1), sharded(client, 3)
    await old.register_shards()  # what the K=1 processes did when they started
    for n, event in enumerate(events):
        await (old if n % 2 else new).append(event.model_dump_json().encode(), event.call_sid)
    assert await client.xlen("cl:events") == len(events) // 2
    consumer = Consumer(new, make_settings(stream_shards=3), Metrics())
    assert await consumer.run_burst() == len(events)
    await assert_records_exact(new, events, consumer.settings)
    assert set(await new.shard_stats()) == {"0", "0of3", "1of3", "2of3"}
    assert await new.group_stats() == (0, 0)


@pytest.mark.real_redis
async def test_dead_letters_are_kept_per_shard_listed_together_and_replayed(client: Any) -> None:
    store = sharded(client, 3)
    sids = [f"CA-dead-{i}" for i in range(9)]
    for sid in sids:  # a EUR cost on a USD ledger without a rate: unapplicable
        await store.append(usage(sid, f"{sid}-eur", 0, "llm", 5, currency="EUR").model_dump_json().encode(), sid)
    consumer = Consumer(store, make_settings(stream_shards=3, max_deliveries=1), Metrics())
    await consumer.run_burst()
    rows = await store.dead_letters()
    assert len(rows) == 9
    assert {row["shard"] for row in rows} == {shard.name for shard in store.shards if any(
        store.shard_for(sid) == shard for sid in sids)}
    assert all(row["id"].startswith(row["shard"] + "/") for row in rows)
    assert [await client.xlen(shard.dead) for shard in store.shards] == [
        sum(store.shard_for(sid) == shard for sid in sids) for shard in store.shards]
    fixed = Consumer(store, make_settings(stream_shards=3, fx_rates="EUR=1.5"), Metrics())
    assert len(await store.replay_dead([rows[0]["id"]])) == 1
    assert await fixed.run_burst() == 1
    assert len(await store.dead_letters()) == 8
    assert len(await store.replay_dead()) == 8
    assert await fixed.run_burst() == 8
    assert await store.dead_letters() == []
    for sid in sids:
        found = await store.get_call(sid)
        assert found is not None and found[1].costs == {"llm": 8}  # 5 nano times 1.5, half-even
