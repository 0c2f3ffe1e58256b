"""The archive pass (SPEC §16): finalized calls past retention leave Redis for Parquet files, each in exactly
one row, and a tombstone stays behind.

One pass at a time across every process (`cl:archive:lock`, renewed at each step). A pass takes the
candidates (`cl:arc:{n}`: finalized calls, call_ledger.store.archive) in batches of `batch` calls, and for
each batch:

    select   read the candidates; keep those finalized, with an empty outbox, whose ended_at is past
             retention (a later one is scheduled again at its ended_at); record them in the batch, then
             hold them (commits refuse a held call: its row is its last state)
    place    build the rows, give each (organization, UTC date of ended_at) partition a file number, and
             record each call's file and row
    write    each partition's calls file (and events file, with the journal on), complete before visible;
             a file that exists already (a pass resumed after a crash) is not written again
    clean    tombstones replace the calls, then the calls leave the indexes (counted as archived there)

The step reached is in `cl:archive:pass`, so a pass killed anywhere is finished by the next one: rows are
rebuilt from held calls (which no longer change), and every script is idempotent. Hence every archived
call is in exactly one row, and every call is in Redis or archived with its tombstone, never neither.
"""

import asyncio
import contextlib
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from call_ledger.archive import ArchiveFiles, ArchiveUnavailable, calls_file, events_file
from call_ledger.core.archive import call_row, calls_path, event_row, events_path, partition
from call_ledger.core.journal import restore
from call_ledger.core.rules import has_record
from call_ledger.core.served import StoredCall
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.archive import ARCHIVED, LockLost, PassState
from call_ledger.web.metrics import Metrics
from call_ledger.worker.stopping import stop_after_step

log = structlog.get_logger("ledger.archive")

DAY_MS = 86_400_000
LEASE_MS = 60_000  # the lock's lease: renewed at every step, so only a process stopped this long loses it
TOMBSTONES_PER_STEP = 2_000
BATCH = 20_000  # calls per batch of a pass: what one batch holds in memory (rows, then a file per partition)


@dataclass
class PassReport:
    calls: int = 0
    bytes: int = 0
    files: int = 0
    batches: int = 0


@dataclass(frozen=True, slots=True)
class Selected:
    """A candidate that may be archived: as read (the freeze's compare-and-set checks it is unchanged)."""

    call_sid: str
    record_id: int
    version: int
    token: str
    fields: dict[bytes, bytes]
    row: dict[str, Any]  # its row, but for `archived_at` (the pass's)


