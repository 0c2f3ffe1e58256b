"""Read API handlers: thin — check the token, load, render, encode."""

import orjson
from aiohttp import web

from api.auth import check_bearer
from ledger.errors import NotFound
from ledger.events import MAX_CALL_SID
from ledger.rules import CallState, record_json, render_record
from ledger.web import SETTINGS, STORE


def _call_sid(request: web.Request) -> str:
    check_bearer(request.headers.get("Authorization"), request.app[SETTINGS].api_tokens)
    call_sid = request.match_info.get("call_sid", "")
    if not call_sid or len(call_sid) > MAX_CALL_SID:  # intake refuses longer ids: no such call
        raise NotFound("no call with this SID")
    return call_sid


async def get_call(request: web.Request) -> web.Response:
    call_sid = _call_sid(request)
    found = await request.app[STORE].get_call(call_sid)
    if found is None:
        raise NotFound("no call with this SID")
    record_id, state = found
    record = render_record(call_sid, record_id, CallState.from_json(state), request.app[SETTINGS])
    return web.Response(body=record_json(record), content_type="application/json")


async def get_call_events(request: web.Request) -> web.Response:
    call_sid = _call_sid(request)
    events = [orjson.loads(raw) for raw in await request.app[STORE].get_events(call_sid)]
    if not events:
        raise NotFound("no call with this SID")
    events.sort(key=lambda e: (e["occurred_us"], e["event_id"]))
    return web.Response(
        body=orjson.dumps({"call_sid": call_sid, "events": events}), content_type="application/json"
    )
