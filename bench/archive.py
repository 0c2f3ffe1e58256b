"""The archive (SPEC §16), measured on a fresh redis-server and a local directory.

    python bench/archive.py                  # 20,000 calls of 10 events, journal on
    python bench/archive.py --calls 50000

- Redis bytes per call: hot (finalized, before the pass) and archived (after it: the tombstone, the per-day
  counts, the candidates gone), as MEMORY USAGE summed over every key (bench/memory.py's way), and as INFO
  used_memory against the empty server (which adds the server's own overhead: its scripts, buffers, and the
  keyspace's table, still sized for the hot keys), the stream deleted (it is retention, not the call's cost).
  Archived is measured once the unindexed calls' grace period is over (their index versions are kept 10
  minutes, forgotten at the next pass), and right after the pass too (used_memory);
- the pass: calls/s of one `Archiver.run_pass` (batches of 20,000, as the service runs it), bytes of Parquet per
  call (calls file; events file);
- GET of an archived call through the read API (an `api` app in this process, aiohttp's client, one request at
  a time), p50/p99, and how many calls the file it reads holds;
- the apply loop while a pass runs in the same process (as `worker` runs both): a fresh batch of new calls'
  events applied alone, then again while a pass archives the population; the ratio of the two rates.

The service, Redis and the client share the machine's 2 cores: quote the figures with that said.
"""

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import DEVNULL, RedisServer, call_events, fill_stream  # noqa: E402

FAR_FUTURE_MS = 10**13


async def _used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _keys_bytes(client: Any) -> int:
    """MEMORY USAGE summed over every key (as bench/memory.py counts a call's cost): what the data holds,
    without the server's fixed overhead (its scripts, buffers, the keyspace's table)."""
    total = 0
    async for key in client.scan_iter(count=1000):
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def _apply_and_settle(store: Any, settings: Any) -> float:
    """Drain the stream through the consumer, then finalize and fan out every call; the apply rate (events/s)."""
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.consumer import Consumer
    from call_ledger.worker.delivery import EndpointCache, FanOut
    from call_ledger.worker.outbound import Finalizer

    started = time.perf_counter()
    applied = await Consumer(store, settings, Metrics()).run_burst()
    rate = applied / (time.perf_counter() - started)
    finalizer = Finalizer(store, settings, Metrics())
    fan_out = FanOut(store.outbox, store.deliveries, EndpointCache(store.endpoints), settings.policy)
    while await finalizer.run_once(FAR_FUTURE_MS) or await fan_out.run_once(FAR_FUTURE_MS):
        pass
    return rate


async def _get_latency(store: Any, settings: Any, sids: list[str], requests: int) -> tuple[float, float]:
    from aiohttp.test_utils import TestClient, TestServer

    from call_ledger.app import create_app

    client = TestClient(TestServer(create_app(settings, "api", store, run_consumer=False)))
    await client.start_server()
    times = []
    try:
        for sid in random.sample(sids, min(requests, len(sids))):
            started = time.perf_counter()
            response = await client.get(f"/api/v1/calls/sid/{sid}", headers={"Authorization": "Bearer bench"})
            await response.read()
            times.append((time.perf_counter() - started) * 1000)
            assert response.status == 200, response.status
    finally:
        await client.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


