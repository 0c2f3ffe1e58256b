"""The OpenAPI description of the calls API of SPEC §9 (lists, counts, stats, analytics,
search, export, costs), merged into the document by `call_ledger.api.openapi`."""

from typing import Any

from call_ledger.core.events import STATUSES

RECORD = {"$ref": "#/components/schemas/CallResponse"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_STRING = {"type": ["string", "null"]}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json({"$ref": "#/components/schemas/Error"})}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


FILTERS = [
    _query("status", {"type": "string", "enum": list(STATUSES)}, "Only calls with this status"),
    _query("assistant_id", {"type": "integer", "minimum": 0}, "Only calls of this assistant"),
    _query("customer_phone", {"type": "string", "maxLength": 1024},
           "Case-insensitive substring of customer_phone_number (checked on at most 10,000 indexed candidates)"),
    _query("call_sid", {"type": "string", "maxLength": 1024}, "Case-insensitive substring of call_sid"),
    _query("assistant_name", {"type": "string", "maxLength": 1024}, "Case-insensitive substring of assistant_name"),
    _query("date_from", {"type": "string"},
           "ISO 8601 date or date-time, inclusive, on the list time (a date alone: 00:00 UTC)"),
    _query("date_to", {"type": "string"}, "ISO 8601 date or date-time, inclusive (a date alone: the end of that day)"),
    _query("min_duration", {"type": "integer", "minimum": 0}, "Seconds; a call with no duration does not match"),
    _query("max_duration", {"type": "integer", "minimum": 0}, "Seconds; a call with no duration does not match"),
]
ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The record's integer id (anything else is an unknown id: 404)"}
SID_PARAM = {"name": "call_sid", "in": "path", "required": True, "schema": {"type": "string"}}

STATUS_COUNTS = {"type": "object", "required": list(STATUSES),
                 "properties": {status: {"type": "integer"} for status in STATUSES}}

CALL_STATS = {
    "type": "object", "additionalProperties": False,
    "required": ["total_calls", "ongoing_calls", "completed_calls", "failed_calls", "average_duration",
                 "total_duration", "calls_by_status"],
    "properties": {
        "total_calls": {"type": "integer"}, "ongoing_calls": {"type": "integer"},
        "completed_calls": {"type": "integer"},
        "failed_calls": {"type": "integer", "description": "Terminal and not completed"},
        "average_duration": NULLABLE_NUMBER, "total_duration": {"type": "integer"},
        "calls_by_status": STATUS_COUNTS,
    },
}

CALL_ANALYTICS = {
    "type": "object", "additionalProperties": False,
    "required": ["period", "total_calls", "completed_calls", "failed_calls", "average_duration", "total_duration",
                 "total_cost", "calls_by_day", "calls_by_assistant", "calls_by_status"],
    "properties": {
        "period": {"type": "string", "enum": ["1d", "7d", "30d", "90d"]},
        "total_calls": {"type": "integer"}, "completed_calls": {"type": "integer"},
        "failed_calls": {"type": "integer"}, "average_duration": NULLABLE_NUMBER,
        "total_duration": {"type": "integer"}, "total_cost": NULLABLE_NUMBER,
        "calls_by_day": {"type": "array", "items": {
            "type": "object", "required": ["date", "total", "completed", "failed", "duration", "cost"],
            "properties": {"date": {"type": "string", "format": "date"}, "total": {"type": "integer"},
                           "completed": {"type": "integer"}, "failed": {"type": "integer"},
                           "duration": {"type": "integer"}, "cost": NULLABLE_NUMBER}}},
        "calls_by_assistant": {"type": "array", "items": {
            "type": "object", "required": ["assistant_id", "assistant_name", "calls", "duration", "cost"],
            "properties": {"assistant_id": {"type": "integer"}, "assistant_name": NULLABLE_STRING,
                           "calls": {"type": "integer"}, "duration": {"type": "integer"},
                           "cost": NULLABLE_NUMBER}}},
        "calls_by_status": STATUS_COUNTS,
    },
}

