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

import orjson
import pytest

from call_ledger.core.indexes import member, shard_of
from call_ledger.store import Store
from tests.support.cli import run_cli
from tests.support.index_dump import assert_indexes_exact
from tests.support.paths import ROOT
from tests.support.polling import until
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
        # The store the previous release has been running on: layout 4 (a fresh one would be 5, which the
        # previous release refuses at start).
        await store.redis.set(store.keys.layout, "4")
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
        # Side by side on layout 4, each undid the other's index entries exactly: the previous release's
        # script from the rollups stored after an entry's payload, this one's from the entry it is answered with.
        sids = sorted({e.call_sid for e in events})
        await assert_indexes_exact(store, settings, [sid for sid in sids if await store.get_call(sid) is not None])
        # The store cannot move to layout 5 (index entries without their rollups) while the previous
        # release is connected: its index script could not undo such an entry.
        refused = run_cli("layout", "--upgrade", **{**ledger_env(), "LEDGER_REDIS_URL": redis_server.url})
        assert refused.returncode == 1 and "named 'call-ledger/reads-2.3.4'" in refused.stderr, refused.stderr
        # The upgrade completes: the previous release stops, the store moves, this release learns it
        # and takes the rest, with redeliveries of events the previous one applied.
        assert old.terminate() == 0
        moved = run_cli("layout", "--upgrade", **{**ledger_env(), "LEDGER_REDIS_URL": redis_server.url})
        assert moved.returncode == 0 and "layout 4 -> 5" in moved.stdout, moved.stderr
        await until(lambda: any(line.get("event") == "layout_changed" for line in new.lines()), 30,
                    "the worker to learn the move")
        await fill(store, rest)
        await drained(store, 60, new)
        applied = await assert_records_exact(store, events, settings)
        assert applied == len({event.key for event in events}) == applied_by(old) + applied_by(new)
        assert await store.redis.xlen(store.dead) == 0
        await assert_indexes_exact(store, settings, sids)
        # Every call the rest touched has its entry as the payload alone now; the others keep the previous
        # release's form (the payload and its rollups), and both are read and undone.
        def key(raw: bytes) -> tuple[str, str, str]:
            event = orjson.loads(raw)
            return event["call_sid"], event["source"], event["event_id"]
        before_move = {key(raw) for raw in first}
        touched = {key(raw)[0] for raw in rest if key(raw) not in before_move}  # a new event applied after
        assert touched
        forms = {}
        for sid in sids:
            found = await store.get_call(sid)
            assert found is not None
            stored = await store.redis.hget(store.indexes.entries_key(shard_of(sid)), member(found[0]))
            forms[sid] = b"\n" not in stored
        assert all(forms[sid] for sid in touched), forms
        assert not all(forms.values()) or len(touched) == len(sids)
        # The previous release refuses the moved store at start.
        again = worker(previous, "previous-again", redis_server, tmp_path)
        services.append(again)
        assert again.wait_exit_or_start(timeout=30) not in (None, 0), again.tail()
        assert "layout '5'" in again.output(), again.tail()
    finally:
        for service in services:  # each on its own: one that hangs on SIGTERM is killed, the next still stopped
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.terminate(timeout=10)
        await store.close()
