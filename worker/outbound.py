"""Outbound call events in the worker (SPEC §15): the finalizer.

A terminal call that no event has changed for LEDGER_FINALIZE_AFTER_S is finalized: `call.finalized`
is written into its outbox by the same script that marks it final (call_ledger/store/lua/finalize.lua),
so whatever wakes up to finalize commits the state and the message together, and two finalizers (any
number of processes run this loop) never both do. The commits start the timers (`cl:fin:{n}`, one
sorted set per index shard); a timer that fires early, twice, or for a call finalized already does
nothing but move or drop itself.
"""

import asyncio
import time

import structlog

from call_ledger.core.indexes import SHARDS
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.stopping import stop_after_step

__all__ = ["Finalizer"]

log = structlog.get_logger("ledger.outbound")

EVERY_S = 1.0  # how often each shard's due timers are looked at
BATCH = 100  # timers taken from a shard per look (more are taken at once while a look comes back full)


class Finalizer:
    """Every second, each index shard's due finalize timers through finalize.lua."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics,
                 fanout_due: asyncio.Event | None = None) -> None:
        self.store = store
        self.fanout_due = fanout_due  # set after a round that finalized: this process's fan-out looks at once
        self.settings = settings
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="finalizer")

    async def stop(self) -> None:
        """Stop after the timer in hand (each is one script call: nothing is left half done)."""
        task, self._task = self._task, None
        await stop_after_step(self._stopping, task, self.settings.shutdown_grace_s, "finalizer")

    async def run_once(self, now_ms: int) -> int:
        """Finalize every call whose timer is due at `now_ms`; the number finalized."""
        after_ms = self.settings.finalize_after_s * 1000
        finalized = 0
        for shard in range(SHARDS):
            while True:
                due = await self.store.outbox.timers_due(shard, now_ms, BATCH)
                for sid in due:
                    result = await self.store.outbox.finalize(sid, now_ms, after_ms)
                    finalized += result.outcome == "finalized"
                if len(due) < BATCH or self._stopping.is_set():
                    break
        return finalized

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                finalized = await self.run_once(int(time.time() * 1000))
                if finalized:
                    log.info("calls_finalized", calls=finalized)
                    if self.fanout_due is not None:
                        self.fanout_due.set()
            except Exception as exc:  # Redis away, or a bug: log, try again next time (the timers stay)
                log.error("finalizer_error", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(self._stopping.wait(), EVERY_S)
            except TimeoutError:
                pass
