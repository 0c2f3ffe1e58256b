"""Stopping a background loop of the worker (the finalizer, the archiver) between two of its steps."""

import asyncio

import structlog

log = structlog.get_logger("ledger.worker")


async def stop_after_step(stopping: asyncio.Event, task: asyncio.Task[None] | None, grace_s: float,
                          name: str) -> None:
    """Set `stopping` (the loop checks it between steps, so nothing is left half done) and wait for
    `task`; past `grace_s` (LEDGER_SHUTDOWN_GRACE_S) the wait cancels it where it is and logs
    `<name>_stop_timeout`."""
    stopping.set()
    if task is None:
        return
    try:
        await asyncio.wait_for(task, grace_s)
    except TimeoutError:
        log.warning(f"{name}_stop_timeout")
