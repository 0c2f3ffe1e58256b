"""The webhook routes: size check, verify the raw bytes, parse, XADD, answer.

Nothing slow happens here: the event is handed to the stream and applied by the
worker loop. A 2xx means the event is in Redis (SPEC §3); every other outcome
stores nothing.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from call_ledger.core.errors import (
    ClaimPending,
    InvalidEvent,
    LedgerError,
    MalformedBody,
    PayloadTooLarge,
    RequestTimeout,
    SignatureReused,
    SourceNotConfigured,
)
from call_ledger.core.events import CallEvent
from call_ledger.core.replay import SignatureUse
from call_ledger.core.rules import call_meta_size
from call_ledger.settings import Settings
from call_ledger.store.signatures import SignatureLedger
from call_ledger.web.base import MAX_BODY, METRICS, SETTINGS, STORE, json_response
from call_ledger.web.logs import log_info
from call_ledger.worker.sources import SOURCES, Source, WebhookRequest

log = structlog.get_logger("ledger.intake")

CONFIGURED = web.AppKey("configured_sources", dict[str, Source | None])
SIGNATURES = web.AppKey("signature_ledger", SignatureLedger)

# The metrics outcome of each refusal, by HTTP status.
_REFUSALS = {401: "rejected_signature", 400: "rejected_body", 422: "rejected_body", 413: "rejected_size",
             404: "not_configured", 405: "rejected_method", 408: "rejected_timeout", 503: "unavailable"}


def external_url(request: web.Request, settings: Settings) -> str:
    """The URL the provider called: LEDGER_PUBLIC_URL's base + our raw path and query.

    Never the Host header: whoever sends the request chooses it, and with it the URL whose
    signature is checked. URL-signed sources refuse to start without LEDGER_PUBLIC_URL; the
    others do not read the URL, so without it the URL is just the path.
    """
    return (settings.public_url or "") + request.raw_path


class Parsed(NamedTuple):
    """A webhook's event, and its bytes as the stream keeps them."""

    event: CallEvent
    event_json: bytes


async def _handle(request: web.Request, name: str) -> web.Response:
    """size and source -> body -> verify the raw bytes -> parse (claiming the signature) -> claim and append."""
    source = _configured_source(request, name)
    webhook = WebhookRequest(
        method=request.method,
        url=external_url(request, request.app[SETTINGS]),
        headers=request.headers,
        body=await _read_body(request),
        received_at=time.time(),
        query=tuple(request.query.items()),
    )
    use = _verify(request, source, webhook)
    parsed = await _parse_claimed(request, source, webhook, use)
    if parsed is None:
        return _ignored(request, name)
    store = request.app[STORE]
    if not await request.app[SIGNATURES].claim_and_append(store, parsed.event_json, parsed.event.call_sid, use):
        raise SignatureReused("signature already used with other parameters")
    return _stored(request, name, parsed.event)