COST_ENTRY = {
    "type": "object",
    "required": ["id", "service_type", "provider", "model", "usage_type", "usage_amount", "unit_cost",
                 "total_cost", "timestamp", "metadata"],
    "properties": {
        "id": {"type": "string"}, "service_type": {"type": "string", "enum": ["llm", "tts", "stt", "telephony"]},
        "provider": NULLABLE_STRING, "model": NULLABLE_STRING, "usage_type": NULLABLE_STRING,
        "usage_amount": NULLABLE_NUMBER, "unit_cost": NULLABLE_NUMBER,
        "total_cost": {"type": ["number", "null"],
                       "description": "In the ledger currency, as counted when the charge was applied (never "
                       "converted at read); null only for a charge in another currency applied by a version that "
                       "did not freeze its rate, when that rate is no longer configured"},
        "timestamp": {"type": ["string", "null"], "format": "date-time"},
        "metadata": {"type": "object", "description": "The rate-card estimate has {\"estimated\": true}; a "
                     "charge in another currency has original_currency, original_amount and fx_rate (the rate "
                     "it was converted at when applied)"},
    },
}

CALL_COSTS = {
    "type": "object", "required": ["call_summary", "detailed_entries"],
    "properties": {
        "call_summary": {"type": "object", "required": [
            "call_id", "call_sid", "total_cost", "llm_cost", "tts_cost", "stt_cost", "telephony_cost", "currency",
            "duration_minutes", "started_at", "ended_at"], "properties": {
            "call_id": {"type": "integer"}, "call_sid": {"type": "string"}, "total_cost": NULLABLE_NUMBER,
            "llm_cost": NULLABLE_NUMBER, "tts_cost": NULLABLE_NUMBER, "stt_cost": NULLABLE_NUMBER,
            "telephony_cost": NULLABLE_NUMBER, "currency": NULLABLE_STRING,
            "duration_minutes": {"type": ["integer", "null"]},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"}}},
        "detailed_entries": {"type": "array", "items": {"$ref": "#/components/schemas/CostEntry"}},
        "next": {"type": ["string", "null"], "description": "Cursor of the next page (pass as `after`); null on "
                 "the last, which alone holds the rate-card estimate entry"},
    },
}

SCHEMAS = {"CallStats": CALL_STATS, "CallAnalytics": CALL_ANALYTICS, "CostEntry": COST_ENTRY, "CallCosts": CALL_COSTS}

# /costs pages through the call's events as /events does (SPEC §14): `limit` counts events read,
# so a page may hold fewer charges than that, or none, and still have a `next`.
COSTS_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
           "Events of the call read for this page (their charges are its entries)"),
    _query("after", {"type": "string"}, "The `next` of the previous page"),
]

COMMON = {
    "400": {"description": "The request line is longer than the server reads (8 KiB): answered by the HTTP "
            "parser before any route"},
    "401": _error("Missing or invalid bearer token"),
    "503": _error("Redis is not reachable"),
}
INVALID = {"422": _error("A query parameter is invalid; the detail names it")}
TOO_MANY_EXPORTS = {"429": {
    **_error("The token's organization already runs LEDGER_MAX_EXPORTS exports in this process (an unscoped "
             "token counts as one organization of its own)"),
    "headers": {"Retry-After": {"description": "Seconds to wait before asking again",
                                "schema": {"type": "integer", "minimum": 1}}}}}
NOT_FOUND = {"404": _error("No such call, or not the token's organization's")}


def _get(summary: str, operation: str, parameters: list[dict[str, Any]], ok: dict[str, Any],
         errors: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": operation, "tags": ["calls"], "parameters": parameters,
                    "responses": {"200": ok, **COMMON, **errors}}}


