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
  `ledger.served`) and its call_meta fields, read EXPORT_BATCH calls per pipelined round trip:
  JSON rows are those bytes as `GET /sid/{sid}` sends them; CSV rows are parsed from them with
  numbers kept as their text (money stays exact). A call committed by a version before `j`
  is rendered from its state, as before.
- **A stalled reader costs little, and not for long.** Every write of the streamed body is bounded
  by `LEDGER_WRITE_TIMEOUT_S`: a client that stops reading is cut off (the connection aborted, the
  index reads closed, the slot given back) and one line is logged. What one export holds meanwhile
  is one small page per index shard and one batch of rows (`api.listing`).
"""

import asyncio
import csv
import io
import json
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from api import listing
from api.calls import indexes_of, scope_of
from api.query import parse_filter, parse_format
from ledger.errors import StoreUnavailable, TooManyExports
from ledger.money import format_nano
from ledger.rules import META_FIELD, MONEY_FIELDS, CallState, render_record
from ledger.served import RECORD_FIELD, served_record
from ledger.settings import Settings
from ledger.store import REQUEST_TIMEOUT_S
from ledger.web import SETTINGS, STORE

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


# The record's numbers (ids, durations, money): written as they are, never neutralised.
_NUMBERS = frozenset(("id", "assistant_id", "duration", *MONEY_FIELDS))
_META = META_FIELD.encode()
# JSON numbers kept as their text: money's exact decimals go to the CSV as the record has them.
_decode_stored = json.JSONDecoder(parse_float=str, parse_int=str).decode


def json_rows(calls: list[tuple[str, dict[bytes, bytes]]], settings: Settings) -> bytes:
    """The records of calls' raw hashes as comma-separated JSON objects (as served by SID)."""
    return b",".join(served_record(sid, fields, settings) for sid, fields in calls)


def csv_rows_of_calls(calls: list[tuple[str, dict[bytes, bytes]]], settings: Settings) -> str:
    """CSV rows of calls' raw hashes: from the record stored ready when it is current (numbers
    as the record's JSON writes them, call_meta from its fields), else rendered from the state
    (`csv_rows`): the same text either way."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for sid, fields in calls:
        version, _, stored = (fields.get(RECORD_FIELD) or b"").partition(b"\n")
        if not stored or version != fields.get(b"v", b"0"):
            found = CallState.from_hash(fields)
            assert found is not None  # Store.calls_fields returns calls with a record only
            out.write(csv_rows([render_record(sid, *found, settings)]))
            continue
        record = _decode_stored(stored.decode())
        row = []
        for key in RECORD_KEYS:
            if key == "call_meta":
                meta = sorted((name[2:].decode(), orjson.loads(value)[3]) for name, value in fields.items()
                              if name.startswith(_META))
                row.append(neutralise(orjson.dumps(dict(meta)).decode()))
                continue
            value = record[key]
            if value is None:
                row.append("")
            elif key in _NUMBERS:
                row.append(value)
            else:
                row.append(neutralise(value))
        writer.writerow(row)
    return out.getvalue()


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


async def _stream(request: web.Request, stream: AsyncGenerator[list[tuple[str, dict[bytes, bytes]]], None], fmt: str,
                  scope: int | None) -> web.StreamResponse:
    try:  # the first read before the 200: its errors still get their own status
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            first = await anext(stream, None)
    except TimeoutError as exc:
        raise StoreUnavailable("redis did not answer in time") from exc
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
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
                await send(csv_rows_of_calls(batch, settings).encode())
            elif batch:
                await send((b"," if written else b"") + json_rows(batch, settings))
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
