"""The read API's routes: call lookup by SID and its events."""

import structlog
from aiohttp import web

from api.views import get_call, get_call_events
from ledger.settings import Settings

log = structlog.get_logger("ledger.api")


def add_read_api(app: web.Application, settings: Settings) -> None:
    if not settings.api_tokens:
        log.warning("no_api_tokens", detail="LEDGER_API_TOKENS is empty: every call lookup answers 401")
    # Any characters (line feeds included) rather than the default segment pattern: a SID with
    # an encoded slash or newline, or an empty one, still reaches the handler and gets a JSON 404.
    app.router.add_get(r"/api/v1/calls/sid/{call_sid:[\s\S]+}/events", get_call_events)
    app.router.add_get(r"/api/v1/calls/sid/{call_sid:[\s\S]*}", get_call)
