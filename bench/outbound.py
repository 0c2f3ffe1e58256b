"""Outbound call events (SPEC §15), measured on the real path: a `call-ledger serve` on the bench's
redis-server, one endpoint (created through the API) pointing at a local aiohttp receiver.

    python bench/outbound.py                 # its own redis-server; or through bench/run.py (the table)

- delivered/s: N calls end at once (a signed terminal `call.status` webhook each, posted closed loop over
  32 connections, as wrk -c32 posts the floors' webhooks), and the receiver counts the `call.ended`
  messages: N / (first post -> last arrival);
- first attempt: 100 calls a second end, open loop; per call, its terminal webhook's 2xx -> the receiver's
  arrival of its `call.ended` (the commit is between the two: this is commit -> first attempt, and a bit
  more), p50 / p99;
- apply with an endpoint: bench/run.py's apply row (a fresh worker drains pre-filled events, every call
  ending) with fan-out and delivery running in the worker's process, as in `worker`, with no endpoint and
  with one (its receiver in another process), and the ratio of the two.

The generator and the receiver share the machine's 2 cores with the service and Redis: quote the figures
with that said.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import uvloop
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from latency import SECRET, TOKEN, signed  # noqa: E402
from run import DEVNULL, RedisServer, call_events, fill_stream, free_port, stop, wait_port  # noqa: E402

CONNECTIONS = 32  # the floors' wrk -c32
LATENCY_RATE = 100  # calls ending per second while first attempts are timed
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def terminal(sid: str) -> bytes:
    return (f'{{"type":"call.status","call_sid":"{sid}","occurred_at":"2026-11-24T10:01:00Z",'
            f'"data":{{"status":"completed","duration":60}}}}').encode()


class Receiver:
    """The endpoint: answers 204, notes when each call's `call.ended` arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.perf_counter()
        message = orjson.loads(body)
        if message["type"] == "call.ended":
            self.arrived.setdefault(message["data"]["call"]["call_sid"], at)
        return web.Response(status=204)

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def wait_for(self, sids: list[str], timeout_s: float = 120) -> None:
        deadline = time.perf_counter() + timeout_s
        while not all(sid in self.arrived for sid in sids):
            if time.perf_counter() > deadline:
                missing = sum(sid not in self.arrived for sid in sids)
                raise RuntimeError(f"{missing} of {len(sids)} messages never arrived")
            await asyncio.sleep(0.005)


