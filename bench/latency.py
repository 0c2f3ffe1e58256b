"""Webhook 2xx → visible in GET, under a steady open-loop load on one `call-ledger serve`.

    python bench/latency.py                 # 1,000 and 3,000 events/s, 10 s each
    python bench/latency.py --rates 2000 --seconds 20

Starts its own redis-server (no persistence) and one `serve` process (intake, read API and
the apply loop in one process, logs to /dev/null). A generator in this process sends
signed platform `call.usage` webhooks on a fixed schedule (open loop: a send is due at
t0 + i/rate whether or not earlier ones finished, so a slow service meets a queue, as it
would in production), over many calls. One event in ten opens a call of its own; right
after its 2xx the generator polls GET /api/v1/calls/sid/{sid} until the record is there
(every 1 ms for the first 10 ms, then every 5 ms, so that slow answers do not turn the
polls into the load), and the time from the 2xx to the first 200 is that event's latency.
The generator runs on uvloop.
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


def signed(body: bytes, webhook_id: str) -> dict[str, str]:
    ts = str(int(time.time()))
    mac = hmac.new(SECRET_KEY, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts, "content-type": "application/json",
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def body_of(sid: str, n: int) -> bytes:
    return (f'{{"type":"call.usage","call_sid":"{sid}","occurred_at":"2026-11-24T10:00:{n % 60:02d}Z",'
            f'"data":{{"component":"llm","cost":"0.00{n % 9 + 1}"}}}}').encode()


async def run_rate(base: str, rate: int, seconds: float, tag: str) -> dict[str, float]:
    latencies: list[float] = []
    statuses: Counter[object] = Counter()
    errors = 0
    late = 0
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=256)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            timed = i % 10 == 0
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
                while True:
                    async with session.get(f"{base}/api/v1/calls/sid/{sid}", headers=auth) as response:
                        await response.read()
                        if response.status == 200:
                            latencies.append(time.perf_counter() - accepted)
                            return
                    await asyncio.sleep(POLL_S if time.perf_counter() - accepted < 0.01 else POLL_LATE_S)
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
            "timed": len(latencies), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


def start_serve(redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LEDGER_REDIS_URL": redis_url, "LEDGER_API_TOKENS": TOKEN,
           "LEDGER_PLATFORM_WEBHOOK_SECRET": SECRET, "LEDGER_PORT": str(port), "LEDGER_LOG_FORMAT": "json",
           "LEDGER_KEY_PREFIX": "benchlat", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ledger.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def measure(rates: list[int], seconds: float) -> list[dict[str, float]]:
    redis = RedisServer()
    try:
        proc, base = start_serve(redis.url)
        try:
            uvloop.run(run_rate(base, 200, 2, "warm"))  # connections, scripts, caches
            return [uvloop.run(run_rate(base, rate, seconds, f"r{rate}x")) for rate in rates]
        finally:
            stop(proc)
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    print("webhook 2xx -> visible in GET, open loop, one serve process (1 in 10 events timed)")
    for row in measure(args.rates, args.seconds):
        print(f"  {row['rate']:>5,.0f}/s offered, {row['achieved']:,.0f}/s sent: p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms ({row['timed']} timed, "
              f"{row['errors']} errors, {row['late']} sends late)")


if __name__ == "__main__":
    main()
