"""Randomized runs of two or three workers on one stream with faults (tests/support/fault_harness.py):
fakeredis for many seeds; a real redis-server with the workers running concurrently, and with
redis-server restarts, for a few."""

import os
import random
from pathlib import Path

import fakeredis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tests.support.fault_harness import check, drive
from tests.support.redis_server import RedisServer

EXAMPLES = int(os.environ.get("FAULT_EXAMPLES", "40"))
# The faults drop connections mid-command and cancel workers mid-batch: redis-py leaves those
# sockets to the garbage collector, which warns. The product's outcome is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@hsettings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
async def test_two_workers_with_faults_fakeredis(seed: int) -> None:
    rng = random.Random(seed)
    server = fakeredis.FakeServer()
    clients = [fakeredis.FakeAsyncRedis(server=server) for _ in range(3)]
    out = await drive(rng, clients[:2], clients[2], calls=rng.randint(1, 8), replay=rng.random() < 0.3)
    await check(out["settings"], out["events"], out["store"])
    for c in clients:
        await c.aclose()


@pytest.mark.parametrize("seed", range(int(os.environ.get("FAULT_REAL_SEEDS", "6"))))
async def test_two_workers_with_faults_real_redis_concurrent(redis_server: RedisServer, seed: int) -> None:
    rng = random.Random(seed)
    await aioredis.Redis.from_url(redis_server.url).flushall()
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(4)]
    out = await drive(rng, clients[:3], clients[3], calls=rng.randint(2, 10), workers=3, concurrent=True,
                      flush_scripts=True, replay=seed % 2 == 1)
    await check(out["settings"], out["events"], out["store"])
    for c in clients:
        await c.aclose()


@pytest.mark.parametrize("seed", range(int(os.environ.get("FAULT_RESTART_SEEDS", "4"))))
async def test_two_workers_with_faults_and_redis_restarts(tmp_path: Path, seed: int) -> None:
    """The same with redis-server (AOF, appendfsync always) restarted between batches."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    rng = random.Random(1000 + seed)
    retry = {"retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 5), "retry_on_error": [RedisConnectionError]}
    clients = [aioredis.Redis.from_url(server.url, **retry) for _ in range(4)]

    def restart() -> None:
        server.stop()
        server.start()

    try:
        out = await drive(rng, clients[:3], clients[3], calls=rng.randint(2, 10), workers=3, concurrent=True,
                          replay=seed % 2 == 1, restart=restart)
        await check(out["settings"], out["events"], out["store"])
    finally:
        for c in clients:
            await c.aclose()
        server.stop()
