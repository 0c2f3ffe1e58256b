"""The OpenAPI description of the endpoints API of outbound call events (SPEC §15: `api.webhook_endpoints`),
merged into the document by `call_ledger.api.openapi`."""

from typing import Any

from call_ledger.core.endpoints import MAX_DESCRIPTION, MAX_URL
from call_ledger.core.outbound import MESSAGE_TYPES

BASE = "/api/v1/webhook-endpoints"
TAGS = ["webhook endpoints"]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The endpoint's id (`ep_` and 24 hex digits; another organization's is unknown: 404)"}
EVENTS = {"type": "array", "minItems": 1, "maxItems": len(MESSAGE_TYPES), "uniqueItems": True,
          "items": {"type": "string", "enum": list(MESSAGE_TYPES)}}
ENDPOINT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^ep_[0-9a-f]{24}$"},
    "url": {"type": "string", "maxLength": MAX_URL},
    "events": EVENTS,
    "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
    "organization_id": {"type": ["integer", "null"],
                        "description": "The creating token's organization: the endpoint receives only its calls; "
                                       "null (an unscoped token's): every call"},
    "created_at": {"type": "string", "format": "date-time"},
}
SECRET = {"type": "string", "pattern": "^whsec_", "description": "Standard Webhooks secret: shown only here"}

SCHEMAS: dict[str, Any] = {
    "WebhookEndpoint": {"type": "object", "additionalProperties": False, "required": list(ENDPOINT_PROPERTIES),
                        "properties": ENDPOINT_PROPERTIES},
    "WebhookEndpointWithSecret": {
        "type": "object", "additionalProperties": False, "required": [*ENDPOINT_PROPERTIES, "secret"],
        "properties": {**ENDPOINT_PROPERTIES, "secret": SECRET}},
    "WebhookEndpointCreate": {
        "type": "object", "additionalProperties": False, "required": ["url"],
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": MAX_URL,
                    "description": "http(s), no credentials; its host must resolve to public addresses only "
                                   "(unless LEDGER_OUTBOUND_ALLOW_PRIVATE=true)"},
            "events": {**EVENTS, "description": "Default: all three"},
            "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        }},
    "WebhookAttempt": {
        "type": "object", "required": ["message_id", "type", "call_sid", "attempt", "status_code", "error", "at",
                                       "next_attempt_at"],
        "properties": {
            "message_id": {"type": "string", "description": "The message's `webhook-id`"},
            "type": {"type": "string", "enum": list(MESSAGE_TYPES)},
            "call_sid": {"type": "string"},
            "attempt": {"type": "integer", "minimum": 1},
            "status_code": {"type": ["integer", "null"], "description": "The receiver's answer; null if none"},
            "error": {"type": ["string", "null"], "description": "timeout, connection_error, refused_address..."},
            "at": {"type": "string", "format": "date-time"},
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time",
                                "description": "null: delivered, or failed after the last retry"},
        }},
}

_UNAUTHORIZED = _error("Missing or invalid bearer token")
_NOT_FOUND = _error("No webhook endpoint with this id (or another organization's)")
_UNAVAILABLE = _error("Redis is not reachable")


def webhook_endpoints_paths() -> dict[str, Any]:
    return {
        BASE: {
            "post": {
                "summary": "Create a webhook endpoint for outbound call events (signed with Standard Webhooks)",
                "operationId": "create_webhook_endpoint", "tags": TAGS,
                "requestBody": {"required": True, "content": _json(_ref("WebhookEndpointCreate"))},
                "responses": {
                    "201": {"description": "Created; `secret` is shown only now",
                            "content": _json(_ref("WebhookEndpointWithSecret"))},
                    "400": _error("The body is not JSON"),
                    "401": _UNAUTHORIZED,
                    "409": _error("The organization has LEDGER_MAX_ENDPOINTS endpoints already"),
                    "422": _error("A field is not of its form, an unknown field, or the URL's host is refused"),
                    "503": _UNAVAILABLE,
                },
            },
            "get": {
                "summary": "The caller's webhook endpoints, oldest first (no secrets)",
                "operationId": "list_webhook_endpoints", "tags": TAGS,
                "responses": {
                    "200": {"description": "Every endpoint the caller may see", "content": _json({
                        "type": "object", "required": ["items", "total"], "additionalProperties": False,
                        "properties": {"items": {"type": "array", "items": _ref("WebhookEndpoint")},
                                       "total": {"type": "integer", "minimum": 0}}})},
                    "401": _UNAUTHORIZED,
                    "503": _UNAVAILABLE,
                },
            },
        },
        BASE + "/{id}": {
            "get": {
                "summary": "One webhook endpoint (no secret)", "operationId": "get_webhook_endpoint", "tags": TAGS,
                "parameters": [ID_PARAM],
                "responses": {"200": {"description": "The endpoint", "content": _json(_ref("WebhookEndpoint"))},
                              "401": _UNAUTHORIZED, "404": _NOT_FOUND, "503": _UNAVAILABLE},
            },
            "delete": {
                "summary": "Delete a webhook endpoint and its pending messages", "operationId":
                "delete_webhook_endpoint", "tags": TAGS, "parameters": [ID_PARAM],
                "responses": {"204": {"description": "Deleted"}, "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                              "503": _UNAVAILABLE},
            },
        },
        BASE + "/{id}/rotate-secret": {
            "post": {
                "summary": "A new secret; messages are signed with the previous one too for 24 hours",
                "operationId": "rotate_webhook_secret", "tags": TAGS, "parameters": [ID_PARAM],
                "responses": {"200": {"description": "The endpoint with its new secret (shown only now)",
                                      "content": _json(_ref("WebhookEndpointWithSecret"))},
                              "401": _UNAUTHORIZED, "404": _NOT_FOUND, "503": _UNAVAILABLE},
            },
        },
        BASE + "/{id}/attempts": {
            "get": {
                "summary": "The endpoint's delivery attempts, one page at a time",
                "operationId": "list_webhook_attempts", "tags": TAGS,
                "parameters": [
                    ID_PARAM,
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "The `next` of the previous page"}],
                "responses": {
                    "200": {"description": "One page of attempts", "content": _json({
                        "type": "object", "required": ["attempts", "next"],
                        "properties": {"attempts": {"type": "array", "items": _ref("WebhookAttempt")},
                                       "next": {"type": ["string", "null"],
                                                "description": "Cursor of the next page; null on the last"}}})},
                    "401": _UNAUTHORIZED, "404": _NOT_FOUND, "422": _error("limit or after is not valid"),
                    "503": _UNAVAILABLE,
                },
            },
        },
        BASE + "/{id}/recover": {
            "post": {
                "summary": "Send again every message of this endpoint created since a time, with its webhook-id",
                "operationId": "recover_webhook_endpoint", "tags": TAGS, "parameters": [ID_PARAM],
                "requestBody": {"required": True, "content": _json({
                    "type": "object", "required": ["since"], "additionalProperties": False,
                    "properties": {"since": {"type": "string", "format": "date-time"}}})},
                "responses": {
                    "202": {"description": "Queued to be sent again", "content": _json({
                        "type": "object", "required": ["recovered"],
                        "properties": {"recovered": {"type": "integer", "minimum": 0,
                                                     "description": "How many messages were queued"}}})},
                    "400": _error("The body is not JSON"),
                    "401": _UNAUTHORIZED, "404": _NOT_FOUND, "422": _error("since is missing or not ISO 8601"),
                    "503": _UNAVAILABLE,
                },
            },
        },
    }
