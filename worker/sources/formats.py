"""Strict formats for the form fields the ledger reads, and the trace of a moved boundary.

Twilio and Plivo sign `name + value` concatenated, so a captured request can be re-split
under its valid signature (see `call_ledger.core.replay`). A re-split either merges a pair into the
one before it (`From=+14155551234` absorbing `SequenceNumber=3` gives
`From=+14155551234SequenceNumber3`) or moves the boundary inside one pair
(`Event=Hangup` → `Even=tHangup` / `EventH=angup`). Exact formats refuse the first kind
whenever the absorbing field is one the ledger reads; `moved_boundary` refuses the
second kind, and the first where the absorbing field is one the ledger ignores, for the
fields that make an event's identity or time. Every refusal is `InvalidEvent` (422),
naming the field and never echoing its value.
"""

import re
from collections.abc import Iterable, Mapping

from call_ledger.core.errors import InvalidEvent

DIGITS = re.compile(r"[0-9]{1,10}")
DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,12})?")
SIP = re.compile(r"sips?:[^\s]{1,500}")


def checked(fields: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str, *,
            blank_is_absent: bool = True) -> str | None:
    """The field's value if it matches `pattern` exactly; None when absent (or blank, if allowed)."""
    value = fields.get(name)
    if value is None or (blank_is_absent and value == ""):
        return None
    if not pattern.fullmatch(value):
        raise InvalidEvent(f"{name} must be {what}")
    return value


def one_of(fields: Mapping[str, str], name: str, known: Iterable[str]) -> str | None:
    """The field's value if it is one of `known`; None when absent. Blank is not a known value."""
    value = fields.get(name)
    if value is not None and value not in known:
        raise InvalidEvent(f"{name} is not a known value")
    return value


def moved_boundary(pairs: Iterable[tuple[str, str]], guarded: Iterable[str], absorbable: Iterable[str] = ()) -> None:
    """Refuse the trace of a re-split around a guarded field (one that makes an event's id or time).

    A guarded field that is absent while some pair's `name + value` starts with its name
    was cut inside (`Even=tHangup`); one of `absorbable` that is absent while some value
    holds its name was merged into the pair before it. A real callback never does either:
    the names of these fields appear nowhere else in it.
    """
    pairs = list(pairs)
    present = {name for name, _ in pairs}
    absorbable = frozenset(absorbable)
    for field in guarded:
        if field in present:
            continue
        for name, value in pairs:
            if (name + value).startswith(field) or (field in absorbable and field in value):
                raise InvalidEvent(f"{field} is absent but its name appears in another parameter "
                                   "(a moved name/value boundary)")