def start_serve(redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LEDGER_REDIS_URL": redis_url, "LEDGER_API_TOKENS": TOKEN,
           "LEDGER_PLATFORM_WEBHOOK_SECRET": SECRET, "LEDGER_PORT": str(port), "LEDGER_LOG_FORMAT": "json",
           "LEDGER_KEY_PREFIX": "benchout", "PYTHONPATH": str(ROOT), "LEDGER_OUTBOUND_ALLOW_PRIVATE": "true",
           "LEDGER_MAX_CONNECTIONS_PER_PEER": "0"}  # one load generator stands in for many senders
    proc = subprocess.Popen([sys.executable, "-m", "call_ledger.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


async def serve_round(base: str, calls: int, timed: int) -> dict[str, float]:
    receiver = Receiver()
    port = await receiver.start()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        created = await http.post(base + "/api/v1/webhook-endpoints", headers=AUTH,
                                  json={"url": f"http://127.0.0.1:{port}/hook", "events": ["call.ended"]})
        assert created.status == 201, await created.text()
        await asyncio.sleep(2.5)  # the delivery loops' supervisor starts the endpoint's loop (≤ 2 s TTL)

        async def end(sid: str) -> float:
            body = terminal(sid)
            async with http.post(base + "/webhooks/platform", data=body, headers=signed(body, f"msg_{sid}")) as r:
                await r.read()
                assert r.status == 200, r.status
            return time.perf_counter()

        # (a) Throughput: every call ends as fast as 32 connections post.
        sids = [f"CAout{i:08d}" for i in range(calls)]
        queue = iter(sids)

        async def poster() -> None:
            for sid in queue:
                await end(sid)

        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(CONNECTIONS)))
        posted = time.perf_counter() - started
        await receiver.wait_for(sids)
        rate = calls / (max(receiver.arrived[sid] for sid in sids) - started)

        # (b) Latency: open loop, a call ending every 1/LATENCY_RATE s.
        timed_sids = [f"CAlat{i:08d}" for i in range(timed)]
        accepted: dict[str, float] = {}

        async def one(sid: str) -> None:
            accepted[sid] = await end(sid)

        tasks = []
        begun = time.perf_counter()
        for i, sid in enumerate(timed_sids):
            delay = begun + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(sid)))
        await asyncio.gather(*tasks)
        await receiver.wait_for(timed_sids)
    await receiver.stop()
    latencies = sorted((receiver.arrived[sid] - accepted[sid]) * 1000 for sid in timed_sids)
    return {"rate": rate, "post_rate": calls / posted, "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def measure_serve(redis: RedisServer, calls: int = 3000, timed: int = 500) -> dict[str, float]:
    redis.flush()
    proc, base = start_serve(redis.url)
    try:
        return uvloop.run(serve_round(base, calls, timed))
    finally:
        stop(proc)


# -- what delivery costs the apply loop ----------------------------------------------------------------------

async def apply_with_outbound(url: str, events: list[bytes], batch: int, receiver_port: int | None) -> float:
    """bench/run.py's product_apply with fan-out and delivery running in the same process (as in `worker`),
    with one endpoint at `receiver_port`, or none: events/s of the drain."""
    from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint
    from call_ledger.core.standard_webhooks import new_secret
    from call_ledger.runtime import tune_gc
    from call_ledger.settings import Settings
    from call_ledger.store import Store, open_redis
    from call_ledger.web.logs import configure_logging
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.consumer import Consumer
    from call_ledger.worker.delivery import Outbound

    await fill_stream(url, events)
    sys.stdout = DEVNULL
    configure_logging("json", "info")
    try:
        tune_gc()
        settings = Settings(redis_url=url, key_prefix="bench", batch_size=batch, consumer_name="bench",
                            outbound_allow_private=True)
        client = open_redis(settings)
        store = Store(client, "bench")
        if receiver_port is not None:
            await store.endpoints.create(Endpoint(
                "ep_" + "b" * 24, f"http://127.0.0.1:{receiver_port}/hook", MESSAGE_TYPES, "", None,
                ((new_secret(), None),), int(time.time() * 1000)), 50)
        metrics = Metrics()
        outbound = Outbound(store.outbox, store.endpoints, store.deliveries, settings, metrics)
        consumer = Consumer(store, settings, metrics, fanout_due=outbound.due)
        await outbound.start()
        await asyncio.sleep(0.3)  # the endpoint's loop is up
        started = time.perf_counter()
        applied = await consumer.run_burst()
        elapsed = time.perf_counter() - started
        await outbound.stop()
        await client.aclose()
    finally:
        sys.stdout = sys.__stdout__
    assert applied == len(events), (applied, len(events))
    return len(events) / elapsed


def start_receiver() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)], stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def measure_apply(redis: RedisServer, events: int = 20_000, per_call: int = 10, batch: int = 500,
                  rounds: int = 2) -> dict[str, float]:
    calls = max(1, events // per_call)
    stream = call_events(calls, per_call)
    receiver, port = start_receiver()
    without, with_one = [], []
    try:
        for _ in range(rounds):
            redis.flush()
            without.append(asyncio.run(apply_with_outbound(redis.url, stream, batch, None)))
            redis.flush()
            with_one.append(asyncio.run(apply_with_outbound(redis.url, stream, batch, port)))
    finally:
        stop(receiver)
    ratios = [w / n for w, n in zip(with_one, without, strict=True)]
    return {"events": len(stream), "calls": calls, "without": statistics.median(without),
            "with": statistics.median(with_one), "ratio": statistics.median(ratios)}


def receive_forever(port: int) -> None:
    async def run() -> None:
        await Receiver().start(port)
        await asyncio.Event().wait()

    uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)  # the apply rows' receiver process
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--skip-apply", action="store_true")
    args = parser.parse_args()
    if args.receiver:
        receive_forever(args.receiver)
        return
    redis = RedisServer()
    try:
        r = measure_serve(redis, args.calls)
        print(f"delivered {r['rate']:,.0f} messages/s ({args.calls} calls ended, posted at {r['post_rate']:,.0f}/s); "
              f"terminal webhook 2xx -> receiver, first attempt, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
        if not args.skip_apply:
            a = measure_apply(redis)
            print(f"apply with fan-out and delivery in the process: no endpoint {a['without']:,.0f} events/s, "
                  f"one endpoint {a['with']:,.0f} events/s, ratio {a['ratio']:.2f}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
