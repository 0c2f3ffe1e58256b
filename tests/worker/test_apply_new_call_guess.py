"""Workers racing on brand-new calls, each guessing the calls it does not know are new
(worker/apply.py NewCallGuess), with redeliveries, tiny or no caches, journal on and off: every
record stays exact, nothing is left pending or dead-lettered, and wrong guesses happen."""

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from call_ledger.core.members import key_of
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import assert_records_exact, call_events, with_duplicates


async def _race(url: str, seed: int, journal: str, cache: int) -> None:
    rng = random.Random(seed)
    prefix = f"ra{seed}{journal}{cache}"
    feeder = Store(aioredis.Redis.from_url(url), prefix)
    await feeder.ensure_group()
    settings = make_settings(journal=journal)
    events = [e for i in range(40) for e in call_events(f"CR{seed}-{i}", rng, 3)]
    payloads = with_duplicates(events, rng, share=0.4)
    consumers = [Consumer(Store(aioredis.Redis.from_url(url), prefix),
                          make_settings(journal=journal, worker_cache_bytes=cache, batch_size=rng.choice([1, 3, 7]),
                                        claim_idle_ms=200, apply_linger_ms=0, consumer_name=f"c{k}"), Metrics())
                 for k in range(4)]
    stop = asyncio.Event()

    async def run(consumer: Consumer) -> None:
        while not stop.is_set():
            if not await consumer.step(block_ms=5):
                await asyncio.sleep(0.001)
        await consumer.settled()

    tasks = [asyncio.create_task(run(c)) for c in consumers]
    for i in range(0, len(payloads), 17):
        for payload in payloads[i:i + 17]:
            await feeder.append(payload)
        await asyncio.sleep(rng.random() * 0.01)
    for _ in range(600):
        await asyncio.sleep(0.05)
        pending = (await feeder.redis.xpending(feeder.stream, "ledger"))["pending"]
        if pending == 0 and (await feeder.redis.xinfo_groups(feeder.stream))[0].get("lag", 1) == 0:
            break
    stop.set()
    await asyncio.gather(*tasks)

    async def order_keys(sid: str) -> set[str]:  # every applied event, journal on or off
        return {key_of(k.decode(), sid) for k in await feeder.redis.zrange(feeder.order_key(sid), 0, -1)}

    feeder.applied_keys = order_keys  # type: ignore[method-assign]
    await assert_records_exact(feeder, events, settings)
    assert (await feeder.redis.xpending(feeder.stream, "ledger"))["pending"] == 0
    assert await feeder.redis.xlen(f"{prefix}:dead") == 0
    assert any(c.guess.fail_rate > 0 for c in consumers)  # guesses were made, and some were wrong
    await feeder.redis.aclose()
    for consumer in consumers:
        await consumer.store.redis.aclose()


@pytest.mark.real_redis
@pytest.mark.parametrize(("journal", "cache"), [("on", 0), ("off", 3000), ("on", 32 << 20)])
async def test_racing_consumers_guessing_new_calls_keep_records_exact(redis_server: RedisServer, journal: str,
                                                                      cache: int) -> None:
    await _race(redis_server.url, 7, journal, cache)
