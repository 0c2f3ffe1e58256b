"""How an applied event's key is written in its call's order index, journal and registers: long or short.

An event's identity is its key `<source>:<event_id>` (SPEC §8, `CallEvent.key`), and the order
index and the journal (call_ledger.store.records) hold one member per applied event. Written as
the key, a member repeats what its call already says: the call id (Twilio's, Plivo's and
Vonage's event ids begin with it, so does every platform id the examples and benchmarks send)
and the source's name. On a completed 10-event call that is ~1,300 of the ~6,200 bytes it took in
Redis with the registers' below (bench/memory.py), and it made a Vonage call's order index a
hashtable (its members are over `zset-max-listpack-value`).

The short form (layout 3) keeps only what the call does not say:

    <source code><'.' then the event id after the call id | ':' then the whole event id>

so `twilio:CA1...:12` of call `CA1...` is `1.:12`, and a Telnyx event (a UUID of its own) is
`2:<uuid>`. A source without a code keeps the long form. The sources are the names intake gives
(call_ledger.worker.sources), none of which begins with a digit: so every member reads back to one
key whichever form it was written in (`key_of`).

Registers and call_meta fields name the event that set them (their last-writer-wins order) the same
way in layout 3: `[occurred_us, ".:12", "1", value]` (`short_provenance`, read back by `full_provenance`).

Both forms are always recognised: a worker asks for both before it calls an event new. That is
what lets a store move to the short form while its workers run (`call-ledger layout --upgrade`):
the move is refused until every live worker recognises both, and from then on an event applied
in either form is a duplicate in the other.
"""

from typing import Any

# One digit a source, in the order they were added; a new source takes the next digit.
_CODES = {"platform": "0", "twilio": "1", "telnyx": "2", "vonage": "3", "plivo": "4"}
_SOURCES = {code: source for source, code in _CODES.items()}
_WITH_CALL = "."  # the event id is the call id and what follows
_WHOLE = ":"  # the event id follows whole


def _short(source: str, event_id: str, call_sid: str) -> str | None:
    """The short member of this source's event in the call `call_sid`; None for a source without a code."""
    code = _CODES.get(source)
    if code is None:
        return None
    if event_id.startswith(call_sid):
        return code + _WITH_CALL + event_id[len(call_sid):]
    return code + _WHOLE + event_id


def short_member(key: str, call_sid: str) -> str:
    """The short form of the key `<source>:<event_id>` in the call `call_sid` (the key itself
    for a source without a code)."""
    source, _, event_id = key.partition(":")
    return _short(source, event_id, call_sid) or key


def key_of(member: str, call_sid: str) -> str:
    """The key `<source>:<event_id>` a member of the call `call_sid` stands for, in either form."""
    if not is_short(member):  # long: no source's name begins with a code
        return member
    source = _SOURCES[member[0]]
    if member[1] == _WITH_CALL:
        return f"{source}:{call_sid}{member[2:]}"
    return f"{source}:{member[2:]}"


def is_short(member: str) -> bool:
    """Whether a member is in the short form (its first byte a source's code, then the mark)."""
    mark = member[1:2]
    return member[:1] in _SOURCES and (mark == _WITH_CALL or mark == _WHOLE)


def other_form(key: str, call_sid: str) -> str | None:
    """The member the key may have been written as besides itself (None when both are one)."""
    short = short_member(key, call_sid)
    return None if short == key else short


def short_provenance(register: list[Any], call_sid: str) -> list[Any]:
    """A register `[occurred_us, event_id, source, value]` (core.rules) as layout 3 stores it: the event
    it came from as its short member, split after the source's code: `[us, ".-3", "0", value]` for
    platform event `<call_sid>-3`. The shape (and the value's place) stays, which the Lua that reads
    a register's value relies on. A source without a code keeps the register as it is."""
    us, event_id, source, value = register
    short = _short(source, event_id, call_sid)
    return register if short is None else [us, short[1:], short[0], value]


def full_provenance(register: list[Any], call_sid: str | None) -> list[Any]:
    """The register `[occurred_us, event_id, source, value]` a stored one stands for, in either form."""
    code = register[2]
    if not (isinstance(code, str) and len(code) == 1 and code in _SOURCES):  # long: sources are names
        return register
    if call_sid is None:
        raise ValueError("a register in layout 3's form is read with its call's SID")
    source, _, event_id = key_of(code + register[1], call_sid).partition(":")
    return [register[0], event_id, source, register[3]]



def short_id(event_id: str, call_sid: str) -> str:
    """An event id as layout 4 stores it where no source goes with it (the call's status): `.` and what
    follows the call id, or `:` and the whole id."""
    return _WITH_CALL + event_id[len(call_sid):] if event_id.startswith(call_sid) else _WHOLE + event_id


def full_id(stored: str, call_sid: str) -> str:
    """The event id `short_id` stored."""
    return call_sid + stored[1:] if stored[:1] == _WITH_CALL else stored[1:]
