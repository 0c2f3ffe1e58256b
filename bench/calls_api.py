"""Benchmark of the calls API's reads (SPEC §9) on a store of N calls (default 50,000).

    python bench/calls_api.py [N]

Starts its own redis-server, fills it through the worker's own commit and index paths (the
commit script with the record rendered ready, `j`, as the worker writes it, and the index
script; no stream), then times, sequentially, every calls-API read: list pages and counts
with filter combinations, a record by id and by SID, search, stats, analytics over 1, 7, 30
and 90 days, costs, and full CSV and JSON exports encoded as the route sends them, and prints
p50/p99 per read, export rows/s and the Redis memory the indexes add per call.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api import listing  # noqa: E402
from api.aggregates import analytics_body, period_days, period_sums  # noqa: E402
from api.export import RECORD_KEYS, csv_rows_of_calls, json_rows  # noqa: E402
from api.query import CallFilter  # noqa: E402
from ledger.events import CallEvent, Cost  # noqa: E402
from ledger.index_store import IndexStore  # noqa: E402
from ledger.indexes import (  # noqa: E402
    day_key,
    decode_cursor,
    index_entry,
    member,
    scope_name,
    shard_of,
    totals_key,
)
from ledger.instants import format_us  # noqa: E402
from ledger.rules import CallState, apply_event, fix_estimate, render_record  # noqa: E402
from ledger.served import served_record, stored_record  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from ledger.store import CommitWrite, Store, open_redis  # noqa: E402

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

BATCH = 1000

async def fill(store: Store, indexes: IndexStore, settings: Settings, n: int) -> None:
    """Each call committed as the worker commits a new call's events in one batch (state, `j`
    rendered with the estimate fixed, a commit token) and indexed at its version; BATCH calls
    per commit script call and per index pipeline, the next batch built while Redis applies
    the last."""
    rng = random.Random(1)
    now_us = int(time.time() * 1e6)
    pending: asyncio.Task[Any] | None = None
    for base in range(0, n, BATCH):
        ids = await store.allocate_ids(min(BATCH, n - base))
        writes, entries = [], []
        for offset, record_id in enumerate(ids):
            events = events_of(base + offset, now_us, rng)
            state = CallState()
            for e in events:
                apply_event(state, e, settings)
            fix_estimate(state, settings)
            sid = events[0].call_sid
            record = render_record(sid, record_id, state, settings)
            writes.append(CommitWrite(sid, 0, len(events), state.core_json(), record_id,
                                      [(e.key, e.occurred_us, e.model_dump_json().encode()) for e in events],
                                      state.changed_fields(), record=stored_record(record, len(events)),
                                      new_token=f"bench-{record_id}"))
            entries.append((shard_of(sid), index_entry(sid, record_id, state, settings, record), len(events)))
        if pending is not None:
            await pending

        async def write(writes: list[CommitWrite] = writes, entries: list[Any] = entries) -> None:
            await store.commit(writes)
            await indexes.update(entries)

        pending = asyncio.ensure_future(write())
    if pending is not None:
        await pending

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
            # The client the API process uses (ledger.store.open_redis: commands packed in C),
            # so reads cost here what they cost the routes.
            client = open_redis(Settings(redis_url=f"redis://127.0.0.1:{port}"))
            store, indexes = Store(client), IndexStore(client)
            before = int((await client.info("memory"))["used_memory"])
            await store.check_layout()  # a new store: its entries all have the month rollups
            started = time.perf_counter()
            await fill(store, indexes, settings, n)
            took = time.perf_counter() - started
            print(f"filled {n} calls in {took:.1f} s ({n / took:,.0f} calls/s)")
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

            await timed("stats", stats)
            for days_n in (1, 7, 30, 90):
                for scope in (None, 3):
                    async def analytics(days_n: int = days_n, scope: int | None = scope) -> None:
                        days = period_days(days_n, time.time())
                        name = scope_name(scope)
                        sums = await period_sums(indexes, name, days)
                        analytics_body(f"{days_n}d", days, {d: sums.days[day_key(name, d)] for d in days},
                                       sums.assistants, sums.names)
                    await timed(f"analytics {days_n}d" + (" (one organization)" if scope else " (all calls)"),
                                analytics, rounds=50)

            async def by_id() -> None:
                await indexes.find(member(random.choice(ids)))

            ids = [int(m) for m in await client.hkeys(indexes.entries_key(0))][:1000]
            await timed("get by id (the entry's SID, then the record)", by_id, rounds=200)

            async def by_sid() -> None:
                sid = f"CA{rng_sid(n):032x}"
                fields = await store.call_fields(sid)
                assert fields is not None
                served_record(sid, fields, settings)

            await timed("get by SID", by_sid, rounds=200)
            await timed("search (a phone number's digits)", lambda: listing.search(
                store, indexes, settings, "555123", 50, None), rounds=20)
            await timed("events page of a call by SID (100 events)", lambda: store.events_page(
                f"CA{rng_sid(n):032x}", "", 100), rounds=200)
            for fmt in ("csv", "json"):
                started = time.perf_counter()
                rows = size = 0
                rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                header = (",".join(RECORD_KEYS) + "\r\n").encode()
                size += len(header)
                async for batch in listing.export(store, indexes, CallFilter(), None):
                    data = csv_rows_of_calls(batch, settings).encode() if fmt == "csv" else json_rows(batch, settings)
                    size += len(data)
                    rows += len(batch)
                grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
                print(f"export {fmt} (rows encoded as the route sends them): "
                      f"{rows / (time.perf_counter() - started):,.0f} rows/s, {rows:,} rows, {size / 1e6:,.0f} MB, "
                      f"the process's peak RSS grew {grown / 1024:.1f} MiB")
            await client.aclose()
        finally:
            proc.terminate()
            proc.wait(10)

if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
