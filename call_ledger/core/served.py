"""Records stored ready to serve (SPEC §13): rendered by the worker at commit, sent as stored.

The worker renders each call it commits (`stored_record`) into the call hash's `j` field:
every key of the record but `call_meta`, which stays `{}` there. call_meta is left out
because a commit writes what its events changed (SPEC §8): a call with 16 KiB of call_meta
must not rewrite them with each event. A lookup reads the hash once and, when the call has
call_meta keys, puts them in place of the `{}` (`served_record`): no state is rebuilt, no
money formatted, no estimate computed on the request path.

`j` starts with the version it was rendered at and a newline. A record whose `j` is missing
or of another version than the call's `v` (committed by a version of call-ledger from before
records were stored ready, e.g. during a rolling upgrade) is rendered from its state, as
before: a lookup never serves a stale `j`.
"""

from typing import Any

import orjson

from call_ledger.core.policy import Policy
from call_ledger.core.rules import META_FIELD, REGISTER_FIELD, CallState, record_json, render_record

RECORD_FIELD = b"j"
_EMPTY_META = b'"call_meta":{}'
_META = META_FIELD.encode()
_ORGANIZATION = (REGISTER_FIELD + "organization_id").encode()


def stored_record(record: dict[str, Any], version: int) -> bytes:
    """The `j` field for a record rendered at `version`: the version, a newline, its JSON with
    call_meta `{}`."""
    return str(version).encode() + b"\n" + record_json({**record, "call_meta": {}})


def organization_of(fields: dict[bytes, bytes]) -> int | str | None:
    """The call's organization_id register value, from its raw hash fields."""
    raw = fields.get(_ORGANIZATION)
    return None if raw is None else orjson.loads(raw)[3]


def served_record(call_sid: str, fields: dict[bytes, bytes], policy: Policy) -> bytes:
    """The record's JSON from the call's raw hash fields (HGETALL)."""
    version, _, stored = (fields.get(RECORD_FIELD) or b"").partition(b"\n")
    if not stored or version != fields.get(b"v", b"0"):  # not rendered at this version
        found = CallState.from_hash(fields)
        assert found is not None  # Store.call_fields returns calls with a record only
        return record_json(render_record(call_sid, *found, policy))
    meta = sorted((name[2:].decode(), orjson.loads(value)[3]) for name, value in fields.items()
                  if name.startswith(_META))
    if not meta:
        return stored
    # The first `"call_meta":{}` of the text is the key's: every key before it has a string,
    # number or null value, and a quote inside a JSON string is escaped.
    return stored.replace(_EMPTY_META, b'"call_meta":' + orjson.dumps(dict(meta)), 1)
