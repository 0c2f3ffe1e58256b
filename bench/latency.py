"""Webhook 2xx → visible in GET, under a steady open-loop load on one `call-ledger serve`.

    python bench/latency.py                 # 1,000 and 2,000 events/s, 10 s each
    python bench/latency.py --rates 2000 --seconds 20 --cached-calls 100000

Starts its own redis-server (no persistence) and one `serve` process (intake, read API and
the apply loop in one process, logs to /dev/null). A generator in this process sends
signed platform `call.usage` webhooks on a fixed schedule (open loop: a send is due at
t0 + i/rate whether or not earlier ones finished, so a slow service meets a queue, as it
would in production), over many calls. About 100 events a second (one in ten at 1,000/s, one
in thirty at 3,000/s) open a call of their own; right after such an event's 2xx the generator
polls GET /api/v1/calls/sid/{sid} until the record is there (every 1 ms for the first 10 ms,
then every 5 ms, so that slow answers do not turn the polls into the load), and the time from
the 2xx to the first 200 is that event's latency. An event still not visible after 2 s counts
as 2 s (and as unseen), so that an overloaded service cannot make the pollers the load.
The generator runs on uvloop.

With --cached-calls N, the stream first holds N completed calls (4 events each), which `serve`
drains before the load starts, so its worker holds N calls in its cache while it serves
(LEDGER_WORKER_CACHE_BYTES is raised to hold them). Every rate then also reports the longest
garbage collection `serve` made during it, from its `ledger_gc_pause_seconds` histogram (the
bucket it fell in) and `ledger_gc_pause_longest_seconds`: a collection stops the process, and
one that walks a large cache of live objects was the latency tail's other cause. A steady load
allocates about as much as it frees, so a 10-second rate may see no collection at all; the
drain, which grows the cache from nothing, sees every kind, and its longest is printed too.
The generator shares the machine's cores with the service and Redis: quote the figures
with that said.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import RedisServer, free_port, stop, wait_port  # noqa: E402

SECRET_KEY = b"bench-platform-signing-key-32byt"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
TOKEN = "bench-latency-token"
POLL_S = 0.001  # while the answer is young
POLL_LATE_S = 0.005  # after 10 ms
GIVE_UP_S = 2.0
TIMED_PER_S = 100


def signed(body: bytes, webhook_id: str) -> dict[str, str]:
    ts = str(int(time.time()))
    mac = hmac.new(SECRET_KEY, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts, "content-type": "application/json",
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def body_of(sid: str, n: int) -> bytes:
    return (f'{{"type":"call.usage","call_sid":"{sid}","occurred_at":"2026-11-24T10:00:{n % 60:02d}Z",'
            f'"data":{{"component":"llm","cost":"0.00{n % 9 + 1}"}}}}').encode()


async def visible_after(session: aiohttp.ClientSession, url: str, auth: dict[str, str],
                        accepted: float) -> float | None:
    """Seconds from `accepted` until GET `url` answers 200; None if not within GIVE_UP_S."""
    while True:
        async with session.get(url, headers=auth) as response:
            await response.read()
            if response.status == 200:
                return time.perf_counter() - accepted
        waited = time.perf_counter() - accepted
        if waited > GIVE_UP_S:
            return None
        await asyncio.sleep(POLL_S if waited < 0.01 else POLL_LATE_S)


async def run_rate(base: str, rate: int, seconds: float, tag: str) -> dict[str, float]:
    latencies: list[float] = []
    statuses: Counter[object] = Counter()
    errors = 0
    late = 0
    unseen = 0
    every = max(1, rate // TIMED_PER_S)
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=256)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors, unseen
            timed = i % every == 0
            sid = f"CA{tag}{i:08d}" if timed else f"CA{tag}busy{i % 500:04d}"
            body = body_of(sid, i)
            try:
                async with session.post(base + "/webhooks/platform", data=body,
                                        headers=signed(body, f"msg_{tag}_{i}")) as response:
                    await response.read()
                    if response.status >= 300:
                        errors += 1
                        statuses[response.status] += 1
                        return
                accepted = time.perf_counter()
                if not timed:
                    return
                seen = await visible_after(session, f"{base}/api/v1/calls/sid/{sid}", auth, accepted)
                unseen += seen is None
                latencies.append(GIVE_UP_S if seen is None else seen)
            except aiohttp.ClientError as exc:
                errors += 1
                statuses[type(exc).__name__] += 1

        tasks = []
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1  # the generator itself fell behind its schedule
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    if statuses:
        print(f"    errors at {rate}/s: {dict(statuses)}", file=sys.stderr)
    return {"rate": rate, "sent": total, "achieved": total / elapsed, "errors": errors, "late": late,
            "timed": len(latencies), "unseen": unseen, "p50_ms": pct(0.50), "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


def start_serve(redis_url: str, cache_bytes: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    extra = {} if cache_bytes is None else {"LEDGER_WORKER_CACHE_BYTES": str(cache_bytes)}
    env = {**os.environ, **extra, "LEDGER_REDIS_URL": redis_url, "LEDGER_API_TOKENS": TOKEN,
           "LEDGER_PLATFORM_WEBHOOK_SECRET": SECRET, "LEDGER_PORT": str(port), "LEDGER_LOG_FORMAT": "json",
           "LEDGER_KEY_PREFIX": "benchlat", "PYTHONPATH": str(ROOT),
           "LEDGER_MAX_CONNECTIONS_PER_PEER": "0"}  # one load generator stands in for many senders
    proc = subprocess.Popen([sys.executable, "-m", "call_ledger.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def completed_calls(n: int) -> list[bytes]:
    """Four events (as intake stores them) of each of n completed calls, call by call."""
    from call_ledger.core.events import CallEvent, Cost
    from call_ledger.core.instants import format_us

    base_us = 1_795_500_000_000_000
    out = []
    for c in range(n):
        sid, us = f"CAcached{c:010d}", base_us + c * 1_000_000
        common = {"source": "platform", "call_sid": sid, "type": "bench"}
        for i, fields in enumerate(({"status": "initiated", "direction": "outbound", "from_number": "+15551234567",
                                     "to_number": "+15559876543"},
                                    {"assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support",
                                     "call_meta": {"customer_id": f"cust_{c}"}},
                                    {"costs": (Cost(component="llm", amount_nano=1_230_000, currency="USD"),)},
                                    {"status": "completed", "duration": 54})):
            at = us + i * 20_000_000
            out.append(CallEvent(event_id=f"{sid}-{i}", occurred_at=format_us(at), occurred_us=at, **common,
                                 **fields).model_dump_json(exclude_defaults=True).encode())  # type: ignore[arg-type]
    return out


def fill(redis_url: str, events: list[bytes]) -> None:
    import redis as redis_py

    from call_ledger.store.keys import Keys

    client = redis_py.Redis.from_url(redis_url)
    stream = Keys("benchlat").events
    for start in range(0, len(events), 5000):
        pipe = client.pipeline(transaction=False)
        for raw in events[start:start + 5000]:
            pipe.xadd(stream, {"e": raw})
        pipe.execute()
    client.close()


def drained(base: str, timeout_s: float) -> None:
    """Wait until serve's worker has applied everything in the stream (its lag and pending gauges,
    refreshed every few seconds, both 0 twice in a row)."""
    import urllib.request

    deadline, zeros = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith(("ledger_consumer_lag ", "ledger_consumer_pending "))}
        zeros = zeros + 1 if values and not any(values.values()) else 0
        if zeros >= 2:
            return
        time.sleep(1)
    raise RuntimeError(f"serve did not drain the cached calls within {timeout_s:.0f} s")


def gc_pauses(base: str) -> tuple[dict[float, float], float]:
    """serve's collections so far, as (bucket upper bound in seconds -> count) summed over the
    generations, and the longest pause since it started (seconds)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    longest = 0.0
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ledger_gc_pause_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0) + sample.value
            elif sample.name == "ledger_gc_pause_longest_seconds":
                longest = sample.value
    return buckets, longest


