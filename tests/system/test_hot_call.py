"""One call with 20,000 events, and one with a 15 KiB call_meta, on a real redis-server (SPEC §8):
what a lookup, an /events page and a commit cost stays bounded whatever the call's size.

Write sizes are measured where Redis writes them: the growth of the append-only file (Redis
propagates a script's effects, so the AOF holds exactly the commands a commit ran). Redis
time is read from INFO commandstats and compared with the same request on a small call, so
the check is a ratio on one machine, not a wall-clock threshold.
"""

import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer, require_redis
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage

pytestmark = pytest.mark.real_redis

HOT = "CA-hot-20000"
# What a commit writes, plus the call's index update (SPEC §9): its entry (a few hundred bytes,
# whatever the call's size) and the rollup counters that changed. Constant, like the commit's.
COMMIT_WRITE_BOUND = 2048 + 1024
SMALL = "CA-small-100"


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory), appendonly=True, appendfsync="always")
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def store(aof_server: RedisServer) -> AsyncIterator[Store]:
    client = aioredis.Redis.from_url(aof_server.url)
    yield Store(client)
    await client.aclose()


def aof_bytes(server: RedisServer) -> int:
    return sum(f.stat().st_size for f in (server.dir / "appendonlydir").iterdir())


async def fill(store: Store, consumer: Consumer, sid: str, count: int) -> None:
    pipe = store.redis.pipeline(transaction=False)
    for i in range(count):
        event = usage(sid, f"u{i:05d}", i * 1_000, "llm", 1_000 + i)
        pipe.xadd(store.stream, {"e": event.model_dump_json()})
    await pipe.execute()
    await consumer.run_burst()


async def redis_usec(store: Store, command: str, request: Any, times: int = 20) -> float:
    """Redis's own time per call of `command` while `request` runs `times` times."""
    await store.redis.config_resetstat()
    for _ in range(times):
        await request()
    stats = await store.redis.info("commandstats")
    return float(stats[f"cmdstat_{command}"]["usec"]) / times


async def test_a_hot_call_costs_a_bounded_lookup_page_and_commit(store: Store, aof_server: RedisServer) -> None:
    settings = make_settings(redis_url=aof_server.url, max_events_per_call=20_001, batch_size=500)
    consumer = Consumer(store, settings, Metrics())
    await fill(store, consumer, HOT, 20_000)
    await fill(store, consumer, SMALL, 100)
    assert await store.event_count(HOT) == 20_000

    # The lookup reads one small hash, the same size as a small call's.
    hot_hash = await store.redis.memory_usage(store.call_key(HOT))
    small_hash = await store.redis.memory_usage(store.call_key(SMALL))
    assert hot_hash < 1024 and hot_hash <= small_hash + 64, (hot_hash, small_hash)
    found = await store.get_call(HOT)
    assert found is not None and found[1].costs["llm"] == sum(1_000 + i for i in range(20_000))

    # An /events page reads `limit` events, not the call: its bytes are the page's.
    hot_page = await store.events_page(HOT, "", 100)
    assert hot_page is not None
    events, after = hot_page
    assert len(events) == 100 and after is not None
    assert sum(len(e) for e in events) < 100 * 600
    deep = await store.events_page(HOT, after, 100)  # a later page costs the same
    assert deep is not None and orjson.loads(deep[0][0])["event_id"] == "u00100"
    hot_us = await redis_usec(store, "evalsha", lambda: store.events_page(HOT, after, 100))
    small_us = await redis_usec(store, "evalsha", lambda: store.events_page(SMALL, "", 100))
    print(f"\n/events page of 100: Redis {hot_us:.0f} µs on a 20,000-event call, {small_us:.0f} µs on a 100-event call")
    assert hot_us < 5 * small_us + 200, (hot_us, small_us)
    hget_hot = await redis_usec(store, "hgetall", lambda: store.get_call(HOT))
    hget_small = await redis_usec(store, "hgetall", lambda: store.get_call(SMALL))
    assert hget_hot < 5 * hget_small + 50, (hget_hot, hget_small)

    # One more event on the hot call: what the commit writes is that event, not the call.
    before = aof_bytes(aof_server)
    await store.append(usage(HOT, "one-more", 30_000_000, "tts", 5).model_dump_json().encode())
    await consumer.run_burst()
    written = aof_bytes(aof_server) - before
    assert await store.event_count(HOT) == 20_001
    print(f"AOF growth for one event (stream entry, commit, ack) on a 20,000-event call: {written} bytes")
    assert written < COMMIT_WRITE_BOUND, written


async def test_a_commit_after_a_big_call_meta_writes_only_what_changed(store: Store, aof_server: RedisServer) -> None:
    consumer = Consumer(store, make_settings(redis_url=aof_server.url), Metrics())
    meta = {f"key{i:03d}": "v" * 60 for i in range(200)}  # about 15 KiB of call_meta
    await store.append(make_event("CA-meta-big", "meta", 0, call_meta=meta).model_dump_json().encode())
    await consumer.run_burst()
    growth = []
    for i in range(20):
        before = aof_bytes(aof_server)
        await store.append(usage("CA-meta-big", f"u{i}", 1_000 + i, "llm", 1).model_dump_json().encode())
        await consumer.run_burst()
        growth.append(aof_bytes(aof_server) - before)
    print(f"\nAOF growth per small event (stream entry, commit, ack) on a call with 15 KiB of call_meta: {growth}")
    assert max(growth) < COMMIT_WRITE_BOUND, growth
    # ... and a later call_meta change writes that key only.
    before = aof_bytes(aof_server)
    await store.append(make_event("CA-meta-big", "meta2", 10, call_meta={"key007": "new"}).model_dump_json().encode())
    await consumer.run_burst()
    assert aof_bytes(aof_server) - before < COMMIT_WRITE_BOUND  # the key, the record without call_meta, the index
    found = await store.get_call("CA-meta-big")
    assert found is not None and found[1].meta["key007"][3] == "new" and len(found[1].meta) == 200


def test_a_process_on_data_of_an_older_layout_stops_with_one_line(redis_server: RedisServer) -> None:
    import redis

    redis.Redis.from_url(redis_server.url).set("cl:ids", 12)  # what an older version leaves
    result = subprocess.run([sys.executable, "-m", "call_ledger.cli", "api"], capture_output=True, text=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin", "LEDGER_REDIS_URL": redis_server.url,
                                 "LEDGER_PORT": "0", "LEDGER_LOG_FORMAT": "json"},
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "call-ledger: Redis holds call-ledger data in an older key layout under prefix 'cl': delete those keys "
        "(see README, Redis layout) or set another LEDGER_KEY_PREFIX"]
    assert "Traceback" not in result.stderr
