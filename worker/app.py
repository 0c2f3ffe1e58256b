"""The worker's apply loop as part of an app's lifecycle."""

from collections.abc import AsyncIterator

from aiohttp import web

from call_ledger.web.base import METRICS, SETTINGS, STORE
from call_ledger.worker.consumer import Consumer

CONSUMER = web.AppKey("consumer", Consumer)


def add_consumer(app: web.Application) -> None:
    """Run the apply loop for the app's lifetime; on shutdown it drains within the grace period."""

    async def consumer_ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = Consumer(app[STORE], app[SETTINGS], app[METRICS])
        app[CONSUMER] = consumer
        await consumer.start()
        yield
        await consumer.stop()

    app.cleanup_ctx.append(consumer_ctx)
