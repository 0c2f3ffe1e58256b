"""Pure planning of one call's share of a batch: which events are new, the state after them.

The consumer loads the call (version, core state, the registers and call_meta keys the
batch touches, which of its events are applied), calls `plan_call`, and commits the plan
with a compare-and-set on the version; no I/O happens here.
"""

import marshal
import sys
from dataclasses import dataclass
from typing import Any

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import CallEvent
from call_ledger.core.indexes import IndexBasis, IndexEntry
from call_ledger.core.pricing import price_event
from call_ledger.core.rules import META_FIELD, CallState, apply_event, ledger_costs
from call_ledger.settings import Settings
from call_ledger.store import Entry, LoadedCall


class CallPlan:
    """What committing this call's events would write, and what happened to each entry.
    (A plain class: a dataclass's default factories were 4% of the apply loop's CPU.)"""

    __slots__ = ("applied", "duplicates", "failed", "new_events", "plain_since", "record", "refused", "state")

    def __init__(self, state: CallState, plain_since: tuple[Any, ...] | None = None) -> None:
        self.state = state
        # The core as the call's hash holds it in plain fields (None: it holds it otherwise, as `s`).
        self.plain_since = plain_since
        self.new_events: list[tuple[str, int, bytes]] = []  # (journal key, occurred_us, JSON)
        self.applied: list[tuple[Entry, CallEvent]] = []
        self.duplicates: list[tuple[Entry, CallEvent]] = []
        self.failed: list[tuple[Entry, CallEvent, str]] = []  # retried, then dead-lettered
        self.refused: list[tuple[Entry, CallEvent, str]] = []  # dead-lettered at once
        self.record: dict[str, Any] | None = None  # rendered when committed


def wanted_meta(items: list[tuple[Entry, CallEvent]]) -> tuple[list[str], list[str]]:
    """(journal keys, m: field names) of these events: what a worker that loads every register
    anyway (to render the record) must load besides."""
    keys = list(dict.fromkeys(event.key for _, event in items))
    meta = [META_FIELD + key for _, event in items if event.call_meta for key in event.call_meta]
    return keys, list(dict.fromkeys(meta)) if len(meta) > 1 else meta


def frozen_fx(event: CallEvent, settings: Settings) -> CallEvent:
    """The event as it is journaled: each cost in another currency than the ledger's carries
    the rate it was converted at and the amount counted (`ledger_costs`, which `apply_event`
    summed), so /costs shows what the record adds up, whatever LEDGER_FX_RATES says later.
    The event itself when every cost is in the ledger currency (the usual case)."""
    if not event.costs or all(cost.currency == settings.currency for cost in event.costs):
        return event
    costs = tuple(
        cost if cost.currency == settings.currency else cost.model_copy(update={
            "fx_rate": format(settings.fx_rates[cost.currency], "f"), "ledger_amount_nano": amount})
        for cost, (_, amount) in zip(event.costs, ledger_costs(event, settings.policy), strict=True))
    return event.model_copy(update={"costs": costs})


def plan_call(loaded: LoadedCall, items: list[tuple[Entry, CallEvent]], settings: Settings) -> CallPlan:
    """Fold the events this call has not seen into its state; the rest are duplicates or failures."""
    state = loaded.state if loaded.state is not None else CallState.from_fields(
        loaded.core, loaded.fields, items[0][1].call_sid)
    plan = CallPlan(state, state.plain_snapshot() if loaded.plain else None)
    seen = set(loaded.applied)
    version = loaded.version
    for entry, event in items:
        if event.key in seen:
            plan.duplicates.append((entry, event))
            continue
        if version >= settings.max_events_per_call:
            plan.refused.append((entry, event, f"call already has {settings.max_events_per_call} events "
                                 "(LEDGER_MAX_EVENTS_PER_CALL)"))
            continue
        try:
            # Usage is priced here, at apply time, with the file this worker loaded: a missing
            # price fails like a missing FX rate (retried, then dead-lettered, replayable).
            priced = price_event(event, settings.pricing) if event.usage else event
            apply_event(plan.state, priced, settings.policy)
        except Refused as exc:
            plan.refused.append((entry, event, str(exc)))
            continue
        except Unapplicable as exc:
            plan.failed.append((entry, event, str(exc)))
            continue
        except Exception as exc:  # a bug must not hold up the other events of the batch
            plan.failed.append((entry, event, f"apply error: {type(exc).__name__}: {exc}"))
            continue
        seen.add(event.key)
        version += 1
        # What /events shows: exactly what intake stored, or for priced usage the priced event,
        # so the price is frozen with it (a later edit of the file changes no applied cost); and
        # a cost in another currency with the rate and amount it was counted at (frozen_fx).
        if settings.journal == "off":
            journal = b""  # the commit then records the event's key only
        else:
            journaled = frozen_fx(priced, settings)
            journal = (entry.event_json or b"") if journaled is event else journaled.model_dump_json(
                exclude_defaults=True).encode()
        plan.new_events.append((event.key, event.occurred_us, journal))
        plan.applied.append((entry, event))
    return plan


