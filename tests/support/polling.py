"""The one way a test waits for something: poll a condition until it holds, with a deadline.

A test that sleeps "long enough" is slow when the machine is fast and flaky when it is slow; a test
that polls waits exactly as long as it needs and fails with what it was waiting for."""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _failure(what: str, timeout: float, detail: Callable[[], str] | None) -> AssertionError:
    extra = f": {detail()}" if detail is not None else ""
    return AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")


async def until(condition: Callable[[], Awaitable[T] | T], timeout: float, what: str = "the condition", *,
                interval: float = 0.02, detail: Callable[[], str] | None = None) -> T:
    """Await (or call) `condition` every `interval` seconds until it returns something truthy, and
    return that; fail with `what` (and `detail()`, e.g. a log's tail) after `timeout` seconds.
    The condition may raise to fail at once (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail)
        await asyncio.sleep(interval)


def until_sync(condition: Callable[[], T], timeout: float, what: str = "the condition", *,
               interval: float = 0.05, detail: Callable[[], str] | None = None) -> T:
    """`until` for code without an event loop: blocks between polls."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail)
        time.sleep(interval)
