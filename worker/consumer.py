"""The apply loop: read the stream through the consumer group, apply, acknowledge.

Shaped like arq's worker: explicit `start()` / `stop()`, a bounded drain on stop,
and `run_burst()` that applies what is there and returns, for tests and `dlq replay`.

Delivery guarantees: an entry is acknowledged only after its event was committed to
the call (or found already committed), its call indexed, and the outbound messages its commit
wrote scheduled for fan-out (and its finalize timer, SPEC §15). Anything else stays pending: entries of a
worker that died, or whose apply failed, are claimed again after
LEDGER_CLAIM_IDLE_MS, and after LEDGER_MAX_DELIVERIES deliveries they move to the
dead-letter stream with the last failure's reason.
"""

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Mapping

import structlog
from pydantic import ValidationError

from call_ledger.core.events import TERMINAL_STATUSES, CallEvent
from call_ledger.core.indexes import RECORD_FIELDS, IndexBasis, IndexEntry, entry_delta, index_entry, shard_of
from call_ledger.core.rules import RANK_STATUS, CallState, fix_estimate, render_record
from call_ledger.core.served import record_digest, stored_record
from call_ledger.settings import Settings
from call_ledger.store import CommitWrite, Entry, LoadedCall, Store, entry_order
from call_ledger.store.errors import of_one_call, script_refused_for_good
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
from call_ledger.worker.batch import (
    DEFERRED,
    BatchResult,
    Calls,
    CommitResult,
    Committed,
    Due,
    EntryRef,
    Item,
    Outcome,
    Settled,
    check_write,
    committable,
    failure_text,
    group_by_call,
    rejudged,
    replanned,
)
from call_ledger.worker.retention import expire_dead_letters

__all__ = ["COMMIT_ATTEMPTS", "Consumer", "failure_text", "of_one_call"]

log = structlog.get_logger("ledger.worker")


# Compare-and-set retries per batch when other workers update the same calls; what is
# still contended after these stays pending and is claimed again later.
COMMIT_ATTEMPTS = 5
MAINTENANCE_EVERY_S = 5.0
# Upper bound on one round (read + apply + ack): a Redis that stops answering without
# closing the connection must not stall the loop forever; the batch stays pending.
STEP_TIMEOUT_S = 60.0


