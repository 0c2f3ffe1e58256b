"""The apply loop: read the stream through the consumer group, apply, acknowledge.

Shaped like arq's worker: explicit `start()` / `stop()`, a bounded drain on stop,
and `run_burst()` that applies what is there and returns, for tests and `dlq replay`.

Delivery guarantees: an entry is acknowledged only after its event was committed to
the call (or found already committed). Anything else stays pending: entries of a
worker that died, or whose apply failed, are claimed again after
LEDGER_CLAIM_IDLE_MS, and after LEDGER_MAX_DELIVERIES deliveries they move to the
dead-letter stream with the last failure's reason.
"""

import asyncio
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import ValidationError

from call_ledger.core.events import CallEvent
from call_ledger.core.indexes import RECORD_FIELDS, entry_delta, index_entry, shard_of
from call_ledger.core.rules import CallState, fix_estimate, render_record
from call_ledger.core.served import stored_record
from call_ledger.settings import Settings
from call_ledger.store import CommitWrite, Entry, LoadedCall, Store, entry_order
from call_ledger.store.errors import CommandRefused, of_one_call, transient
from call_ledger.store.indexes import IndexWrite
from call_ledger.web.logs import event_lines, flush_logs
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import (
    KNOWN_EVENTS,
    CallPlan,
    IndexedEntries,
    KnownCalls,
    NewCallGuess,
    new_call,
    plan_call,
    wanted_meta,
)
from call_ledger.worker.retention import expire_dead_letters

log = structlog.get_logger("ledger.worker")


# A call as committed (or found, when all its events were duplicates): record id, version,
# state, and the record rendered at the commit (None when there was no commit).
Committed = tuple[int, int, CallState, dict[str, Any] | None]

def failure_text(what: str, exc: BaseException) -> str:
    """A failure reason for logs and dead letters: what failed and the exception, bounded."""
    return f"{what}: {type(exc).__name__}: {exc}"[:500]


class Settled:
    """A batch's entries by what happens to them once logged."""

    __slots__ = ("done", "failures", "redelivered", "refused")

    def __init__(self) -> None:
        self.done: list[Entry] = []  # acknowledged
        self.redelivered: list[Entry] = []  # acknowledged, with a failure reason to forget
        self.refused: list[tuple[Entry, CallEvent, str]] = []  # dead-lettered now
        self.failures: dict[tuple[str, str], str] = {}  # retried, or dead-lettered after the last


# Compare-and-set retries per batch when other workers update the same calls; what is
# still contended after these stays pending and is claimed again later.
COMMIT_ATTEMPTS = 5
MAINTENANCE_EVERY_S = 5.0
# Upper bound on one round (read + apply + ack): a Redis that stops answering without
# closing the connection must not stall the loop forever; the batch stays pending.
STEP_TIMEOUT_S = 60.0


