"""The worker's apply loop, and the finalizer of outbound call events, as part of an app's lifecycle."""

from collections.abc import AsyncIterator

from aiohttp import web

from call_ledger.web.base import METRICS, SETTINGS, STORE
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.outbound import Finalizer

CONSUMER = web.AppKey("consumer", Consumer)
FINALIZER = web.AppKey("finalizer", Finalizer)


def add_consumer(app: web.Application) -> None:
    """Run the apply loop for the app's lifetime; on shutdown it drains within the grace period. The
    finalizer runs beside it (SPEC §15: wherever events are applied, quiet calls are finalized)."""

    async def consumer_ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = Consumer(app[STORE], app[SETTINGS], app[METRICS])
        finalizer = Finalizer(app[STORE], app[SETTINGS], app[METRICS])
        app[CONSUMER], app[FINALIZER] = consumer, finalizer
        await consumer.start()
        await finalizer.start()
        yield
        await finalizer.stop()
        await consumer.stop()

    app.cleanup_ctx.append(consumer_ctx)
