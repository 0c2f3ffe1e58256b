"""Filling the event stream as intake does, and waiting until the workers have drained it."""

import time

from call_ledger.store import Store
from tests.support.polling import until
from tests.support.service import Service


async def fill(store: Store, payloads: list[bytes], chunk: int = 2000) -> None:
    """XADD the payloads in order, as intake does, pipelined."""
    for i in range(0, len(payloads), chunk):
        pipe = store.redis.pipeline(transaction=False)
        for payload in payloads[i:i + chunk]:
            pipe.xadd(store.stream, {"e": payload})
        await pipe.execute()


async def drained(store: Store, deadline_s: float, *procs: Service) -> float:
    """Wait (polling, with a deadline) until the group has nothing undelivered or pending."""
    started = time.monotonic()
    stats: list[tuple[int, int]] = []

    async def empty() -> bool:
        stats.append(await store.group_stats())
        for proc in procs:
            proc.assert_alive()
        return stats[-1] == (0, 0)

    await until(empty, deadline_s, "the group to drain", interval=0.01,
                detail=lambda: f"not drained: (lag, pending) = {stats[-1]}")
    return time.monotonic() - started
