"""`GET /api/v1/calls/export` (SPEC §9, §14): every matching call, streamed, safe to open and
cheap to refuse.

- **Safe to open.** A spreadsheet runs a CSV cell that begins with `=`, `+`, `-` or `@` (or a tab
  or carriage return before one) as a formula, and tenants name their own assistants and flows.
  Every text cell that begins so is written with a leading `'`; numbers (ids, durations, money)
  are never touched.
- **Cheap to refuse.** At most `LEDGER_MAX_EXPORTS` exports run at once per organization in this
  process (an unscoped token is a bucket of its own); beyond that the answer is 429 with
  `Retry-After`, before anything is read from Redis.
- **Fast.** Rows are written from the record the worker stored ready in the call's hash (`j`,
  `call_ledger.core.served`) and its call_meta fields, read EXPORT_BATCH calls per script call (the next
  batch read while one is written):
  JSON rows are those bytes as `GET /sid/{sid}` sends them; CSV rows are parsed from them, money
  written as its stored text (exact; `_exact_decimal`). A call committed by a version before `j`
  is rendered from its state, as before.
- **A stalled reader costs little, and not for long.** Every write of the streamed body is bounded
  by `LEDGER_WRITE_TIMEOUT_S`: a client that stops reading is cut off (the connection aborted, the
  index reads closed, the slot given back) and one line is logged. What one export holds meanwhile
  is a small page per index shard and two batches of calls (`api.listing`).
"""

import asyncio
import csv
import io
import re
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import structlog
from aiohttp import web

from call_ledger.api import listing
from call_ledger.api.calls import indexes_of, scope_of
from call_ledger.api.query import parse_filter, parse_format
from call_ledger.core.errors import TooManyExports
from call_ledger.core.money import format_nano
from call_ledger.core.policy import Policy
from call_ledger.core.rules import MONEY_FIELDS
from call_ledger.core.served import StoredCall
from call_ledger.store.errors import bounded_request
from call_ledger.web.base import SETTINGS, STORE

log = structlog.get_logger("ledger.api")

# §2's 18 keys in §2's order: the CSV header.
RECORD_KEYS = (
    "call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status", "call_meta",
    "assistant_name", "flow_name", "duration", "started_at", "ended_at", "total_cost", "llm_cost", "tts_cost",
    "stt_cost", "telephony_cost", "cost_currency",
)
# What a spreadsheet may take for the start of a formula (OWASP's list for CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# The hint given with a 429: an export slot is given back when an export ends or its reader
# is cut off, so a retry a few seconds later is reasonable whatever the exports' sizes.
RETRY_AFTER_S = 5


def neutralise(text: str) -> str:
    """A CSV text cell a spreadsheet shows as text: `'` before a formula's first character."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_rows(records: list[dict[str, Any]]) -> str:
    """CSV rows of records: call_meta as JSON text, money as exact decimals, nulls empty, and
    every text cell neutralised (a phone number `+1555…` is text; money and ids are numbers)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for record in records:
        row = []
        for key in RECORD_KEYS:
            value = record[key]
            if value is None:
                row.append("")
            elif key in MONEY_FIELDS:
                row.append(format_nano(value))
            elif isinstance(value, str):
                row.append(neutralise(value))
            elif isinstance(value, int):
                row.append(str(value))
            else:  # call_meta: JSON text (an object's always starts with `{`; neutralised all the same)
                row.append(neutralise(orjson.dumps(value).decode()))
        writer.writerow(row)
    return out.getvalue()


# The money of a stored record, as the exact decimal text `record_json` wrote (orjson would
# read it as a float): its last keys, in MONEY_FIELDS order. A quote right after a comma is
# always a key's: in a JSON string a quote is escaped, so `,"` never occurs inside one.
_MONEY_START = b',"' + MONEY_FIELDS[0].encode() + b'":'
_MONEY_KEYS = tuple(b'"' + name.encode() + b'":' for name in MONEY_FIELDS)
_MONEY_TEXT = re.compile(rb',"(' + b"|".join(name.encode() for name in MONEY_FIELDS) + rb')":([^,}]*)')
_TEXT_COLUMNS = tuple(i for i, key in enumerate(RECORD_KEYS)
                      if key not in MONEY_FIELDS and key not in ("id", "assistant_id", "duration", "call_meta"))
