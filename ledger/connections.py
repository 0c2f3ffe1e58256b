"""The HTTP server's connection guard (SPEC §8): slow headers, idle connections, the connection cap.

aiohttp bounds idle keep-alive connections (`keepalive_timeout`) but has no header timeout and no
cap on open connections, so both live here, in a subclass of its protocol (`RequestHandler`) that
the server builds for every accepted connection (`GuardedServer`, served by `LedgerRunner`).

The timers of one connection, whichever fires first closes it:

- **idle** (aiohttp's `keepalive_timeout` = `LEDGER_KEEPALIVE_TIMEOUT_S`): runs from the moment the
  connection opens and from each response; if no request's headers have completed when it fires,
  the connection is closed. Bytes that arrive do not reset it.
- **headers** (`LEDGER_HEADER_TIMEOUT_S`): runs from the first byte of a request, on a new
  connection or after the previous request's body has ended; if that request's headers are not
  complete when it fires, the connection is closed (after the response in flight, if any).

So a client that trickles a header a byte at a time is gone `LEDGER_HEADER_TIMEOUT_S` after it
started, and one that connects and says nothing `LEDGER_KEEPALIVE_TIMEOUT_S` after it connected.
Bodies are bounded elsewhere: intake answers 408 after `LEDGER_READ_TIMEOUT_S`, and aiohttp drains
an unread body for at most its lingering time (10 s) before closing.

Past `LEDGER_MAX_CONNECTIONS` open connections, a new one is answered a canned 503 and closed at
once, before anything it sent is read; it is counted, never logged.

This leans on four attributes of aiohttp's RequestHandler (`_request_count`, `_messages`,
`_request_in_progress`, `_loop`; aiohttp 3.14). `check_aiohttp_internals` fails start-up loudly
if a future aiohttp drops them, rather than letting the protection silently vanish.
"""

import asyncio
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from ledger.metrics import Metrics

log = structlog.get_logger("ledger.http")

_BUSY = orjson.dumps({"error": "over_capacity", "detail": "too many open connections; retry later"})
# Written straight to the transport: a connection past the cap is never parsed.
OVER_CAPACITY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)

_PROTOCOL_ERRORS = {400: ("bad_request", "malformed HTTP request"), 500: ("internal_error", "internal error"),
                    504: ("gateway_timeout", "request handler timed out")}


def check_aiohttp_internals() -> None:
    """Fail loudly if this aiohttp lacks what the guard reads (see the module docstring)."""
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = {"_request_count", "_messages", "_request_in_progress", "_loop"} - slots
    if missing:
        raise RuntimeError(f"aiohttp's RequestHandler lacks {sorted(missing)}: the connection guard "
                           "needs updating for this aiohttp version")


class ConnectionGuard:
    """What the connections of one server share: the limits, the count of open ones, the metrics."""

    def __init__(self, *, header_timeout_s: float, max_connections: int, metrics: Metrics) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.metrics = metrics
        self.open = 0

    def admit(self) -> bool:
        if self.open >= self.max_connections:
            self.metrics.connections_closed.labels("over_capacity").inc()
            return False
        self.open += 1
        self.metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self.metrics.connections_open.set(self.open)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, plus the header timer, the cap, and error answers that echo nothing."""

    __slots__ = ("_admitted", "_body", "_guard", "_header_timer")

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        # The body of the last request whose headers completed: until it ends, bytes are body, not
        # the start of the next request.
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            # Never registered with the server nor started: connection_lost below ignores it.
            transport.write(OVER_CAPACITY_RESPONSE)  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release()
        self._stop_header_timer()
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._header_timer is None and (self._body is None or self._body.is_eof()):
            # The first byte of a new request: its headers have header_timeout_s from now.
            self._header_timer = self._loop.call_later(self._guard.header_timeout_s, self._headers_too_slow)
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # one or more requests' headers completed (or failed to parse)
            self._stop_header_timer()
            if self._messages:
                self._body = self._messages[-1][1]

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._guard.metrics.connections_closed.labels("header_timeout").inc()
        if self._request_in_progress:
            self.close()  # a pipelined request is stalling: finish the one in flight, then close
        else:
            self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or a handler that escaped the app (500, 504).

        aiohttp's own version logs the exception, whose text quotes the offending request line or
        header (a token, a signature, a phone number), and sends that text back. Here: one line with
        the exception's class only, a JSON body that quotes nothing, and the answer counted.
        """
        error = type(exc).__name__ if exc is not None else None
        if isinstance(exc, HttpProcessingError):
            # Scanners and TLS sent to a plain port produce these by the thousand: not an error of ours.
            emit = log.debug if isinstance(exc, BadHttpMethod) else log.info
            emit("http_protocol_error", status=status, error=error, peer=request.remote)
            # The router never saw it: no route, no trustworthy method.
            self._guard.metrics.request_seconds.labels("unparsed", "OTHER", str(status)).observe(0.0)
        else:
            log.error("http_handler_error", status=status, error=error)
        if request.writer.output_size > 0:  # as aiohttp: a response already started cannot be replaced
            raise ConnectionError("response already started; cannot send an error response")
        code, detail = _PROTOCOL_ERRORS.get(status, ("http_error", "request failed"))
        response = web.Response(body=orjson.dumps({"error": code, "detail": detail}), status=status,
                                content_type="application/json")
        response.force_close()
        return response


class GuardedServer(Server):
    """aiohttp's Server (the protocol factory) building `GuardedRequestHandler`s."""

    def __init__(self, plain: Server, guard: ConnectionGuard) -> None:
        # Same handler, request factory and protocol options as the app's own server.
        super().__init__(plain.request_handler, request_factory=plain.request_factory,
                         handler_cancellation=plain.handler_cancellation, loop=plain._loop, **plain._kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class LedgerRunner(web.AppRunner):
    """An AppRunner whose server guards its connections (app startup and cleanup as usual)."""

    __slots__ = ("_guard",)

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        check_aiohttp_internals()
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self._guard)