def _configured_source(request: web.Request, name: str) -> Source:
    """The source this route serves; 413 for a declared body over MAX_BODY, 404 when not configured."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"body larger than {MAX_BODY} bytes")
    source = request.app[CONFIGURED][name]
    if source is None:
        variable = next(s.secret_variable for s in SOURCES if s.name == name)
        log.warning("source_not_configured", source=name, missing_variable=variable)
        raise SourceNotConfigured(f"{name} webhooks are not configured on this service")
    return source


async def _read_body(request: web.Request) -> bytes:
    try:
        if request.content.is_eof():  # the whole body is already here (nearly always): nothing to wait for
            return await request.read()  # aiohttp answers 413 past client_max_size (chunked bodies)
        # A client trickling its body must not hold the handler forever.
        async with asyncio.timeout(request.app[SETTINGS].read_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"body not received within {request.app[SETTINGS].read_timeout_s:g} s") from None
    except (RequestPayloadError, HttpProcessingError):  # e.g. Content-Encoding: gzip that does not inflate
        raise MalformedBody("body could not be read (bad transfer or content encoding)") from None


def _verify(request: web.Request, source: Source, webhook: WebhookRequest) -> SignatureUse | None:
    """Check the raw bytes (nothing unauthentic is parsed); the signature to claim, if the source signs."""
    use = source.verify(webhook)
    if use is not None and request.app[SIGNATURES].held_elsewhere(use):
        # Its first claim reached no Redis yet: Redis will decide which use stands (first claim
        # wins, and another process may hold the other one). Nothing is sent, and the answer is
        # "retry", not 401: this may be the provider's own retry, and a 401 would end it.
        raise ClaimPending("signature's first use not yet confirmed; retry later")
    return use


async def _parse_claimed(request: web.Request, source: Source, webhook: WebhookRequest,
                         use: SignatureUse | None) -> Parsed | None:
    """The event to store, or None (ignored).

    Every verified request claims its signature (SPEC §8), the ones refused at parse or ignored
    too: a re-split of one of those must not pass later. They claim it here; an event to store
    claims it with its append (`SignatureLedger.claim_and_append`). A signature known with other
    parameters is refused before anything else is said about the request."""
    try:
        event = parse(source, webhook)
        parsed = None if event is None else Parsed(event, stored_form(event, request.app[SETTINGS]))
    except Exception:  # refused (4xx), or a parser bug (500): the signature is claimed all the same
        await claim(request, use)
        raise
    if parsed is None:
        await claim(request, use)
    return parsed


def _ignored(request: web.Request, name: str) -> web.Response:
    metrics = request.app[METRICS]
    metrics.labelled(metrics.received, name, "ignored").inc()
    log.info("webhook_received", source=name, outcome="ignored", status=200)
    return json_response({"outcome": "ignored"})


def _stored(request: web.Request, name: str, event: CallEvent) -> web.Response:
    metrics = request.app[METRICS]
    metrics.labelled(metrics.received, name, "stored").inc()
    log_info(log, "webhook_received", {"source": name, "call_sid": event.call_sid, "event_id": event.event_id,
                                       "type": event.type, "outcome": "stored", "status": 200})
    return json_response({"outcome": "stored", "call_sid": event.call_sid, "event_id": event.event_id})


def parse(source: Source, webhook: WebhookRequest) -> CallEvent | None:
    try:
        return source.parse(webhook)
    except ValidationError as exc:  # a value the event model refuses (lone surrogate, oversized id, ...)
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "event"
        raise InvalidEvent(f"{field}: {error['msg']}") from None


async def claim(request: web.Request, use: SignatureUse | None) -> None:
    """Remember the request's signature (Twilio, Plivo); SignatureReused if it is known with other
    parameters."""
    if use is not None and not await request.app[SIGNATURES].remember(use):  # a 503 holds the claim here
        raise SignatureReused("signature already used with other parameters")


def stored_form(event: CallEvent, settings: Settings) -> bytes:
    """The event as the stream keeps it; InvalidEvent if it cannot be stored or applied."""
    try:
        # Defaults (mostly nulls) left out: half of a stored event would be `null`s otherwise.
        event_json = event.model_dump_json(exclude_defaults=True).encode()
    except PydanticSerializationError:  # e.g. a lone surrogate escape ("\ud800") in a text field
        raise InvalidEvent("text fields must be valid Unicode (no lone surrogate escapes)") from None
    check_call_meta(event, settings)  # after: what serialises is what is measured
    return event_json


def check_call_meta(event: CallEvent, settings: Settings) -> None:
    """SPEC §8: an event whose call_meta alone is over the per-call bound can never be applied."""
    if not event.call_meta:
        return
    try:
        keys, size = call_meta_size(event.call_meta)
    except TypeError:  # orjson: a key with a lone surrogate escape ("\ud800") is not Unicode
        raise InvalidEvent("text fields must be valid Unicode (no lone surrogate escapes)") from None
    if keys > settings.max_call_meta_keys or size > settings.max_call_meta_bytes:
        raise InvalidEvent(f"data.call_meta exceeds {settings.max_call_meta_keys} keys or "
                           f"{settings.max_call_meta_bytes} bytes of JSON (LEDGER_MAX_CALL_META_KEYS / _BYTES)")


def webhook_handler(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        structlog.contextvars.clear_contextvars()
        try:
            return await _handle(request, name)
        except (LedgerError, web.HTTPRequestEntityTooLarge) as exc:
            status = getattr(exc, "status", 500)
            outcome = getattr(exc, "outcome", None) or _REFUSALS.get(status, "rejected")
            metrics = request.app[METRICS]
            metrics.labelled(metrics.received, name, outcome).inc()
            # The reason names what was wrong, never a header value or a secret.
            log.info("webhook_received", source=name, outcome=outcome,
                     status=status, reason=str(exc) if isinstance(exc, LedgerError) else "body too large")
            raise

    handler.__name__ = f"{name}_webhook"
    return handler


def add_intake(app: web.Application, settings: Settings) -> None:
    """Register /webhooks/<source> for every source; unconfigured ones answer 404."""
    app[CONFIGURED] = {source.name: source.from_settings(settings) for source in SOURCES}

    async def signatures_ctx(app: web.Application) -> AsyncIterator[None]:
        # After base_app's store context (registered first), on the same Redis client.
        signatures = app[SIGNATURES] = app[STORE].signatures
        landing = asyncio.create_task(signatures.land_held_forever())
        yield
        landing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await landing

    app.cleanup_ctx.append(signatures_ctx)
    for source in SOURCES:
        handler = webhook_handler(source.name)
        for method in sorted(source.methods):
            app.router.add_route(method, f"/webhooks/{source.name}", handler)
