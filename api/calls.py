"""Handlers of the calls API's lists (SPEC §9): list, one by id, count, search, export.

Thin: check the token (its scope is the organization the caller may see), parse the query,
read through `api.listing`, encode. Every route answers another tenant's call exactly as an
unknown one.
"""

import asyncio
import csv
import functools
import io
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from api import listing
from api.auth import check_bearer, may_see
from api.query import parse_filter, parse_format, parse_list, parse_search
from ledger.errors import NotFound, StoreUnavailable
from ledger.index_store import IndexStore
from ledger.indexes import member
from ledger.money import format_nano
from ledger.rules import MONEY_FIELDS, CallState, record_json, render_record
from ledger.store import REQUEST_TIMEOUT_S
from ledger.web import SETTINGS, STORE

log = structlog.get_logger("ledger.api")

MAX_RECORD_ID = 2**53 - 1
# §2's 18 keys in §2's order: the CSV header.
RECORD_KEYS = (
    "call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status", "call_meta",
    "assistant_name", "flow_name", "duration", "started_at", "ended_at", "total_cost", "llm_cost", "tts_cost",
    "stt_cost", "telephony_cost", "cost_currency",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_errors(handler: Handler) -> Handler:
    """Redis failing or slow on a read is a 503 (as for a lookup), never a 500."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await handler(request)
        except TimeoutError as exc:
            raise StoreUnavailable("redis did not answer in time") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    return wrapper


def scope_of(request: web.Request) -> int | None:
    """The caller's organization (None: every call); 401 without a valid token."""
    return check_bearer(request.headers.get("Authorization"), request.app[SETTINGS].api_tokens)


def indexes_of(request: web.Request) -> IndexStore:
    return request.app[STORE].indexes


def records_json(records: list[dict[str, Any]]) -> bytes:
    return b"[" + b",".join(record_json(r) for r in records) + b"]"


@store_errors
async def list_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    query = parse_list(request.query)
    page = await listing.page(request.app[STORE], indexes_of(request), request.app[SETTINGS], query.filter,
                              scope, query.skip, query.limit, query.cursor)
    body = (b'{"items":' + records_json(page.records) + b',"total":' + str(page.total).encode()
            + b',"skip":' + str(query.skip).encode() + b',"limit":' + str(query.limit).encode()
            + b',"next_cursor":' + orjson.dumps(page.next_cursor) + b"}")
    return web.Response(body=body, content_type="application/json")


@store_errors
async def count_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    n = await listing.count(indexes_of(request), parse_filter(request.query), scope)
    return web.Response(body=orjson.dumps({"count": n}), content_type="application/json")


async def call_by_id(request: web.Request) -> tuple[str, int, CallState]:
    """(sid, record id, state) of the caller's call with the path's integer id; NotFound otherwise."""
    scope = scope_of(request)
    raw = request.match_info.get("id", "")
    # At most 16 digits (2^53 - 1) before int(): thousands of them are a ValueError there (a 500).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not 1 <= int(raw) <= MAX_RECORD_ID:
        raise NotFound("no call with this id")
    payload = await indexes_of(request).find(member(int(raw)))
    if payload is None:
        raise NotFound("no call with this id")
    found = await request.app[STORE].get_call(payload["sid"])
    if found is None or found[0] != int(raw) or not may_see(found[1], scope):
        raise NotFound("no call with this id")
    return payload["sid"], found[0], found[1]


@store_errors
async def get_call_by_id(request: web.Request) -> web.Response:
    sid, record_id, state = await call_by_id(request)
    record = render_record(sid, record_id, state, request.app[SETTINGS])
    return web.Response(body=record_json(record), content_type="application/json")


@store_errors
async def search_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    q, limit = parse_search(request.query)
    records = await listing.search(request.app[STORE], indexes_of(request), request.app[SETTINGS], q, limit, scope)
    return web.Response(body=records_json(records), content_type="application/json")


def csv_rows(records: list[dict[str, Any]]) -> str:
    """CSV rows of records: call_meta as JSON text, money as exact decimals, nulls empty."""
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
            elif key == "call_meta":
                row.append(orjson.dumps(value).decode())
            else:
                row.append(str(value))
        writer.writerow(row)
    return out.getvalue()


async def export_calls(request: web.Request) -> web.StreamResponse:
    """Every matching call, streamed page by page through the index (memory stays flat)."""
    try:  # checks and the first read before the 200: errors still get their own status
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            scope = scope_of(request)
            fmt = parse_format(request.query)
            filters = parse_filter(request.query)
            stream = listing.export(request.app[STORE], indexes_of(request), request.app[SETTINGS], filters, scope)
            first = await anext(stream, None)
    except TimeoutError as exc:
        raise StoreUnavailable("redis did not answer in time") from exc
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
        "Content-Disposition": f'attachment; filename="calls.{fmt}"',
    })
    await response.prepare(request)
    if fmt == "csv":
        await response.write((",".join(RECORD_KEYS) + "\r\n").encode())
    else:
        await response.write(b"[")
    written = 0
    batch = first
    try:
        while batch is not None:
            if fmt == "csv":
                await response.write(csv_rows(batch).encode())
            elif batch:
                await response.write((b"," if written else b"") + b",".join(record_json(r) for r in batch))
            written += len(batch)
            batch = await anext(stream, None)
    except Exception as exc:
        # The 200 and part of the body are sent: no error answer can follow. Cut the connection,
        # so the client sees a truncated transfer, never a complete-looking partial export.
        log.warning("export_interrupted", rows=written, error=type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        await stream.aclose()
    if fmt == "json":
        await response.write(b"]")
    await response.write_eof()
    return response
