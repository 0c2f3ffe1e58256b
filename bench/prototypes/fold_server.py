"""PROTOTYPE (design a of issue 22): the fold server-side. Measurement only, not product code.

The call's state lives as plain hash fields (`v`, `st`, `sa`, `an`, `du`, `fs`, `pv`, `c:<component>`,
`r:<register>`, `m:<call_meta key>`), and one Lua script (bench/prototypes/fold.lua) folds compact per-event
tuples into them: dedup against the call's order index (ZMSCORE), max/min/sum/last-writer-wins folds,
journal HSET + order ZADD, version bump, a per-shard time index (ZADD, score = list time) and per-day
cost rollups (HINCRBY of the deltas). The Python worker is decode (`CallEvent.model_validate_json`) ->
validate -> price (`ledger_costs`) -> pack -> send, holding no per-call state: XREADGROUP 500, one
EVALSHA per batch (or, `--per-call`, one per call, pipelined), XACK and the next XREADGROUP in the same
pipeline.

Left out (docs/performance.md, *Two prototypes*, says what each would cost): refusals (provider conflict,
call_meta bounds, MAX_AMOUNT_NANO sums), the telephony estimate, the rendered record `j` and record ids,
the outbox / finality (SPEC §15), the archive hold `a`, the full index entry (filters, cursor order,
scopes), usage pricing, dead letters / claims, Cluster slots (the index keys are built inside the script).

    .venv/bin/python bench/prototypes/fold_server.py --rounds 3           # fold vs floor vs product
    .venv/bin/python bench/prototypes/fold_server.py --rounds 2 --per-call
    .venv/bin/python bench/prototypes/fold_server.py --check-only         # correctness + memory only
"""

import argparse
import asyncio
import random
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import costs  # noqa: E402
import run  # noqa: E402

from call_ledger.core.events import CallEvent  # noqa: E402
from call_ledger.core.journal import compact  # noqa: E402
from call_ledger.core.rules import REGISTERS, STATUS_RANK, CallState, apply_event, ledger_costs  # noqa: E402
from call_ledger.settings import Settings  # noqa: E402
from call_ledger.store import Store, open_redis  # noqa: E402

LUA = (Path(__file__).parent / "fold.lua").read_text()
GROUP = "ledger"
PREFIX = "fold"  # the fold's own keys; the stream is the product's (`bench` prefix)
SHARDS = 16
_REGISTERS = frozenset(REGISTERS)
_RANK = {status: str(rank) for status, rank in STATUS_RANK.items()}


def call_keys(sid: str) -> list[str]:
    return [f"{PREFIX}:call:{{{sid}}}", f"{PREFIX}:journal:{{{sid}}}", f"{PREFIX}:order:{{{sid}}}"]


def stored(okey: bytes, value: bytes) -> bytes:
    """`<len>:<order key><value>`: what a register / call_meta field holds."""
    return b"%d:%s%s" % (len(okey), okey, value)


def pack(ev: CallEvent, raw: bytes, policy: Any, journal: str) -> tuple[list[Any], list[str]]:
    """One event's tuple for fold.lua, and the r:/m: fields it sets."""
    us = ev.occurred_us
    ous = b"%017d" % us
    eid = ev.event_id.encode()
    okey = ous + eid + b"\0" + ev.source.encode()
    text = ev.occurred_at.encode()
    st = sa = an = b""
    if ev.status is not None:
        k = _RANK[ev.status].encode() + ous + eid
        st = b"%d:%s%s" % (len(k), k, text)
        sa = ous + text
        if ev.status == "ongoing":
            an = sa
    if ev.started_us is not None:
        c = b"%017d%s" % (ev.started_us, (ev.started_at or "").encode())
        sa = c if not sa or c < sa else sa
    if ev.answered_us is not None:
        c = b"%017d%s" % (ev.answered_us, (ev.answered_at or "").encode())
        an = c if not an or c < an else an
    key = f"{ev.source}:{ev.event_id}"
    if journal == "raw":
        entry = raw
    elif journal == "compact":
        entry = compact(raw, key, ev.call_sid, us)
    else:
        entry = b""
    out: list[Any] = [key, us, okey, st, sa, an, b"" if ev.duration is None else ev.duration,
                      b"" if ev.source == "platform" else ev.source, entry]
    if ev.costs:
        priced = ledger_costs(ev, policy)
        out.append(len(priced))
        for component, amount in priced:
            out += [component, amount]
    else:
        out.append(0)
    names = []
    sets: list[Any] = []
    for name in ev.model_fields_set & _REGISTERS:
        field = "r:" + name
        names.append(field)
        sets += [field, stored(okey, orjson.dumps(getattr(ev, name)))]
    if ev.call_meta:
        for mkey, value in ev.call_meta.items():
            field = "m:" + mkey
            names.append(field)
            sets += [field, stored(okey, orjson.dumps(value))]
    out.append(len(names))
    out += sets
    return out, names


