"""Webhook endpoints (SPEC §15): what a request to create or recover one must say, how an endpoint is kept, and how
its secret is rotated.

Pure: the routes (`call_ledger.api.webhook_endpoints`) check requests here, and the store
(`call_ledger.store.endpoints`) keeps the JSON `encode` makes. Whether a URL's host may be reached (SSRF) needs DNS:
`call_ledger.web.ssrf` decides that, after the checks of its form made here.
"""

import os
import re
from dataclasses import dataclass, replace
from typing import cast
from urllib.parse import urlsplit

import orjson

from call_ledger.core.errors import InvalidBody, MalformedBody
from call_ledger.core.instants import parse_iso
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint, MessageType

MAX_URL = 2048
MAX_DESCRIPTION = 256
# A rotated-out secret keeps signing beside the new one for a day (SPEC §15), so that receivers can switch at
# their pace (`rotated`: never more than the two).
ROTATION_OVERLAP_MS = 86_400_000
ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{24}")
_CREATE_FIELDS = frozenset({"url", "events", "description"})
# Spaces and control characters: urlsplit drops some of them silently, so a URL holding one is not what it shows.
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """A valid body of `POST /api/v1/webhook-endpoints` (its URL's host not yet checked: `web.ssrf`)."""

    url: str
    events: tuple[MessageType, ...]
    description: str


def new_endpoint_id() -> str:
    """`ep_` and 24 random hex digits: unguessable, so an id says nothing about another tenant's endpoints."""
    return "ep_" + os.urandom(12).hex()


def is_endpoint_id(text: str) -> bool:
    """Whether the path's id can name an endpoint (anything else is an unknown one, without asking Redis)."""
    return ENDPOINT_ID.fullmatch(text) is not None


def json_object(body: bytes) -> dict[str, object]:
    """The body as a JSON object: MalformedBody (400) if it is not JSON, InvalidBody (422) if not an object."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidBody("the body must be a JSON object")
    return cast(dict[str, object], value)


def _refuse_unknown(fields: dict[str, object], known: frozenset[str]) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidBody(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")


def url_problem(url: object) -> str | None:
    """What is wrong with an endpoint URL's form, or None: http(s), at most MAX_URL characters, a host, a valid
    port, no credentials (they would be logged and shown as part of the URL: a secret in plain sight)."""
    if not isinstance(url, str) or not url:
        return "url must be a non-empty string"
    if len(url) > MAX_URL:
        return f"url must be at most {MAX_URL} characters"
    if _UNSAFE.search(url):
        return "url must not contain spaces or control characters"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return "url must be an http or https URL"
    if "@" in parts.netloc:
        return "url must not carry credentials (user:password@)"
    if not parts.hostname:
        return "url must name a host"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        return "url has an invalid port"
    return None


def _events(value: object) -> tuple[MessageType, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidBody(f"events must be a non-empty list of {', '.join(MESSAGE_TYPES)}")
    events: list[MessageType] = []
    for item in value:
        if not isinstance(item, str) or item not in MESSAGE_TYPES:
            raise InvalidBody(f"events may hold only {', '.join(MESSAGE_TYPES)}")
        if item in events:
            raise InvalidBody(f"events lists {item} twice")
        events.append(item)
    return tuple(events)


def parse_create(body: bytes) -> EndpointRequest:
    """The body of a create request; InvalidBody (422) naming the first field that is not of its form."""
    fields = json_object(body)
    _refuse_unknown(fields, _CREATE_FIELDS)
    if "url" not in fields:
        raise InvalidBody("url is required")
    problem = url_problem(fields["url"])
    if problem:
        raise InvalidBody(problem)
    events = _events(fields["events"]) if "events" in fields else MESSAGE_TYPES
    description = fields.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidBody(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return EndpointRequest(cast(str, fields["url"]), events, description)


def parse_recover(body: bytes) -> int:
    """`{"since": "<ISO 8601>"}` as milliseconds since the epoch (an instant without an offset is UTC)."""
    fields = json_object(body)
    _refuse_unknown(fields, frozenset({"since"}))
    since = fields.get("since")
    if not isinstance(since, str):
        raise InvalidBody("since is required: an ISO 8601 date and time")
    try:
        return parse_iso(since).us // 1000
    except ValueError:
        raise InvalidBody("since must be an ISO 8601 date and time, such as 2026-11-24T10:00:00Z") from None


def rotated(endpoint: Endpoint, secret: str, now_ms: int) -> Endpoint:
    """The endpoint with `secret` current and the secret that was current until now kept for a day more (SPEC
    §15: messages carry both signatures for 24 h). Any older one goes at once: rotating twice is how a leaked
    secret stops being accepted now, and a message never carries more than two signatures."""
    current = next((old for old, ends in endpoint.secrets if ends is None or ends > now_ms), None)
    previous = () if current is None else ((current, now_ms + ROTATION_OVERLAP_MS),)
    return replace(endpoint, secrets=((secret, None), *previous))


# -- the stored form (one value of the `cl:wh:endpoints` hash) ----------------------------------------------------

def encode(endpoint: Endpoint) -> bytes:
    """The endpoint as the store keeps it. Compact (orjson), with `"organization_id":` followed by an integer or
    `null`: the create script counts an organization's endpoints by that text (store/lua/endpoint_create.lua)."""
    return orjson.dumps({
        "id": endpoint.id, "organization_id": endpoint.organization_id, "url": endpoint.url,
        "events": list(endpoint.events), "description": endpoint.description,
        "secrets": [{"secret": secret, "expires_at_ms": ends} for secret, ends in endpoint.secrets],
        "created_ms": endpoint.created_ms,
    })


def decode(raw: bytes) -> Endpoint:
    """An endpoint as `encode` wrote it."""
    value = orjson.loads(raw)
    return Endpoint(
        id=value["id"], url=value["url"], events=tuple(value["events"]), description=value["description"],
        organization_id=value["organization_id"],
        secrets=tuple((item["secret"], item["expires_at_ms"]) for item in value["secrets"]),
        created_ms=value["created_ms"])


def organization_tag(organization_id: int | None) -> str:
    """An organization as the create script compares it: the integer's digits, or `null` (the unscoped tokens'
    endpoints count as one organization)."""
    return "null" if organization_id is None else str(organization_id)
