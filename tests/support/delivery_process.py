"""A process that runs only the delivery loops (call_ledger.worker.delivery.DeliveryLoops) on
LEDGER_REDIS_URL, for the endpoints in LEDGER_TEST_ENDPOINTS (JSON: [{"id", "url", "secret"}]): what a
`call-ledger deliver` process does once its messages are queued, without the outbox and endpoints parts.
`python -m tests.support.delivery_process`; SIGTERM stops it, SIGKILL is what the tests send."""

import asyncio
import os
import signal

import orjson

from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.delivery import DeliveryLoops, EndpointCache, now_ms
from tests.support.settings import make_settings


class StaticEndpoints:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    async def all(self) -> list[Endpoint]:
        return self.endpoints

    async def get(self, endpoint_id: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)


async def main() -> None:
    settings = make_settings(outbound_allow_private=True)  # the rest from LEDGER_* in the environment
    endpoints = [Endpoint(e["id"], e["url"], MESSAGE_TYPES, "", None, ((e["secret"], None),), now_ms())
                 for e in orjson.loads(os.environ["LEDGER_TEST_ENDPOINTS"])]
    store = Store.from_settings(settings)
    loops = DeliveryLoops(store.deliveries, EndpointCache(StaticEndpoints(endpoints)), settings, Metrics())
    await loops.start()
    print("delivery_started", flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await loops.stop()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
