"""The form an applied event is kept in, in its call's journal, and its JSON restored from it.

The journal (call_ledger.store.records) keeps each applied event under its key `<source>:<event_id>`, in a
per-call hash beside an order index that scores the same key by occurred_us. The event's JSON
(`CallEvent.model_dump_json(exclude_defaults=True)`, as intake wrote it) repeats all of that:
source, event_id, call_sid, occurred_us; and its field names are most of the rest. Stored
whole, an entry is 200-300 bytes, over Redis's 64-byte `hash-max-listpack-value`, so every
journal was a hashtable.

The compact form keeps only what the key, the score and the call do not say:

    <d><type text>"<the JSON after occurred_us, its usual field names as one byte each>

`d` (`0`-`6`) is occurred_at's number of fraction digits: occurred_at is occurred_us written
at that precision (call_ledger.core.instants). A field name becomes a control byte (with its `,"` and
`":"`), which JSON text never holds raw (RFC 8259 escapes them), so each substitution is
undone exactly. For example, a ringing event of `platform:CA...-1` is `0bench"\\x01ringing"}`.

`restore` gives back exactly the bytes that were compacted: an event is compacted only when
its JSON has the expected shape (`compact` checks every part it leaves out against what is
restored in its place) and is otherwise kept whole. A whole event (`{...}`) is returned as
it is, which is also how the entries of versions before this one read (they kept every event
whole): a compact entry starts with a digit, which no JSON object does.
"""

import functools
import re

import orjson

from call_ledger.core.instants import text_at
from call_ledger.core.members import key_of

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
# Names and codes are swapped one for the other (split on the names and map every other piece,
# or what gives the same bytes, below): any swap is undone exactly, since what is left unmatched
# holds no control byte.
_NAMES = re.compile(b"(" + b"|".join(re.escape(text) for text in _TOKENS) + b")")
_CODE_OF = {text: bytes([code]) for code, text in enumerate(_TOKENS, start=1)}.__getitem__
# Tables that change a control byte (and for the type a backslash) and nothing else: a text
# holds none iff translating it leaves it equal. (Not translate's `delete`: that builds a table
# per call, and copies.)
_CONTROL = bytes.maketrans(bytes(range(0x20)), b" " * 0x20)
_NOT_IN_TYPE = bytes.maketrans(bytes(range(0x20)) + b"\\", b" " * 0x21)
_NOT_CODES = bytes(sorted(set(range(256)) - set(range(1, len(_TOKENS) + 1))))
# By code (an int, as iterating bytes gives it): the code as bytes and the text it stands for.
_EXPANSIONS: tuple[tuple[bytes, bytes], ...] = ((b"", b""), *((bytes([code]), text) for code, text in
                                                               enumerate(_TOKENS, start=1)))
# The ZSET score that stands for occurred_us is a double: exact below 2^53 (the year 2255).
_EXACT_US = 2**53
# The first byte of an entry: `0`-`6` compact, `~` whole JSON that begins with one of these;
# anything else (`{`) whole JSON, as every entry of the versions before this one.
_MARKS = frozenset(b"0123456~"[i:i + 1] for i in range(8))
_DIGITS = tuple(b"%d" % digits for digits in range(7))
_FIELDS_START = frozenset((b",", b"}"))
_COMMA = ord(",")  # an int: `in` then looks for the byte (memchr), where a bytes needle is first tried as an int
_OCCURRED_AT = b',"occurred_at":"'
_OCCURRED_US = b'","occurred_us":'
_OCCURRED_AT_TEXT, _OCCURRED_US_TEXT = _OCCURRED_AT.decode(), _OCCURRED_US.decode()