_INT_COLUMNS = tuple(RECORD_KEYS.index(key) for key in ("id", "assistant_id", "duration"))
_MONEY_COLUMNS = tuple(RECORD_KEYS.index(name) for name in MONEY_FIELDS)
_META_COLUMN = RECORD_KEYS.index("call_meta")
_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)
_COMMAS = len(RECORD_KEYS) - 1
# Money below this read as a float is that float's repr, when the repr has at most 9
# decimals (see _exact_decimal).
_EXACT_BELOW = float(2**22)


def json_rows(calls: list[StoredCall], policy: Policy) -> bytes:
    """The calls' records as comma-separated JSON objects (as served by SID)."""
    return b",".join([call.served(policy) for call in calls])


def _money_texts(stored: bytes) -> list[bytes]:
    """The money values' JSON text of a stored record, in MONEY_FIELDS order."""
    tail = stored[stored.find(_MONEY_START) + 1:-1].split(b",")
    if len(tail) == len(_MONEY_KEYS) and all(map(bytes.startswith, tail, _MONEY_KEYS)):
        return [part[len(key):] for part, key in zip(tail, _MONEY_KEYS, strict=True)]
    found = dict(_MONEY_TEXT.findall(stored))  # not in the order record_json writes: look each up
    return [found[name.encode()] for name in MONEY_FIELDS]


def _exact_decimal(value: float) -> str | None:
    """The stored text of a money amount orjson read as `value`, when the float's repr is
    sure to be it; else None (read the text).

    The stored text t is a multiple of 1e-9 (format_nano) and `value` the double nearest it.
    repr(value) r is the shortest text that reads back as `value`: r and t both lie within
    one ulp of it, under 2**-31 < 1e-9 when |value| < 2**22. If r has at most 9 decimals it
    is a multiple of 1e-9 too, and two distinct multiples lie 1e-9 apart: r is t. Both are
    shortest decimals (format_nano strips trailing zeros; a whole amount is a JSON int), and
    repr writes no exponent from 1e-4 up."""
    text = repr(value)
    if 1e-4 <= abs(value) < _EXACT_BELOW and "e" not in text and len(text) - text.index(".") <= 10:
        return text
    return None


def _csv_line(row: list[str]) -> str:
    """One CSV row as csv.writer writes it (quoted where a cell needs it)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(row)
    return out.getvalue()


def _stored_line(stored: bytes, call: StoredCall) -> str:
    """The CSV line of a call's stored record (`j` without its version) and its call_meta."""
    record = orjson.loads(stored)
    row = [record[key] for key in RECORD_KEYS]
    texts: list[bytes] | None = None
    for n, i in enumerate(_MONEY_COLUMNS):
        value = row[i]
        if value is None:
            row[i] = ""
        elif type(value) is int:
            row[i] = str(value)
        elif (exact := _exact_decimal(value)) is not None:
            row[i] = exact
        else:
            texts = texts or _money_texts(stored)
            row[i] = texts[n].decode()
    return _line(row, call.call_meta())


def _rendered_line(record: dict[str, Any]) -> str:
    """The CSV line of a record rendered from the call's fields (layout 4: money in nano-units)."""
    row = [record[key] for key in RECORD_KEYS]
    for i in _MONEY_COLUMNS:
        value = row[i]
        row[i] = "" if value is None else format_nano(value)
    return _line(row, record["call_meta"])


def _line(row: list[Any], meta: dict[str, Any]) -> str:
    """The CSV line of a record's values, money written already: what `csv_rows` writes for it."""
    for i in _TEXT_COLUMNS:
        value = row[i]
        if value is None:
            row[i] = ""
        elif value and value[0] in _FORMULA_FIRST:
            row[i] = "'" + value
    for i in _INT_COLUMNS:
        value = row[i]
        row[i] = "" if value is None else str(value)
    # call_meta: JSON text (an object's always starts with `{`; neutralised all the same)
    row[_META_COLUMN] = neutralise(orjson.dumps(meta).decode()) if meta else "{}"
    line = ",".join(row)
    if line.count(",") == _COMMAS and '"' not in line and "\n" not in line and "\r" not in line:
        return line + "\r\n"
    return _csv_line(row)


