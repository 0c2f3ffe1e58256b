"""The worker's loops as part of an app's lifecycle: the apply loop; the finalizer, fan-out and delivery of
outbound events."""

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from call_ledger.archive import open_archive
from call_ledger.web.base import METRICS, SETTINGS, STORE
from call_ledger.web.ssrf import SafeResolver
from call_ledger.worker.archive import Archiver
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.delivery import Outbound
from call_ledger.worker.outbound import Finalizer

CONSUMER = web.AppKey("consumer", Consumer)
# The app's one "outboxes are due" event: the consumer and the finalizer set it after scheduling fan-out, the
# Outbound's fan-out loop waits on it (and polls, for other processes' commits). Made when the app is built,
# so that whichever of the two contexts starts first finds it.
FANOUT_DUE = web.AppKey("fanout_due", asyncio.Event)


def fanout_due(app: web.Application) -> asyncio.Event:
    if FANOUT_DUE not in app:
        app[FANOUT_DUE] = asyncio.Event()
    return app[FANOUT_DUE]


def add_consumer(app: web.Application) -> None:
    """Run the apply loop for the app's lifetime; on shutdown it drains within the grace period."""
    due = fanout_due(app)

    async def consumer_ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = Consumer(app[STORE], app[SETTINGS], app[METRICS], fanout_due=due)
        app[CONSUMER] = consumer
        await consumer.start()
        yield
        await consumer.stop()

    app.cleanup_ctx.append(consumer_ctx)


ARCHIVER = web.AppKey("archiver", Archiver)


def add_archiver(app: web.Application) -> None:
    """Archive passes every LEDGER_ARCHIVE_EVERY_S (SPEC §16) when LEDGER_ARCHIVE_URL is set: `serve` and
    `worker` (any number of processes: one at a time runs a pass, the others find the lock taken)."""
    settings = app[SETTINGS]
    if not settings.archive_url:
        return
    files = open_archive(settings.archive_url)  # a malformed URL stops start-up (ArchiveConfigError)

    async def archiver_ctx(app: web.Application) -> AsyncIterator[None]:
        archiver = Archiver(app[STORE], settings, files, app[METRICS])
        app[ARCHIVER] = archiver
        await archiver.start()
        yield
        await archiver.stop()

    app.cleanup_ctx.append(archiver_ctx)


OUTBOUND = web.AppKey("outbound", Outbound)
FINALIZER = web.AppKey("finalizer", Finalizer)


def add_outbound(app: web.Application) -> None:
    """The finalizer, fan-out and delivery of outbound call events (SPEC §15) for the app's lifetime: `serve`,
    `worker`, `deliver` (each process once: finalize.lua makes any number of finalizers safe)."""
    due = fanout_due(app)

    async def outbound_ctx(app: web.Application) -> AsyncIterator[None]:
        store, settings = app[STORE], app[SETTINGS]
        # Names are checked by the resolver as they resolve, at each delivery (DNS rebinding); literal
        # addresses by the delivery itself.
        resolver = None if settings.outbound_allow_private else SafeResolver(allow_private=False)
        outbound = Outbound(store.outbox, store.endpoints, store.deliveries, settings, app[METRICS], resolver,
                            due=due)
        finalizer = Finalizer(store, settings, app[METRICS], fanout_due=due)
        app[OUTBOUND], app[FINALIZER] = outbound, finalizer
        await finalizer.start()
        await outbound.start()
        yield
        await outbound.stop()
        await finalizer.stop()

    app.cleanup_ctx.append(outbound_ctx)
