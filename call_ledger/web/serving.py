"""Serve one app until SIGTERM/SIGINT, with the connection guard, then drain and return.

`web.run_app` cannot take a custom protocol, so this is its small equivalent: a `LedgerRunner`
(app startup, the guarded server, app cleanup), one TCP site, and a stop signal.
"""

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from call_ledger.settings import Settings
from call_ledger.web.base import METRICS, metrics_app
from call_ledger.web.connections import ConnectionGuard, LedgerRunner


class ListenFailed(Exception):
    """The listening socket could not be opened."""


def make_runner(app: web.Application, settings: Settings) -> LedgerRunner:
    """The runner for `app` with the connection limits of `settings` (access log off: it echoes request lines)."""
    guard = ConnectionGuard(header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections,
                            max_connections_per_peer=settings.max_connections_per_peer, metrics=app[METRICS])
    return LedgerRunner(app, guard, access_log=None, keepalive_timeout=settings.keepalive_timeout_s,
                        shutdown_timeout=settings.shutdown_grace_s)


async def serve(app: web.Application, settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting, let in-flight requests finish (bounded by
    LEDGER_SHUTDOWN_GRACE_S), and run the app's cleanup (the consumer drains, Redis closes)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = make_runner(app, settings)
    # Before start-up, as run_app does: a SIGTERM during start-up still ends in a clean stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner.setup()  # app startup: a DurabilityUnavailable, say, propagates to the CLI
        metrics_runner = None
        try:
            await _listen(runner, settings.host, settings.port)
            if settings.metrics_port is not None:  # /metrics on a port of its own (LEDGER_METRICS_PORT)
                metrics_runner = web.AppRunner(metrics_app(app), access_log=None)
                await metrics_runner.setup()
                await _listen(metrics_runner, settings.host, settings.metrics_port)
            await stop.wait()
        finally:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await runner.cleanup()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _listen(runner: web.BaseRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # port taken, address not ours: one line from the CLI, not a traceback
        raise ListenFailed(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}") from None


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
