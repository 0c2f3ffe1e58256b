"""The OpenAPI 3.1 document served at /openapi.json.

Written by hand, next to the routes it describes; a test checks that every route
the apps register appears here and that a real GET response matches CallResponse.
"""

from typing import Any

import orjson
from aiohttp import web

from call_ledger.api.openapi_calls import SCHEMAS as CALLS_SCHEMAS
from call_ledger.api.openapi_calls import calls_paths
from call_ledger.api.openapi_webhook_endpoints import SCHEMAS as WEBHOOK_ENDPOINTS_SCHEMAS
from call_ledger.api.openapi_webhook_endpoints import webhook_endpoints_paths

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}

CALL_RESPONSE: dict[str, Any] = {
    "type": "object",
    "description": "Schema for call response (the Burki call-lookup API's own shape).",
    "additionalProperties": False,
    "required": [
        "call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status", "call_meta",
        "assistant_name", "flow_name", "duration", "started_at", "ended_at", "total_cost", "llm_cost",
        "tts_cost", "stt_cost", "telephony_cost", "cost_currency",
    ],
    "properties": {
        "call_sid": {"type": "string"},
        "to_phone_number": {"type": "string", "description": "The platform's own number, E.164; '' if unknown"},
        "customer_phone_number": {"type": "string", "description": "The other party, E.164; '' if unknown"},
        "id": {"type": "integer", "minimum": 1, "maximum": 9007199254740991},
        "assistant_id": {"type": "integer", "description": "0 until a platform event attributes the call"},
        "status": {
            "type": "string",
            "enum": ["initiated", "ringing", "ongoing", "completed", "busy", "no-answer", "canceled", "failed"],
        },
        "call_meta": {"type": "object", "additionalProperties": True},
        "assistant_name": NULLABLE_STRING,
        "flow_name": NULLABLE_STRING,
        "duration": {"type": ["integer", "null"], "minimum": 0},
        "started_at": NULLABLE_DATETIME,
        "ended_at": NULLABLE_DATETIME,
        "total_cost": NULLABLE_NUMBER,
        "llm_cost": NULLABLE_NUMBER,
        "tts_cost": NULLABLE_NUMBER,
        "stt_cost": NULLABLE_NUMBER,
        "telephony_cost": NULLABLE_NUMBER,
        "cost_currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
    },
}

ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}

CALL_EVENT = {
    "type": "object",
    "description": "A normalised event as stored: amounts in nano-units (10^-9) of their own currency.",
    "required": ["source", "event_id", "call_sid", "type", "occurred_at", "occurred_us"],
    "properties": {
        "source": {"type": "string", "enum": ["platform", "twilio", "telnyx", "vonage", "plivo"]},
        "event_id": {"type": "string"},
        "call_sid": {"type": "string"},
        "type": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "occurred_us": {"type": "integer"},
        "status": NULLABLE_STRING,
        "direction": NULLABLE_STRING,
        "from_number": NULLABLE_STRING,
        "to_number": NULLABLE_STRING,
        "duration": {"type": ["integer", "null"]},
        "costs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "component": {"type": "string", "enum": ["llm", "tts", "stt", "telephony"]},
                    "amount_nano": {"type": "integer"},
                    "currency": {"type": "string"},
                    # Present when known (SPEC §11): what was used, and the price entry that priced it.
                    "provider": {"type": "string"},
                    "model": {"type": "string"},
                    "usage_type": {"type": "string"},
                    "usage_amount": {"type": "string", "description": "exact decimal"},
                    "unit_cost": {"type": "string", "description": "unit_price / unit_quantity, decimal"},
                    "price_entry": {"type": "object", "description": "the LEDGER_PRICING_FILE entry, frozen"},
                    # Frozen when a cost in another currency is applied (SPEC §14).
                    "fx_rate": {"type": "string", "description": "the LEDGER_FX_RATES rate it was converted at"},
                    "ledger_amount_nano": {"type": "integer", "description": "the amount counted, in the ledger "
                                           "currency"},
                },
            },
        },
        "usage": {"type": "array", "description": "usage lines reported beside a cost (not priced)",
                  "items": {"type": "object"}},
        "assistant_id": {"type": ["integer", "null"]},
        "organization_id": {"type": ["integer", "null"], "minimum": 1},
        "assistant_name": NULLABLE_STRING,
        "flow_name": NULLABLE_STRING,
        "to_phone_number": NULLABLE_STRING,
        "customer_phone_number": NULLABLE_STRING,
        "call_meta": {"type": ["object", "null"]},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json({"$ref": "#/components/schemas/Error"})}


