"""The read API's routes: one call by SID (and its events and costs), the calls API of
SPEC §9 (lists, counts, stats, analytics, search, export, one call by id), and the webhook
endpoints of outbound call events (SPEC §15)."""

import structlog
from aiohttp import web

from call_ledger.api.aggregates import call_analytics, call_stats
from call_ledger.api.archived import ARCHIVE, READER
from call_ledger.api.calls import count_calls, get_call_by_id, list_calls, search_calls
from call_ledger.api.costs import costs_by_id, costs_by_sid
from call_ledger.api.export import EXPORT_SLOTS, ExportSlots, export_calls
from call_ledger.api.query import check_single_valued
from call_ledger.api.rendered import RENDERED, RenderedRecords
from call_ledger.api.views import get_call, get_call_events
from call_ledger.api.webhook_endpoints import add_webhook_endpoints
from call_ledger.archive import CallReader, open_archive
from call_ledger.settings import Settings
from call_ledger.web.base import Handler

log = structlog.get_logger("ledger.api")
API_PREFIX = "/api/v1/"


@web.middleware
async def single_valued_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The read API's parameters take one value each (`check_single_valued`): a 422 for a name given twice."""
    if request.path.startswith(API_PREFIX) and len(request.query) > 1:
        check_single_valued(name for name, _ in request.query.items())
    return await handler(request)


def add_read_api(app: web.Application, settings: Settings) -> None:
    app.middlewares.append(single_valued_query)  # inside error_middleware: its InvalidQuery is a JSON 422
    if not settings.api_tokens:
        log.warning("no_api_tokens", detail="LEDGER_API_TOKENS is empty: every call lookup answers 401")
    app[EXPORT_SLOTS] = ExportSlots(settings.max_exports)
    app[RENDERED] = RenderedRecords()
    if settings.archive_url:  # GET by SID serves archived calls from their files (SPEC §16)
        app[ARCHIVE] = open_archive(settings.archive_url)
        app[READER] = CallReader()
    # Any characters (line feeds included) rather than the default segment pattern: a SID with
    # an encoded slash or newline, or an empty one, still reaches the handler and gets a JSON 404.
    app.router.add_get(r"/api/v1/calls/sid/{call_sid:[\s\S]+}/events", get_call_events)
    app.router.add_get(r"/api/v1/calls/sid/{call_sid:[\s\S]+}/costs", costs_by_sid)
    app.router.add_get(r"/api/v1/calls/sid/{call_sid:[\s\S]*}", get_call)
    app.router.add_get("/api/v1/calls", list_calls)
    # The fixed names before /{id}: aiohttp matches routes in the order they were added.
    app.router.add_get("/api/v1/calls/count", count_calls)
    app.router.add_get("/api/v1/calls/stats", call_stats)
    app.router.add_get("/api/v1/calls/analytics", call_analytics)
    app.router.add_get("/api/v1/calls/search", search_calls)
    app.router.add_get("/api/v1/calls/export", export_calls)
    # Any segment, so that a non-integer id gets the same JSON 404 as an unknown one.
    app.router.add_get("/api/v1/calls/{id}/costs", costs_by_id)
    app.router.add_get("/api/v1/calls/{id}", get_call_by_id)
    add_webhook_endpoints(app)  # SPEC §15
