"""A frozen copy of call_ledger/core/journal.py's compact and restore (and their helpers) as they were
before compact was made cheaper (speed-journal), verbatim: tests/core/test_journal.py checks that
the journal's codec still writes and reads exactly these bytes, so entries stored by that
version read the same. Test-only; never change it to follow the product code."""

import functools
import re
from typing import Any

import orjson

from call_ledger.core.instants import text_at

# Field names in pydantic's order (call_ledger.core.events), each with the punctuation around it; the
# longer of two overlapping ones first. Byte 0x1f is left for a later addition.
_TOKENS: tuple[bytes, ...] = (
    b',"status":"', b',"direction":"inbound"', b',"direction":"outbound"', b',"from_number":"',
    b',"to_number":"', b',"duration":', b',"started_at":"', b',"started_us":', b',"answered_at":"',
    b',"answered_us":', b',"costs":[{"component":"', b'},{"component":"', b'","amount_nano":',
    b',"currency":"', b',"provider":"', b',"model":"', b',"usage_type":"', b',"usage_amount":"',
    b',"unit_cost":"', b',"price_entry":{"component":"', b',"effective_from":', b',"unit_price":"',
    b',"unit_quantity":"', b',"assistant_id":', b',"organization_id":', b',"assistant_name":"',
    b',"flow_name":"', b',"to_phone_number":"', b',"customer_phone_number":"', b',"call_meta":{',
)
# One pass each way (split on the names, or on the codes, and map every other piece): any
# matching is undone exactly, since what is left unmatched holds no control byte.
_NAMES = re.compile(b"(" + b"|".join(re.escape(text) for text in _TOKENS) + b")")
_CODES = re.compile(rb"([\x01-\x1e])")
_CODE_OF = {text: bytes([code]) for code, text in enumerate(_TOKENS, start=1)}.__getitem__
_TEXT_OF = {bytes([code]): text for code, text in enumerate(_TOKENS, start=1)}.__getitem__
_CONTROL = bytes(range(0x20))
# The ZSET score that stands for occurred_us is a double: exact below 2^53 (the year 2255).
_EXACT_US = 2**53
# The first byte of an entry: `0`-`6` compact, `~` whole JSON that begins with one of these;
# anything else (`{`) whole JSON, as every entry of the versions before this one.
_MARKS = frozenset(b"0123456~"[i:i + 1] for i in range(8))
_OCCURRED_AT = b',"occurred_at":"'
_OCCURRED_US = b'","occurred_us":'


@functools.lru_cache(maxsize=64)
def _source_json(source: bytes) -> bytes:
    return b'{"source":' + orjson.dumps(source.decode()) + b',"event_id":'


# Small: a batch's events come a few calls at a time, and a call id can be 512 characters.
@functools.lru_cache(maxsize=256)
def _call_json(call_sid: str) -> bytes:
    return b',"call_sid":' + orjson.dumps(call_sid) + b',"type":"'


def _head(key: bytes, call_sid: str) -> bytes:
    """What every event of this key and call begins with, up to its type."""
    source, _, event_id = key.partition(b":")
    return _source_json(source) + orjson.dumps(event_id.decode()) + _call_json(call_sid)


def _recode(text: bytes, pattern: re.Pattern[bytes], mapping: Any) -> bytes:
    pieces = pattern.split(text)
    pieces[1::2] = map(mapping, pieces[1::2])
    return b"".join(pieces)


def _whole(event_json: bytes) -> bytes:
    # A JSON object never starts with a digit or `~`; anything else that does is marked whole.
    return b"~" + event_json if event_json[:1] in _MARKS else event_json


def compact(event_json: bytes, key: str, call_sid: str, occurred_us: int) -> bytes:
    """The form the journal keeps of this event JSON: compact when it has the usual shape,
    else the JSON itself. `restore(compact(j, ...), ...) == j` always."""
    try:
        head = _head(key.encode(), call_sid)
    except (UnicodeError, orjson.JSONEncodeError):  # lone surrogates: no JSON of ours holds them
        return _whole(event_json)
    if not event_json.startswith(head) or not -_EXACT_US < occurred_us < _EXACT_US:
        return _whole(event_json)
    type_end = event_json.find(_OCCURRED_AT, len(head))
    at_end = event_json.find(b'"', type_end + len(_OCCURRED_AT))
    if type_end < 0 or at_end < 0 or b"\\" in event_json[len(head):type_end]:
        return _whole(event_json)
    occurred_at = event_json[type_end + len(_OCCURRED_AT):at_end]
    us = _OCCURRED_US + str(occurred_us).encode()
    rest = at_end + len(us)
    if not event_json.startswith(us, at_end) or event_json[rest:rest + 1] not in (b",", b"}"):
        return _whole(event_json)
    digits = len(occurred_at) - 21 if len(occurred_at) > 20 else 0
    try:
        if not 0 <= digits <= 6 or text_at(occurred_us, digits).encode() != occurred_at:
            return _whole(event_json)
    except (OverflowError, ValueError):
        return _whole(event_json)
    if len(event_json.translate(None, _CONTROL)) != len(event_json):  # JSON escapes them; whitespace?
        return _whole(event_json)
    return b"%d" % digits + event_json[len(head):type_end] + _recode(event_json[rest:], _NAMES, _CODE_OF)


def restore(stored: bytes, key: bytes, call_sid: str, occurred_us: int) -> bytes:
    """The event JSON a journal entry stands for (`stored` under `key`, scored `occurred_us`,
    in the journal of `call_sid`): a whole event as it is, a compact one expanded."""
    first = stored[:1]
    if first not in _MARKS:
        return stored
    if first == b"~":
        return stored[1:]
    digits = stored[0] - 0x30
    type_end = stored.index(b'"', 1) + 1  # the type holds no backslash, so no escaped quote
    tail = _recode(stored[type_end:], _CODES, _TEXT_OF)
    return (_head(key, call_sid) + stored[1:type_end] + _OCCURRED_AT + text_at(occurred_us, digits).encode()
            + _OCCURRED_US + str(occurred_us).encode() + tail)
