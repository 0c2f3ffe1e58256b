"""Pure planning of one call's share of a batch: which events are new, the state after them.

The consumer loads the call (version, state, applied ids), calls `plan_call`, and
commits the plan with a compare-and-set on the version; no I/O happens here.
"""

from dataclasses import dataclass, field

from ledger.errors import Unapplicable
from ledger.events import CallEvent
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
            apply_event(plan.state, event, settings)
        except Unapplicable as exc:
            plan.failed.append((entry, event, str(exc)))
            continue
        except Exception as exc:  # a bug must not hold up the other events of the batch
            plan.failed.append((entry, event, f"apply error: {type(exc).__name__}: {exc}"))
            continue
        seen.add(event.event_id)
        # The entry's own bytes are what /events shows: exactly what intake stored.
        plan.new_events.append((event.event_id, entry.event_json or b""))
        plan.applied.append((entry, event))
    return plan
