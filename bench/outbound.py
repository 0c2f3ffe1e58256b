"""Outbound delivery (SPEC §15): messages delivered per second to a local receiver, and first-attempt
latency from the outbox write (fan-out + delivery) p50/p99, on one process with the default settings.

    python bench/outbound.py REDIS_URL        # or through bench/run.py (its redis-server)

The outbox here is an in-process stand-in (what fan-out reads of `store.outbox`): the commit path's
part of the latency (commit -> outbox) is not in these numbers, nor the apply ratio with an endpoint.
"""

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint, OutboxMessage
from call_ledger.core.policy import Policy
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.settings import Settings
from call_ledger.store import Store, open_redis
from call_ledger.store.deliveries import Enqueue
from call_ledger.web.logs import configure_logging
from call_ledger.web.metrics import Metrics
from call_ledger.worker.delivery import Outbound, now_ms

RECORD = b'{"call_sid":"CA0123456789abcdef0123456789abcdef","status":"completed","cost":{"total":"0.0421"}}'


class Outbox:
    def __init__(self) -> None:
        self.boxes: dict[str, list[OutboxMessage]] = {}

    async def claim_due(self, shard: int, now: int, limit: int, lease_ms: int) -> list[Any]:
        return [sid for sid, box in self.boxes.items() if box and shard_of(sid) == shard][:limit]

    async def messages(self, sid: Any, policy: Policy) -> list[OutboxMessage]:
        return list(self.boxes.get(sid, []))

    async def done(self, claim: Any, message_ids: list[str]) -> None:
        self.boxes[claim] = [m for m in self.boxes[claim] if m.id not in message_ids]


class Sid(str):
    @property
    def sid(self) -> str:
        return str(self)


class Endpoints:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    async def all(self) -> list[Endpoint]:
        return self.endpoints


def message(n: int) -> OutboxMessage:
    return OutboxMessage(f"msg_{n:032x}", "call.ended", 0, f"CA{n:032x}", now_ms(), None, RECORD)


async def measure(redis_url: str, throughput_messages: int = 5000, latency_messages: int = 300) -> dict[str, float]:
    arrived: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        arrived[request.headers["webhook-id"]] = time.perf_counter()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = Settings(redis_url=redis_url, outbound_allow_private=True)
    configure_logging("json", "warning")  # one line per attempt would time the terminal
    store = Store(open_redis(settings))
    await store.redis.flushall()
    endpoint = Endpoint("ep_bench", f"http://127.0.0.1:{port}/hook", MESSAGE_TYPES, "", None,
                        ((new_secret(), None),), now_ms())
    outbox = Outbox()
    outbound = Outbound(outbox, Endpoints([endpoint]), store.deliveries, settings, Metrics())
    await outbound.start()
    try:
        # Throughput: a backlog queued at once, drained by one process.
        backlog = [message(n) for n in range(throughput_messages)]
        await store.deliveries.enqueue_all([Enqueue(endpoint.id, m) for m in backlog], now_ms())
        started = time.perf_counter()
        outbound.delivery.wake(endpoint.id)
        while len(arrived) < throughput_messages:
            await asyncio.sleep(0.01)
        rate = throughput_messages / (time.perf_counter() - started)
        # Latency: an outbox write every 10 ms, until it reaches the receiver.
        written: dict[str, float] = {}
        for n in range(throughput_messages, throughput_messages + latency_messages):
            m = message(n)
            written[m.id] = time.perf_counter()
            outbox.boxes[Sid(m.call_sid)] = [m]
            await asyncio.sleep(0.01)
        while not all(mid in arrived for mid in written):
            await asyncio.sleep(0.01)
        latencies = sorted((arrived[mid] - at) * 1000 for mid, at in written.items())
        return {"rate": rate, "p50_ms": statistics.median(latencies),
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1]}
    finally:
        await outbound.stop()
        await store.close()
        await runner.cleanup()


if __name__ == "__main__":
    result = asyncio.run(measure(sys.argv[1]))
    print(f"delivered {result['rate']:,.0f} messages/s; outbox -> receiver p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms")
