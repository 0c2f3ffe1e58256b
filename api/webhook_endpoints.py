"""The endpoints API of outbound call events (SPEC §15): create, list, read, delete a webhook endpoint, rotate its
secret, list its delivery attempts, send its messages again.

Tenant-scoped like the calls API: a scoped token (`api.auth`) creates endpoints of its organization and sees and
manages only those; another organization's endpoint, and an unscoped token's (of no organization), is an unknown
one (404) on every route. An unscoped token sees and manages every endpoint.

Thin: check the token, parse the body (`core.endpoints`), check where the URL points (`web.ssrf`), then the store:
`store.endpoints` for the endpoints, `store.deliveries` for their attempts and recovery (the delivery part's). A
secret is shown twice only, in the answers of create and rotate-secret: never in a list, a read or a log line.
"""

import re
import time

import orjson
import structlog
from aiohttp import web

from call_ledger.api.auth import may_see
from call_ledger.api.calls import scope_of, store_errors
from call_ledger.api.views import page_limit
from call_ledger.core.endpoints import is_endpoint_id, new_endpoint_id, parse_create, parse_recover
from call_ledger.core.errors import InvalidBody, InvalidQuery, NotFound, TooManyEndpoints
from call_ledger.core.outbound import Endpoint, iso_ms
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.store.errors import bounded_request
from call_ledger.web.base import SETTINGS, STORE, json_response
from call_ledger.web.ssrf import url_refusal

log = structlog.get_logger("ledger.api")

ATTEMPTS_LIMIT_DEFAULT = 100
ATTEMPTS_LIMIT_MAX = 1000
# The attempts' cursor is the delivery log's (a stream entry id today); its form is checked there, its size here.
_AFTER = re.compile(r"[0-9A-Za-z_.:=-]{1,128}")


def now_ms() -> int:
    return int(time.time() * 1000)


async def endpoint_of(request: web.Request) -> Endpoint:
    """The caller's endpoint named by the path; NotFound for an unknown one and for another organization's."""
    scope = scope_of(request)
    endpoint_id = request.match_info.get("id", "")
    endpoint = await request.app[STORE].endpoints.get(endpoint_id) if is_endpoint_id(endpoint_id) else None
    if endpoint is None or not may_see(endpoint.organization_id, scope):
        raise NotFound("no webhook endpoint with this id")
    return endpoint


def with_secret(endpoint: Endpoint, secret: str) -> dict[str, object]:
    """The answer of create and rotate-secret: the endpoint, and the secret it now signs with (SPEC §15's order)."""
    return {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
            "description": endpoint.description, "organization_id": endpoint.organization_id, "secret": secret,
            "created_at": iso_ms(endpoint.created_ms)}


async def create_endpoint(request: web.Request) -> web.Response:
    scope = scope_of(request)
    wanted = parse_create(await request.read())
    settings = request.app[SETTINGS]
    # Outside the store's bound: DNS has its own (web.ssrf.RESOLVE_TIMEOUT_S), and its failure is a 422, not a 503.
    refusal = await url_refusal(wanted.url, settings.outbound_allow_private)
    if refusal:
        raise InvalidBody(f"url refused: {refusal} (LEDGER_OUTBOUND_ALLOW_PRIVATE=true allows private addresses)")
    secret = new_secret()
    endpoint = Endpoint(id=new_endpoint_id(), url=wanted.url, events=wanted.events, description=wanted.description,
                        organization_id=scope, secrets=((secret, None),), created_ms=now_ms())
    async with bounded_request():
        created = await request.app[STORE].endpoints.create(endpoint, settings.max_endpoints)
    if not created:
        raise TooManyEndpoints(f"this organization has {settings.max_endpoints} webhook endpoints already "
                               "(LEDGER_MAX_ENDPOINTS): delete one first")
    log.info("webhook_endpoint_created", endpoint_id=endpoint.id, organization_id=scope)
    return json_response(with_secret(endpoint, secret), status=201)


@store_errors
async def list_endpoints(request: web.Request) -> web.Response:
    scope = scope_of(request)
    items = [endpoint.public() for endpoint in await request.app[STORE].endpoints.all()
             if may_see(endpoint.organization_id, scope)]
    return json_response({"items": items, "total": len(items)})


@store_errors
async def get_endpoint(request: web.Request) -> web.Response:
    return json_response((await endpoint_of(request)).public())


@store_errors
async def delete_endpoint(request: web.Request) -> web.Response:
    endpoint = await endpoint_of(request)
    store = request.app[STORE]
    if not await store.endpoints.delete(endpoint.id):
        raise NotFound("no webhook endpoint with this id")  # deleted by another request meanwhile
    # After the endpoint: fan-out stops enqueueing for it within its cache's age; what it still enqueued is
    # left to the delivery part's retention trim.
    await store.deliveries.drop(endpoint.id)
    log.info("webhook_endpoint_deleted", endpoint_id=endpoint.id, organization_id=endpoint.organization_id)
    return web.Response(status=204)


@store_errors
async def rotate_secret(request: web.Request) -> web.Response:
    endpoint = await endpoint_of(request)
    secret = new_secret()
    rotated = await request.app[STORE].endpoints.rotate(endpoint.id, secret, now_ms())
    if rotated is None:
        raise NotFound("no webhook endpoint with this id")
    log.info("webhook_secret_rotated", endpoint_id=endpoint.id, organization_id=endpoint.organization_id)
    return json_response(with_secret(rotated, secret))


@store_errors
async def list_attempts(request: web.Request) -> web.Response:
    """One page of the endpoint's delivery attempts, newest first: `limit`, `after` = the last `next`."""
    endpoint = await endpoint_of(request)
    limit = page_limit(request, ATTEMPTS_LIMIT_DEFAULT, ATTEMPTS_LIMIT_MAX)
    after = request.query.get("after")
    if after is not None and not _AFTER.fullmatch(after):
        raise InvalidQuery("after is not a cursor this service gave out")
    try:
        page = await request.app[STORE].deliveries.attempts(endpoint.id, after, limit)
    except ValueError:  # the delivery log's own check of the cursor's form
        raise InvalidQuery("after is not a cursor this service gave out") from None
    body = b'{"attempts":' + orjson.dumps(page.attempts) + b',"next":' + orjson.dumps(page.next) + b"}"
    return web.Response(body=body, content_type="application/json")


@store_errors
async def recover(request: web.Request) -> web.Response:
    """Send again every message of this endpoint created since `since`, with its original `webhook-id`."""
    endpoint = await endpoint_of(request)
    since_ms = parse_recover(await request.read())
    count = await request.app[STORE].deliveries.recover(endpoint.id, since_ms, now_ms())
    log.info("webhook_endpoint_recover", endpoint_id=endpoint.id, organization_id=endpoint.organization_id,
             since=iso_ms(max(since_ms, 0)), messages=count)
    return json_response({"recovered": count}, status=202)


def add_webhook_endpoints(app: web.Application) -> None:
    """The routes, under /api/v1/webhook-endpoints. Any segment as the id: a malformed one gets the JSON 404 an
    unknown one gets."""
    base = "/api/v1/webhook-endpoints"
    app.router.add_post(base, create_endpoint)
    app.router.add_get(base, list_endpoints)
    app.router.add_get(base + "/{id}", get_endpoint)
    app.router.add_delete(base + "/{id}", delete_endpoint)
    app.router.add_post(base + "/{id}/rotate-secret", rotate_secret)
    app.router.add_get(base + "/{id}/attempts", list_attempts)
    app.router.add_post(base + "/{id}/recover", recover)
