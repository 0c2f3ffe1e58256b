"""A rolling upgrade: workers of the previous release and of this one consume one stream and write
one Redis, and every event is applied exactly once; each reads what the other wrote (SPEC §13).

The previous release runs from this repository's history (tests/support/previous_release.py), as
a real `call-ledger worker` process beside this release's."""

import asyncio
import contextlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from call_ledger.store import Store
from tests.support.paths import ROOT
from tests.support.previous_release import PREVIOUS_RELEASE, extract_previous_release
from tests.support.redis_server import RedisServer, free_port
from tests.support.service import Service, environment, ledger_env, start
from tests.support.settings import make_settings
from tests.support.streams import drained, fill
from tests.support.workers import assert_records_exact, call_events, with_duplicates

pytestmark = pytest.mark.real_redis


def worker(release: Path, name: str, redis_server: RedisServer, tmp_path: Path) -> Service:
    """`call-ledger worker` of the release whose package is under `release`, in small batches so the
    two workers interleave on every call."""
    env = environment({**ledger_env(), "PYTHONPATH": str(release), "LEDGER_REDIS_URL": redis_server.url,
                       "LEDGER_CONSUMER_NAME": name, "LEDGER_BATCH_SIZE": "10", "LEDGER_CLAIM_IDLE_MS": "300"})
    return start("worker", env, log_dir=tmp_path, name=name, cwd=release, port=free_port(),
                 command=[sys.executable, "-m", "call_ledger.cli", "worker"], merge_stderr=True)


def applied_by(service: Service) -> int:
    return sum(outcomes.count("applied") for outcomes in service.outcomes().values())


async def test_the_previous_release_and_this_one_side_by_side_apply_every_event_exactly_once(
        redis_server: RedisServer, tmp_path: Path) -> None:
    previous = extract_previous_release(tmp_path / "previous")
    if previous is None:
        pytest.skip(f"this checkout's history lacks the previous release {PREVIOUS_RELEASE[:7]} (a shallow clone)")
    settings = make_settings(redis_url=redis_server.url)
    rng = random.Random("mixed-fleet")
    events = [event for n in range(60) for event in call_events(f"CA-fleet-{n:03d}", rng, usages=6)]
    payloads = with_duplicates(events, rng)
    rng.shuffle(payloads)
    first, rest = payloads[: len(payloads) * 2 // 3], payloads[len(payloads) * 2 // 3:]
    store = Store.from_settings(settings)
    services: list[Service] = []
    try:
        old = worker(previous, "previous", redis_server, tmp_path)
        services.append(old)
        new = worker(ROOT, "current", redis_server, tmp_path)
        services.append(new)
        await old.wait_ready(timeout=30)
        await new.wait_ready(timeout=30)
        for i in range(0, len(first), 40):  # trickled, so that both take batches of every call
            await fill(store, first[i:i + 40])
            await asyncio.sleep(0.02)
        await drained(store, 60, old, new)
        # Side by side, each applied a share, and the other's calls were read and folded into.
        assert applied_by(old) > 50 and applied_by(new) > 50, (applied_by(old), applied_by(new))
        # The upgrade completes: the previous release stops, this one takes the rest, with
        # redeliveries of events the previous one applied.
        assert old.terminate() == 0
        await fill(store, rest)
        await drained(store, 60, new)
        applied = await assert_records_exact(store, events, settings)
        assert applied == len({event.key for event in events}) == applied_by(old) + applied_by(new)
        assert await store.redis.xlen(store.dead) == 0
    finally:
        for service in services:  # each on its own: one that hangs on SIGTERM is killed, the next still stopped
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.terminate(timeout=10)
        await store.close()
