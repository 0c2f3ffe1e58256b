"""A call's core state as plain hash fields (layout 4), in place of one JSON field `s`.

Layouts 2 and 3 keep the core of a call's state (core.rules `CallState.CORE`: status, start, answer,
duration, first seen, costs, provider, call_meta's size, the fixed estimate) as one JSON object in the
field `s`, and the record rendered at commit in `j`. Both are over Redis's `hash-max-listpack-value`
(64 bytes), which makes every call hash a hashtable: about half of a completed call's record hash was
that overhead (docs/performance.md). Layout 4 keeps each piece in a field of its own, each short
enough for a listpack on a usual call, and no rendered copy (reads render: core.served):

    st   status   [rank, occurred_us, event id (core.members.short_id), occurred_at text]
    sa   started  [us, text]            an   answered  [us, text]
    du   duration (seconds)             fs   first seen (us; every applied event sets it)
    pv   provider (source name)         c:<component>  its sum in nano-units
    mk   call_meta keys                 mb   call_meta bytes
    es   the fixed telephony estimate   [nano-units or null, rate text or null]
    cu   the ledger currency the costs are in (fixed with the estimate: a reader may run with another)

A piece the state does not have (None, 0 call_meta keys, a component without cost) has no field.
Every piece only grows once set (a max, a min, a sum, a count), the estimate is rewritten whole,
so a commit writes the fields its events changed (all it has, on a hash a layout-3 commit wrote last)
and never deletes one. These are also the fields a fold
running inside Redis (docs/performance.md, the plan's step 2) reads and writes.
"""

from collections.abc import Mapping
from typing import Any

import orjson

from call_ledger.core.events import COMPONENTS
from call_ledger.core.members import full_id, short_id

# What marks a call hash of layout 4 with a record: every applied event sets the first-seen time.
FIRST_SEEN = "fs"
# Every field of the core, in the order a commit writes them (the component sums after these).
FIELDS = ("st", "sa", "an", "du", FIRST_SEEN, "pv", "mk", "mb", "es", "cu")
COST_FIELD = "c:"
# Every field a call's core may have: what a worker asks for when it loads a call.
HASH_FIELDS = (*FIELDS, *(COST_FIELD + component for component in COMPONENTS))
_COSTS = tuple((component, COST_FIELD + component) for component in COMPONENTS)
# The same, as a call hash read with HGETALL names them.
COST_NAMES = tuple((component, name.encode()) for component, name in _COSTS)
_ENCODED = tuple((name, name.encode()) for name in HASH_FIELDS)


# What `plain_fields` compares with when it writes every piece: equal to no value.
_UNSET = object()
_EVERYTHING: tuple[Any, ...] = (_UNSET,) * 10 + ({},)


def plain_snapshot(core: Any) -> tuple[Any, ...]:
    """The core's pieces as they are now, for `plain_fields(..., since=)`. A fold replaces each piece's
    value rather than change it in place (core.rules), but for the sums: those are copied."""
    return (core.status, core.started, core.answered, core.duration, core.first_seen, core.provider,
            core.meta_keys, core.meta_bytes, core.estimate, core.currency, dict(core.costs))


def plain_fields(core: Any, call_sid: str, since: tuple[Any, ...] | None = None) -> list[tuple[str, bytes]]:
    """(field, value) of each piece the core has: `core` has core.rules `CallState.CORE` as attributes
    (a CallState; this module does not import it). With `since` (`plain_snapshot` of the core as the call's
    hash holds it), only the pieces that differ from it: a commit writes what its events changed, as it does
    for registers (the compare-and-set of the commit makes the hash the snapshot's). Every commit of layout 4
    writes these: kept lean."""
    status0, started0, answered0, duration0, first0, provider0, keys0, size0, estimate0, currency0, costs0 = (
        since or _EVERYTHING)
    out: list[tuple[str, bytes]] = []
    status = core.status
    if status is not None and status != status0:
        rank, us, event_id, at = status
        out.append(("st", orjson.dumps([rank, us, short_id(event_id, call_sid), at])))
    if core.started is not None and core.started != started0:
        out.append(("sa", orjson.dumps(core.started)))
    if core.answered is not None and core.answered != answered0:
        out.append(("an", orjson.dumps(core.answered)))
    if core.duration is not None and core.duration != duration0:
        out.append(("du", b"%d" % core.duration))
    if core.first_seen is not None and core.first_seen != first0:
        out.append((FIRST_SEEN, b"%d" % core.first_seen))
    if core.provider is not None and core.provider != provider0:
        out.append(("pv", core.provider.encode()))
    if core.meta_keys and (core.meta_keys != keys0 or core.meta_bytes != size0):
        out.append(("mk", b"%d" % core.meta_keys))
        out.append(("mb", b"%d" % core.meta_bytes))
    if core.estimate is not None and core.estimate != estimate0:
        out.append(("es", orjson.dumps(core.estimate)))
    if core.currency is not None and core.currency != currency0:
        out.append(("cu", core.currency.encode()))
    costs = core.costs
    for component, name in _COSTS:
        amount = costs.get(component)
        if amount is not None and amount != costs0.get(component):
            out.append((name, b"%d" % amount))
    return out


def core_of_plain(fields: Mapping[str, bytes | None], call_sid: str) -> dict[str, Any]:
    """The core (core.rules `CallState.CORE` by name, and the fixed currency) from a hash's plain fields
    named as text (what a worker's HMGET gives: None for a field the call lacks); the fields not given are
    the pieces the state does not have. Decoded by `core_of_hash`, the one reader of the format."""
    return core_of_hash({encoded: raw for name, encoded in _ENCODED if (raw := fields.get(name)) is not None},
                        call_sid)


def core_of_hash(fields: Mapping[bytes, bytes], call_sid: str) -> dict[str, Any]:
    """The core from a call hash as HGETALL returns it (names as bytes), for a lookup: only the
    core's fields are looked at, not the registers and call_meta keys beside them, and none is copied
    first (a lookup renders from here on every read: docs/performance.md, *Layout 4*)."""
    get = fields.get
    status = get(b"st")
    if status is not None:
        status = orjson.loads(status)
        status[2] = full_id(status[2], call_sid)
    started, answered, duration, first_seen = get(b"sa"), get(b"an"), get(b"du"), get(b"fs")
    provider, keys, size, estimate, currency = get(b"pv"), get(b"mk"), get(b"mb"), get(b"es"), get(b"cu")
    return {
        "status": status,
        "started": None if started is None else orjson.loads(started),
        "answered": None if answered is None else orjson.loads(answered),
        "duration": None if duration is None else int(duration),
        "first_seen": None if first_seen is None else int(first_seen),
        "costs": {component: int(raw) for component, name in COST_NAMES if (raw := get(name)) is not None},
        "provider": None if provider is None else provider.decode(),
        "meta_keys": 0 if keys is None else int(keys),
        "meta_bytes": 0 if size is None else int(size),
        "estimate": None if estimate is None else orjson.loads(estimate),
        "currency": None if currency is None else currency.decode(),
    }