# Splitting on _NAMES and mapping the names is what replacing them does whenever that leaves
# no `,"` and no `,{`: every token holds one of the two apart from its first and last byte, the
# only bytes two tokens can share (a name ending in `"`, then `","amount_nano":`), and none
# holds another; so with none left, every name was replaced whole and no two overlapped
# (tests/core/test_journal.py checks these properties of _TOKENS). compact replaces, at each comma
# left, the name there and those the sources write after it: a replace or two for most fields,
# far cheaper than the split, which is what is done with anything else.
_REPLACED_AT: dict[str, tuple[str, ...]] = {  # first 4 bytes after the comma: names replaced
    "stat": ("status", "duration"),
    "dire": ("direction", "from_number", "to_number"),
    "from": ("from_number", "to_number"),
    "to_n": ("to_number",),
    "dura": ("duration",),
    "star": ("started_at", "started_us", "answered_at", "answered_us"),
    "answ": ("answered_at", "answered_us"),
    "cost": ("costs", "amount_nano", "currency"),
    '"com': ("component",),  # the comma of `},{"component":"`
    "amou": ("amount_nano", "currency"),
    "curr": ("currency",),
    **dict.fromkeys(("prov", "mode", "usag", "unit", "pric", "effe"), (
        "provider", "model", "usage_type", "usage_amount", "unit_cost", "price_entry", "effective_from", "unit_price",
        "unit_quantity")),
    **dict.fromkeys(("assi", "orga", "flow", "to_p", "cust", "call"), (
        "assistant_id", "organization_id", "assistant_name", "flow_name", "to_phone_number", "customer_phone_number",
        "call_meta")),
}


def _name(text: bytes) -> bytes:
    match = re.search(rb'"(\w+)":', text)
    assert match is not None
    return match[1]


def _replacements() -> dict[bytes, tuple[tuple[bytes, bytes], ...]]:
    pairs: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for code, text in enumerate(_TOKENS, start=1):
        pairs.setdefault(_name(text), []).append((text, bytes([code])))
    replacements = {at.encode(): tuple(pair for name in names for pair in pairs[name.encode()])
                    for at, names in _REPLACED_AT.items()}
    for text in _TOKENS:  # each name is replaced where it is found
        at = text.find(b",")
        assert (text, _CODE_OF(text)) in replacements[text[at + 2:at + 6]], text
    return replacements


_REPLACEMENTS = _replacements()


@functools.lru_cache(maxsize=64)
def _source_json(source: str) -> bytes:
    return b'{"source":' + orjson.dumps(source) + b',"event_id":'


# Small: a batch's events come a few calls at a time, and a call id can be 512 characters.
@functools.lru_cache(maxsize=256)
def _call_json(call_sid: str) -> bytes:
    return b',"call_sid":' + orjson.dumps(call_sid) + b',"type":"'


def _head(key: str, call_sid: str) -> bytes:
    """What every event of this key and call begins with, up to its type. A lone surrogate in
    either raises (orjson.JSONEncodeError): no JSON of ours holds one."""
    source, _, event_id = key.partition(":")
    return _source_json(source) + orjson.dumps(event_id) + _call_json(call_sid)


# A call's events are applied (and listed) within minutes of one another: the text of their
# minute is built once.
@functools.lru_cache(maxsize=1024)
def _minute_text(minutes: int) -> str:
    """The text of this minute since the epoch, to its seconds (`...T06:00:`)."""
    return text_at(minutes * 60_000_000, 0)[:-3]  # less `00Z`


def _instant_json(us: int, digits: int) -> bytes:
    """`,"occurred_at":"<text_at(us, digits)>","occurred_us":<us>` (an f-string writes `us` as
    str() does); OverflowError (from text_at) for a day no datetime has."""
    minutes, micro = divmod(us, 60_000_000)
    if digits:
        seconds = f"{micro // 1_000_000:02d}.{micro % 1_000_000:06d}"[:3 + digits]
        return f'{_OCCURRED_AT_TEXT}{_minute_text(minutes)}{seconds}Z{_OCCURRED_US_TEXT}{us}'.encode()
    return f'{_OCCURRED_AT_TEXT}{_minute_text(minutes)}{micro // 1_000_000:02d}Z{_OCCURRED_US_TEXT}{us}'.encode()


# Most sources give whole seconds, and the events applied in a while (all calls' events of the
# last minutes, which /events mostly lists) share few of them: the whole instant is kept for each.
@functools.lru_cache(maxsize=1024)
def _second_json(us: int) -> bytes:
    return _instant_json(us, 0)


def _instant(us: int, digits: int) -> bytes:
    """_instant_json(us, digits). Only an int itself is looked up: the cache would take another
    int equal to it (True, say) for it, and str() writes them apart."""
    return _second_json(us) if not digits and type(us) is int else _instant_json(us, digits)


