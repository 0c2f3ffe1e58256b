"""Pure planning of one call's share of a batch: which events are new, the state after them.

The consumer loads the call (version, core state, the registers and call_meta keys the
batch touches, which of its events are applied), calls `plan_call`, and commits the plan
with a compare-and-set on the version; no I/O happens here.
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ledger.errors import Refused, Unapplicable
from ledger.events import CallEvent
from ledger.indexes import IndexEntry
from ledger.pricing import price_event
from ledger.rules import CallState, apply_event, touched_fields
from ledger.settings import Settings
from ledger.store import Entry, LoadedCall


@dataclass
class CallPlan:
    """What committing this call's events would write, and what happened to each entry."""

    state: CallState
    new_events: list[tuple[str, int, bytes]] = field(default_factory=list)  # (journal key, occurred_us, JSON)
    applied: list[tuple[Entry, CallEvent]] = field(default_factory=list)
    duplicates: list[tuple[Entry, CallEvent]] = field(default_factory=list)
    failed: list[tuple[Entry, CallEvent, str]] = field(default_factory=list)  # retried, then dead-lettered
    refused: list[tuple[Entry, CallEvent, str]] = field(default_factory=list)  # dead-lettered at once
    record: dict[str, Any] | None = None  # rendered when committed


def wanted_fields(items: list[tuple[Entry, CallEvent]]) -> tuple[list[str], list[str]]:
    """(journal keys, r:/m: field names) a worker must load to plan these events."""
    keys = list(dict.fromkeys(event.key for _, event in items))
    fields = list(dict.fromkeys(name for _, event in items for name in touched_fields(event)))
    return keys, fields


def plan_call(loaded: LoadedCall, items: list[tuple[Entry, CallEvent]], settings: Settings) -> CallPlan:
    """Fold the events this call has not seen into its state; the rest are duplicates or failures."""
    plan = CallPlan(state=CallState.from_fields(loaded.core, loaded.fields))  # type: ignore[arg-type]
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
            apply_event(plan.state, priced, settings)
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
        # so the price is frozen with it (a later edit of the file changes no applied cost).
        if settings.journal == "off":
            journal = b""  # the commit then records the event's key only
        else:
            journal = (entry.event_json or b"") if priced is event else priced.model_dump_json(
                exclude_defaults=True).encode()
        plan.new_events.append((event.key, event.occurred_us, journal))
        plan.applied.append((entry, event))
    return plan


# Per-entry and per-field overhead of a cached call in CPython (objects, dict slots, the
# LRU's links), measured with tracemalloc (tests/test_integrity_ledger.py holds it to that).
_ENTRY_OVERHEAD = 600
_FIELD_OVERHEAD = 150


V = TypeVar("V")


def _compact(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(memoryview(value))


class SizedLRU(Generic[V]):
    """Values by key, bounded in bytes (each value's size given with it), least recently used
    first out."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()

    def peek(self, key: str) -> V | None:
        found = self._items.get(key)
        return None if found is None else found[0]

    def get(self, key: str) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: str, value: V, size: int) -> None:
        self.forget(key)
        if size > self.capacity_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.capacity_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def forget(self, key: str) -> None:
        found = self._items.pop(key, None)
        if found is not None:
            self.bytes -= found[1]

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class KnownCalls(SizedLRU[LoadedCall]):
    """What this worker last wrote for recently seen calls, so a busy call is not re-read
    from Redis before every batch. Bounded in bytes (LEDGER_WORKER_CACHE_BYTES), least
    recently used first out.

    Safe because it is only a guess: the commit script refuses a write whose version is not
    the one in Redis, or that carries an event the journal already has, and the worker then
    evicts the entry and re-reads. It keeps no event ids: a redelivered event looks new to a
    cached call, is refused by the script, and the re-read finds it applied.
    """

    def __init__(self, capacity_bytes: int = 32 * 1024 * 1024) -> None:
        super().__init__(capacity_bytes)

    def get(self, call_sid: str, fields: list[str] | None = None) -> LoadedCall | None:
        """The call as last written, if every field asked for is known; None otherwise."""
        call = self.peek(call_sid)
        if call is None or any(name not in call.fields for name in fields or ()):
            return None
        return super().get(call_sid)

    def remember(self, call_sid: str, call: LoadedCall) -> None:
        # Exact-size copies: orjson hands back bytes that keep a 4 KiB buffer each, which
        # would make the real memory of a cached call some 20 times what is counted here.
        fields = {name: _compact(value) for name, value in call.fields.items()}
        call = LoadedCall(call.version, _compact(call.core), fields, call.record_id, frozenset())
        size = _ENTRY_OVERHEAD + len(call_sid) + len(call.core or b"") + sum(
            _FIELD_OVERHEAD + len(name) + len(value or b"") for name, value in call.fields.items())
        self.put(call_sid, call, size)


class IndexedEntries(SizedLRU[tuple[int, IndexEntry]]):
    """The index entry this worker last wrote, and the shard took, for recently seen calls
    (its version and the entry), so the call's next update can go as a delta from it
    (ledger/index.lua's fast path). Only a hint: the script applies the delta only while
    that version is the one indexed, and takes its full path otherwise. Bounded in bytes,
    least recently used first out.
    """

    _SIZE = 1200  # an IndexEntry, its strings and the dict slot, measured with tracemalloc

    def remember(self, call_sid: str, version: int, entry: IndexEntry) -> None:
        self.put(call_sid, (version, entry), self._SIZE)