class BytesLRU:
    """Values as bytes by key, bounded in bytes, least recently used first out.

    Bytes, so that the collector never walks what it holds: CPython tracks a dict only once it
    holds a container, and a dict of str to bytes never does. Held as objects (a state's dicts
    and lists, a dataclass, the LRU's OrderedDict), a hundred thousand cached calls were 1.8
    million objects, and a full collection over them stopped the process for 1.3 s
    (docs/performance.md). Encoded with marshal (C, stdlib, exact for every JSON value), an
    entry is also a tenth of the memory it took as objects.
    """

    # The dict's slot and index entry for one key (the key's and the value's objects are counted
    # with sys.getsizeof: a call SID of 512 non-ASCII characters is up to 2 KB, not 512 bytes).
    ENTRY_OVERHEAD = 60

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._items: dict[str, bytes] = {}

    def _size(self, key: str, value: bytes) -> int:
        return self.ENTRY_OVERHEAD + sys.getsizeof(key) + sys.getsizeof(value)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def peek(self, key: str) -> bytes | None:
        return self._items.get(key)

    def get(self, key: str) -> bytes | None:
        """The value, now the most recently used."""
        value = self._items.pop(key, None)
        if value is not None:
            self._items[key] = value  # a dict keeps insertion order: re-inserted, it is the newest
        return value

    def put(self, key: str, value: bytes) -> None:
        items, overhead = self._items, self.ENTRY_OVERHEAD + sys.getsizeof(key)
        old = items.pop(key, None)
        if old is not None:
            self.bytes -= overhead + sys.getsizeof(old)
        size = overhead + sys.getsizeof(value)
        if size > self.capacity_bytes:
            return
        items[key] = value
        self.bytes += size
        while self.bytes > self.capacity_bytes:
            oldest = next(iter(items))
            self.bytes -= self._size(oldest, items.pop(oldest))

    def forget(self, key: str) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self.bytes -= self._size(key, value)

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class KnownCall:
    """A call as this worker last committed it (what KnownCalls.peek decodes)."""

    version: int
    record_id: int
    state: CallState  # every register, and the call_meta keys of `meta_fields`
    meta_fields: frozenset[str]  # the m: fields it was loaded or written with (set or not)
    applied: tuple[str, ...]  # journal keys of its latest events, oldest first (KNOWN_EVENTS at most)
    token: str  # the token of the commit that made `version` (call_ledger/store/lua/commit.lua)


# Journal keys a cached call keeps of its latest events: a provider's retry of one of them is
# then a duplicate at once, not a refused commit and a re-read. Absence proves nothing (the
# commit script checks every event), so a bound only costs re-reads for older retries.
KNOWN_EVENTS = 32
# call_meta fields a cached call may know to be unset (asked for, not found) beyond those it holds.
KNOWN_ABSENT = 64


class KnownCalls(BytesLRU):
    """What this worker last wrote for recently seen calls, so a busy call is not re-read
    (nor its state decoded from JSON) before every batch. Bounded in bytes
    (LEDGER_WORKER_CACHE_BYTES), least recently used first out.

    Safe because it is only a guess: the commit script refuses a write whose version is not
    the one in Redis, or that carries an event the journal already has, and the worker then
    evicts the entry and re-reads. It keeps no event ids: a redelivered event looks new to a
    cached call, is refused by the script, and the re-read finds it applied. To spare that
    round trip for the common case, it keeps the keys of each call's latest events
    (KNOWN_EVENTS): a retry of one of those is a duplicate without asking Redis.

    Each call is kept as marshal bytes of (version, record id, token, call_meta field names,
    latest keys, `CallState.parts()`, whether its core was written as plain fields), out of the
    collector's sight (BytesLRU), and decoded into a new state for each batch that plans from it
    (about 3 µs for a 10-event call): the plan owns its state, and a plan that is not committed
    leaves nothing behind.
    """

    def __init__(self, capacity_bytes: int = 32 * 1024 * 1024) -> None:
        super().__init__(capacity_bytes)

    def peek(self, call_sid: str) -> KnownCall | None:  # type: ignore[override]
        """What it holds of the call, decoded (not marked used); None if it holds nothing."""
        found = super().peek(call_sid)
        if found is None:
            return None
        version, record_id, token, meta_fields, applied, parts, _ = marshal.loads(found)
        return KnownCall(version, record_id, CallState.of_parts(parts), frozenset(meta_fields), applied, token)

    def get(self, call_sid: str, meta_fields: list[str] | None = None) -> LoadedCall | None:  # type: ignore[override]
        """The call as last written, if every call_meta field asked for is known (or the call's
        every key is); None otherwise."""
        found = super().peek(call_sid)
        if found is None:
            return None
        version, record_id, token, known_fields, applied, parts, plain = marshal.loads(found)
        state = CallState.of_parts(parts)
        # It knows every key when it holds as many as the call has (the core counts them).
        if meta_fields and len(state.meta) < state.meta_keys and not set(known_fields).issuperset(meta_fields):
            return None
        super().get(call_sid)  # most recently used
        return LoadedCall(version, None, {}, record_id, frozenset(applied), state, token, cached=True,
                          known=(known_fields, applied), plain=plain)

    def committed(self, call_sid: str, loaded: LoadedCall, version: int, record_id: int, state: CallState,
                  new_events: list[str], token: str = "", plain: bool = True) -> None:
        """Cache the call as just committed: `state` planned from `loaded` (cached or read),
        now at `version` with the journal keys `new_events` added, its core written as plain fields
        (`plain`: a commit of layout 4) or as `s`."""
        if loaded.cached:  # planned from what the cache held: what it knew holds
            known_fields, known_applied = loaded.known
            meta_fields, applied = frozenset(known_fields), (*known_applied, *new_events)
        else:  # read from Redis: the fields asked for (set or not), and the asked events it had
            meta_fields = frozenset(name for name in loaded.fields if name.startswith(META_FIELD))
            applied = (*loaded.applied, *new_events)
        present = {META_FIELD + key for key in state.meta}
        if len(meta_fields) > len(present) + KNOWN_ABSENT:  # e.g. the keys of refused events: not worth keeping
            meta_fields = frozenset(present)
        else:
            meta_fields |= present
        self.remember(call_sid, version, record_id, state, meta_fields, applied[-KNOWN_EVENTS:], token, plain)

    def remember(self, call_sid: str, version: int, record_id: int, state: CallState,
                 meta_fields: frozenset[str], applied: tuple[str, ...] = (), token: str = "",
                 plain: bool = True) -> None:
        self.put(call_sid, marshal.dumps((version, record_id, token, tuple(meta_fields), tuple(applied),
                                          state.parts(), plain)))


