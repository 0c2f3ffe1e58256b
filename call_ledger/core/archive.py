"""The archive's rows (SPEC §16): a served record as typed columns, and its exact bytes back.

An archived call is one row of a Parquet file (call_ledger.archive writes and reads the files;
this module is pure). The row holds the record's 18 keys as columns a warehouse can query:
money as exact nano-units (decimal128(38, 9) in the file), times as microseconds since the epoch
(UTC timestamps), call_meta as its JSON text. `GET /api/v1/calls/sid/{sid}` serves an archived
call from its row, and must serve the bytes it served before, so `served_of(call_row(b)) == b`
for every record b.

The typed columns say everything about most records. What they cannot say is a time's number of
fraction digits: the sources give times at their own precision (call_ledger.core.instants) and a
timestamp keeps the instant only. A time is written back with the digits `_fraction_digits`
picks from its microseconds: none for a whole second, 3 for a whole millisecond, else 6. That is
what each provider writes in practice (Twilio and Plivo whole seconds, Vonage milliseconds, Telnyx
microseconds), so nearly every record is reproduced by its columns. `call_row` renders the record
back from its columns and compares: when the bytes differ (a Vonage `.000Z`, a Telnyx `.250000Z`,
a number beyond int64, anything unforeseen), the row carries the served JSON itself in
`record_json`, and `served_of` returns it as it is. Nothing is ever inferred: a row either
reproduces its record exactly by construction or holds it whole.

Money is read from the JSON's own decimal texts (never through a float): the five money keys
come last in every record (core.rules.record_json), after call_meta, so their texts are the tail.
"""

import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Context, Decimal
from typing import Any, NamedTuple

import orjson

from call_ledger.core.instants import text_at
from call_ledger.core.members import key_of
from call_ledger.core.money import format_nano


class Column(NamedTuple):
    """One column of an archive file: its name, kind (`str`, `int64`, `timestamp` in µs UTC,
    `money` as decimal128(38, 9)) and whether it may be null."""

    name: str
    kind: str
    nullable: bool


CALL_COLUMNS: tuple[Column, ...] = (
    Column("call_sid", "str", False),
    Column("to_phone_number", "str", False),
    Column("customer_phone_number", "str", False),
    Column("id", "int64", False),
    Column("assistant_id", "int64", False),
    Column("status", "str", False),
    Column("call_meta", "str", False),  # the served call_meta JSON text, exactly the bytes GET serves
    Column("assistant_name", "str", True),
    Column("flow_name", "str", True),
    Column("duration", "int64", True),
    Column("started_at", "timestamp", True),
    Column("ended_at", "timestamp", True),
    Column("cost_currency", "str", True),
    Column("total_cost", "money", True),
    Column("llm_cost", "money", True),
    Column("tts_cost", "money", True),
    Column("stt_cost", "money", True),
    Column("telephony_cost", "money", True),
    Column("revision", "int64", False),
    Column("archived_at", "timestamp", False),
    # NULL unless the columns above do not reproduce the served bytes exactly: then those bytes.
    Column("record_json", "str", True),
)

EVENT_COLUMNS: tuple[Column, ...] = (
    Column("call_sid", "str", False),
    Column("source", "str", False),
    Column("event_id", "str", False),
    Column("occurred_at", "timestamp", False),
    Column("event", "str", False),  # the event's JSON as /events serves it
    Column("archived_at", "timestamp", False),
)

MONEY_COLUMNS = ("total_cost", "llm_cost", "tts_cost", "stt_cost", "telephony_cost")
# decimal128(38, 9): an amount's nano-units have at most 38 digits.
MAX_MONEY_NANO = 10**38 - 1
_INT64 = (-(2**63), 2**63 - 1)

# The served record's keys around call_meta (core.rules.record_json: money after the rest).
_HEAD_KEYS = ("call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status")
_META_KEY = b',"call_meta":'
_RECORD_KEYS = (*_HEAD_KEYS, "call_meta", "assistant_name", "flow_name", "duration", "started_at", "ended_at",
                "cost_currency", *MONEY_COLUMNS)
_EXACT = Context(prec=60)  # wide enough that no decimal128 value rounds

