"""A batch's bookkeeping, apart from any I/O: its entries grouped by call, which calls a round
commits, and what each entry came to.

The consumer (worker/consumer.py) runs the pipeline

    read entries -> group_by_call -> per call: load, plan_call (worker/apply.py) -> commit
                 -> schedule the outbox fan-out and finalize timers the commit asks for (`Due`) -> index
                 -> log each entry's Outcome -> acknowledge / retry / dead-letter

and keeps what the rounds of a batch decide in a `BatchResult`; the decisions themselves are here.
"""

from typing import Any, NamedTuple

from pydantic import ValidationError

from call_ledger.core.events import CallEvent
from call_ledger.core.rules import CallState
from call_ledger.store import CommitReply, CommitWrite, Entry, LoadedCall
from call_ledger.worker.apply import CallPlan

EntryRef = tuple[str, str]  # Entry.ref: (stream, entry id), unique across shards
Item = tuple[Entry, CallEvent]  # an entry and the event it carries
Calls = dict[str, list[Item]]  # a batch's items by call SID, each call's in stream order


class Outcome(NamedTuple):
    """What happened to one entry: applied, duplicate, refused (dead-lettered now), failed
    (retried, then dead-lettered), or deferred (its call stayed contended: retried)."""

    name: str
    reason: str | None = None


# The outcomes without a reason, made once (the apply loop settles every event with one).
APPLIED = Outcome("applied")
DUPLICATE = Outcome("duplicate")
DEFERRED = Outcome("deferred", "call updated concurrently; will retry")
ARCHIVED = Outcome("refused", "call_archived")  # SPEC §16: the call is in the archive


class Committed(NamedTuple):
    """A call as committed (or found, when all its events were duplicates): what its index entry
    is rendered from."""

    record_id: int
    version: int
    state: CallState
    record: dict[str, Any] | None  # rendered at the commit; None when there was no commit


class Undecodable(NamedTuple):
    """An entry whose event no model takes: nothing a retry could fix (dead-lettered at once)."""

    entry: Entry
    reason: str


class Grouped(NamedTuple):
    by_call: Calls
    undecodable: list[Undecodable]


def group_by_call(entries: list[Entry]) -> Grouped:
    """Decode each entry's event and group them by call, in stream order; the entries that do not
    decode apart, with the reason."""
    by_call: Calls = {}
    undecodable: list[Undecodable] = []
    for entry in entries:
        try:
            event = CallEvent.model_validate_json(entry.event_json or b"")
        except (ValidationError, ValueError) as exc:
            undecodable.append(Undecodable(entry, f"undecodable event: {exc.errors()[0]['msg']}"
                                           if isinstance(exc, ValidationError) else "undecodable event"))
            continue
        items = by_call.get(event.call_sid)
        if items is None:
            by_call[event.call_sid] = [(entry, event)]
        else:
            items.append((entry, event))
    return Grouped(by_call, undecodable)


def rejudged(plan: CallPlan, loaded: LoadedCall) -> bool:
    """Whether a plan's verdicts must be judged again on the call as read from Redis.

    A call planned from the worker's cache (KnownCalls) is only a guess of what Redis holds. A
    refusal there (the event bound, say) may be of an event already applied that the cache does
    not list (it keeps the latest keys only): judge it again on the call as read from Redis, whose
    order index knows every applied event. So is a failure on a call guessed new (NewCallGuess):
    judged on the empty state, it may be of an event the call already has (a duplicate, whatever
    would fail now)."""
    return bool(plan.refused and loaded.state is not None) or bool(plan.failed and loaded.guessed)


def committable(plan: CallPlan, loaded: LoadedCall) -> bool:
    """Whether a plan goes to the commit script.

    A refusal is judged on the state read (the call's provider, its event count...): a call with
    refusals is committed too, even with nothing new, so that the version check confirms the
    refusal against Redis; on a conflict it is judged again. So is a duplicate found by the cache:
    the version check confirms that Redis still has the commits the cache remembers (a Redis that
    lost them, restarted from an older snapshot, gets the event applied again, not acknowledged as
    a duplicate)."""
    return bool(plan.new_events or plan.refused or (plan.duplicates and loaded.state is not None))


def replanned(plan: CallPlan, loaded: LoadedCall) -> list[Item]:
    """A contended call's items to plan again: its new and refused events (and the duplicates the
    cache found: the version that vouched for them moved); failures are settled."""
    return plan.applied + [(entry, event) for entry, event, _ in plan.refused] + (
        plan.duplicates if loaded.state is not None else [])


def check_write(call_sid: str, loaded: LoadedCall) -> CommitWrite:
    """A commit that writes nothing: the version check of a plan with refusals or cached duplicates
    only (no record id is allocated for it)."""
    return CommitWrite(call_sid=call_sid, version=loaded.version, new_version=loaded.version, core=b"",
                       record_id=loaded.record_id or 0, events=[], fields=[], token=loaded.token)


OK_REPLY = CommitReply(True)


class CommitResult(NamedTuple):
    conflicts: set[str]  # the calls whose compare-and-set failed: someone else wrote them
    written: dict[str, CommitWrite]  # what was sent per call
    replies: dict[str, CommitReply]  # what the script answered per call
    at_ms: int  # the time the commit stamped (commit.lua's now_ms)