def new_call() -> LoadedCall:
    """A call guessed to be new: version 0, no token, no id, nothing applied (NewCallGuess)."""
    return LoadedCall(0, None, {}, None, frozenset(), CallState(), guessed=True)


class NewCallGuess:
    """Whether to commit a call this worker does not know as a new call, without reading it.

    Most calls a worker does not know are new: a call's first event opens it, and the worker
    then knows it (KnownCalls). Reading such a call first costs a round trip (and ~3% of a
    drain's CPU: README, Performance) to learn that nothing is there. So a call not known
    is planned from the empty state and committed against version 0 and no token: the commit
    script writes it only if the call really has nothing yet (a call that exists has a
    version), exactly as it confirms any guess of the cache; a wrong guess is a refused
    commit, then the read, a new plan and a commit (and a record id allocated and never
    used: ids need only be unique).

    Wrong guesses are what a worker sharing its calls with others meets (another worker
    opened them), or one whose cache no longer holds the calls its stream carries. So it
    guesses only while few guesses fail: past FAIL_RATE (a moving average over about the
    last 20 guesses) it reads first, and tries one guess in PROBE_EVERY to see whether that
    changed. Entries delivered more than once (claimed from a dead worker, retried) are
    never guessed: they are mostly of calls that exist.
    """

    FAIL_RATE = 0.25
    PROBE_EVERY = 32
    _WEIGHT = 0.05

    def __init__(self) -> None:
        self.fail_rate = 0.0
        self._asked = 0

    def allowed(self, items: list[tuple[Entry, CallEvent]]) -> bool:
        if any(entry.deliveries > 1 for entry, _ in items):
            return False
        if self.fail_rate < self.FAIL_RATE:
            return True
        self._asked += 1
        return self._asked % self.PROBE_EVERY == 0

    def outcome(self, right: bool) -> None:
        self.fail_rate += self._WEIGHT * ((0.0 if right else 1.0) - self.fail_rate)


class IndexedEntries(BytesLRU):
    """What this worker last wrote to the index, and the shard took, for recently seen calls
    (its version and the entry's basis: list time, id, shape, amounts), so the call's next update
    can go as a delta from it (call_ledger/store/lua/index.lua). Only a hint: the script applies the delta only
    while that version is the one indexed, and otherwise answers with the entry it holds, which the delta is
    derived from again (call_ledger.store.indexes.IndexStore.write). Bounded
    in bytes, least recently used first out; kept as bytes, out of the collector's sight (BytesLRU).
    """

    def get(self, call_sid: str) -> tuple[int, IndexBasis] | None:  # type: ignore[override]
        return self._basis(super().get(call_sid))

    def peek(self, call_sid: str) -> tuple[int, IndexBasis] | None:  # type: ignore[override]
        return self._basis(super().peek(call_sid))

    @staticmethod
    def _basis(found: bytes | None) -> tuple[int, IndexBasis] | None:
        if found is None:
            return None
        version, list_us, record_id, shape_key, amounts = marshal.loads(found)
        return version, IndexBasis.of(list_us, record_id, shape_key, amounts)

    def remember(self, call_sid: str, version: int, entry: IndexEntry | IndexBasis) -> None:
        basis = entry if isinstance(entry, IndexBasis) else IndexBasis(entry)
        self.put(call_sid, marshal.dumps((version, basis.list_us, basis.record_id, basis.shape_key, basis.amounts)))
