"""Benchmark of the calls API's reads (SPEC §9) on a store of N calls (default 50,000).

    python bench/calls_api.py [N] [--processes P] [--fill-only]

Starts its own redis-server, fills it with what the worker writes for N new calls (built by the
worker's own functions, written as its commit and index scripts write them, in one process per
core: see "the fill" below; tests/project/test_bench_fill.py holds it to the worker byte for byte; no
stream), prints the fill rate, then times, sequentially, every calls-API read: list pages and counts
with filter combinations, a record by id and by SID, search, stats, analytics over 1, 7, 30
and 90 days, costs, and full CSV and JSON exports encoded as the route sends them, and prints
p50/p99 per read, export rows/s and the Redis memory the indexes add per call.
"""

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from call_ledger.api import listing  # noqa: E402
from call_ledger.api.aggregates import analytics_body, period_days, period_sums  # noqa: E402
from call_ledger.api.export import RECORD_KEYS, csv_rows_of_calls, json_rows  # noqa: E402
from call_ledger.api.query import CallFilter  # noqa: E402
from call_ledger.core.events import CallEvent, Cost  # noqa: E402
from call_ledger.core.indexes import (  # noqa: E402
    day_key,
    decode_cursor,
    index_entry,
    member,
    scope_name,
    shard_of,
    totals_key,
)
from call_ledger.core.instants import format_us  # noqa: E402
from call_ledger.core.record_ids import IdBlock  # noqa: E402
from call_ledger.core.rules import CallState, apply_event, fix_estimate, render_record  # noqa: E402
from call_ledger.core.served import StoredCall, record_digest  # noqa: E402
from call_ledger.settings import Settings  # noqa: E402
from call_ledger.store import CommitWrite, Store, open_redis  # noqa: E402
from call_ledger.store.indexes import IndexStore, IndexWrite  # noqa: E402
from call_ledger.store.records import _commit_args  # noqa: E402
from call_ledger.store.wire import pack_command  # noqa: E402

STATUSES = ["completed"] * 6 + ["failed", "busy", "no-answer", "ongoing"]


def call_events(i: int, now_us: int) -> list[CallEvent]:
    """Call i's events (metadata, a status, a cost), the same whichever process makes them:
    drawn from a generator seeded with i."""
    rng = random.Random(i)
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


# -- the fill ----------------------------------------------------------------------------------
#
# The store is filled with what the worker writes, without the worker's scripts. Filling through
# them (Store.commit, IndexStore.update) ran at about 1,500 calls/s here: 0.39 ms of Python per
# call (a fifth of it redis-py packing the scripts' arguments, the rest building each call's
# state, record, journal entries and index entry) and 0.19 ms of Redis, most of it index.lua's
# one HINCRBY per rollup field per call (about 47), each waiting for the other.
# Here each call is built by the worker's own functions, into the arguments the commit and index
# scripts would take (`new_call`), and what the scripts would write for a new call is written
# directly (`bulk_writes`): commit.lua with version 0 (HSET journal, ZADD order, HSET the call:
# its fields, `j`, v, s, t, id) and index.lua's path for a call not yet indexed (HSET version,
# ZADD each membership, add each rollup amount, HSET entry). A batch's writes go as one script
# call (BULK: a reply per command cost the process as much as building the call), one command
# per key, rollup amounts summed per field first: a field ends as the sum of every call's
# amounts, deleted when that is 0, whatever the order, so fill processes on disjoint calls share
# the rollups safely. Processes build calls on both cores while Redis writes.
# tests/project/test_bench_fill.py holds the store to the worker's, byte for byte. One redis-server
# only (the bench starts its own): a batch's keys span slots.

BATCH = 1000
# Both cores: building calls is most of the work; Redis's share fits between.
PROCESSES = os.cpu_count() or 2
# Per key (KEYS[k]): an operation, the number of its arguments, then them. HSET and ZADD as
# those commands (in chunks: unpack() of thousands overflows Lua's C stack; a command per chunk
# of one key writes what one command would); `+` adds each (field, amount), deleting a field
# it leaves at 0, as index.lua does per field.
BULK = """
local unpack = unpack or table.unpack
local CHUNK = 256
local a = 1
for k = 1, #KEYS do
  local op, n, key = ARGV[a], tonumber(ARGV[a + 1]), KEYS[k]
  local first, last = a + 2, a + 1 + n
  if op == '+' then
    for i = first, last, 2 do
      if redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1]) == 0 then
        redis.call('HDEL', key, ARGV[i])
      end
    end
  else
    for s = first, last, CHUNK do
      redis.call(op, key, unpack(ARGV, s, math.min(last, s + CHUNK - 1)))
    end
  end
  a = last + 1
end
return #KEYS
"""


def stored_form(event: CallEvent) -> bytes:
    """The event's JSON as intake puts it on the stream (worker/intake.py `stored_form`), which
    the worker journals as it is."""
    return event.model_dump_json(exclude_defaults=True).encode()


class NewCall(NamedTuple):
    """One new call's commit script arguments (call_ledger.store.records._commit_args) and index write."""

    commit_args: list[Any]
    index: IndexWrite