def call_args(sid: str, packed: list[tuple[list[Any], list[str]]]) -> list[Any]:
    fields = sorted({name for _, names in packed for name in names})
    args: list[Any] = [zlib.crc32(sid.encode()) % SHARDS, len(fields), *fields, len(packed)]
    for event, _ in packed:
        args += event
    return args


def build(entries: list[Any], policy: Any, journal: str, counts: dict[str, int]) -> dict[str, list[Any]]:
    """Decode, validate, price and pack one batch: call -> its events' tuples."""
    calls: dict[str, list[tuple[list[Any], list[str]]]] = defaultdict(list)
    seen: set[tuple[str, str, str]] = set()
    validate = CallEvent.model_validate_json
    for _, fields in entries:
        raw = fields[b"e"]
        try:
            ev = validate(raw)
        except ValidationError:
            counts["invalid"] += 1  # the product dead-letters it
            continue
        ident = (ev.call_sid, ev.source, ev.event_id)
        if ident in seen:
            counts["duplicates_in_batch"] += 1
            continue
        seen.add(ident)
        calls[ev.call_sid].append(pack(ev, raw, policy, journal))
    return calls


def send(client: Any, sha: str, stream: str, entries: list[Any], calls: dict[str, list[Any]], per_call: bool,
         batch: int) -> Any:
    """One pipeline: the fold script (per batch or per call), XACK, and the next XREADGROUP."""
    pipe = client.pipeline(transaction=False)
    if per_call:
        for sid, packed in calls.items():
            pipe.evalsha(sha, 3, *call_keys(sid), PREFIX + ":ix:", *call_args(sid, packed))
    else:
        keys: list[Any] = []
        args: list[Any] = [PREFIX + ":ix:"]
        for sid, packed in calls.items():
            keys += call_keys(sid)
            args += call_args(sid, packed)
        pipe.evalsha(sha, len(keys), *keys, *args)
    pipe.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
    pipe.xreadgroup(GROUP, "fold", {stream: ">"}, count=batch)
    return pipe.execute()


async def drain(url: str, policy: Any, journal: str, per_call: bool, overlap: bool = False,
                batch: int = 500) -> dict[str, int]:
    """Drain the stream. With `overlap`, one batch is read ahead and packed while Redis folds the one
    before (the worker still holds no call state: the scripts run in order on the connection)."""
    client = open_redis(Settings(redis_url=url, key_prefix="bench"))
    stream = Store(client, "bench").stream
    sha = await client.script_load(LUA)
    await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    counts = {"applied": 0, "skipped": 0, "duplicates_in_batch": 0, "invalid": 0}

    def tally(results: list[Any]) -> list[Any]:
        for applied, skipped in results[:-2]:
            counts["applied"] += applied
            counts["skipped"] += skipped
        return list(results[-1][0][1]) if results[-1] else []

    def read() -> Any:
        return client.xreadgroup(GROUP, "fold", {stream: ">"}, count=batch)

    first = await read()
    queue = [list(first[0][1])] if first else []
    if overlap and queue:
        second = await read()
        if second:
            queue.append(list(second[0][1]))
    pending = None
    while queue:
        entries = queue.pop(0)
        calls = build(entries, policy, journal, counts)
        if pending is not None:
            more = tally(await pending)
            if more:
                queue.append(more)
        pending = asyncio.ensure_future(send(client, sha, stream, entries, calls, per_call, batch))
        if not overlap:
            more = tally(await pending)
            pending = None
            if more:
                queue.append(more)
    if pending is not None:
        more = tally(await pending)
        assert not more
    await client.aclose()
    return counts


# -- correctness -------------------------------------------------------------------------------------

def _split(v: bytes) -> tuple[bytes, bytes]:
    n, _, rest = v.partition(b":")
    return rest[:int(n)], rest[int(n):]


