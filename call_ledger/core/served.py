"""A call's record as every read route serves it: rendered from the call hash, or its stored copy.

Layout 4 (a fresh store) keeps no rendered copy: a lookup reads the hash once and renders the record
from its plain fields (core.plain) and registers, decoding only the registers' values (which event set
each is not shown). Layouts 2 and 3 keep the record the worker rendered at commit (`stored_record`) in
the hash's `j` field: every key of the record but `call_meta`, which stays `{}` there, because a commit
writes what its events changed (SPEC §8: a call with 16 KiB of call_meta must not rewrite them with each
event); a lookup puts the call's call_meta keys in place of the `{}` (`StoredCall.served`). Whether the
copy pays for itself: docs/performance.md, *Layout 4* (`bench/get_cost.py`).

`j` starts with the version it was rendered at and a newline. A `j` of another version than the call's
`v` (committed by a version from before `j` was written at every commit) is never served: the record is
rendered from the state.

`StoredCall` is the one way a read route gets a record: every route that shows one (by SID, by
id, list pages, search, export, the /costs summary, outbound messages) reads the call's raw hash and asks
it, so they all serve the same bytes for the same call, and none decodes more of the hash than it needs.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from call_ledger.core.plain import COST_NAMES
from call_ledger.core.policy import Policy
from call_ledger.core.rules import (
    META_FIELD,
    REGISTER_FIELD,
    SHOWN_REGISTERS,
    CallState,
    assemble_record,
    duration_of,
    record_json,
    render_record,
)

RECORD_FIELD = b"j"
DIGEST_FIELD = b"rh"  # layout 4: `record_digest` of a terminal call's record, in place of `j`
_EMPTY_META = b'"call_meta":{}'
_META = META_FIELD.encode()
_ORGANIZATION = (REGISTER_FIELD + "organization_id").encode()
_SHOWN_REGISTERS = tuple((REGISTER_FIELD + name).encode() for name in SHOWN_REGISTERS)


def stored_record(record: dict[str, Any], version: int) -> bytes:
    """The `j` field for a record rendered at `version`: the version, a newline, its JSON with
    call_meta `{}`."""
    return str(version).encode() + b"\n" + record_json({**record, "call_meta": {}})


def record_digest(record: dict[str, Any]) -> bytes:
    """What layout 4 keeps of a terminal call's record in place of `j` (its field `rh`): enough to tell
    whether a commit changed it (the outbound messages' finality, commit.lua). The first 16 hex digits
    of the SHA-1 of the JSON `stored_record` writes after its version line, so commit.lua can compute
    it from a `j` of layout 3 (redis.sha1hex) when the call has no `rh` yet."""
    return hashlib.sha1(record_json({**record, "call_meta": {}})).hexdigest()[:16].encode()


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call as the store read it: its SID and raw hash fields (HGETALL, or the export
    script's subset of them: `id`, `v`, `j`, the organization register and the call_meta fields
    of a call whose `j` is current). Only calls with a record are made into one."""

    call_sid: str
    fields: dict[bytes, bytes]

    @property
    def record_id(self) -> int:
        return int(self.fields[b"id"])

    @property
    def organization_id(self) -> int | str | None:
        """Whom the call belongs to: one field read, nothing else decoded (the scope check's input)."""
        raw = self.fields.get(_ORGANIZATION)
        return None if raw is None else orjson.loads(raw)[3]

    def stored_json(self) -> bytes | None:
        """The record as the worker stored it ready (call_meta `{}`), when rendered at the call's
        current version; None when it must be rendered from the state."""
        version, _, stored = (self.fields.get(RECORD_FIELD) or b"").partition(b"\n")
        if not stored or version != self.fields.get(b"v", b"0"):  # not rendered at this version
            return None
        return stored

    def state(self) -> CallState:
        """The call's whole state (decodes every field: for the routes that need more than the record)."""
        found = CallState.from_hash(self.fields, self.call_sid)
        assert found is not None  # the store returns calls with a record only
        return found[1]

    def record(self, policy: Policy, state: CallState | None = None) -> dict[str, Any]:
        """The record as values (money in nano-units), rendered from the state (`state`, when the
        caller decoded it already)."""
        if state is None and b"s" not in self.fields and b"es" in self.fields:  # layout 4: straight from the fields
            return self._plain_record(policy)
        if state is None:  # the registers' values only: which event set each does not show
            found = CallState.from_hash(self.fields, self.call_sid, provenance=False)
            assert found is not None  # the store returns calls with a record only
            state = found[1]
        return render_record(self.call_sid, self.record_id, state, policy)

    def _plain_record(self, policy: Policy) -> dict[str, Any]:
        """`record` of a hash of layout 4 (core.plain), read straight from its fields: what
        `render_record(CallState.from_hash(...))` gives (tests/core/test_plain.py holds them equal), at a
        fraction of its cost, since every lookup and export row of layout 4 renders (docs/performance.md)."""
        get, loads = self.fields.get, orjson.loads
        shown = [None if (raw := get(name)) is None else loads(raw)[3] for name in _SHOWN_REGISTERS]
        status, started, answered = get(b"st"), get(b"sa"), get(b"an")
        status = None if status is None else loads(status)
        reported = get(b"du")
        duration = duration_of(None if reported is None else int(reported), status,
                               None if answered is None else loads(answered))
        costs = {component: None if (raw := get(name)) is None else int(raw) for component, name in COST_NAMES}
        if costs["telephony"] is None:
            costs["telephony"] = loads(self.fields[b"es"])[0]
        currency = get(b"cu")
        return assemble_record(self.call_sid, self.record_id, shown, status,
                               None if started is None else loads(started), duration, costs,
                               currency.decode() if currency else policy.currency, self.call_meta())

    def served(self, policy: Policy) -> bytes:
        """The record's JSON as every route serves it: the stored `j` with the call's call_meta in
        place of its `{}`, else (no current `j`) rendered from the state."""
        stored = self.stored_json()
        if stored is None:
            return record_json(self.record(policy))
        meta = self.call_meta()
        if not meta:
            return stored
        # The first `"call_meta":{}` of the text is the key's: every key before it has a string,
        # number or null value, and a quote inside a JSON string is escaped.
        return stored.replace(_EMPTY_META, b'"call_meta":' + orjson.dumps(meta), 1)

    def call_meta(self) -> dict[str, Any]:
        """The call's call_meta (sorted by key, as a record renders it), from its `m:` fields: the
        part of the record its stored `j` leaves out."""
        fields = self.fields
        if b"mk" not in fields and b"fs" in fields and b"s" not in fields:
            return {}  # layout 4 counts the keys (`mk`, core.plain) and has none: nothing to look for
        found = [(name, value) for name, value in fields.items() if name[:2] == _META]
        if not found:  # most calls: the export's hot loop asks for each
            return {}
        found.sort()  # by the name's UTF-8, which orders as its text does
        return {name[2:].decode(): orjson.loads(value)[3] for name, value in found}
