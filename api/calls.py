"""Handlers of the calls API's lists (SPEC §9): list, one by id, count, search (export: `api.export`).

Thin: check the token (its scope is the organization the caller may see), parse the query,
read through `api.listing`, encode. Every route answers another tenant's call exactly as an
unknown one.
"""

import functools
from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from call_ledger.api import listing
from call_ledger.api.auth import check_bearer
from call_ledger.api.query import parse_filter, parse_list, parse_search
from call_ledger.api.rendered import RENDERED
from call_ledger.api.visible import visible_call
from call_ledger.core.errors import NotFound
from call_ledger.core.indexes import member
from call_ledger.core.served import StoredCall
from call_ledger.store.errors import bounded_request
from call_ledger.store.indexes import IndexStore
from call_ledger.web.base import SETTINGS, STORE

log = structlog.get_logger("ledger.api")

MAX_RECORD_ID = 2**53 - 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_errors(handler: Handler) -> Handler:
    """Redis failing or slow on a read is a 503 (as for a lookup), never a 500."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        async with bounded_request():  # the store's one mapping of Redis failures (Cluster ones too)
            return await handler(request)

    return wrapper


def scope_of(request: web.Request) -> int | None:
    """The caller's organization (None: every call); 401 without a valid token."""
    return check_bearer(request.headers.get("Authorization"), request.app[SETTINGS].api_tokens)


def indexes_of(request: web.Request) -> IndexStore:
    return request.app[STORE].indexes


def records_json(records: list[bytes]) -> bytes:
    return b"[" + b",".join(records) + b"]"


@store_errors
async def list_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    query = parse_list(request.query)
    page = await listing.page(request.app[STORE], indexes_of(request), request.app[SETTINGS].policy, query.filter,
                              scope, query.skip, query.limit, query.cursor, request.app[RENDERED])
    body = (b'{"items":' + records_json(page.records) + b',"total":' + str(page.total).encode()
            + b',"skip":' + str(query.skip).encode() + b',"limit":' + str(query.limit).encode()
            + b',"next_cursor":' + orjson.dumps(page.next_cursor) + b"}")
    return web.Response(body=body, content_type="application/json")


@store_errors
async def count_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    n = await listing.count(indexes_of(request), parse_filter(request.query), scope)
    return web.Response(body=orjson.dumps({"count": n}), content_type="application/json")


async def call_by_id(request: web.Request) -> StoredCall:
    """The caller's call with the path's integer id; NotFound otherwise."""
    scope = scope_of(request)
    raw = request.match_info.get("id", "")
    # At most 16 digits (2^53 - 1) before int(): thousands of them are a ValueError there (a 500).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not 1 <= int(raw) <= MAX_RECORD_ID:
        raise NotFound("no call with this id")
    payload = await indexes_of(request).find(member(int(raw)))
    if payload is None:
        raise NotFound("no call with this id")
    call = await visible_call(request.app[STORE], payload.call_sid, scope)
    if call is None or call.record_id != int(raw):
        raise NotFound("no call with this id")
    return call


@store_errors
async def get_call_by_id(request: web.Request) -> web.Response:
    call = await call_by_id(request)
    return web.Response(body=request.app[RENDERED].served(call, request.app[SETTINGS].policy),
                        content_type="application/json")


@store_errors
async def search_calls(request: web.Request) -> web.Response:
    scope = scope_of(request)
    q, limit = parse_search(request.query)
    records = await listing.search(request.app[STORE], indexes_of(request), request.app[SETTINGS].policy, q, limit,
                                   scope, request.app[RENDERED])
    return web.Response(body=records_json(records), content_type="application/json")