class Due:
    """What a batch's commits leave to schedule before its entries are acknowledged (SPEC §15): the calls
    whose outbox has messages to fan out, and the calls' finalize timers (sid -> when due, ms)."""

    __slots__ = ("outbox", "timers")

    def __init__(self) -> None:
        self.outbox: set[str] = set()
        self.timers: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.outbox or self.timers)

    def timer(self, sid: str, due_ms: int) -> None:
        self.timers[sid] = max(due_ms, self.timers.get(sid, 0))

    def committed(self, sid: str, reply: CommitReply, at_ms: int, after_ms: int) -> None:
        """What the commit script asked for this call."""
        if reply.outbox:
            self.outbox.add(sid)
        if reply.timer:
            self.timer(sid, at_ms + after_ms)

    def repaired(self, sid: str, loaded: LoadedCall, after_ms: int) -> None:
        """A call read from Redis with an event redelivered: schedule again from its fields what its
        commit asked for, in case the worker that committed it died before scheduling (both schedules
        are idempotent: a fan-out of an emptied outbox or a timer of a finalized call does nothing)."""
        if loaded.outbox:
            self.outbox.add(sid)
        if loaded.ended and loaded.revision == 0:
            self.timer(sid, loaded.changed_ms + after_ms)


class BatchResult:
    """What a batch's entries came to, over its commit rounds: each entry's outcome, each call's
    committed version (what is indexed once the rounds are over), and what is due of its outbound
    messages (scheduled before the entries are acknowledged)."""

    __slots__ = ("after_ms", "committed", "due", "outcomes")

    def __init__(self, after_ms: int = 0) -> None:
        self.outcomes: dict[EntryRef, Outcome] = {}
        # Per call: as committed, or as found when every event of the call was a duplicate, failed
        # or was refused (re-indexing it repairs an index update a dead worker missed).
        self.committed: dict[str, Committed] = {}
        self.due = Due()
        self.after_ms = after_ms  # LEDGER_FINALIZE_AFTER_S in ms

    def planned(self, plans: dict[str, CallPlan], loaded: dict[str, LoadedCall]) -> None:
        """Settle what a round's plans decide without a commit: failures, and the duplicates of a
        call read from Redis this round (whose outbound schedules are repaired: a duplicate may be the
        redelivery of a commit whose worker died before scheduling them)."""
        outcomes = self.outcomes
        for sid, plan in plans.items():
            if loaded[sid].state is None:  # read from Redis this round: its duplicates are settled
                outcomes.update((entry.ref, DUPLICATE) for entry, _ in plan.duplicates)
                if plan.duplicates:
                    self.due.repaired(sid, loaded[sid], self.after_ms)
            outcomes.update((entry.ref, Outcome("failed", reason)) for entry, _, reason in plan.failed)

    def archived(self, items: list[Item]) -> None:
        """A call in the archive: its events are refused, dead-lettered with reason `call_archived`."""
        self.outcomes.update((entry.ref, ARCHIVED) for entry, _ in items)

    def found(self, plan: CallPlan, loaded: LoadedCall, sid: str) -> None:
        """A call with nothing to commit: indexed as found, if it exists."""
        if loaded.record_id is not None:
            self.committed[sid] = Committed(loaded.record_id, loaded.version, plan.state, None)

    def written(self, plan: CallPlan, loaded: LoadedCall, write: CommitWrite, reply: CommitReply = OK_REPLY,
                at_ms: int = 0) -> None:
        """A call whose commit went through: its entries are settled, its new version indexed, its
        outbound messages scheduled as the commit asks (`reply`, of a commit at `at_ms`)."""
        self.due.committed(write.call_sid, reply, at_ms, self.after_ms)
        outcomes = self.outcomes
        outcomes.update((entry.ref, APPLIED) for entry, _ in plan.applied)
        outcomes.update((entry.ref, Outcome("refused", reason)) for entry, _, reason in plan.refused)
        outcomes.update((entry.ref, DUPLICATE) for entry, _ in plan.duplicates)
        if plan.new_events:
            self.committed[write.call_sid] = Committed(write.record_id, write.new_version, plan.state, plan.record)
        elif loaded.record_id is not None:  # checked only: index it as found
            self.committed[write.call_sid] = Committed(loaded.record_id, loaded.version, plan.state, None)


class Settled:
    """A batch's entries by what happens to them once logged."""

    __slots__ = ("done", "failures", "redelivered", "refused")

    def __init__(self) -> None:
        self.done: list[Entry] = []  # acknowledged
        self.redelivered: list[Entry] = []  # acknowledged, with a failure reason to forget
        self.refused: list[tuple[Entry, CallEvent, str]] = []  # dead-lettered now
        self.failures: dict[EntryRef, str] = {}  # retried, or dead-lettered after the last


def failure_text(what: str, exc: BaseException) -> str:
    """A failure reason for logs and dead letters: what failed and the exception, bounded."""
    return f"{what}: {type(exc).__name__}: {exc}"[:500]