class Consumer:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.indexes = store.indexes
        self.name = settings.consumer_name
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # LEDGER_WORKER_CACHE_BYTES: three quarters for call states, one for index entries.
        self.known = KnownCalls(settings.worker_cache_bytes * 3 // 4)
        self.indexed = IndexedEntries(settings.worker_cache_bytes // 4)
        self.guess = NewCallGuess()
        self._next_claim = 0.0
        self._token_prefix, self._commits = secrets.token_hex(4) + ".", 0
        self._next_maintenance = 0.0
        # The previous batch's index update and acknowledgement, running while the next batch
        # is read, planned and committed (see `_apply`).
        self._finishing: asyncio.Task[None] | None = None
        # Claim a dead consumer's entries "within a few seconds after LEDGER_CLAIM_IDLE_MS".
        self._claim_every = min(1.0, max(0.05, settings.claim_idle_ms / 4000))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.ensure_group()
        self._task = asyncio.create_task(self._run(), name=f"consumer {self.name}")

    async def stop(self) -> None:
        """Finish the batch in hand (bounded by LEDGER_SHUTDOWN_GRACE_S); the rest stays pending."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.settings.shutdown_grace_s)
        except TimeoutError:
            self._task.cancel()
            log.warning("worker_stop_timeout", consumer=self.name)
        except Exception:  # the loop's own failure was logged where it happened
            pass
        log.info("worker_stopped", consumer=self.name)

    async def _run(self) -> None:
        log.info("worker_started", consumer=self.name, stream=self.store.stream)
        # Block no longer than the claim interval, so an idle worker still looks for a dead
        # replica's entries as often as promised.
        block_ms = max(1, int(self._claim_every * 1000))
        linger = self.settings.apply_linger_ms / 1000
        while not self._stopping.is_set():
            try:
                started = time.monotonic()
                async with asyncio.timeout(STEP_TIMEOUT_S):
                    handled = await self.step(block_ms=block_ms)
                # Some servers (the embedded store) answer a blocking read at once: don't spin.
                if not handled and time.monotonic() - started < block_ms / 2000:
                    await self._pause(0.05)
                elif 0 < handled < self.settings.batch_size and linger:
                    # The stream is drained: let the next events gather into one batch. A batch
                    # of one event cost as much worker CPU (three round trips) as one of ten,
                    # so reading each event alone made a busy `serve` fall behind (README, Speed).
                    await self._pause(linger)
            except Exception as exc:  # Redis away, or a bug: log, back off, keep the process alive
                log.error("apply_loop_error", consumer=self.name, error=f"{type(exc).__name__}: {exc}")
                await self._pause(1.0)
        await self.settled()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def run_burst(self, claim_idle_ms: int | None = None) -> int:
        """Apply everything in the stream now (and stale pending entries), then return the count."""
        await self.store.ensure_group()
        total = 0
        if claim_idle_ms is not None:
            total += await self._process(
                await self.store.claim_stale(self.name, claim_idle_ms, self.settings.batch_size)
            )
        while handled := await self._process(
            await self.store.read_new(self.name, self.settings.batch_size, block_ms=None)
        ):
            total += handled
        await self.settled()
        return total

    async def step(self, block_ms: int) -> int:
        """One round: maybe claim stale entries, then read and apply new ones."""
        now = time.monotonic()
        handled = 0
        if now >= self._next_claim:
            self._next_claim = now + self._claim_every
            await self.settled()  # else our own batch in flight could look stale to a short claim idle
            handled += await self._process(
                await self.store.claim_stale(self.name, self.settings.claim_idle_ms, self.settings.batch_size)
            )
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_EVERY_S
            await self.maintain()
        entries = await self.store.read_new(self.name, self.settings.batch_size, block_ms=block_ms)
        handled += await self._process(entries)
        if not entries:  # idle: nothing to overlap with, settle what is in hand
            await self.settled()
        return handled

    async def settled(self) -> None:
        """Wait for the last batch's index update and acknowledgements (see `_apply`)."""
        task, self._finishing = self._finishing, None
        if task is not None:
            await task

    async def maintain(self) -> None:
        """Trim what retention allows, and refresh the lag gauges."""
        trimmed = await self.store.trim(self.settings.stream_retention)
        await expire_dead_letters(self.store, self.settings, self.metrics)  # LEDGER_DLQ_RETENTION_DAYS
        await self.store.refresh_shards()  # shards another K registered since we started
        self.metrics.observe_shards(await self.store.shard_stats())
        self.metrics.observe_oldest_pending(await self.store.oldest_pending_ages())
        if trimmed:
            log.info("stream_trimmed", entries=trimmed)

    # -- applying a batch -------------------------------------------------------------------

    async def _process(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        with self.metrics.batch_seconds.time():
            entries = await self._dead_letter_exhausted(entries)
            by_call: dict[str, list[tuple[Entry, CallEvent]]] = defaultdict(list)
            for entry in entries:
                try:
                    event = CallEvent.model_validate_json(entry.event_json or b"")
                except (ValidationError, ValueError) as exc:
                    # Nothing a retry could fix: straight to the dead letters, with the reason.
                    await self._dead_letter(entry, None, f"undecodable event: {exc.errors()[0]['msg']}"
                                            if isinstance(exc, ValidationError) else "undecodable event")
                    continue
                by_call[event.call_sid].append((entry, event))
            await self._apply_isolated(by_call)
        return len(entries)

    async def _apply_isolated(self, by_call: dict[str, list[tuple[Entry, CallEvent]]]) -> None:
        """Apply a batch; if it fails in a way that may be one call's doing (a bug, data no encoder
        takes), apply its calls one by one, so that only the call at fault fails (SPEC §14: one
        bad call never holds a batch). Redis away or busy fails the whole batch, which stays
        pending."""
        try:
            await self._apply(by_call)
            return
        except BaseException as exc:
            # A plan folds into the cached state in place: one not known to be committed
            # must not be planned from again (KnownCalls).
            for sid in by_call:
                self.known.forget(sid)
                self.indexed.forget(sid)
            if not of_one_call(exc):
                raise
            error = exc
        if len(by_call) == 1:
            (sid, items), = by_call.items()
            log.error("call_apply_failed", call_sid=sid, entries=len(items), error=failure_text("error", error))
            await self._fail(items, failure_text("apply error", error))
            return
        log.warning("batch_split", calls=len(by_call), error=failure_text("error", error))
        await self.settled()  # the failed batch's predecessor, so that none of its calls is in flight
        for sid, items in by_call.items():
            await self._apply_isolated({sid: items})

    async def _fail(self, items: list[tuple[Entry, CallEvent]], reason: str) -> None:
        """Log these entries as failed: retried, or dead-lettered after their last delivery."""
        outcomes: dict[tuple[str, str], tuple[str, str | None]] = {entry.ref: ("failed", reason) for entry, _ in items}
        settled = self._log_outcomes({"": items}, outcomes)
        await self._settle_failures({"": items}, settled.failures)

    async def _dead_letter_exhausted(self, entries: list[Entry]) -> list[Entry]:
        """Dead-letter the entries claimed after their last delivery that are not applied,
        whatever kept them pending (a crash, a batch that never committed, a timeout: not only a
        failure on record), with the last failure's reason; return the rest. Nothing stays
        pending for ever, so stream trimming moves on (SPEC §14). One already applied (committed,
        then its index update or acknowledgement lost) goes on as a duplicate: its call is
        indexed again, then it is acknowledged."""
        limit = self.settings.max_deliveries
        exhausted = [entry for entry in entries if entry.deliveries > limit]
        if not exhausted:
            return entries
        events: dict[tuple[str, str], CallEvent | None] = {}
        for entry in exhausted:
            try:
                events[entry.ref] = CallEvent.model_validate_json(entry.event_json or b"")
            except (ValidationError, ValueError):
                events[entry.ref] = None
        known = [(entry, event) for entry in exhausted if (event := events[entry.ref]) is not None]
        applied = await self.store.are_applied([(event.call_sid, event.key) for _, event in known])
        duplicates = {entry for (entry, _), yes in zip(known, applied, strict=True) if yes}
        unsettled = [entry for entry in exhausted if entry not in duplicates]
        reasons = await self.store.failure_reasons([entry.entry_id for entry in unsettled])
        for entry in unsettled:
            reason = reasons.get(entry.entry_id) or f"not settled after {limit} deliveries (LEDGER_MAX_DELIVERIES)"
            await self._dead_letter(entry, events[entry.ref], reason)
        dead = set(unsettled)
        return [entry for entry in entries if entry not in dead]

    async def _apply(self, by_call: dict[str, list[tuple[Entry, CallEvent]]]) -> None:
        outcomes: dict[tuple[str, str], tuple[str, str | None]] = {}  # entry ref -> (outcome, reason)
        # Per call: as committed, or as found when every event of the call was a duplicate, failed
        # or was refused (re-indexing it repairs an index update a dead worker missed).
        committed: dict[str, Committed] = {}
        remaining = by_call
        for attempt in range(COMMIT_ATTEMPTS):
            # Calls it does not know are guessed new on the first attempt only: a call still
            # remaining after it (a wrong guess among them) is read.
            loaded = await self._load(remaining, guess=attempt == 0)
            plans = {sid: plan_call(loaded[sid], items, self.settings) for sid, items in remaining.items()}
            # A call planned from the worker's cache (KnownCalls) is only a guess of what Redis
            # holds. A refusal there (the event bound, say) may be of an event already applied
            # that the cache does not list (it keeps the latest keys only): judge it again on the
            # call as read from Redis, whose order index knows every applied event.
            # So is a failure on a call guessed new (NewCallGuess): judged on the empty state, it
            # may be of an event the call already has (a duplicate, whatever would fail now).
            rejudge = {sid: remaining[sid] for sid, plan in plans.items()
                       if (plan.refused and loaded[sid].state is not None) or (plan.failed and loaded[sid].guessed)}
            for sid in rejudge:
                self.known.forget(sid)
                del plans[sid]
            for sid, plan in plans.items():
                if loaded[sid].state is None:  # read from Redis this round: its duplicates are settled
                    outcomes.update((entry.ref, ("duplicate", None)) for entry, _ in plan.duplicates)
                outcomes.update((entry.ref, ("failed", reason)) for entry, _, reason in plan.failed)
            # A refusal is judged on the state read (the call's provider, its event count...):
            # a call with refusals is committed too, even with nothing new, so that the version
            # check confirms the refusal against Redis; on a conflict it is judged again. So is
            # a duplicate found by the cache: the version check confirms that Redis still has the
            # commits the cache remembers (a Redis that lost them, restarted from an older
            # snapshot, gets the event applied again, not acknowledged as a duplicate).
            to_write = {sid: plan for sid, plan in plans.items()
                        if plan.new_events or plan.refused or (plan.duplicates and loaded[sid].state is not None)}
            for sid, plan in plans.items():
                record_id = loaded[sid].record_id
                if sid not in to_write and record_id is not None:
                    committed[sid] = (record_id, loaded[sid].version, plan.state, None)
            conflicts, written = await self._commit(loaded, to_write)
            for sid, plan in to_write.items():
                if sid not in conflicts:
                    outcomes.update((entry.ref, ("applied", None)) for entry, _ in plan.applied)
                    outcomes.update((entry.ref, ("refused", reason)) for entry, _, reason in plan.refused)
                    outcomes.update((entry.ref, ("duplicate", None)) for entry, _ in plan.duplicates)
                    if plan.new_events:
                        committed[sid] = (written[sid].record_id, written[sid].new_version, plan.state, plan.record)
                    elif (found := loaded[sid].record_id) is not None:  # checked only: index it as found
                        committed[sid] = (found, loaded[sid].version, plan.state, None)
            # Re-plan the new and refused events of contended calls (and the duplicates the cache
            # found: the version that vouched for them moved); failures are settled.
            remaining = {sid: to_write[sid].applied + [(e, ev) for e, ev, _ in to_write[sid].refused] + (
                to_write[sid].duplicates if loaded[sid].state is not None else []) for sid in conflicts}
            remaining.update(rejudge)
            if not remaining:
                break
        # The index update, logs and acknowledgements run while the next batch is read, planned
        # and committed: the worker's CPU overlaps Redis running the index script. One batch at
        # most is in flight (the previous one is awaited first), and its failure is this
        # round's failure. Nothing is acknowledged before its call is indexed: if the index
        # update fails, the entries stay pending and their redelivery (as duplicates) indexes
        # the calls again. Index versions make the updates commute, so overlapping batches
        # that touch the same call converge on its newest version.
        # The entries are derived now, before the next batch folds into the cached states.
        writes = self._index_writes(committed)
        await self.settled()
        self._finishing = asyncio.create_task(self._finish(writes, by_call, outcomes))

    async def _finish(self, writes: list[IndexWrite],
                      by_call: dict[str, list[tuple[Entry, CallEvent]]],
                      outcomes: dict[tuple[str, str], tuple[str, str | None]]) -> None:
        """Index, log, count and acknowledge a committed batch; dead-letter what must be."""
        # The acknowledgement waits for the index update's answer: a transient refusal (out of
        # memory, a read-only replica...) leaves the batch pending. In one pipeline Redis would
        # run the acknowledgements whatever the index scripts answered, and memory freed between
        # two of its commands lets an ack through after a refused update.
        self._indexed(writes, await self._index_replies(writes))
        settled = self._log_outcomes(by_call, outcomes)
        await self.store.ack(settled.done, failed_before=settled.redelivered)
        for entry, event, reason in settled.refused:
            await self._dead_letter(entry, event, reason)
        await self._settle_failures(by_call, settled.failures)

    def _index_writes(self, committed: dict[str, Committed]) -> list[IndexWrite]:
        """Each call's index entry at the version just committed, as a delta where it can be."""
        writes = []
        for sid, (record_id, version, state, record) in committed.items():
            previous = self.indexed.get(sid)
            if previous is not None and previous[0] == version:
                continue  # this worker indexed this very version (the shard took it): nothing to repair
            entry = index_entry(sid, record_id, state, self.settings.policy, record)
            encoded = entry.encode()
            base, delta = "", b""
            if previous is not None and previous[0] < version:
                change = entry_delta(previous[1], entry)
                if change is not None:
                    base, delta = str(previous[0]), change
            writes.append(IndexWrite(shard_of(sid), entry, version, encoded, base, delta))
        return writes

    async def _index_replies(self, writes: list[IndexWrite]) -> list[bool] | None:
        try:
            return await self.indexes.write(writes)
        except CommandRefused as exc:
            return self._index_failed(writes, exc)

    @staticmethod
    def _index_failed(writes: list[IndexWrite], exc: CommandRefused) -> None:
        if transient(exc):  # out of memory, read-only, loading...: the batch stays pending, retried
            raise exc
        # A script error no retry can fix must not hold the batch up forever: the record is
        # committed; its entry stays at the previous version until the call's next commit.
        log.error("index_update_failed", calls=len(writes), error=str(exc))
        return None

    def _indexed(self, writes: list[IndexWrite], taken: list[bool] | None) -> None:
        """Remember the entries the shards took (the next update of each goes as a delta)."""
        if taken is None:
            for write in writes:
                self.indexed.forget(write.entry.call_sid)
            return
        for write, ok in zip(writes, taken, strict=True):
            if ok:
                self.indexed.remember(write.entry.call_sid, write.version, write.entry)
            else:  # the shard has this version or a newer one, perhaps another worker's
                self.indexed.forget(write.entry.call_sid)

    def _log_outcomes(self, by_call: dict[str, list[tuple[Entry, CallEvent]]],
                      outcomes: dict[tuple[str, str], tuple[str, str | None]]) -> "Settled":
        """One line per event, in stream order, and the metrics; what to acknowledge, dead-letter
        or retry. The lines are written before any acknowledgement, even if we die next."""
        tally: Counter[tuple[str, str]] = Counter()  # (outcome, source): metrics once per batch
        settled = Settled()
        write = event_lines() or self._log_with_structlog
        for entry, event in sorted((item for items in by_call.values() for item in items),
                                   key=lambda item: entry_order(item[0].entry_id)):
            outcome, reason = outcomes.get(entry.ref, ("deferred", "call updated concurrently; will retry"))
            line = {"call_sid": event.call_sid, "source": event.source, "event_id": event.event_id,
                    "entry_id": entry.entry_id, "outcome": outcome}
            if reason:
                line["reason"] = reason
            write("event_applied" if outcome in ("applied", "duplicate") else "event_not_applied", line)
            tally[(outcome, event.source)] += 1
            if outcome in ("applied", "duplicate"):
                settled.done.append(entry)
                if entry.deliveries > 1:  # only a redelivered entry can have a failure reason on record
                    settled.redelivered.append(entry)
            elif outcome == "failed":
                settled.failures[entry.ref] = reason or "apply failed"
            elif outcome == "refused":  # no redelivery can change it: dead-lettered now
                settled.refused.append((entry, event, reason or "refused"))
        counters = {"applied": self.metrics.applied, "duplicate": self.metrics.duplicates,
                    "failed": self.metrics.failed}
        for (outcome, source), count in tally.items():
            if outcome in counters:
                counters[outcome].labels(source).inc(count)
        flush_logs()
        return settled

    async def _load(self, calls: dict[str, list[tuple[Entry, CallEvent]]],
                    guess: bool = False) -> dict[str, LoadedCall]:
        """Each call's version, state, touched fields and applied events: from what we last
        wrote, else (with `guess`, while guesses mostly hold: NewCallGuess) as a new call,
        else from Redis."""
        loaded: dict[str, LoadedCall] = {}
        missing: dict[str, tuple[list[str], list[str]]] = {}
        for sid, items in calls.items():
            # Every register (the record and its index entry are rendered from them), and the
            # call_meta keys the events touch.
            keys, meta = wanted_meta(items)
            known = self.known.get(sid, meta)
            if known is not None:
                loaded[sid] = known
            elif guess and self.known.peek(sid) is None and self.guess.allowed(items):  # cached: it exists
                loaded[sid] = new_call()
            else:
                missing[sid] = (keys, [*RECORD_FIELDS, *meta])
        if missing:
            # With its latest events' keys: a retry of one is then a duplicate at once (KnownCalls).
            loaded.update(await self.store.load_calls(missing, latest=KNOWN_EVENTS))
        return loaded

    async def _commit(self, loaded: dict[str, LoadedCall],
                      plans: dict[str, CallPlan]) -> tuple[set[str], dict[str, CommitWrite]]:
        """Commit each call's plan; (calls that conflicted, what was written per call)."""
        if not plans:
            return set(), {}
        # A plan with refusals only is a check of the version (nothing is written): no id for it.
        new_calls = [sid for sid, plan in plans.items() if loaded[sid].record_id is None and plan.new_events]
        ids = {}
        if new_calls:
            ids = dict(zip(new_calls, await self.store.allocate_ids(len(new_calls)), strict=True))
        writes = []
        for sid, plan in plans.items():
            if not plan.new_events:
                writes.append(CommitWrite(call_sid=sid, version=loaded[sid].version, new_version=loaded[sid].version,
                                          core=b"", record_id=loaded[sid].record_id or 0, events=[], fields=[],
                                          token=loaded[sid].token))
                continue
            # The estimate and the record are fixed here, with this worker's rates (SPEC §11, §13):
            # the lookup serves `j` as it is, and the index rolls up the same numbers.
            fix_estimate(plan.state, self.settings.policy)
            record_id = loaded[sid].record_id or ids[sid]
            plan.record = render_record(sid, record_id, plan.state, self.settings.policy)
            new_version = loaded[sid].version + len(plan.new_events)
            writes.append(CommitWrite(
                call_sid=sid,
                version=loaded[sid].version,
                new_version=new_version,
                core=plan.state.core_json(),
                record_id=record_id,
                events=plan.new_events,
                fields=plan.state.changed_fields(),
                record=stored_record(plan.record, new_version),
                token=loaded[sid].token,
                new_token=self._new_token(),
            ))
        results = await self.store.commit(writes)
        conflicts = set()
        guesses: Counter[str] = Counter()
        for write, ok in zip(writes, results, strict=True):
            if loaded[write.call_sid].guessed:
                self.guess.outcome(bool(ok))
                guesses["right" if ok else "wrong"] += 1
            if ok and not write.events:  # checked, not written: what was loaded still holds
                continue
            if ok:
                state = plans[write.call_sid].state
                state.changed.clear()  # what the next plan changes is what its commit writes
                self.known.committed(write.call_sid, loaded[write.call_sid], write.new_version, write.record_id,
                                     state, [key for key, _, _ in write.events], write.new_token)
            else:  # someone else wrote the call, or our picture of it was stale: re-read it
                self.known.forget(write.call_sid)
                # What it indexed last may be of that stale picture too: no delta from it.
                self.indexed.forget(write.call_sid)
                conflicts.add(write.call_sid)
        for outcome, count in guesses.items():
            self.metrics.labelled(self.metrics.new_call_guesses, outcome).inc(count)
        return conflicts, {w.call_sid: w for w in writes}

    def _new_token(self) -> str:
        """A commit token no other commit has (call_ledger/store/lua/commit.lua): this worker's random prefix and
        a count."""
        self._commits += 1
        return f"{self._token_prefix}{self._commits:x}"

    async def _settle_failures(
        self, by_call: dict[str, list[tuple[Entry, CallEvent]]], failures: dict[tuple[str, str], str]
    ) -> None:
        """Dead-letter failures that used their last delivery; remember the reason of the others."""
        if not failures:
            return
        keep: list[tuple[Entry, str]] = []
        for items in by_call.values():
            for entry, event in items:
                reason = failures.get(entry.ref)
                if reason is None:
                    continue
                if entry.deliveries >= self.settings.max_deliveries:
                    await self._dead_letter(entry, event, reason)
                else:
                    keep.append((entry, reason))
        await self.store.record_failures(keep)

    async def _dead_letter(self, entry: Entry, event: CallEvent | None, reason: str) -> None:
        await self.store.dead_letter(entry, reason)
        source = event.source if event else "unknown"
        self.metrics.dead_lettered.labels(source).inc()
        log.warning(
            "event_dead_lettered",
            call_sid=event.call_sid if event else None,
            source=source,
            event_id=event.event_id if event else None,
            entry_id=entry.entry_id,
            deliveries=entry.deliveries,
            outcome="dead_lettered",
            reason=reason,
        )

    @staticmethod
    def _log_with_structlog(event: str, fields: Mapping[str, str | int]) -> None:
        log.info(event, **fields)