_EPOCH_DATE = date(1970, 1, 1)
_DAY_US = 86_400_000_000
_ORGANIZATION_NONE = "_none"
# A pass id names a file: letters, digits, `-`, `_`, `.`, not first `.` or `_` (which Hive readers
# skip as hidden, and which the local adapter's temporary files start with).
_PASS_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# A canonical time (core.instants): the minute (hour and minute in range), the second, the fraction.
_CLOCK = r"([0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,6}))?Z"
_TIME = re.compile(_CLOCK)
_CLOCK_BYTES = _CLOCK.encode()
# A money literal as core.money.format_nano writes it (no leading zero, no trailing fraction zero, no `-0`)
# that fits decimal128(38, 9): at most 29 digits before the point.
_MONEY = rb"(?:null|(0|-?[1-9][0-9]{0,28}(?:\.[0-9]{0,8}[1-9])?|-?0\.[0-9]{0,8}[1-9]))"
_STRING = rb'(?:null|"(?:[^"\\]|\\.)*")'
_TAIL_START = b',"started_at":'
_TAIL = re.compile(
    _TAIL_START + rb'(?:null|"' + _CLOCK_BYTES + rb'"),"ended_at":(?:null|"' + _CLOCK_BYTES + rb'")'
    + rb',"cost_currency":' + _STRING + b"".join(b',"%s":' % name.encode() + _MONEY for name in MONEY_COLUMNS)
    + rb"\}", re.DOTALL)
_TAIL_META_END = b'},"assistant_name":'
_MINUS = ord("-")


def _fraction_digits(us: int) -> int:
    """The fraction digits a time is written back with: 0 for a whole second, 3 for a whole
    millisecond, else 6 (what the providers write; see the module's docstring)."""
    micro = us % 1_000_000
    return 0 if not micro else 3 if not micro % 1000 else 6


def time_text(us: int) -> str:
    """The served text of a time kept as `us`, when its row has no record_json."""
    return text_at(us, _fraction_digits(us))


@functools.lru_cache(maxsize=4096)
def _minute_us(minute: str | bytes) -> int | None:
    """`YYYY-MM-DDTHH:MM` (hour and minute in range) → µs since the epoch; None for no such day.
    Cached: an archive pass's calls ended within a few minutes of one another."""
    text = minute.decode() if isinstance(minute, bytes) else minute
    try:
        day = date.fromisoformat(text[:10])
    except ValueError:
        return None
    return (day - _EPOCH_DATE).days * _DAY_US + (int(text[11:13]) * 60 + int(text[14:16])) * 60_000_000


def _us_of(minute: str, second: str, fraction: str | None) -> int | None:
    start = _minute_us(minute)
    if start is None:
        return None
    return start + int(second) * 1_000_000 + (int(fraction.ljust(6, "0")) if fraction else 0)


def _canonical_us(minute: bytes | None, second: bytes, fraction: bytes | None) -> int | None:
    """The µs of a time `_TAIL` matched (its parts), when time_text writes them back as they are:
    None when its day does not exist or its fraction has other digits than `_fraction_digits` gives."""
    start = _minute_us(minute)
    if start is None:
        return None
    if fraction is None:  # a whole second: written back without a fraction
        return start + int(second) * 1_000_000
    us = start + int(second) * 1_000_000 + int(fraction.ljust(6, b"0"))
    return us if len(fraction) == _fraction_digits(us) else None


def parse_time(text: str) -> int | None:
    """Canonical UTC time text (`2026-11-24T10:00:00.123Z`, 0-6 fraction digits) → µs since the
    epoch; None for anything else."""
    match = _TIME.fullmatch(text)
    return None if match is None else _us_of(*match.groups())


def _nano(text: bytes | None) -> int | None:
    """The nano-units of a canonical money literal (`_MONEY`'s), None for null."""
    if text is None:
        return None
    whole, _, fraction = text.partition(b".")
    return int(whole + fraction.ljust(9, b"0"))  # "-0" + "500000000": the sign stays


def _render(row: Mapping[str, Any], call_meta: bytes | str, started_at: str | None, ended_at: str | None,
            money: Sequence[orjson.Fragment | None]) -> bytes:
    """The served JSON of a row: the columns in the record's order, call_meta's text and the
    money literals as given."""
    total, llm, tts, stt, telephony = money
    return orjson.dumps({
        "call_sid": row["call_sid"],
        "to_phone_number": row["to_phone_number"],
        "customer_phone_number": row["customer_phone_number"],
        "id": row["id"],
        "assistant_id": row["assistant_id"],
        "status": row["status"],
        "call_meta": orjson.Fragment(call_meta),
        "assistant_name": row["assistant_name"],
        "flow_name": row["flow_name"],
        "duration": row["duration"],
        "started_at": started_at,
        "ended_at": ended_at,
        "cost_currency": row["cost_currency"],
        "total_cost": total,
        "llm_cost": llm,
        "tts_cost": tts,
        "stt_cost": stt,
        "telephony_cost": telephony,
    })


