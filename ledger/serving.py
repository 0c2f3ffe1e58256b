"""Serve one app until SIGTERM/SIGINT, with the connection guard, then drain and return.

`web.run_app` cannot take a custom protocol, so this is its small equivalent: a `LedgerRunner`
(app startup, the guarded server, app cleanup), one TCP site, and a stop signal.
"""

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from ledger.connections import ConnectionGuard, LedgerRunner
from ledger.settings import Settings
from ledger.web import METRICS


def make_runner(app: web.Application, settings: Settings) -> LedgerRunner:
    """The runner for `app` with the connection limits of `settings` (access log off: it echoes request lines)."""
    guard = ConnectionGuard(header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections,
                            metrics=app[METRICS])
    return LedgerRunner(app, guard, access_log=None, keepalive_timeout=settings.keepalive_timeout_s,
                        shutdown_timeout=settings.shutdown_grace_s)


async def serve(app: web.Application, settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting, let in-flight requests finish (bounded by
    LEDGER_SHUTDOWN_GRACE_S), and run the app's cleanup (the consumer drains, Redis closes)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = make_runner(app, settings)
    await runner.setup()  # app startup: a DurabilityUnavailable, say, propagates to the CLI
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def run(app: web.Application, settings: Settings) -> None:
    """`serve` on a fresh event loop (uvloop when installed); returns once drained."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # optional speed-up
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(app, settings))