def new_call(i: int, record_id: int, now_us: int, settings: Settings) -> NewCall:
    """Call i as the worker commits a new call's events in one batch (the state, the estimate
    fixed, `j` rendered, a commit token unique to it) and indexes it at that version."""
    events = call_events(i, now_us)
    state = CallState()
    for e in events:
        apply_event(state, e, settings.policy)
    fix_estimate(state, settings.policy)
    sid = events[0].call_sid
    record = render_record(sid, record_id, state, settings.policy)
    # The store is new, so check_layout marked it layout 5: short members (call_ledger.core.members), the
    # core as plain fields (call_ledger.core.plain), no rendered copy, a terminal call's digest, index
    # entries as their payload alone (call_ledger.core.indexes).
    write = CommitWrite(sid, 0, len(events), b"", record_id,
                        [(e.key, e.occurred_us, stored_form(e)) for e in events],
                        [*state.changed_fields(short_for=sid), *state.plain_fields(sid)],
                        digest=record_digest(record) if record["ended_at"] is not None else b"",
                        new_token=f"bench-{record_id}")
    entry = index_entry(sid, record_id, state, settings.policy, record)
    return NewCall(_commit_args(write, 0, short=True),
                   IndexWrite.of(shard_of(sid), entry, len(events), payload_only=True))


def bulk_writes(store: Store, indexes: IndexStore, calls: list[NewCall]) -> tuple[list[str], list[Any]]:
    """BULK's KEYS and ARGV: what the commit and index scripts would write for these new calls."""
    writes: dict[str, tuple[str, list[Any]]] = {}
    sets: dict[str, list[Any]] = defaultdict(list)
    amounts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for args, index in calls:
        # commit.lua's ARGV: version, token, new version, new token, terminal, now, core, id, n, n x
        # (member, occurred_us, entry, other form), m, m x (field, value).
        _, _, new_version, new_token, _, _, _, record_id, n = args[:9]
        entry = index.entry
        sid = entry.call_sid
        events = args[9:9 + 4 * n]
        journal = [x for k in range(0, len(events), 4) if events[k + 2] for x in (events[k], events[k + 2])]
        if journal:
            writes[store.journal_key(sid)] = ("HSET", journal)
        writes[store.order_key(sid)] = ("ZADD", [x for k in range(0, len(events), 4)
                                                 for x in (events[k + 1], events[k])])
        writes[store.call_key(sid)] = ("HSET", [*args[10 + 4 * n:], "v", new_version, "t", new_token,
                                                "id", record_id])
        # index.lua's ARGV per call: member, version, score, entry, expected version, delta; for a new
        # call it writes the version, the entry and the delta, which is the entry's memberships and
        # increments (IndexEntry.creation: what memberships() and increments() say, read from here directly).
        member_text, score_text, base = entry.member, str(entry.list_us), indexes.base(index.shard)
        writes.setdefault(indexes.versions_key(index.shard), ("HSET", []))[1].extend((member_text, index.version))
        writes.setdefault(indexes.entries_key(index.shard), ("HSET", []))[1].extend((member_text, index.encoded))
        for suffix in entry.memberships():
            sets[base + suffix] += (score_text, member_text)
        for suffix, name, amount in entry.increments():
            amounts[base + suffix][name] += amount
    for key, pairs in sets.items():
        writes[key] = ("ZADD", pairs)
    for key, fields in amounts.items():
        writes[key] = ("+", [x for name, amount in fields.items() if amount for x in (name, amount)])
    argv: list[Any] = []
    for op, values in writes.values():
        argv += [op, len(values), *values]
    return list(writes), argv