class Archiver:
    """Runs archive passes: `run_pass` now (`call-ledger archive`), or `start` every LEDGER_ARCHIVE_EVERY_S."""

    def __init__(self, store: Store, settings: Settings, files: ArchiveFiles, metrics: Metrics, *,
                 batch: int | None = None) -> None:
        self.store = store
        self.archive = store.archive
        self.settings = settings
        self.files = files
        self.metrics = metrics
        self.batch = batch or BATCH
        self.token = secrets.token_hex(8)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the loop --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        try:  # said once at start-up, not only at each pass: a worker starts whatever the archive's state
            await asyncio.to_thread(self.files.check)
        except ArchiveUnavailable as exc:
            log.error("archive_unavailable", detail=str(exc), every_s=self.settings.archive_every_s)
        self._task = asyncio.create_task(self._run(), name="archiver")

    async def stop(self) -> None:
        """Stop after the batch in hand (the pass stops between batches, with nothing half done); past the
        shutdown grace, cancel it there: the next pass resumes that batch."""
        task, self._task = self._task, None
        await stop_after_step(self._stopping, task, self.settings.shutdown_grace_s, "archiver")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.archive_every_s)
            if self._stopping.is_set():
                return
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass resumes this one (or, abandoned, starts again)
                self.metrics.labelled(self.metrics.archive_passes, "failed").inc()
                log.error("archive_pass_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                with contextlib.suppress(Exception):
                    self.metrics.archive_due.set(await self.archive.pending(self._cutoff_ms()))

    # -- one pass --------------------------------------------------------------------------------

    async def run_pass(self, wait_s: float = 0) -> PassReport | None:
        """Archive every call due now, batch by batch; None when another process holds the lock (after
        waiting up to `wait_s` for it)."""
        deadline = time.monotonic() + wait_s
        while not await self.archive.lock(self.token, LEASE_MS):
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.5)
        started = time.monotonic()
        report = PassReport()
        try:
            await self.archive.forget_gone(int(time.time() * 1000))
            while not self._stopping.is_set() and await self._batch(report):
                report.batches += 1
        finally:
            await self.archive.lock(self.token, LEASE_MS, "release")
        self.metrics.labelled(self.metrics.archive_passes, "done").inc()
        self.metrics.archive_due.set(await self.archive.pending(self._cutoff_ms()))
        if report.calls or report.batches:
            log.info("archive_pass_done", calls=report.calls, bytes=report.bytes, files=report.files,
                     batches=report.batches, seconds=round(time.monotonic() - started, 3))
        return report

    async def step(self, name: str, state: PassState) -> None:
        """A step of the pass is done: keep the lock (or stop: another process resumes), say so."""
        if not await self.archive.lock(self.token, LEASE_MS, "renew"):
            raise LockLost(f"archive pass {state.pass_id}: the lock passed to another process at {name}")
        log.debug("archive_step", step=name, pass_id=state.pass_id)

    def _cutoff_ms(self) -> int:
        return int(time.time() * 1000) - self.settings.retention_days * DAY_MS

    async def _batch(self, report: PassReport) -> bool:
        """Archive one batch (or finish the one a dead process left); False when there is none. A batch
        that fails before its files are complete (the archive cannot be written, say) is abandoned: its
        files removed, its calls released; one that fails later is finished by the next pass."""
        state = await self.archive.current()
        selected: dict[str, Selected] = {}
        if state is None:
            found = await self._select()
            if found is None:
                return False
            state, selected = found
        try:
            rows: Rows | None = None
            if state.state == "selecting":
                rows = await self._place(state, selected)
            if state.state == "placed":
                written = await self._write(state, rows)
                report.bytes += written.bytes
                report.files += written.files
                await self.archive.advance(self.token, state, "cleaning")
        except LockLost:
            raise
        except Exception:
            await self._abandon(state)
            raise
        if state.state == "cleaning":
            report.calls += await self._clean(state)  # those it tombstoned (a resumed pass: not all of them)
        await self.archive.finish(self.token)
        return True

    async def _abandon(self, state: PassState) -> None:
        """Undo a batch whose files could not all be written: remove those that were, release its calls,
        forget it. If that fails too, the batch stays, and the next pass resumes (or abandons) it."""
        try:
            for part in state.files:
                for path in (calls_path(part, state.pass_id), events_path(part, state.pass_id)):
                    await asyncio.to_thread(self.files.remove, path)
            held = await self.archive.batch()
            released = await self.archive.release([(call.call_sid, state.marker) for call in held])
            await self.archive.finish(self.token)
        except Exception as exc:
            log.error("archive_batch_kept", pass_id=state.pass_id, error=f"{type(exc).__name__}: {exc}"[:300])
            return
        log.warning("archive_batch_abandoned", pass_id=state.pass_id, calls_released=released)

    async def _select(self) -> tuple[PassState, dict[str, Selected]] | None:
        """Hold a batch of the calls due: a new pass state, and the held calls as read. None when none is due."""
        cutoff_ms = self._cutoff_ms()
        while True:
            sids = await self.archive.candidates(cutoff_ms, self.batch)
            if not sids:
                return None
            eligible, waiting = await self._eligible(sids, cutoff_ms)
            if eligible:
                break
            if waiting:  # every candidate read waits for its fan-out (and is read again): the next pass
                return None
            # Each was dropped or scheduled at its ended_at: the next candidates are others.
        now = datetime.now(UTC)
        pass_id = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        state = await self.archive.begin(self.token, pass_id, int(now.timestamp() * 1_000_000))
        await self.archive.intend(self.token, {call.call_sid: call.record_id for call in eligible})
        held = await self.archive.freeze(state.marker, [(c.call_sid, c.version, c.token) for c in eligible])
        await self.archive.drop(self.token, [call.call_sid for call, ok in zip(eligible, held, strict=True) if not ok])
        await self.step("held", state)
        return state, {call.call_sid: call for call, ok in zip(eligible, held, strict=True) if ok}

    async def _eligible(self, sids: list[str], cutoff_ms: int) -> tuple[list[Selected], int]:
        """The candidates that may be archived now, and how many wait where they are (an outbox not yet
        fanned out); the others are dropped from the candidates (no such call, archived already, never
        finalized) or scheduled again at their ended_at (not yet past retention)."""
        found = await self.archive.held_fields(sids)
        eligible: list[Selected] = []
        waiting = 0
        gone: list[str] = []
        later: dict[str, int] = {}
        orphans: list[tuple[str, str]] = []
        for sid, fields in zip(sids, found, strict=True):
            if not has_record(fields) or int(fields.get(b"fr", b"0")) < 1:
                gone.append(sid)  # no record (a tombstone, a deleted key) or not finalized: not a candidate
                continue
            if ARCHIVED in fields or fields.get(b"ob") == b"1":
                waiting += 1  # messages still to fan out, or held: later
                if fields.get(ARCHIVED, b"").startswith(b"@"):
                    # No pass is under way while one is selected, and we hold the lock: the hold of a process
                    # that lost the lock before its pass began. Released: the next pass takes the call.
                    orphans.append((sid, fields[ARCHIVED].decode()))
                continue
            try:
                row = call_row(StoredCall(sid, fields).served(self.settings.policy), int(fields[b"fr"]), 0)
            except ValueError as exc:  # not a record a row can hold: it stays in Redis, and says so once
                log.error("archive_call_refused", call_sid=sid, error=str(exc)[:300])
                gone.append(sid)
                continue
            ended_ms = (row["ended_at"] or 0) // 1000
            if ended_ms > cutoff_ms:  # a candidate again once its ended_at is past retention
                later[sid] = ended_ms
                continue
            eligible.append(Selected(sid, int(fields[b"id"]), int(fields[b"v"]),
                                     fields.get(b"t", b"").decode(), fields, row))
        await self.archive.unschedule(gone)
        if orphans:
            log.warning("archive_orphan_holds_released", calls=await self.archive.release(orphans))
        if later:
            await self.archive.schedule(later)
        return eligible, waiting

    async def _place(self, state: PassState, selected: dict[str, Selected]) -> "Rows":
        """Build the held calls' rows, number the files, record each call's place: state `placed`."""
        # The calls just held, as read before the hold (the hold checked they had not changed since); and
        # for a resumed pass, the batch's calls read now: those recorded but not held leave it.
        fields = {sid: call.fields for sid, call in selected.items()}
        known = {sid: call.row for sid, call in selected.items()}
        missing = [call.call_sid for call in await self.archive.batch() if call.call_sid not in selected]
        marker = state.marker.encode()
        not_held = []
        for sid, found in zip(missing, await self.archive.held_fields(missing), strict=True):
            if found.get(ARCHIVED) == marker:
                fields[sid] = found
            else:
                not_held.append(sid)
        await self.archive.drop(self.token, not_held)
        rows = await self._rows(state, fields, known)
        numbers = await self.archive.new_files(self.token, len(rows.calls))
        state.files = dict(zip(sorted(rows.calls), numbers, strict=True))
        places = {}
        for part, calls in rows.calls.items():
            for index, row in enumerate(calls):
                places[row["call_sid"]] = (row["id"], f"{state.files[part]}.{index}")
        await self.archive.place(self.token, {no: calls_path(part, state.pass_id)
                                              for part, no in state.files.items()}, places)
        await self.archive.advance(self.token, state, "placed")
        await self.step("placed", state)
        return rows

    async def _rows(self, state: PassState, fields: dict[str, dict[bytes, bytes]],
                    known: dict[str, dict[str, Any]] | None = None) -> "Rows":
        """The calls' rows (and their events'), by partition, each partition's calls in (ended_at, SID) order;
        `known`: rows built already (when the calls were selected), but for their `archived_at`."""
        rows = Rows()
        policy = self.settings.policy
        at = state.archived_at_us
        known = known or {}
        sids = sorted(fields)
        events = await self.archive.events(sids) if self.settings.journal != "off" else [[] for _ in sids]
        for sid, call_events in zip(sids, events, strict=True):
            call = StoredCall(sid, fields[sid])
            row = known.get(sid)
            if row is None:
                row = call_row(call.served(policy), int(fields[sid].get(b"fr", b"1")), at)
            row["archived_at"] = at
            part = partition(_organization(call.organization_id), row["ended_at"])
            rows.calls[part].append(row)
            rows.events[part] += [event_row(sid, key, us, restore(entry, key, sid, us), at)
                                  for key, us, entry in call_events]
        for calls in rows.calls.values():
            calls.sort(key=lambda row: (row["ended_at"], row["call_sid"]))
        return rows

    async def _write(self, state: PassState, rows: "Rows | None") -> "Written":
        """Each partition's files, complete before visible; those a killed pass finished are left as they are."""
        if rows is None:  # resumed: the held calls have not changed since their rows were first built
            held = await self.archive.batch()
            sids = [call.call_sid for call in held]
            rows = await self._rows(state, dict(zip(sids, await self.archive.held_fields(sids), strict=True)))
        written = Written()
        for part in sorted(rows.calls):
            for path, encode, part_rows in ((calls_path(part, state.pass_id), calls_file, rows.calls[part]),
                                            (events_path(part, state.pass_id), events_file, rows.events[part])):
                if not part_rows or await asyncio.to_thread(self.files.exists, path):
                    continue
                data = await asyncio.to_thread(encode, part_rows)
                await asyncio.to_thread(self.files.put, path, data)
                written.bytes += len(data)
                written.files += 1
                self.metrics.archive_bytes.inc(len(data))
                await self.step("file_written", state)
        await self.step("files_written", state)
        return written

    async def _clean(self, state: PassState) -> int:
        """Tombstones for the held calls, then their way out of the indexes; the calls archived now."""
        held = [call for call in await self.archive.batch() if call.place is not None]
        done = 0
        for start in range(0, len(held), TOMBSTONES_PER_STEP):
            chunk = held[start:start + TOMBSTONES_PER_STEP]
            places = [(call.call_sid, str(call.place)) for call in chunk]
            tombstoned = await self.archive.tombstone(state.marker, places)
            done += tombstoned
            self.metrics.archived_calls.inc(tombstoned)
            await self.step("tombstoned", state)
        await self.archive.unindex([(call.call_sid, call.record_id) for call in held])
        await self.step("unindexed", state)
        return done


class Rows:
    """A batch's rows by partition."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)


@dataclass
class Written:
    bytes: int = 0
    files: int = 0


def _organization(organization_id: object) -> int | None:
    return organization_id if isinstance(organization_id, int) else None
