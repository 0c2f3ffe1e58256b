"""Pure planning of one call's share of a batch: which events are new, the state after them.

The consumer loads the call (version, state, applied ids), calls `plan_call`, and
commits the plan with a compare-and-set on the version; no I/O happens here.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

from ledger.errors import Unapplicable
from ledger.events import CallEvent
from ledger.pricing import price_event
from ledger.rules import CallState, apply_event
from ledger.settings import Settings
from ledger.store import Entry, LoadedCall


@dataclass
class CallPlan:
    """What committing this call's events would write, and what happened to each entry."""

    state: CallState
    new_events: list[tuple[str, bytes]] = field(default_factory=list)  # (event_id, event JSON)
    applied: list[tuple[Entry, CallEvent]] = field(default_factory=list)
    duplicates: list[tuple[Entry, CallEvent]] = field(default_factory=list)
    failed: list[tuple[Entry, CallEvent, str]] = field(default_factory=list)


def plan_call(loaded: LoadedCall, items: list[tuple[Entry, CallEvent]], settings: Settings) -> CallPlan:
    """Fold the events this call has not seen into its state; the rest are duplicates or failures."""
    plan = CallPlan(state=CallState.from_json(loaded.state_json))
    seen = set(loaded.applied)
    for entry, event in items:
        if event.event_id in seen:
            plan.duplicates.append((entry, event))
            continue
        try:
            # Usage is priced here, at apply time, with the file this worker loaded: a missing
            # price fails like a missing FX rate (retried, then dead-lettered, replayable).
            priced = price_event(event, settings.pricing) if event.usage else event
            apply_event(plan.state, priced, settings)
        except Unapplicable as exc:
            plan.failed.append((entry, event, str(exc)))
            continue
        except Exception as exc:  # a bug must not hold up the other events of the batch
            plan.failed.append((entry, event, f"apply error: {type(exc).__name__}: {exc}"))
            continue
        seen.add(event.event_id)
        # What /events shows: exactly what intake stored, or for priced usage the priced event,
        # so the price is frozen with it (a later edit of the file changes no applied cost).
        journal = (entry.event_json or b"") if priced is event else priced.model_dump_json().encode()
        plan.new_events.append((event.event_id, journal))
        plan.applied.append((entry, event))
    return plan


class KnownCalls:
    """What this worker last wrote for recently seen calls, so a busy call is not re-read
    from Redis before every batch.

    Safe because it is only a guess: the commit script refuses a write whose version
    is not the one in Redis, or that carries an event id the call already has, and the
    worker then evicts the entry and re-reads. `applied` may therefore be a subset of
    the call's event ids; it never holds an id that is not applied.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._calls: OrderedDict[str, LoadedCall] = OrderedDict()

    def get(self, call_sid: str, event_ids: list[str]) -> LoadedCall | None:
        known = self._calls.get(call_sid)
        if known is None:
            return None
        self._calls.move_to_end(call_sid)
        return LoadedCall(known.version, known.state_json, known.record_id,
                          known.applied.intersection(event_ids))

    def remember(self, call_sid: str, call: LoadedCall) -> None:
        self._calls[call_sid] = call
        self._calls.move_to_end(call_sid)
        while len(self._calls) > self.capacity:
            self._calls.popitem(last=False)

    def forget(self, call_sid: str) -> None:
        self._calls.pop(call_sid, None)