SID_PARAM = {"name": "call_sid", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The provider's call identifier (Twilio CallSid, Telnyx call_control_id, ...)"}

WEBHOOK_RESPONSES = {
    "200": {
        "description": "Stored in the stream (outcome=stored) or authentic but of a kind the ledger does not use "
        "(outcome=ignored, not stored)",
        "content": _json({"type": "object", "properties": {
            "outcome": {"type": "string", "enum": ["stored", "ignored"]},
            "call_sid": {"type": "string"}, "event_id": {"type": "string"}}}),
    },
    "400": _error("Body cannot be parsed; nothing stored"),
    "401": _error("Missing or wrong signature, timestamp outside the window, or a Twilio/Plivo signature "
                  "already used with other parameters; nothing stored"),
    "404": _error("This source's secret is not configured"),
    "408": _error("Body not received within LEDGER_READ_TIMEOUT_S"),
    "413": _error("Body larger than 64 KiB"),
    "422": _error("Parsable, but not a usable call event (no call id, unknown status, bad amount, a field "
                  "not in its provider's format...)"),
    "503": _error("Redis could not take the event; retry"),
}

WEBHOOKS = {
    "platform": ("Platform events (call.metadata, call.usage, call.status), Standard Webhooks signed",
                 "application/json", ["post"]),
    "twilio": ("Twilio voice status callbacks, X-Twilio-Signature", "application/x-www-form-urlencoded",
               ["post", "get"]),
    "telnyx": ("Telnyx Call Control events, Ed25519 signed", "application/json", ["post"]),
    "vonage": ("Vonage Voice API event webhook, signed JWT", "application/json", ["post", "get"]),
    "plivo": ("Plivo answer/hangup callbacks, X-Plivo-Signature-V3", "application/x-www-form-urlencoded",
              ["post", "get"]),
}


def _webhook_path(name: str, summary: str, media: str, methods: list[str]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for method in methods:
        op: dict[str, Any] = {
            "summary": summary, "operationId": f"{name}_webhook_{method}", "tags": ["webhooks"],
            "security": [], "responses": WEBHOOK_RESPONSES,
        }
        if method == "post":
            op["requestBody"] = {"required": True, "content": {media: {"schema": {"type": "object"}}}}
        operations[method] = op
    return operations


def _probe(summary: str, ok: str, media: str = "application/json") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": ok, "content": {media: {"schema": {}}}}}
    if "readyz" in summary:
        responses["503"] = _error("Redis is not reachable")
    return {"get": {"summary": summary, "security": [], "tags": ["operations"], "responses": responses}}


def openapi_document() -> dict[str, Any]:
    """The whole service's contract: every process serves the same document, so a client
    (or a schema-driven test) sees the webhooks even when the worker serves them elsewhere."""
    paths: dict[str, Any] = {
        "/api/v1/calls/sid/{call_sid}": {"get": {
            "summary": "Get a call by its provider call SID", "operationId": "get_call_by_sid", "tags": ["calls"],
            "parameters": [SID_PARAM],
            "responses": {
                "200": {"description": "The call record",
                        "content": _json({"$ref": "#/components/schemas/CallResponse"})},
                "401": _error("Missing or invalid bearer token"),
                "404": _error("No call with this SID"),
                "503": _error("Redis is not reachable"),
            },
        }},
        "/api/v1/calls/sid/{call_sid}/events": {"get": {
            "summary": "The normalised events applied to a call, oldest first, one page at a time",
            "operationId": "get_call_events", "tags": ["calls"],
            "parameters": [SID_PARAM,
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                           {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "The `next` of the previous page"}],
            "responses": {
                "200": {"description": "One page of events", "content": _json({
                    "type": "object", "required": ["call_sid", "events", "next"],
                    "properties": {"call_sid": {"type": "string"}, "events": {
                        "type": "array", "items": {"$ref": "#/components/schemas/CallEvent"}},
                        "next": {"type": ["string", "null"],
                                 "description": "Cursor of the next page (pass as `after`); null on the last"}}})},
                "401": _error("Missing or invalid bearer token"),
                "404": _error("No call with this SID"),
                "422": _error("limit or after is not valid"),
                "503": _error("Redis is not reachable"),
            },
        }},
        "/healthz": _probe("Liveness: the process is up", "Up"),
        "/readyz": _probe("Readiness (readyz): Redis is reachable", "Ready"),
        "/metrics": _probe("Prometheus metrics", "Prometheus text format", "text/plain"),
        "/openapi.json": _probe("This document", "OpenAPI 3.1 document"),
    }
    paths.update(calls_paths())
    paths.update(webhook_endpoints_paths())
    for name in WEBHOOKS:
        summary, media, methods = WEBHOOKS[name]
        paths[f"/webhooks/{name}"] = _webhook_path(name, summary, media, methods)
    return {
        "openapi": "3.1.0",
        "info": {"title": "call-ledger", "version": "0.1.0",
                 "description": "Exact per-call records and costs from telephony and platform webhooks."},
        "paths": paths,
        "components": {
            "schemas": {"CallResponse": CALL_RESPONSE, "CallEvent": CALL_EVENT, "Error": ERROR, **CALLS_SCHEMAS,
                        **WEBHOOK_ENDPOINTS_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def add_openapi_route(app: web.Application) -> None:
    """Serve the document at /openapi.json (every role: it describes the webhooks too)."""
    document = orjson.dumps(openapi_document())

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