def calls_paths() -> dict[str, Any]:
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size")
    page = {"description": "One page, newest first by list time (ties: id descending)", "content": _json({
        "type": "object", "required": ["items", "total", "skip", "limit", "next_cursor"],
        "properties": {"items": {"type": "array", "items": RECORD}, "total": {"type": "integer"},
                       "skip": {"type": "integer"}, "limit": {"type": "integer"},
                       "next_cursor": NULLABLE_STRING}})}
    records = {"description": "Records, newest first", "content": _json({"type": "array", "items": RECORD})}
    costs = {"description": "The summary (every charge counted) and the charges of one page of the call's "
             "events, oldest first", "content": _json({"$ref": "#/components/schemas/CallCosts"})}
    paths = {
        "/api/v1/calls": _get("List calls", "list_calls", [
            _query("skip", {"type": "integer", "minimum": 0, "default": 0}, "Items to skip"), limit,
            _query("cursor", {"type": "string"}, "The next_cursor of the previous page (instead of skip)"),
            *FILTERS], page, INVALID),
        "/api/v1/calls/count": _get("Count calls matching the list's filters", "count_calls", FILTERS, {
            "description": "The count", "content": _json({"type": "object", "required": ["count"],
                                                          "properties": {"count": {"type": "integer"}}})},
            INVALID),
        "/api/v1/calls/stats": _get("Statistics over the token's calls", "call_stats", [], {
            "description": "Stats", "content": _json({"$ref": "#/components/schemas/CallStats"})}, {}),
        "/api/v1/calls/analytics": _get("Analytics over a period (the N UTC days ending today)", "call_analytics", [
            _query("period", {"type": "string", "enum": ["1d", "7d", "30d", "90d"], "default": "7d"}, "Period")], {
            "description": "Analytics", "content": _json({"$ref": "#/components/schemas/CallAnalytics"})}, INVALID),
        "/api/v1/calls/search": _get("Search calls by SID, numbers or assistant name", "search_calls", [
            {**_query("q", {"type": "string", "minLength": 3}, "Case-insensitive substring"), "required": True},
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "At most")],
            records, INVALID),
        "/api/v1/calls/export": {"get": {
            "summary": "Export every matching call (streamed)", "operationId": "export_calls", "tags": ["calls"],
            "parameters": [_query("format", {"type": "string", "enum": ["csv", "json"], "default": "csv"},
                                  "csv: a header of the 18 keys, then one row per call; a text cell that "
                                  "begins with =, +, -, @, a tab or a carriage return gets a leading '"),
                           *FILTERS],
            "responses": {"200": {"description": "An attachment", "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": RECORD}}}}, **COMMON, **INVALID,
                **TOO_MANY_EXPORTS}}},
        "/api/v1/calls/{id}": _get("Get a call by its id", "get_call", [ID_PARAM], {
            "description": "The call record", "content": _json(RECORD)}, NOT_FOUND),
        "/api/v1/calls/{id}/costs": _get("Detailed costs of a call, by id", "get_call_costs", [
            ID_PARAM, *COSTS_PAGE], costs, {**NOT_FOUND, **INVALID}),
        "/api/v1/calls/sid/{call_sid}/costs": _get("Detailed costs of a call, by SID", "get_call_costs_by_sid", [
            SID_PARAM, *COSTS_PAGE], costs, {**NOT_FOUND, **INVALID}),
    }
    for path in ("/api/v1/calls", "/api/v1/calls/search", "/api/v1/calls/export"):
        paths[path]["get"]["description"] = ARCHIVED_NOT_LISTED
    for path in ("/api/v1/calls/count", "/api/v1/calls/stats", "/api/v1/calls/analytics"):
        paths[path]["get"]["description"] = ARCHIVED_COUNTED
    return paths


# SPEC §16 (docs/archive.md): what the calls API says of archived calls.
ARCHIVED_NOT_LISTED = ("Covers the calls in Redis: calls moved to the archive (LEDGER_ARCHIVE_URL) are not listed; "
                       "query the archive's Parquet files for them. GET /api/v1/calls/sid/{call_sid} still serves one.")
ARCHIVED_COUNTED = ("Archived calls are counted too (a count's archived calls by the UTC day of their list time: a "
                    "date bound inside a day leaves that day's archived calls out).")
