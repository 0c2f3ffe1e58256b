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

Past `LEDGER_MAX_CONNECTIONS_PER_PEER` open connections from one peer, a new one from that peer is
answered the same way (SPEC §14): without it, one address trickling bytes into a thousand sockets
holds every slot of the global cap, and every other sender's webhooks get 503. A peer is an IPv4
address, or an IPv6 /64 (one host, or one customer's network, commonly owns a whole /64: keying on
the full address would let it open a cap's worth per address it picks). These refusals are counted
(`peer_over_capacity`) and logged at most once per `PEER_REFUSAL_LOG_INTERVAL_S` per process,
with the number refused since the previous line, so a flood cannot flood the logs. The count per
peer lives in a dict whose entries go when their count drops to zero: it never holds more entries
than there are open connections.

This leans on four attributes of aiohttp's RequestHandler (`_request_count`, `_messages`,
`_request_in_progress`, `_loop`; aiohttp 3.14). `check_aiohttp_internals` fails start-up loudly
if a future aiohttp drops them, rather than letting the protection silently vanish.
"""

import asyncio
import ipaddress
import time
from collections.abc import Callable
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

from call_ledger.web.metrics import Metrics

log = structlog.get_logger("ledger.http")


def _canned_503(error: str, detail: str) -> bytes:
    body = orjson.dumps({"error": error, "detail": detail})
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: 1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# Written straight to the transport: a connection past a cap is never parsed.
OVER_CAPACITY_RESPONSE = _canned_503("over_capacity", "too many open connections; retry later")
PEER_OVER_CAPACITY_RESPONSE = _canned_503("peer_over_capacity",
                                          "too many open connections from this address; retry later")
# At most one `peer_connections_refused` line per this many seconds, per process.
PEER_REFUSAL_LOG_INTERVAL_S = 10.0

_PROTOCOL_ERRORS = {400: ("bad_request", "malformed HTTP request"), 500: ("internal_error", "internal error"),
                    504: ("gateway_timeout", "request handler timed out")}


def check_aiohttp_internals() -> None:
    """Fail loudly if this aiohttp lacks what the guard reads (see the module docstring)."""
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = {"_request_count", "_messages", "_request_in_progress", "_loop"} - slots
    if missing:
        raise RuntimeError(f"aiohttp's RequestHandler lacks {sorted(missing)}: the connection guard "
                           "needs updating for this aiohttp version")


def peer_key(peername: object) -> str | None:
    """The peer a connection counts against: its IPv4 address, or its IPv6 address's /64 (an
    IPv4-mapped IPv6 address is the IPv4 one). None when there is no IP address to key on (a Unix
    socket, a peer already gone): such a connection is held only to the global cap."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    host = peername[0]
    if ":" not in host:
        return host  # IPv4, as the kernel wrote it: already canonical
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])  # a scope id does not make another host
    except ValueError:
        return None
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return ipaddress.IPv6Network((int(address) >> 64 << 64, 64)).compressed


class ConnectionGuard:
    """What the connections of one server share: the limits, the count of open ones (in all and per
    peer), the metrics."""

    def __init__(self, *, header_timeout_s: float, max_connections: int, metrics: Metrics,
                 max_connections_per_peer: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        # 0: no per-peer cap (behind a proxy every connection comes from one address).
        self.max_connections_per_peer = max_connections_per_peer
        self.metrics = metrics
        self.open = 0
        # Open connections per peer; a peer's entry is removed when its count drops to zero.
        self.peers: dict[str, int] = {}
        self._clock = clock
        self._refused_unlogged = 0
        self._next_refusal_log = float("-inf")

    def admit(self, peer: str | None = None) -> bytes | None:
        """Count a new connection from `peer` in, or refuse it: the canned answer to write before
        closing it (the per-peer cap is checked first: a refusal is the flooding peer's own)."""
        per_peer = self.max_connections_per_peer
        if per_peer and peer is not None and self.peers.get(peer, 0) >= per_peer:
            self.metrics.labelled(self.metrics.connections_closed, "peer_over_capacity").inc()
            self._log_peer_refusal(peer)
            return PEER_OVER_CAPACITY_RESPONSE
        if self.open >= self.max_connections:
            self.metrics.labelled(self.metrics.connections_closed, "over_capacity").inc()
            return OVER_CAPACITY_RESPONSE
        self.open += 1
        self.metrics.connections_open.set(self.open)
        if per_peer and peer is not None:
            self.peers[peer] = self.peers.get(peer, 0) + 1
            self.metrics.connection_peers.set(len(self.peers))
        return None

    def release(self, peer: str | None = None) -> None:
        """Count a connection admitted with `admit(peer)` out (once, whatever closed it)."""
        self.open -= 1
        self.metrics.connections_open.set(self.open)
        if peer is None or peer not in self.peers:  # not counted per peer (no address, or the cap is off)
            return
        if self.peers[peer] > 1:
            self.peers[peer] -= 1
        else:
            del self.peers[peer]  # bounded: only peers with an open connection have an entry
            self.metrics.connection_peers.set(len(self.peers))

    def _log_peer_refusal(self, peer: str) -> None:
        """One line now and then, never one per refusal: the metric counts each."""
        self._refused_unlogged += 1
        now = self._clock()
        if now < self._next_refusal_log:
            return
        log.warning("peer_connections_refused", peer=peer, refused=self._refused_unlogged,
                    max_connections_per_peer=self.max_connections_per_peer)
        self._refused_unlogged = 0
        self._next_refusal_log = now + PEER_REFUSAL_LOG_INTERVAL_S


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, plus the header timer, the cap, and error answers that echo nothing."""

    __slots__ = ("_admitted", "_body", "_guard", "_header_timer", "_peer")

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._peer: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        # The body of the last request whose headers completed: until it ends, bytes are body, not
        # the start of the next request.
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = peer_key(transport.get_extra_info("peername"))
        refusal = self._guard.admit(peer)
        if refusal is not None:
            # Never registered with the server nor started: connection_lost below ignores it.
            transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        # From here on, connection_lost (which asyncio calls once for every transport whose
        # connection_made ran) is the one place that counts it out.
        self._admitted = True
        self._peer = peer
        try:
            super().connection_made(transport)
        except BaseException:
            # Never a half-started connection that holds its slot until the peer leaves: aborted,
            # its connection_lost comes and counts it out.
            transport.abort()  # type: ignore[attr-defined]
            raise

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release(self._peer)
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