async def measure(redis: RedisServer, calls: int, per_call: int, gets: int = 2000) -> dict[str, float]:
    from call_ledger.archive import open_archive
    from call_ledger.settings import Settings
    from call_ledger.store import Store, open_redis
    from call_ledger.store.archive import GONE_GRACE_MS
    from call_ledger.web.logs import configure_logging
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.archive import Archiver
    from call_ledger.worker.consumer import Consumer

    root = Path(tempfile.mkdtemp(prefix="ledger-archive-"))
    sys.stdout = DEVNULL
    configure_logging("json", "info")
    try:
        redis.flush()
        settings = Settings(redis_url=redis.url, key_prefix="bench", batch_size=500, consumer_name="archive",
                            archive_url=str(root), retention_days=0, api_tokens="bench")  # type: ignore[arg-type]
        store = Store(open_redis(settings), "bench")
        client = store.redis
        empty = await _used(client)
        random.seed(7)
        await fill_stream(redis.url, call_events(calls, per_call))
        await _apply_and_settle(store, settings)
        await client.delete(store.stream)
        hot = await _used(client) - empty
        hot_keys = await _keys_bytes(client)

        archiver = Archiver(store, settings, open_archive(str(root)), Metrics())
        started = time.perf_counter()
        report = await archiver.run_pass()
        seconds = time.perf_counter() - started
        assert report is not None and report.calls == calls, report
        archived_now = await _used(client) - empty
        await store.archive.forget_gone(int(time.time() * 1000) + GONE_GRACE_MS + 1)
        archived = await _used(client) - empty
        archived_keys = await _keys_bytes(client)
        calls_bytes = sum(p.stat().st_size for p in (root / "calls").rglob("*.parquet"))
        events_bytes = sum(p.stat().st_size for p in (root / "events").rglob("*.parquet"))
        per_file = calls / len(list((root / "calls").rglob("*.parquet")))

        sids = [f"CA{c:032x}" for c in range(calls)]
        p50, p99 = await _get_latency(store, settings, sids, gets)

        # The apply loop alone, then with a pass running beside it: a population archived by the pass, and a
        # fresh stream of other calls' events applied meanwhile.
        rates = {}
        for with_pass in (False, True):
            redis.flush()
            await fill_stream(redis.url, call_events(calls, per_call))
            await _apply_and_settle(store, settings)
            fresh = [e.replace(b'"CA', b'"CB') for e in call_events(calls // 2, per_call)]
            await fill_stream(redis.url, fresh)
            running = asyncio.create_task(archiver.run_pass()) if with_pass else None
            started = time.perf_counter()
            applied = await Consumer(store, settings, Metrics()).run_burst()
            rates[with_pass] = applied / (time.perf_counter() - started)
            if running is not None:
                await running
        await store.close()
    finally:
        sys.stdout = sys.__stdout__
        shutil.rmtree(root, ignore_errors=True)
    return {"calls": calls, "hot": hot / calls, "archived": archived / calls, "archived_now": archived_now / calls,
            "hot_keys": hot_keys / calls, "archived_keys": archived_keys / calls,
            "rate": calls / seconds, "seconds": seconds, "calls_bytes": calls_bytes / calls,
            "events_bytes": events_bytes / calls, "get_p50": p50, "get_p99": p99, "per_file": per_file,
            "apply_alone": rates[False], "apply_with_pass": rates[True],
            "apply_ratio": rates[True] / rates[False]}


def describe(m: dict[str, float]) -> str:
    return (f"{m['calls']:,.0f} calls: Redis keys {m['hot_keys']:,.0f} B/call hot -> {m['archived_keys']:,.0f} "
            f"B/call archived (used_memory {m['hot']:,.0f} -> {m['archived']:,.0f}; {m['archived_now']:,.0f} within "
            f"the 10-minute grace); pass {m['rate']:,.0f} calls/s "
            f"({m['seconds']:.2f} s); Parquet {m['calls_bytes']:,.0f} B/call (+ events {m['events_bytes']:,.0f}); "
            f"GET archived p50 {m['get_p50']:.2f} / p99 {m['get_p99']:.2f} ms "
            f"({m['per_file']:,.0f} calls in its file); "
            f"apply {m['apply_alone']:,.0f} events/s alone, {m['apply_with_pass']:,.0f} with a pass "
            f"(ratio {m['apply_ratio']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--per-call", type=int, default=10)
    args = parser.parse_args()
    redis = RedisServer()
    try:
        print(describe(asyncio.run(measure(redis, args.calls, args.per_call))))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
