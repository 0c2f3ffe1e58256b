"""Benchmark of the calls API's reads (SPEC §9) on a store of N calls (default 50,000).

    python bench/calls_api.py [N]

Starts its own redis-server, fills it through the worker's own commit and index paths
(commit script + index script, no stream), then times, sequentially, list pages and counts
with filter combinations, stats, analytics over 90 days and a full JSON export, and prints
p50/p99 per query and the Redis memory the indexes add per call.
"""

import asyncio
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api import listing  # noqa: E402
from api.aggregates import analytics_body, period_days, period_plan  # noqa: E402
from api.query import CallFilter  # noqa: E402
from ledger.events import CallEvent, Cost  # noqa: E402
from ledger.index_store import IndexStore  # noqa: E402
from ledger.indexes import (  # noqa: E402
    day_assistants_key,
    day_key,
    decode_cursor,
    index_entry,
    scope_name,
    shard_of,
    totals_key,
    week_key,
)
from ledger.instants import format_us  # noqa: E402
from ledger.rules import CallState, apply_event  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from ledger.store import CommitWrite, Store  # noqa: E402

STATUSES = ["completed"] * 6 + ["failed", "busy", "no-answer", "ongoing"]


def events_of(i: int, now_us: int, rng: random.Random) -> list[CallEvent]:
    sid = f"CA{i:032x}"
    start = now_us - rng.randrange(89 * 86_400) * 1_000_000
    status = rng.choice(STATUSES)

    def ev(eid: str, us: int, **fields: Any) -> CallEvent:
        return CallEvent(source="platform", event_id=eid, call_sid=sid, type="x", occurred_at=format_us(us),
                         occurred_us=us, **fields)

    return [ev("m", start, organization_id=rng.randrange(1, 51), assistant_id=rng.randrange(1, 201),
               assistant_name=f"bot {rng.randrange(200)}", customer_phone_number=f"+1555{rng.randrange(10**7):07d}"),
            ev("s", start + 1, status=status, **({"duration": rng.randrange(600)} if status == "completed" else {})),
            ev("u", start + 2, costs=(Cost(component="llm", amount_nano=rng.randrange(10**8), currency="USD"),))]


async def fill(store: Store, indexes: IndexStore, settings: Settings, n: int) -> None:
    rng = random.Random(1)
    now_us = int(time.time() * 1e6)
    for base in range(0, n, 500):
        ids = await store.allocate_ids(min(500, n - base))
        writes, entries = [], []
        for offset, record_id in enumerate(ids):
            events = events_of(base + offset, now_us, rng)
            state = CallState()
            for e in events:
                apply_event(state, e, settings)
            sid = events[0].call_sid
            writes.append(CommitWrite(sid, 0, len(events), state.core_json(), record_id,
                                      [(e.key, e.occurred_us, e.model_dump_json().encode())
                                       for e in events], state.changed_fields()))
            entries.append((shard_of(sid), index_entry(sid, record_id, state, settings), len(events)))
        await store.commit(writes)
        await indexes.update(entries)


def rng_sid(n: int) -> int:
    return random.randrange(n)


async def timed(label: str, fn: Any, rounds: int = 50) -> None:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    print(f"{label:62s} p50 {samples[len(samples) // 2]:7.1f} ms   p99 {samples[int(len(samples) * .99)]:7.1f} ms")


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        port = 26379
        proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.5)
            settings = Settings()
            client = aioredis.Redis(port=port)
            store, indexes = Store(client), IndexStore(client)
            before = int((await client.info("memory"))["used_memory"])
            started = time.perf_counter()
            await fill(store, indexes, settings, n)
            print(f"filled {n} calls in {time.perf_counter() - started:.1f} s")
            used = int((await client.info("memory"))["used_memory"]) - before
            ix = 0
            async for key in client.scan_iter(match="cl:ix:*", count=1000):
                ix += int(await client.memory_usage(key) or 0)
            print(f"memory per call: {used / n:.0f} B in all, of which indexes {ix / n:.0f} B")
            now_us = int(time.time() * 1e6)
            # The yardstick: one HGETALL of a call's hash on the same store (what a lookup by SID does).
            await timed("one HGETALL of a call (the floor of a lookup)",
                        lambda: client.hgetall(store.call_key(f"CA{rng_sid(n):032x}")), rounds=200)
            week = CallFilter(date_from_us=now_us - 7 * 86_400_000_000)
            cases = {
                "list page, no filter": (CallFilter(), None),
                "list page, status": (CallFilter(status="failed"), None),
                "list page, org + status + assistant + 7 days": (
                    CallFilter(status="completed", assistant_id=7, date_from_us=week.date_from_us), 3),
                "list page, org + date range": (week, 3),
            }
            for label, (f, scope) in cases.items():
                await timed(label + " (limit 100)", lambda f=f, scope=scope: listing.page(
                    store, indexes, settings, f, scope, 0, 100, None))
                await timed("count: " + label, lambda f=f, scope=scope: listing.count(indexes, f, scope))
            deep = await listing.page(store, indexes, settings, CallFilter(), None, 0, 100, None)
            for _ in range(50):  # 50 pages deep by cursor, then time the next page
                assert deep.next_cursor is not None
                deep = await listing.page(store, indexes, settings, CallFilter(), None, 0, 100,
                                          decode_cursor(deep.next_cursor))
            assert deep.next_cursor is not None
            cursor = decode_cursor(deep.next_cursor)
            await timed("list page 51 by cursor (limit 100)", lambda: listing.page(
                store, indexes, settings, CallFilter(), None, 0, 100, cursor))

            async def stats() -> None:
                await indexes.sum_hashes([totals_key(scope_name(None))])

            async def analytics() -> None:
                days = period_days(90, time.time())
                weeks, edge = period_plan(days)
                sums, assistants = await indexes.sum_days(
                    [day_key("*", d) for d in days],
                    [week_key("*", w) for w in weeks] + [day_assistants_key("*", d) for d in edge])
                analytics_body("90d", days, {d: sums[day_key("*", d)] for d in days}, assistants)

            await timed("stats", stats)
            await timed("analytics 90d (all calls)", analytics, rounds=20)
            started = time.perf_counter()
            rows = 0
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            async for batch in listing.export(store, indexes, settings, CallFilter(), None):
                rows += len(batch)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
            print(f"export (records rendered, not encoded): {rows / (time.perf_counter() - started):,.0f} rows/s, "
                  f"{rows:,} rows, the process's peak RSS grew {grown / 1024:.1f} MiB")
            await client.aclose()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