def _literal(nano: int | None) -> orjson.Fragment | None:
    return None if nano is None else orjson.Fragment(format_nano(nano))


def served_of(row: Mapping[str, Any]) -> bytes:
    """The record's JSON exactly as GET served it before it was archived: its record_json when
    the row has one, else rendered from the columns."""
    whole = row.get("record_json")
    if whole is not None:
        return str(whole).encode()
    started, ended = row["started_at"], row["ended_at"]
    return _render(row, row["call_meta"], None if started is None else time_text(started),
                   None if ended is None else time_text(ended), [_literal(row[name]) for name in MONEY_COLUMNS])


def _is_int64(value: object) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def call_row(served: bytes, revision: int, archived_at_us: int) -> dict[str, Any]:
    """The archive row of a record as GET serves it (`served`), at this revision (SPEC §15) and
    archive time: money in nano-units, times in µs since the epoch, call_meta its JSON text,
    record_json None unless the columns do not reproduce `served` exactly.

    ValueError if `served` is not a call record (not a JSON object with the record's keys, its
    strings and ids of their types)."""
    try:
        record = orjson.loads(served)
    except orjson.JSONDecodeError:
        raise ValueError("the served record is not JSON") from None
    if type(record) is not dict:
        raise ValueError("the served record is not a JSON object")
    row = _fast_row(record, served)
    whole = None
    if row is None:
        row = _slow_row(orjson.loads(served), served)  # _fast_row spoilt `record`
        whole = served.decode()
    row["revision"], row["archived_at"], row["record_json"] = revision, archived_at_us, whole
    return row


def _fast_row(record: dict[str, Any], served: bytes) -> dict[str, Any] | None:
    """The row of a record its columns reproduce (record_json None), made of `record` itself;
    None, `record` spoilt, for any other.

    From started_at on, the record holds no quote but its strings' (a JSON string escapes its
    quotes), so the last `,"started_at":` of the text is the key's, and the last `},"assistant_name":`
    ends call_meta; the first `,"call_meta":` begins it, for the same reason. `_TAIL` matched, the
    times and money are written as `served_of` writes them from their µs and nano-units (times
    checked below). Then `record`, with call_meta's text and the money literals put back as they
    are, written by orjson as `served_of` writes a row, is `served` exactly."""
    if tuple(record) != _RECORD_KEYS:  # a key more or fewer, or in another order, than served_of writes
        return None
    tail_at = served.rfind(_TAIL_START)
    tail = _TAIL.fullmatch(served, tail_at)
    meta_at = served.find(_META_KEY) + len(_META_KEY)
    meta_end = served.rfind(_TAIL_META_END, meta_at, tail_at) + 1
    if tail is None or meta_at < len(_META_KEY) or meta_end <= meta_at:
        return None
    (started_minute, started_second, started_fraction, ended_minute, ended_second, ended_fraction,
     total, llm, tts, stt, telephony) = tail.groups()
    started = ended = None
    if started_minute is not None and (started := _canonical_us(started_minute, started_second,
                                                                started_fraction)) is None:
        return None
    if ended_minute is not None and (ended := _canonical_us(ended_minute, ended_second, ended_fraction)) is None:
        return None
    meta = served[meta_at:meta_end]
    record["call_meta"] = orjson.Fragment(meta)
    record["total_cost"] = None if total is None else orjson.Fragment(total)
    record["llm_cost"] = None if llm is None else orjson.Fragment(llm)
    record["tts_cost"] = None if tts is None else orjson.Fragment(tts)
    record["stt_cost"] = None if stt is None else orjson.Fragment(stt)
    record["telephony_cost"] = None if telephony is None else orjson.Fragment(telephony)
    if orjson.dumps(record) != served:  # a value in another form than served_of writes
        return None
    if not (type(record["call_sid"]) is type(record["to_phone_number"]) is type(record["customer_phone_number"])
            is type(record["status"]) is str and _is_int64(record["id"]) and _is_int64(record["assistant_id"])
            and _is_text(record["assistant_name"]) and _is_text(record["flow_name"])
            and _is_text(record["cost_currency"])
            and (record["duration"] is None or _is_int64(record["duration"]))):
        return None
    record["call_meta"] = meta.decode()
    record["started_at"], record["ended_at"] = started, ended
    record["total_cost"], record["llm_cost"] = _nano(total), _nano(llm)
    record["tts_cost"], record["stt_cost"], record["telephony_cost"] = _nano(tts), _nano(stt), _nano(telephony)
    return record


def _is_text(value: object) -> bool:
    return value is None or type(value) is str