def csv_rows_of_calls(calls: list[StoredCall], policy: Policy) -> str:
    """CSV rows of calls: from the record stored ready when it is current (numbers
    as the record's JSON writes them, call_meta from its fields), else rendered from the fields:
    the text `csv_rows` writes for the record either way (tests/api/test_export.py).

    The export's hottest loop, kept to a few C calls per row: one parse of the record, its
    money from the floats when that is exact (else cut from the text), a set lookup per text
    cell, and the cells joined by commas, unless one needs quoting (csv.writer then writes
    that row)."""
    lines: list[str] = []
    for call in calls:
        stored = call.stored_json()
        if stored is None:  # layout 4, or a call committed by a version before `j`
            lines.append(_rendered_line(call.record(policy)))
            continue
        lines.append(_stored_line(stored, call))
    return "".join(lines)


class ExportSlots:
    """How many exports run now, per scope (an organization id, or None for unscoped tokens)."""

    def __init__(self, per_scope: int) -> None:
        self.per_scope = per_scope
        self.running: dict[int | None, int] = {}

    @contextmanager
    def hold(self, scope: int | None) -> Iterator[None]:
        """One slot of `scope` for the block; TooManyExports (429) when all are taken."""
        if self.running.get(scope, 0) >= self.per_scope:
            raise TooManyExports(f"at most {self.per_scope} exports run at once per organization; "
                                 "retry when one has finished", retry_after=RETRY_AFTER_S)
        self.running[scope] = self.running.get(scope, 0) + 1
        try:
            yield
        finally:
            left = self.running[scope] - 1
            if left:
                self.running[scope] = left
            else:
                del self.running[scope]


EXPORT_SLOTS = web.AppKey("export_slots", ExportSlots)


class _Stalled(Exception):
    """The client did not take a write within LEDGER_WRITE_TIMEOUT_S."""


async def export_calls(request: web.Request) -> web.StreamResponse:
    """Every matching call, streamed batch by batch through the index (memory stays flat)."""
    scope = scope_of(request)
    fmt = parse_format(request.query)
    filters = parse_filter(request.query)
    with request.app[EXPORT_SLOTS].hold(scope):
        stream = listing.export(request.app[STORE], indexes_of(request), filters, scope)
        try:
            return await _stream(request, stream, fmt, scope)
        finally:  # however it ended: the index reads are closed before the slot is given back
            await stream.aclose()


async def _stream(request: web.Request, stream: AsyncGenerator[list[StoredCall], None], fmt: str,
                  scope: int | None) -> web.StreamResponse:
    async with bounded_request():  # the first read before the 200: its errors still get their own status
        first = await anext(stream, None)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
        "Content-Disposition": f'attachment; filename="calls.{fmt}"',
    })
    settings = request.app[SETTINGS]
    timeout = settings.write_timeout_s

    async def bounded(write: Awaitable[Any]) -> None:
        try:
            async with asyncio.timeout(timeout):
                await write
        except TimeoutError:
            raise _Stalled from None

    async def send(data: bytes) -> None:
        await bounded(response.write(data))

    written = 0
    batch = first
    try:
        await bounded(response.prepare(request))
        await send((",".join(RECORD_KEYS) + "\r\n").encode() if fmt == "csv" else b"[")
        while batch is not None:
            if fmt == "csv":
                await send(csv_rows_of_calls(batch, settings.policy).encode())
            elif batch:
                await send((b"," if written else b"") + json_rows(batch, settings.policy))
            written += len(batch)
            batch = None  # what was sent is not held while the next batch is read
            batch = await anext(stream, None)
        if fmt == "json":
            await send(b"]")
        await bounded(response.write_eof())
    except _Stalled:
        log.warning("export_stalled", rows=written, format=fmt, organization_id=scope, write_timeout_s=timeout,
                    detail="the client took no data within LEDGER_WRITE_TIMEOUT_S: connection closed")
        _abort(request)
    except Exception as exc:
        # The 200 and part of the body are sent: no error answer can follow. Cut the connection,
        # so the client sees a truncated transfer, never a complete-looking partial export.
        log.warning("export_interrupted", rows=written, format=fmt, error=type(exc).__name__)
        _abort(request)
    return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