def longest_between(before: tuple[dict[float, float], float], after: tuple[dict[float, float], float]) -> str:
    """The longest collection between two gc_pauses() readings, as precisely as they tell it."""
    (b_buckets, b_longest), (a_buckets, a_longest) = before, after
    if a_longest > b_longest:
        return f"{a_longest * 1000:.1f} ms"  # a new longest: exact
    counts = sorted((bound, a_buckets[bound] - b_buckets.get(bound, 0)) for bound in a_buckets)
    total = counts[-1][1] if counts else 0
    if not total:
        return "no collection"
    below = next(bound for bound, count in counts if count == total)  # cumulative: all fit under `below`
    return f"≤ {below * 1000:g} ms ({total:.0f} collections)"


def measure(rates: list[int], seconds: float, cached_calls: int = 0) -> list[dict[str, Any]]:
    redis = RedisServer()
    try:
        if cached_calls:
            fill(redis.url, completed_calls(cached_calls))
        # A cached 4-event call takes about 4 KB of the cache's budget (worker/apply.py): room for all.
        proc, base = start_serve(redis.url, 8 * 1024 * cached_calls if cached_calls else None)
        try:
            started = gc_pauses(base)
            if cached_calls:
                drained(base, 60 + cached_calls / 500)
            filled = gc_pauses(base)
            uvloop.run(run_rate(base, 200, 2, "warm"))  # connections, scripts, caches
            rows = []
            for rate in rates:
                before = gc_pauses(base)
                row: dict[str, Any] = uvloop.run(run_rate(base, rate, seconds, f"r{rate}x"))
                row["gc_longest"] = longest_between(before, gc_pauses(base))
                # While the cache filled, collections saw it grow (each a full one, the last the largest).
                row["gc_filling"] = longest_between(started, filled) if cached_calls else "no cache filled"
                rows.append(row)
            return rows
        finally:
            stop(proc)
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cached-calls", type=int, default=0)
    args = parser.parse_args()
    print(f"webhook 2xx -> visible in GET, open loop, one serve process (~{TIMED_PER_S} events/s timed), "
          f"{args.cached_calls:,} calls cached")
    for row in measure(args.rates, args.seconds, args.cached_calls):
        print(f"  {row['rate']:>5,.0f}/s offered, {row['achieved']:,.0f}/s sent: p50 {row['p50_ms']:.1f} ms, "
              f"p90 {row['p90_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms "
              f"({row['timed']} timed, "
              f"{row['unseen']} not visible within {GIVE_UP_S:.0f} s, {row['errors']} errors, "
              f"{row['late']} sends late); longest GC pause {row['gc_longest']}")
    if args.cached_calls:
        print(f"  longest GC pause while serve's worker filled its cache with {args.cached_calls:,} calls: "
              f"{row['gc_filling']}")


if __name__ == "__main__":
    main()