def _split_coded(fields: bytes) -> bytes:
    """The fields with every name replaced by its code: split on the names, each one mapped."""
    pieces = _NAMES.split(fields)
    pieces[1::2] = map(_CODE_OF, pieces[1::2])
    return b"".join(pieces)


def _names_coded(fields: bytes, coded: bytes) -> bytes:
    """_split_coded(fields), from `coded`: the fields with some of their names replaced
    already, and a comma left (see _REPLACED_AT)."""
    at = coded.find(b",")
    while True:
        size = len(coded)
        for text, code in _REPLACEMENTS.get(coded[at + 2:at + 6], ()):
            coded = coded.replace(text, code)
        if len(coded) == size:  # no name of ours at that comma
            break
        at = coded.find(b",")
        if at < 0:
            return coded
    if coded.find(b',"') < 0 and coded.find(b",{") < 0:  # commas, but none of a name's
        return coded
    return _split_coded(fields)


def _whole(event_json: bytes) -> bytes:
    # A JSON object never starts with a digit or `~`; anything else that does is marked whole.
    return b"~" + event_json if event_json[:1] in _MARKS else event_json


def compact(event_json: bytes, key: str, call_sid: str, occurred_us: int) -> bytes:
    """The form the journal keeps of this event JSON: compact when it has the usual shape,
    else the JSON itself. `restore(compact(j, ...), ...) == j` always."""
    try:
        head = _head(key, call_sid)
    except orjson.JSONEncodeError:
        return _whole(event_json)
    if not event_json.startswith(head) or not -_EXACT_US < occurred_us < _EXACT_US:
        return _whole(event_json)
    type_end = event_json.find(_OCCURRED_AT, len(head))
    if type_end < 0:
        return _whole(event_json)
    # occurred_at's digits: its 20th byte is `Z` at none, `.` before them (text_at).
    at = type_end + len(_OCCURRED_AT) + 19
    mark = event_json[at:at + 1]
    digits = 0 if mark == b"Z" else event_json.find(b'"', at) - at - 2 if mark == b"." else -1
    if not 0 <= digits <= 6:
        return _whole(event_json)
    try:
        instant = _instant(occurred_us, digits)
    except (OverflowError, ValueError):
        return _whole(event_json)
    # The instant as occurred_us writes it, then the next field or the end: the JSON between
    # the head and here is the type, and after it the fields; only these can hold what JSON
    # escapes (control bytes, which the codes are), and the type no backslash either.
    type_text = event_json[len(head):type_end]
    fields = event_json[type_end + len(instant):]
    if (not event_json.startswith(instant, type_end) or fields[:1] not in _FIELDS_START
            or type_text.translate(_NOT_IN_TYPE) != type_text or fields.translate(_CONTROL) != fields):
        return _whole(event_json)
    # The names of the first field and those written after it (see _REPLACED_AT); the rest,
    # if a comma is left, in _names_coded.
    coded = fields
    for text, code in _REPLACEMENTS.get(fields[2:6], ()):
        coded = coded.replace(text, code)
    if _COMMA in coded:
        coded = _names_coded(fields, coded)
    return _DIGITS[digits] + type_text + coded


def restore(stored: bytes, member: bytes, call_sid: str, occurred_us: int) -> bytes:
    """The event JSON a journal entry stands for (`stored` under `member`, in either of its forms
    (call_ledger.core.members), scored `occurred_us`, in the journal of `call_sid`): a whole event as
    it is, a compact one expanded."""
    first = stored[:1]
    if first not in _MARKS:
        return stored
    if first == b"~":
        return stored[1:]
    type_end = stored.index(b'"', 1) + 1  # the type holds no backslash, so no escaped quote
    tail = stored[type_end:]
    # The texts hold no code: replacing each code found gives what splitting on them would.
    for code in tail.translate(None, _NOT_CODES):
        tail = tail.replace(*_EXPANSIONS[code])
    head = _head(key_of(member.decode(), call_sid), call_sid)
    return head + stored[1:type_end] + _instant(occurred_us, stored[0] - 0x30) + tail