def _register(v: bytes) -> list[Any]:
    okey, value = _split(v)
    eid, _, src = okey[17:].partition(b"\0")
    return [int(okey[:17]), eid.decode(), src.decode(), orjson.loads(value)]


def from_fields(h: dict[bytes, bytes]) -> dict[str, Any]:
    """What the fold stored, in CallState's terms."""
    out: dict[str, Any] = {"status": None, "started": None, "answered": None, "duration": None,
                           "first_seen": None, "provider": None, "costs": {}, "registers": {}, "meta": {}}
    if b"st" in h:
        k, text = _split(h[b"st"])
        out["status"] = [int(k[:1]), int(k[1:18]), k[18:].decode(), text.decode()]
    for name, field in (("started", b"sa"), ("answered", b"an")):
        if field in h:
            out[name] = [int(h[field][:17]), h[field][17:].decode()]
    if b"du" in h:
        out["duration"] = int(h[b"du"])
    if b"fs" in h:
        out["first_seen"] = int(h[b"fs"])
    if b"pv" in h:
        out["provider"] = h[b"pv"].decode()
    for field, value in h.items():
        if field.startswith(b"c:"):
            out["costs"][field[2:].decode()] = int(value)
        elif field.startswith(b"r:"):
            out["registers"][field[2:].decode()] = _register(value)
        elif field.startswith(b"m:"):
            out["meta"][field[2:].decode()] = _register(value)
    return out


FOLDED = ("status", "started", "answered", "duration", "first_seen", "provider", "costs", "registers", "meta")


def compare(sid: str, state: CallState, got: dict[str, Any], mismatches: dict[str, int]) -> None:
    for name in FOLDED:
        if getattr(state, name) != got[name]:
            mismatches[name] += 1
            if mismatches[name] <= 2:
                print(f"  mismatch {sid} {name}: rules {getattr(state, name)!r} fold {got[name]!r}")