class Consumer:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics,
                 fanout_due: asyncio.Event | None = None) -> None:
        self.store = store
        # Set once a batch's outboxes are on the fan-out schedule: this process's fan-out (worker/app.py
        # hands it the Outbound's event) looks at once instead of at its next poll. A set, never an await.
        self.fanout_due = fanout_due
        self.settings = settings
        self.metrics = metrics
        self.indexes = store.indexes
        self.name = settings.consumer_name
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # LEDGER_WORKER_CACHE_BYTES: three quarters for call states, one for index entries.
        self.known = KnownCalls(settings.worker_cache_bytes * 3 // 4)
        self.indexed = IndexedEntries(settings.worker_cache_bytes // 4)
        self._in_flight: dict[str, tuple[int, IndexEntry | IndexBasis]] = {}  # the index writes of the batch in flight
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
            try:
                await task
            except BaseException:
                self._in_flight = {}  # not indexed after all: no basis for the next batch's deltas
                raise

    async def maintain(self) -> None:
        """Trim what retention allows, refresh the lag gauges, and learn a move of the store's layout."""
        before = self.store.records.mark
        if (after := await self.store.records.refresh_layout()) != before:  # `call-ledger layout --upgrade`
            log.info("layout_changed", consumer=self.name, layout_before=before, layout=after)
        trimmed = await self.store.trim(self.settings.stream_retention)
        await expire_dead_letters(self.store, self.settings, self.metrics)  # LEDGER_DLQ_RETENTION_DAYS
        await self.store.refresh_shards()  # shards another K registered since we started
        self.metrics.observe_shards(await self.store.shard_stats())
        self.metrics.observe_oldest_pending(await self.store.oldest_pending_ages())
        if trimmed:
            log.info("stream_trimmed", entries=trimmed)

    # -- applying a batch -------------------------------------------------------------------
    # _process          dead-letter the exhausted and the undecodable entries; group the rest by call
    #  _apply_isolated  the batch, or (a failure of one call's doing) each call alone: SPEC §14
    #   _apply          up to COMMIT_ATTEMPTS rounds of _commit_round: _load, plan_call (worker/apply.py),
    #                   _commit; what the entries came to is kept in a BatchResult (worker/batch.py)
    #    _finish        in the background, overlapping the next batch: schedule the outbound messages'
    #                   fan-out and finalize timers, index, log each entry's outcome, acknowledge /
    #                   record the failure / dead-letter

    async def _process(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        with self.metrics.batch_seconds.time():
            entries = await self._dead_letter_exhausted(entries)
            grouped = group_by_call(entries)
            for entry, reason in grouped.undecodable:  # nothing a retry could fix: straight to the dead letters
                await self._dead_letter(entry, None, reason)
            await self._apply_isolated(grouped.by_call)
        return len(entries)

    async def _apply_isolated(self, by_call: Calls) -> None:
        """Apply a batch; if it fails in a way that may be one call's doing (a bug, data no encoder
        takes), apply its calls one by one, so that only the call at fault fails (SPEC §14: one
        bad call never holds a batch). Redis away or busy fails the whole batch, which stays
        pending."""
        try:
            await self._apply(by_call)
            return
        except BaseException as exc:
            # Whether these calls' commits went through is not known: what the caches hold of
            # them may be stale, so their next batch reads them (KnownCalls, IndexedEntries).
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

    async def _fail(self, items: list[Item], reason: str) -> None:
        """Log these entries as failed: retried, or dead-lettered after their last delivery."""
        failed = Outcome("failed", reason)
        outcomes = {entry.ref: failed for entry, _ in items}
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
        events: dict[EntryRef, CallEvent | None] = {}
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

    async def _apply(self, by_call: Calls) -> None:
        """Commit a batch's calls (up to COMMIT_ATTEMPTS rounds for the contended ones), then index
        and acknowledge them in the background (`_finish`)."""
        result = BatchResult(self.settings.finalize_after_s * 1000)
        remaining = by_call
        for attempt in range(COMMIT_ATTEMPTS):
            # Calls it does not know are guessed new on the first attempt only: a call still
            # remaining after it (a wrong guess among them) is read.
            remaining = await self._commit_round(remaining, result, guess=attempt == 0)
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
        writes = self._index_writes(result.committed)
        await self.settled()
        self._in_flight = {write.entry.call_sid: (write.version, write.entry) for write in writes}
        self._finishing = asyncio.create_task(self._finish(writes, by_call, result.outcomes, result.due))

    async def _commit_round(self, calls: Calls, result: BatchResult, guess: bool) -> Calls:
        """One compare-and-set round over these calls: load, plan, commit, settle into `result`;
        the calls to plan again (contended, or to be judged on a fresh read)."""
        loaded = await self._load(calls, guess=guess)
        plans = {}
        for sid, items in calls.items():  # `calls` is the batch's own: read, never changed here
            if loaded[sid].archived:
                self._archived(sid, items, result)
            else:
                plans[sid] = plan_call(loaded[sid], items, self.settings)
        again = {sid: calls[sid] for sid, plan in plans.items() if rejudged(plan, loaded[sid])}  # on a fresh read
        for sid in again:
            self.known.forget(sid)
            del plans[sid]
        result.planned(plans, loaded)
        to_write = {sid: plan for sid, plan in plans.items() if committable(plan, loaded[sid])}
        for sid, plan in plans.items():
            if sid not in to_write:  # nothing to commit: indexed as found
                result.found(plan, loaded[sid], sid)
        commit = await self._commit(loaded, to_write)
        for sid, plan in to_write.items():
            if commit.replies[sid].archived:  # archived after we read it (or we guessed it new)
                self._archived(sid, calls[sid], result)
            elif sid in commit.conflicts:
                again[sid] = replanned(plan, loaded[sid])
            else:
                result.written(plan, loaded[sid], commit.written[sid], commit.replies[sid], commit.at_ms)
        return again

    def _archived(self, sid: str, items: list[Item], result: BatchResult) -> None:
        """A call in the archive (or held by an archive pass) takes no event again: they are
        dead-lettered `call_archived` (SPEC §16), and the caches forget it."""
        self.known.forget(sid)
        self.indexed.forget(sid)
        result.archived(items)

    async def _finish(self, writes: list[IndexWrite],
                      by_call: Calls,
                      outcomes: dict[EntryRef, Outcome],
                      due: Due) -> None:
        """Schedule the outbound messages, index, log, count and acknowledge a committed batch;
        dead-letter what must be."""
        if due:
            await self._schedule(due)
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

    async def _schedule(self, due: Due) -> None:
        """The fan-out of the outboxes the batch's commits wrote to, and the finalize timers they
        started, before any entry is acknowledged. If this fails the entries stay pending, and their
        redelivery repairs it from the calls' fields (`Due.repaired`): which needs the calls read from
        Redis, not planned from this worker's cache, so the cache forgets them."""
        try:
            await self.store.outbox.schedule(due.outbox, due.timers, int(time.time() * 1000))
        except BaseException:
            for sid in (*due.outbox, *due.timers):
                self.known.forget(sid)
            raise
        if due.outbox and self.fanout_due is not None:
            self.fanout_due.set()

    def _index_writes(self, committed: dict[str, Committed]) -> list[IndexWrite]:
        """Each call's index entry at the version just committed, as a delta where it can be."""
        writes = []
        payload_only = self.store.records.payload_index
        for sid, (record_id, version, state, record) in committed.items():
            # The batch in flight is indexed before this one: what it writes is the basis, if it has the call
            # (if the shard does not take it, the script answers with what it holds instead; if its update
            # fails, `settled` forgets it and this batch fails with it, to be redelivered and repaired).
            previous = self._in_flight.get(sid) or self.indexed.get(sid)
            if previous is not None and previous[0] == version:
                continue  # this worker indexed (or is indexing) this very version: nothing to repair
            entry = index_entry(sid, record_id, state, self.settings.policy, record)
            base, delta = "", None
            if previous is not None and previous[0] < version:
                delta = entry_delta(previous[1], entry)
                base = "" if delta is None else str(previous[0])
            if delta is None:  # as the call's first entry: the shard answers with the one it holds, if any
                delta = entry.creation()
            writes.append(IndexWrite(shard_of(sid), entry, version, entry.encode(payload_only), base, delta))
        return writes

    async def _index_replies(self, writes: list[IndexWrite]) -> list[bool] | None:
        """Which writes the shards took; None when the index script failed for good."""
        try:
            return await self.indexes.write(writes)
        except Exception as exc:
            if not script_refused_for_good(exc):  # out of memory, read-only, loading...: the batch stays pending
                raise
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

    def _log_outcomes(self, by_call: Calls,
                      outcomes: dict[EntryRef, Outcome]) -> Settled:
        """One line per event, in stream order, and the metrics; what to acknowledge, dead-letter
        or retry. The lines are written before any acknowledgement, even if we die next."""
        tally: Counter[tuple[str, str]] = Counter()  # (outcome, source): metrics once per batch
        settled = Settled()
        lines: list[tuple[str, dict[str, str | int]]] = []
        for entry, event in sorted((item for items in by_call.values() for item in items),
                                   key=lambda item: entry_order(item[0].entry_id)):
            outcome, reason = outcomes.get(entry.ref, DEFERRED)
            line: dict[str, str | int] = {"call_sid": event.call_sid, "source": event.source,
                                          "event_id": event.event_id, "entry_id": entry.entry_id, "outcome": outcome}
            if reason:
                line["reason"] = reason
            lines.append(("event_applied" if outcome in ("applied", "duplicate") else "event_not_applied", line))
            tally[(outcome, event.source)] += 1
            if outcome in ("applied", "duplicate"):
                settled.done.append(entry)
                if entry.deliveries > 1:  # only a redelivered entry can have a failure reason on record
                    settled.redelivered.append(entry)
            elif outcome == "failed":
                settled.failures[entry.ref] = reason or "apply failed"
            elif outcome == "refused":  # no redelivery can change it: dead-lettered now
                settled.refused.append((entry, event, reason or "refused"))
        writer = event_lines()
        if writer is not None:
            writer.many(lines)
        else:
            for name, line in lines:
                self._log_with_structlog(name, line)
        self._count(tally)
        flush_logs()
        return settled

    def _count(self, tally: Counter[tuple[str, str]]) -> None:
        """A batch's outcomes by (outcome, source) into the metrics, once per batch."""
        counters = {"applied": self.metrics.applied, "duplicate": self.metrics.duplicates,
                    "failed": self.metrics.failed}
        for (outcome, source), count in tally.items():
            if outcome in counters:
                counters[outcome].labels(source).inc(count)

    async def _load(self, calls: Calls,
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
            elif guess and sid not in self.known and self.guess.allowed(items):  # cached: it exists
                loaded[sid] = new_call()
            else:
                missing[sid] = (keys, [*RECORD_FIELDS, *meta])
        if missing:
            # With its latest events' keys: a retry of one is then a duplicate at once (KnownCalls).
            loaded.update(await self.store.load_calls(missing, latest=KNOWN_EVENTS))
        return loaded

    async def _commit(self, loaded: dict[str, LoadedCall], plans: dict[str, CallPlan]) -> CommitResult:
        """Commit each call's plan with a compare-and-set on its version; the calls that conflicted."""
        if not plans:
            return CommitResult(set(), {}, {}, 0)
        ids = await self._new_ids(loaded, plans)
        now_ms = int(time.time() * 1000)
        writes = [self._write_of(sid, plan, loaded[sid], ids, now_ms) for sid, plan in plans.items()]
        replies = await self.store.commit(writes)
        conflicts = self._learn(writes, [(reply.ok, reply.archived) for reply in replies], loaded, plans)
        return CommitResult(conflicts, {w.call_sid: w for w in writes},
                            {w.call_sid: reply for w, reply in zip(writes, replies, strict=True)}, now_ms)

    async def _new_ids(self, loaded: dict[str, LoadedCall], plans: dict[str, CallPlan]) -> dict[str, int]:
        """A record id for each new call that writes events."""
        # A plan with refusals only is a check of the version (nothing is written): no id for it.
        new_calls = [sid for sid, plan in plans.items() if loaded[sid].record_id is None and plan.new_events]
        if not new_calls:
            return {}
        return dict(zip(new_calls, await self.store.allocate_ids(len(new_calls)), strict=True))

    def _write_of(self, sid: str, plan: CallPlan, loaded: LoadedCall, ids: dict[str, int],
                  now_ms: int) -> CommitWrite:
        """What the commit script writes for this plan (a version check only when it has no new event)."""
        if not plan.new_events:
            return check_write(sid, loaded)
        # The estimate and the record are fixed here, with this worker's rates (SPEC §11, §13):
        # the lookup serves `j` as it is, and the index rolls up the same numbers.
        fix_estimate(plan.state, self.settings.policy)
        record_id = loaded.record_id or ids[sid]
        plan.record = render_record(sid, record_id, plan.state, self.settings.policy)
        new_version = loaded.version + len(plan.new_events)
        records, terminal = self.store.records, _terminal(plan.state)
        fields = plan.state.changed_fields(sid if records.short_members else None)
        if records.plain_state:  # layout 4: the core as plain fields, no rendered copy (core.plain)
            core, record = b"", b""
            fields += plan.state.plain_fields(sid, plan.plain_since)  # what changed (all, over an `s`)
            digest = record_digest(plan.record) if terminal else b""
        else:
            core, record, digest = plan.state.core_json(), stored_record(plan.record, new_version), b""
        return CommitWrite(
            call_sid=sid,
            version=loaded.version,
            new_version=new_version,
            core=core,
            record_id=record_id,
            events=plan.new_events,
            fields=fields,
            record=record,
            digest=digest,
            token=loaded.token,
            new_token=self._new_token(),
            terminal=terminal,
            at_ms=now_ms,
        )

    def _learn(self, writes: list[CommitWrite], results: list[tuple[bool, bool]], loaded: dict[str, LoadedCall],
               plans: dict[str, CallPlan]) -> set[str]:
        """Take the commit's answers into the caches and the new-call guess; the calls that conflicted."""
        conflicts = set()
        guesses: Counter[str] = Counter()
        for write, (ok, archived) in zip(writes, results, strict=True):
            if loaded[write.call_sid].guessed:
                self.guess.outcome(bool(ok))
                guesses["right" if ok else "wrong"] += 1
            if ok and not write.events:  # checked, not written: what was loaded still holds
                continue
            if archived:  # not a conflict: settled by the caller (`_archived`)
                continue
            if ok:
                state = plans[write.call_sid].state
                state.changed.clear()  # what the next plan changes is what its commit writes
                self.known.committed(write.call_sid, loaded[write.call_sid], write.new_version, write.record_id,
                                     state, [key for key, _, _ in write.events], write.new_token,
                                     plain=not write.core)
            else:  # someone else wrote the call, or our picture of it was stale: re-read it
                self.known.forget(write.call_sid)
                # What it indexed last may be of that stale picture too: no delta from it.
                self.indexed.forget(write.call_sid)
                conflicts.add(write.call_sid)
        for outcome, count in guesses.items():
            self.metrics.labelled(self.metrics.new_call_guesses, outcome).inc(count)
        return conflicts

    def _new_token(self) -> str:
        """A commit token no other commit has (call_ledger/store/lua/commit.lua): this worker's random prefix and
        a count."""
        self._commits += 1
        return f"{self._token_prefix}{self._commits:x}"

    async def _settle_failures(
        self, by_call: Calls, failures: dict[EntryRef, str]
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


_TERMINAL_RANKS = frozenset(rank for rank, status in RANK_STATUS.items() if status in TERMINAL_STATUSES)


def _terminal(state: CallState) -> bool:
    """Whether the call's status is terminal (SPEC §5): what commit.lua's finality decisions need."""
    return state.status is not None and state.status[0] in _TERMINAL_RANKS
