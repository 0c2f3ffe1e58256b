"""Shared fixtures: settings, a fresh fake Redis per test, the app, a burst-mode worker,
and a real redis-server on a free port for the tests that need one."""

import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from call_ledger.app import create_app
from call_ledger.settings import Settings
from call_ledger.store import Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.guarantees import GUARANTEE_COLUMNS, GUARANTEE_ROWS, Guarantees
from tests.support.provider_calls import Ledger, StartLedger
from tests.support.redis_server import RedisServer, require_redis
from tests.support.settings import make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def store(fake_redis: fakeredis.FakeAsyncRedis, settings: Settings) -> Store:
    return Store(fake_redis, settings.key_prefix)


@pytest.fixture
def consumer(store: Store, settings: Settings) -> Consumer:
    return Consumer(store, settings, Metrics())


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, store: Store) -> Any:
    """The whole service (intake + read API) on fake Redis, without the background loop."""
    return await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))


# -- whole provider calls (tests/support/provider_calls.py) ------------------------------------------

@pytest.fixture
async def start_ledger(aiohttp_client: Any) -> AsyncIterator[StartLedger]:
    """Start a fresh service (a fresh fake Redis each time) with `make_settings(**overrides)`."""
    redis_clients: list[fakeredis.FakeAsyncRedis] = []

    async def start(**overrides: Any) -> Ledger:
        settings = make_settings(**overrides)
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        redis_clients.append(redis)
        store = Store(redis, settings.key_prefix)
        # One permutation key for every fresh store, so that their (opaque) ids compare.
        await redis.set(store.ids_key, "fresh-store-key")
        client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
        return Ledger(client, Consumer(store, settings, Metrics()))

    yield start
    for redis in redis_clients:
        await redis.aclose()


# -- a real redis-server ----------------------------------------------------------------------

@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh real redis-server for this test."""
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def real_store(redis_server: RedisServer) -> AsyncIterator[Store]:
    """A Store on this test's own real redis-server, through the service's own client."""
    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    yield store
    await store.close()


# -- the guarantees table: every loss/duplication scenario reports its counts ------------------

@pytest.fixture
def guarantees() -> Guarantees:
    return Guarantees()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the table (and write it to $LEDGER_GUARANTEES_REPORT as JSON when set)."""
    if not GUARANTEE_ROWS:
        return
    terminalreporter.section("guarantees")
    widths = [max(len(c), *(len(str(r[c])) for r in GUARANTEE_ROWS)) for c in GUARANTEE_COLUMNS]
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(GUARANTEE_COLUMNS, widths, strict=True)))
    for row in GUARANTEE_ROWS:
        terminalreporter.write_line("  ".join(str(row[c]).ljust(w) for c, w in zip(GUARANTEE_COLUMNS, widths,
                                                                                    strict=True)))
    report = os.environ.get("LEDGER_GUARANTEES_REPORT")
    if report:
        Path(report).write_text(json.dumps(GUARANTEE_ROWS, indent=2))
