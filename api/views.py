"""Read API handlers: thin — check the token, load, render, encode."""

import re
from typing import NamedTuple

import orjson
from aiohttp import web

from call_ledger.api.archived import archived_record
from call_ledger.api.auth import check_bearer
from call_ledger.api.rendered import RENDERED
from call_ledger.api.visible import visible_call
from call_ledger.core import cursors
from call_ledger.core.errors import InvalidQuery, JournalOff, NotFound
from call_ledger.core.events import MAX_CALL_SID, MAX_EVENT_ID
from call_ledger.core.members import is_short
from call_ledger.web.base import SETTINGS, STORE

EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 1000


class CallRequest(NamedTuple):
    """A request for one call by SID: the SID and the caller's scope (None: every call)."""

    call_sid: str
    scope: int | None


def call_sid_and_scope(request: web.Request) -> CallRequest:
    """The path's SID and the caller's scope (401 without a valid token, 404 for an impossible SID)."""
    scope = check_bearer(request.headers.get("Authorization"), request.app[SETTINGS].api_tokens)
    call_sid = request.match_info.get("call_sid", "")
    if not call_sid or len(call_sid) > MAX_CALL_SID:  # intake refuses longer ids: no such call
        raise NotFound("no call with this SID")
    return CallRequest(call_sid, scope)


async def get_call(request: web.Request) -> web.Response:
    call_sid, scope = call_sid_and_scope(request)
    call = await visible_call(request.app[STORE], call_sid, scope)
    # Another tenant's call is an unknown one (a call with no organization yet is nobody's).
    if call is not None:
        body = request.app[RENDERED].served(call, request.app[SETTINGS].policy)
    else:
        archived = await archived_record(request, call_sid, scope)  # SPEC §16: from its file
        if archived is None:
            raise NotFound("no call with this SID")
        body = archived
    return web.Response(body=body, content_type="application/json")


def page_limit(request: web.Request, default: int, maximum: int) -> int:
    """`limit` as an integer in 1..maximum; InvalidQuery (422) naming it otherwise. ASCII digits
    only, and few of them: int() would take other scripts' digits, and fail (a 500) on thousands."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise InvalidQuery(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


_LIMIT = re.compile(r"[0-9]{1,9}")
# An order member is `<source>:<event_id>` (or its short form: call_ledger.core.members): a source
# name, and an id of at most 1024 characters (call_ledger.core.events), up to 4 bytes each in UTF-8;
# a cursor of one is at most 4/3 of that.
MAX_SOURCE = 32
MAX_EVENT_CURSOR = 4 * (MAX_SOURCE + 1 + 4 * MAX_EVENT_ID + 2) // 3


def encode_cursor(member: str) -> str:
    return cursors.encode(member.encode())


def decode_cursor(cursor: str, parameter: str = "after") -> str:
    """The opaque cursor back to the order member it names; InvalidQuery when it is not one
    this service can have given out (call_ledger.core.cursors: canonical and bounded; then valid UTF-8,
    a source and an event id within their bounds)."""
    try:
        member = cursors.decode(cursor, MAX_EVENT_CURSOR).decode()  # strict: event ids are valid Unicode
    except ValueError:
        raise InvalidQuery(f"{parameter} is not a cursor this service gave out") from None
    if is_short(member):  # layout 3's form (call_ledger.core.members): a code, a mark, the id or its tail
        if len(member) - 2 > MAX_EVENT_ID:
            raise InvalidQuery(f"{parameter} is not a cursor this service gave out")
        return member
    source, sep, event_id = member.partition(":")
    if not sep or not 0 < len(source) <= MAX_SOURCE or not 0 < len(event_id) <= MAX_EVENT_ID:
        raise InvalidQuery(f"{parameter} is not a cursor this service gave out")
    return member


async def get_call_events(request: web.Request) -> web.Response:
    """One page of the call's applied events, oldest first: `limit`, `after` = the last `next`."""
    call_sid, scope = call_sid_and_scope(request)
    if request.app[SETTINGS].journal == "off":
        raise JournalOff("this service keeps no event journal (LEDGER_JOURNAL=off)")
    limit = page_limit(request, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX)
    after = request.query.get("after")
    if scope is not None and await visible_call(request.app[STORE], call_sid, scope) is None:
        raise NotFound("no call with this SID")
    page = await request.app[STORE].events_page(call_sid, decode_cursor(after) if after else "", limit)
    if page is None:
        raise NotFound("no call with this SID")
    events, next_member = page
    body = b'{"call_sid":' + orjson.dumps(call_sid) + b',"events":[' + b",".join(events) + b'],"next":' + (
        orjson.dumps(encode_cursor(next_member)) if next_member else b"null") + b"}"
    return web.Response(body=body, content_type="application/json")