def check(url: str, events: list[bytes], policy: Any) -> dict[str, Any]:
    """Fold each call's distinct events with core.rules.apply_event and compare with the hash; the time
    index and the day rollups against the same reference."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(url)
    by_call: dict[str, dict[str, CallEvent]] = defaultdict(dict)
    for raw in events:
        ev = CallEvent.model_validate_json(raw)
        by_call[ev.call_sid][ev.key] = ev
    mismatches: dict[str, int] = defaultdict(int)
    days: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    pipe = r.pipeline(transaction=False)
    for sid in by_call:
        pipe.hgetall(call_keys(sid)[0])
        pipe.zscore(f"{PREFIX}:ix:{{{zlib.crc32(sid.encode()) % SHARDS}}}:t", call_keys(sid)[0])
        pipe.zcard(call_keys(sid)[2])
    replies = pipe.execute()
    for i, (sid, evs) in enumerate(by_call.items()):
        state = CallState()
        for ev in evs.values():
            apply_event(state, ev, policy)
        compare(sid, state, from_fields(replies[3 * i]), mismatches)
        list_us = state.started[0] if state.started else state.first_seen
        if replies[3 * i + 1] is None or int(replies[3 * i + 1]) != list_us:
            mismatches["time index"] += 1
        if replies[3 * i + 2] != len(evs):
            mismatches["order index"] += 1
        day = days[(zlib.crc32(sid.encode()) % SHARDS, list_us // 86_400_000_000)]
        day["n"] += 1
        for component, amount in state.costs.items():
            day[component] += amount
    for (shard, day_n), want in days.items():
        have = {k.decode(): int(v) for k, v in r.hgetall(f"{PREFIX}:ix:{{{shard}}}:d:{day_n}").items()}
        if have != dict(want):
            mismatches["day rollup"] += 1
    r.close()
    return {"calls": len(by_call), "mismatches": dict(mismatches)}


def memory_per_call(url: str, calls: int) -> dict[str, float]:
    import redis as sync_redis

    r = sync_redis.Redis.from_url(url)
    totals = {"hash": 0, "journal": 0, "order": 0}
    pipe = r.pipeline(transaction=False)
    for c in range(calls):
        for key in call_keys(f"CA{c:032x}"):
            pipe.memory_usage(key, samples=0)
    used = pipe.execute()
    for i, name in enumerate(list(totals) * calls):
        totals[name] += int(used[i] or 0)
    index = sum(int(r.memory_usage(k, samples=0) or 0) for k in r.scan_iter(match=f"{PREFIX}:ix:*", count=1000))
    r.close()
    out = {name: total / calls for name, total in totals.items()}
    out["index"] = index / calls
    out["total"] = sum(out.values())
    return out


# -- measurement -----------------------------------------------------------------------------------------

def resetstat(port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "CONFIG", "RESETSTAT"], check=True, stdout=subprocess.DEVNULL)


def fold_round(redis: run.RedisServer, events: list[bytes], policy: Any, journal: str,
               per_call: bool, overlap: bool = False) -> dict[str, Any]:
    redis.flush()
    asyncio.run(run.fill_stream(redis.url, events))
    resetstat(redis.port)
    cpu, server = costs.own_cpu(), costs.redis_cpu(redis.port)
    started = time.perf_counter()
    counts = asyncio.run(drain(redis.url, policy, journal, per_call, overlap))
    elapsed = time.perf_counter() - started
    n = len(events)
    return {"rate": n / elapsed, "worker_us": 1e6 * (costs.own_cpu() - cpu) / n,
            "redis_us": 1e6 * (costs.redis_cpu(redis.port) - server) / n, "counts": counts,
            "commands": {name: usec / n for name, usec in costs.command_usec(redis.port).items()}}


def show(label: str, r: dict[str, Any]) -> None:
    print(f"  {label:28} {r['rate']:7,.0f}/s = {1e6 / r['rate']:6.1f} µs wall: worker CPU {r['worker_us']:6.1f} µs,"
          f" Redis CPU {r['redis_us']:5.1f} µs", flush=True)


def top_commands(r: dict[str, Any]) -> str:
    top = sorted(r["commands"].items(), key=lambda item: -item[1])[:12]
    return ", ".join(f"{name} {usec:.2f}" for name, usec in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--journal", choices=("raw", "compact", "off"), default="raw")
    parser.add_argument("--per-call", action="store_true", help="one EVALSHA per call (pipelined), not per batch")
    parser.add_argument("--overlap", action="store_true", help="pack the next batch while Redis folds this one")
    parser.add_argument("--no-product", action="store_true", help="fold and floor rounds only")
    parser.add_argument("--check-only", action="store_true", help="correctness and memory, no timing rounds")
    args = parser.parse_args()

    random.seed(7)
    events = run.call_events(2000, 10)
    policy = Settings().policy
    redis = run.RedisServer()
    try:
        print(f"{len(events):,} events, 2,000 calls, batch 500, journal {args.journal}, "
              f"{'one EVALSHA per call' if args.per_call else 'one EVALSHA per batch'}"
              f"{', overlapped' if args.overlap else ''}", flush=True)
        for journal in ("raw", "compact", "off"):
            r = fold_round(redis, events, policy, journal, args.per_call, args.overlap)
            result = check(redis.url, events, policy)
            mem = memory_per_call(redis.url, 2000)
            print(f"  journal {journal:7}: {r['counts']}; check {result['calls']} calls, mismatches "
                  f"{result['mismatches'] or 0}; bytes/call {mem['total']:,.0f} = hash {mem['hash']:,.0f} + journal "
                  f"{mem['journal']:,.0f} + order {mem['order']:,.0f} + index {mem['index']:,.0f}", flush=True)
        if args.check_only:
            return
        rounds = []
        for _ in range(args.rounds):
            fold = fold_round(redis, events, policy, args.journal, args.per_call, args.overlap)
            show("fold", fold)
            redis.flush()
            floor = run.floor_apply(redis.url, len(events), 2000, 500) or float("nan")  # nan: no floor found
            print(f"  {'floor_worker.py':28} {floor:7,.0f}/s = {1e6 / floor:6.1f} µs wall", flush=True)
            product = None
            if not args.no_product:
                redis.flush()
                product = asyncio.run(costs.product_costs(redis, events, 500))
                show("product", product)
            rounds.append((fold, floor, product))
        print("  fold / floor (rate): " + ", ".join(f"{f['rate'] / fl:.2f}" for f, fl, _ in rounds))
        print("  fold Redis time per event by command (last round; evalsha includes the commands it calls):")
        print("    " + top_commands(rounds[-1][0]))
        if rounds[-1][2]:
            print("  product, same:\n    " + top_commands(rounds[-1][2]))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