def _slow_row(record: dict[str, Any], served: bytes) -> dict[str, Any]:
    """The columns of a record they do not reproduce (call_row keeps its JSON in record_json),
    as far as they say its values (the others None; money read exactly, through Decimal).
    ValueError when a column that cannot be null has no value of its type."""
    exact = json.loads(served, parse_float=Decimal, parse_int=Decimal)
    row: dict[str, Any] = {}
    for key in _HEAD_KEYS:
        if key not in record:
            raise ValueError(f"the served record has no {key!r} key")
        row[key] = record[key]
    for key in ("call_sid", "to_phone_number", "customer_phone_number", "status"):
        if type(row[key]) is not str:
            raise ValueError(f"the served record's {key} is not a string")
    for key in ("id", "assistant_id"):
        if not _is_int64(row[key]):
            raise ValueError(f"the served record's {key} is not a 64-bit integer")
    text = _text_or_none
    duration, started_at, ended_at = record.get("duration"), record.get("started_at"), record.get("ended_at")
    row.update({
        "call_meta": orjson.dumps(record.get("call_meta", {})).decode(),  # for queries: GET serves record_json
        "assistant_name": text(record.get("assistant_name")),
        "flow_name": text(record.get("flow_name")),
        "duration": duration if _is_int64(duration) else None,
        "started_at": parse_time(started_at) if type(started_at) is str else None,
        "ended_at": parse_time(ended_at) if type(ended_at) is str else None,
        "cost_currency": text(record.get("cost_currency")),
    })
    for name in MONEY_COLUMNS:
        row[name] = _nano_of_exact(exact.get(name))
    return row


def _text_or_none(value: object) -> str | None:
    return value if type(value) is str else None


def _nano_of_exact(amount: object) -> int | None:
    """Nano-units of a money value parsed as Decimal, when it has at most 9 decimals and fits
    decimal128(38, 9); else None."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        return None
    nano = amount.scaleb(9, _EXACT)
    if nano != nano.to_integral_value() or abs(nano) > MAX_MONEY_NANO:
        return None
    return int(nano)


def partition(organization_id: int | None, ended_at_us: int) -> str:
    """The Hive partition of a call: `organization_id=<org | _none>/date=<UTC date of ended_at>`."""
    if organization_id is not None and type(organization_id) is not int:
        raise ValueError("organization_id must be an integer or None")
    org = _ORGANIZATION_NONE if organization_id is None else str(organization_id)
    return f"organization_id={org}/date={_date_text(ended_at_us // _DAY_US)}"


@functools.lru_cache(maxsize=1024)
def _date_text(days: int) -> str:
    return (_EPOCH_DATE + timedelta(days=days)).isoformat()


def organization_of(path: str) -> int | None:
    """The organization whose call a calls file holds, from its partition (`partition`'s inverse)."""
    for part in path.split("/"):
        if part.startswith("organization_id="):
            value = part.removeprefix("organization_id=")
            return None if value == _ORGANIZATION_NONE else int(value)
    raise ValueError("not a path of the archive's partitions")


def _file_name(pass_id: str) -> str:
    if not _PASS_ID.fullmatch(pass_id):
        raise ValueError("a pass id is 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit")
    return f"{pass_id}.parquet"


def calls_path(partition_dir: str, pass_id: str) -> str:
    """The calls file of one pass in one partition, relative to the archive's root."""
    return f"calls/{partition_dir}/{_file_name(pass_id)}"


def events_path(partition_dir: str, pass_id: str) -> str:
    """The events file of one pass in one partition (the calls' partition), relative to the root."""
    return f"events/{partition_dir}/{_file_name(pass_id)}"


def event_row(call_sid: str, journal_key: str | bytes, occurred_us: int, event_json: bytes | str,
              archived_at_us: int) -> dict[str, Any]:
    """The archive row of one applied event: its journal key (`<source>:<event_id>`, SPEC §8, from
    its member in either form: core.members) split, its occurred_at in µs, and its JSON as /events
    serves it (core.journal.restore)."""
    key = key_of(journal_key.decode() if isinstance(journal_key, bytes) else journal_key, call_sid)
    source, sep, event_id = key.partition(":")
    if not sep or not source or not event_id:
        raise ValueError("a journal key is <source>:<event_id>")
    return {
        "call_sid": call_sid,
        "source": source,
        "event_id": event_id,
        "occurred_at": occurred_us,
        "event": event_json.decode() if isinstance(event_json, bytes) else event_json,
        "archived_at": archived_at_us,
    }


def nano_of_decimal(value: Decimal) -> int:
    """The nano-units of an amount read back from a decimal128(38, 9) column (exact)."""
    return int(value.scaleb(9, _EXACT))