class _PackedInC(redis.connection.Connection):
    """A synchronous connection packing commands in C (call_ledger.store.wire): redis-py's packers
    look at each argument in Python, a fifth of the fill's CPU with the scripts' arguments."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.send_packed_command(pack_command(*args), check_health=kwargs.get("check_health", True))


def fill_part(url: str, settings: Settings, block: IdBlock, lo: int, hi: int, now_us: int) -> None:
    """Calls lo..hi-1 of the fill, call i with the id block's i-th id; BATCH calls per script
    call, the next batch built while a thread sends the last and waits for Redis (the wait and
    the socket let go of the GIL)."""
    client = redis.Redis.from_url(url, connection_class=_PackedInC)
    store = Store(client, settings.key_prefix)  # for key names only
    indexes = IndexStore(client, settings.key_prefix)
    sha = client.script_load(BULK)
    with ThreadPoolExecutor(1) as sender:
        sent: Future[Any] | None = None
        for base in range(lo, hi, BATCH):
            calls = [new_call(i, block.id_at(i), now_us, settings) for i in range(base, min(base + BATCH, hi))]
            keys, argv = bulk_writes(store, indexes, calls)
            if sent is not None:
                sent.result()
            sent = sender.submit(client.evalsha, sha, len(keys), *keys, *argv)
        if sent is not None:
            sent.result()
    client.close()


async def fill(url: str, settings: Settings, n: int, now_us: int, processes: int) -> None:
    """Calls 0..n-1 (`call_events`), in `processes` processes on disjoint ranges: building a
    call costs far more CPU than Redis spends writing it, so the processes keep both cores busy.
    Ids are reserved in one block and call i takes its i-th, as a worker given the calls in that
    order would hand them out."""
    store = Store(aioredis.Redis.from_url(url), settings.key_prefix)
    try:
        await store.check_layout()  # a new store: its entries all have the month rollups
        block = await store.reserve_ids(n)
    finally:
        await store.redis.aclose()
    bounds = [n * p // processes for p in range(processes + 1)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, fill_part, url, settings, block, lo, hi, now_us)
                               for lo, hi in itertools.pairwise(bounds) if hi > lo))


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def time_reads(client: Any, store: Store, indexes: IndexStore, settings: Settings, n: int) -> None:
    """Every calls-API read on the filled store, p50/p99 each; the exports' rows/s."""
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
            store, indexes, settings.policy, f, scope, 0, 100, None))
        await timed("count: " + label, lambda f=f, scope=scope: listing.count(indexes, f, scope))
    deep = await listing.page(store, indexes, settings.policy, CallFilter(), None, 0, 100, None)
    for _ in range(50):  # 50 pages deep by cursor, then time the next page
        assert deep.next_cursor is not None
        deep = await listing.page(store, indexes, settings.policy, CallFilter(), None, 0, 100,
                                  decode_cursor(deep.next_cursor))
    assert deep.next_cursor is not None
    cursor = decode_cursor(deep.next_cursor)
    await timed("list page 51 by cursor (limit 100)", lambda: listing.page(
        store, indexes, settings.policy, CallFilter(), None, 0, 100, cursor))

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
        StoredCall(sid, fields).served(settings.policy)

    await timed("get by SID", by_sid, rounds=200)
    await timed("search (a phone number's digits)", lambda: listing.search(
        store, indexes, settings.policy, "555123", 50, None), rounds=20)
    await timed("events page of a call by SID (100 events)", lambda: store.events_page(
        f"CA{rng_sid(n):032x}", "", 100), rounds=200)
    for fmt in ("csv", "json"):
        started = time.perf_counter()
        rows = size = 0
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        header = (",".join(RECORD_KEYS) + "\r\n").encode()
        size += len(header)
        async for batch in listing.export(store, indexes, CallFilter(), None):
            policy = settings.policy
            data = csv_rows_of_calls(batch, policy).encode() if fmt == "csv" else json_rows(batch, policy)
            size += len(data)
            rows += len(batch)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        print(f"export {fmt} (rows encoded as the route sends them): "
              f"{rows / (time.perf_counter() - started):,.0f} rows/s, {rows:,} rows, {size / 1e6:,.0f} MB, "
              f"the process's peak RSS grew {grown / 1024:.1f} MiB")


async def main(n: int, processes: int, fill_only: bool, redis_url: str | None, reads_only: bool) -> None:
    if redis_url is not None:  # a server of the caller's, kept: fill once, time the reads again later
        await run(redis_url, n, processes, fill_only, reads_only)
        return
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()  # not a fixed one: another checkout may be running this bench
        proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.5)
            await run(f"redis://127.0.0.1:{port}/0", n, processes, fill_only, reads_only=False)
        finally:
            proc.terminate()
            proc.wait(10)


async def run(url: str, n: int, processes: int, fill_only: bool, reads_only: bool) -> None:
    settings = Settings()
    # The client the API process uses (call_ledger.store.client.open_redis: commands packed in C), so reads
    # cost here what they cost the routes.
    client = open_redis(Settings(redis_url=url))
    store, indexes = Store(client), IndexStore(client)
    if not reads_only:
        before = int((await client.info("memory"))["used_memory"])
        started = time.perf_counter()
        await fill(url, settings, n, int(time.time() * 1e6), processes)
        took = time.perf_counter() - started
        print(f"filled {n:,} calls in {took:.1f} s ({n / took:,.0f} calls/s, {processes} processes)")
        used = int((await client.info("memory"))["used_memory"]) - before
        ix = 0
        async for key in client.scan_iter(match="cl:ix:*", count=1000):
            ix += int(await client.memory_usage(key) or 0)
        print(f"memory per call: {used / n:.0f} B in all, of which indexes {ix / n:.0f} B")
    if not fill_only:
        await time_reads(client, store, indexes, settings, n)
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("calls", type=int, nargs="?", default=50_000)
    parser.add_argument("--processes", type=int, default=PROCESSES, help="fill processes (default %(default)s)")
    parser.add_argument("--fill-only", action="store_true", help="fill, print the fill rate and memory, stop")
    parser.add_argument("--redis-url", help="use this (empty) redis-server instead of starting one, and leave it "
                        "running, so that --reads-only can time the reads again on the same calls")
    parser.add_argument("--reads-only", action="store_true",
                        help="with --redis-url: time the reads of a store this bench filled with the same N")
    options = parser.parse_args()
    if options.reads_only and options.redis_url is None:
        parser.error("--reads-only needs --redis-url (the server the store was filled in)")
    asyncio.run(main(options.calls, options.processes, options.fill_only, options.redis_url, options.reads_only))
