"""Slow and idle connections are closed, open connections are capped in all (SPEC §8) and per peer (SPEC §14):
the guard's accounting on its own, then on a real server and a real `call-ledger serve`."""

import asyncio
import select
import socket
import struct
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.cli import load_settings
from call_ledger.store import Store
from call_ledger.web.base import METRICS
from call_ledger.web.connections import (
    OVER_CAPACITY_RESPONSE,
    PEER_OVER_CAPACITY_RESPONSE,
    PEER_REFUSAL_LOG_INTERVAL_S,
    ConnectionGuard,
    LedgerRunner,
    peer_key,
)
from call_ledger.web.metrics import Metrics
from tests.support.redis_server import free_port
from tests.support.service import start_service, stop
from tests.support.settings import make_settings
from tests.support.sync_http import post

HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def guarded() -> Iterator[int]:
    """One `serve` with a 1 s header timeout and a 4 s idle timeout; yields its port.

    Its tests open 100 slow connections from one address to watch the timers close them: the
    per-peer cap, which would refuse most of them at once, is off here (it has tests of its own)."""
    proc = start_service("serve", LEDGER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                               LEDGER_KEEPALIVE_TIMEOUT_S=str(KEEPALIVE_TIMEOUT_S), LEDGER_MAX_CONNECTIONS_PER_PEER="0")
    port = proc.port
    try:
        yield port
    finally:
        code, _out, _took = stop(proc)
        assert code == 0


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def exchange(sock: socket.socket, path: str = "/healthz") -> tuple[int, bytes]:
    """One keep-alive GET on an open socket: (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection mid-body"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def is_closed(sock: socket.socket) -> bool:
    """True once the server closed it (EOF or reset). Whatever else arrived is read and dropped."""
    try:
        while True:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_all_closed(socks: list[socket.socket], until: float, trickle: Sequence[socket.socket] = ()) -> float:
    """Poll until every socket is closed by the server; `trickle` ones get a header byte every 0.2 s
    meanwhile (a slow-loris client). Returns when the last one closed; fails at `until`."""
    open_socks = set(socks)
    next_byte = time.monotonic()
    while open_socks:
        now = time.monotonic()
        assert now < until, f"{len(open_socks)} of {len(socks)} connections still open"
        if now >= next_byte:
            for sock in trickle:
                if sock in open_socks:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass
            next_byte = now + 0.2
        select.select(list(open_socks), [], [], 0.05)
        open_socks = {sock for sock in open_socks if not is_closed(sock)}
    return time.monotonic()


def metrics_text(port: int) -> str:
    with connect(port) as sock:
        status, body = exchange(sock, "/metrics")
    assert status == 200
    return body.decode()


def closed_count(metrics: str, reason: str) -> float:
    prefix = f'ledger_http_connections_closed_total{{reason="{reason}"}} '
    return next((float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


def test_connections_that_never_finish_their_headers_are_closed_while_others_are_served(guarded: int) -> None:
    partials = [b"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jso",
                b"GET /api/v1/calls/sid/CA1 HT", b"G"]
    socks = []
    for i in range(100):
        sock = connect(guarded)
        sock.sendall(partials[i % len(partials)])
        socks.append(sock)
    started = time.monotonic()
    trickle = socks[::3][:10]  # mid header value: more bytes of it stay valid
    try:
        with connect(guarded) as fine:  # an ordinary client is served meanwhile, on a kept-alive connection
            assert exchange(fine)[0] == 200
            assert exchange(fine, "/api/v1/calls/sid/CA-none")[0] == 401
        # Closed by the header timer (1 s), not the idle timer (4 s): trickled bytes buy no time.
        done = wait_all_closed(socks, until=started + KEEPALIVE_TIMEOUT_S - 0.5, trickle=trickle)
        assert done - started >= HEADER_TIMEOUT_S - 0.3
    finally:
        for sock in socks:
            sock.close()
    with connect(guarded) as after:
        assert exchange(after)[0] == 200
    assert closed_count(metrics_text(guarded), "header_timeout") >= 100


def test_the_header_timeout_applies_to_each_request_of_a_kept_alive_connection(guarded: int) -> None:
    with connect(guarded) as sock:
        assert exchange(sock)[0] == 200
        assert exchange(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the third request stalls
        started = time.monotonic()
        wait_all_closed([sock], until=started + KEEPALIVE_TIMEOUT_S - 0.5)


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(guarded: int) -> None:
    with connect(guarded) as sock:
        assert exchange(sock)[0] == 200
        answered = time.monotonic()
        # Idle is not "slow headers": past the header timeout it is still open and usable...
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        assert not is_closed(sock)
        assert exchange(sock)[0] == 200
        answered = time.monotonic()
        # ...and closed once idle for the keep-alive timeout.
        closed = wait_all_closed([sock], until=answered + KEEPALIVE_TIMEOUT_S + 3)
        assert closed - answered >= KEEPALIVE_TIMEOUT_S - 0.5


def test_a_connection_that_sends_nothing_is_closed_after_the_keepalive_timeout(guarded: int) -> None:
    with connect(guarded) as sock:
        opened = time.monotonic()
        closed = wait_all_closed([sock], until=opened + KEEPALIVE_TIMEOUT_S + 3)
        assert closed - opened >= KEEPALIVE_TIMEOUT_S - 0.5


def try_exchange(port: int, sock: socket.socket | None = None, path: str = "/healthz") -> tuple[int, bytes]:
    """A GET on `sock` (or a fresh connection); a connection refused past the cap reads as 503."""
    own = sock is None
    sock = sock or connect(port)
    try:
        return exchange(sock, path)
    except (AssertionError, ConnectionResetError):
        return 503, b""
    finally:
        if own:
            sock.close()


def admitted(port: int, deadline_s: float = 5.0) -> socket.socket:
    """A connection the server admitted (a slot just freed may take a moment to be released)."""
    deadline = time.monotonic() + deadline_s
    while True:
        sock = connect(port)
        if try_exchange(port, sock)[0] == 200:
            return sock
        sock.close()
        assert time.monotonic() < deadline, "no connection slot was released"
        time.sleep(0.05)


def read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_connections_beyond_the_cap_are_answered_503_and_closed_while_earlier_ones_work() -> None:
    # Every connection of this test comes from 127.0.0.1: the global cap alone (per-peer cap off).
    proc = start_service("serve", LEDGER_MAX_CONNECTIONS="5", LEDGER_MAX_CONNECTIONS_PER_PEER="0")
    port = proc.port
    held: list[socket.socket] = []
    try:
        held = [admitted(port) for _ in range(5)]
        for _ in range(3):
            with connect(port) as extra:
                answer = read_until_closed(extra)  # closed at once, before it sent a byte
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer[:100]
        for sock in held:  # the admitted ones are unaffected
            assert exchange(sock)[0] == 200
        held.pop().close()  # one slot frees: a new connection is served again
        with admitted(port) as sock:
            status, body = exchange(sock, "/metrics")
        assert status == 200
        assert closed_count(body.decode(), "over_capacity") >= 3
    finally:
        for sock in held:
            sock.close()
        code, _out, _took = stop(proc)
    assert code == 0


# -- one peer cannot take every connection (SPEC §14) -------------------------------------------

def make_guard(max_connections: int = 10, per_peer: int = 3, clock: Callable[[], float] = time.monotonic
               ) -> ConnectionGuard:
    return ConnectionGuard(header_timeout_s=1.0, max_connections=max_connections, max_connections_per_peer=per_peer,
                           metrics=Metrics(), clock=clock)


def sample(guard: ConnectionGuard, name: str, **labels: str) -> float:
    return guard.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_peer_past_its_cap_is_refused_while_other_peers_are_admitted() -> None:
    guard = make_guard(per_peer=3)
    assert [guard.admit("192.0.2.1") for _ in range(3)] == [None, None, None]
    assert guard.admit("192.0.2.1") == PEER_OVER_CAPACITY_RESPONSE
    assert guard.admit("192.0.2.1") == PEER_OVER_CAPACITY_RESPONSE
    assert guard.admit("192.0.2.2") is None
    assert (guard.open, guard.peers) == (4, {"192.0.2.1": 3, "192.0.2.2": 1})
    assert sample(guard, "ledger_http_connections_closed_total", reason="peer_over_capacity") == 2
    assert sample(guard, "ledger_http_connections_closed_total", reason="over_capacity") == 0
    assert sample(guard, "ledger_http_connection_peers") == 2
    guard.release("192.0.2.1")
    assert guard.admit("192.0.2.1") is None  # the slot it freed is its own again
    assert guard.admit("192.0.2.1") == PEER_OVER_CAPACITY_RESPONSE


def test_the_global_cap_still_holds_over_many_peers() -> None:
    guard = make_guard(max_connections=4, per_peer=3)
    assert [guard.admit(f"192.0.2.{i}") for i in range(4)] == [None] * 4
    assert guard.admit("192.0.2.9") == OVER_CAPACITY_RESPONSE
    assert sample(guard, "ledger_http_connections_closed_total", reason="over_capacity") == 1
    assert guard.open == 4


def test_the_count_of_each_peer_is_dropped_when_its_last_connection_closes() -> None:
    guard = make_guard(max_connections=10_000, per_peer=2)
    peers = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    for peer in peers:
        assert guard.admit(peer) is None and guard.admit(peer) is None
    assert len(guard.peers) == 1000 and sample(guard, "ledger_http_connection_peers") == 1000
    for peer in peers:
        guard.release(peer)
        guard.release(peer)
    assert (guard.open, guard.peers) == (0, {})  # no entry left behind: bounded by the open connections
    assert sample(guard, "ledger_http_connection_peers") == 0
    assert sample(guard, "ledger_http_connections_open") == 0


def test_a_per_peer_cap_of_zero_is_off_and_keeps_no_count_per_peer() -> None:
    guard = make_guard(max_connections=100, per_peer=0)
    assert all(guard.admit("192.0.2.1") is None for _ in range(100))
    assert guard.admit("192.0.2.1") == OVER_CAPACITY_RESPONSE
    assert guard.peers == {}
    for _ in range(100):
        guard.release("192.0.2.1")
    assert guard.open == 0


def test_a_connection_without_an_ip_address_is_held_to_the_global_cap_only() -> None:
    guard = make_guard(max_connections=5, per_peer=1)
    assert all(guard.admit(None) is None for _ in range(5))
    assert guard.admit(None) == OVER_CAPACITY_RESPONSE
    guard.release(None)
    assert (guard.open, guard.peers) == (4, {})


@pytest.mark.parametrize(("peername", "key"), [
    (("192.0.2.1", 40000), "192.0.2.1"),
    (("2001:db8:1:2::1", 40000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff:ffff:ffff:ffff", 1, 0, 0), "2001:db8:1:2::/64"),  # same /64: same peer
    (("2001:db8:1:3::1", 40000, 0, 0), "2001:db8:1:3::/64"),  # the next /64: another
    (("::ffff:192.0.2.1", 40000, 0, 0), "192.0.2.1"),  # IPv4 on a dual-stack socket is the IPv4 peer
    (("fe80::1%eth0", 40000, 0, 2), "fe80::/64"),
    ("/run/ledger.sock", None),  # a Unix socket
    (None, None),  # a peer gone before it was asked
])
def test_a_peer_is_an_ipv4_address_or_an_ipv6_64(peername: object, key: str | None) -> None:
    assert peer_key(peername) == key


def test_refused_connections_are_logged_at_most_once_per_interval_with_their_count() -> None:
    now = [1000.0]
    guard = make_guard(max_connections=100, per_peer=1, clock=lambda: now[0])
    assert guard.admit("192.0.2.1") is None and guard.admit("2001:db8::/64") is None
    with capture_logs() as logs:
        for _ in range(5000):  # a flood from two peers within one interval: one line
            guard.admit("192.0.2.1")
            guard.admit("2001:db8::/64")
        now[0] += PEER_REFUSAL_LOG_INTERVAL_S - 1
        guard.admit("192.0.2.1")
        now[0] += 1  # the interval is over: the next refusal writes the second line, with the count since the first
        guard.admit("2001:db8::/64")
        guard.admit("2001:db8::/64")
    lines = [line for line in logs if line["event"] == "peer_connections_refused"]
    assert [(line["peer"], line["refused"], line["log_level"]) for line in lines] == [
        ("192.0.2.1", 1, "warning"), ("2001:db8::/64", 10_000 - 1 + 1 + 1, "warning")]
    assert all(line["max_connections_per_peer"] == 1 for line in lines)
    # Every refusal is counted: the logged ones, and the last, which waits for the next line.
    assert sample(guard, "ledger_http_connections_closed_total", reason="peer_over_capacity") == 10_003
    assert len(logs) == 2


def test_the_per_peer_cap_must_be_below_the_global_cap(capsys: pytest.CaptureFixture[str]) -> None:
    default = make_settings()
    assert (default.max_connections_per_peer, default.max_connections) == (64, 1000)
    assert make_settings(max_connections=10, max_connections_per_peer=9).max_connections_per_peer == 9
    assert make_settings(max_connections=1, max_connections_per_peer=0).max_connections_per_peer == 0  # off
    for per_peer in (10, 11):
        with pytest.raises(SystemExit) as stopped:
            load_settings(max_connections=10, max_connections_per_peer=per_peer, api_tokens="t")
        assert stopped.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            "call-ledger: invalid LEDGER_MAX_CONNECTIONS_PER_PEER: must be below LEDGER_MAX_CONNECTIONS (10) so "
            "that one address cannot take every connection; or 0 to turn the per-peer cap off (behind a proxy)"]
    with pytest.raises(SystemExit):
        load_settings(max_connections_per_peer=-1, api_tokens="t")
    assert "LEDGER_MAX_CONNECTIONS_PER_PEER" in capsys.readouterr().err


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN: the peer vanished."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_every_way_a_connection_ends_gives_its_peer_slot_back(store: Store, monkeypatch: Any) -> None:
    """Timers, client resets mid-headers and mid-body, a clean close, a refusal, and a failure while
    the connection was being set up: afterwards no connection and no peer is counted, and the peer
    gets exactly its cap again."""
    cap = 8
    settings = make_settings(port=free_port(), header_timeout_s=0.3, keepalive_timeout_s=1.5, read_timeout_s=5.0,
                             max_connections=50, max_connections_per_peer=cap)
    app = create_app(settings, "serve", store, run_consumer=False)
    guard = ConnectionGuard(header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections,
                            max_connections_per_peer=cap, metrics=app[METRICS])
    runner = LedgerRunner(app, guard, access_log=None, keepalive_timeout=settings.keepalive_timeout_s,
                          shutdown_timeout=1.0)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    writers: list[asyncio.StreamWriter] = []
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        port = settings.port

        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await open_from("127.0.0.2", port)
            writers.append(writer)
            return reader, writer

        _silent = await opened()  # closed by the idle timer
        _, slow = await opened()  # closed by the header timer
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        reader, clean = await opened()  # served, then closed by the client
        clean.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        clean.close()
        _, mid_headers = await opened()  # reset mid-headers
        mid_headers.write(b"GET /healthz HTTP/1.1\r\nHo")
        _, mid_body = await opened()  # reset mid-body, while intake reads it
        body = b'{"type": "call.status", "call_sid": "CA-reset", "data": {"status": "ringing"}}'
        mid_body.write(b"POST /webhooks/platform HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        reset(mid_headers)

        failures: list[str] = []
        original = RequestHandler.connection_made

        def fails_once(self: RequestHandler, transport: asyncio.BaseTransport) -> None:
            if not failures:
                failures.append("raised")
                raise RuntimeError("set-up failed")
            original(self, transport)

        monkeypatch.setattr(RequestHandler, "connection_made", fails_once)
        failed_reader, _failed = await opened()  # aiohttp's set-up raises: the guard aborts it
        assert await asyncio.wait_for(failed_reader.read(), 5) == b""
        monkeypatch.undo()
        assert failures == ["raised"]
        assert "set-up failed" in [str(context.get("exception")) for context in loop_errors]
        reset(mid_body)  # by now intake is reading its body

        # More than the cap at once: at least one is refused at once, the others close when idle.
        answers = [await asyncio.wait_for(reader.read(), 5) for reader, _ in [await opened() for _ in range(cap + 1)]]
        assert PEER_OVER_CAPACITY_RESPONSE in answers
        assert set(answers) <= {PEER_OVER_CAPACITY_RESPONSE, b""}

        deadline = loop.time() + 10
        while guard.open or guard.peers:
            assert loop.time() < deadline, (guard.open, guard.peers)
            await asyncio.sleep(0.02)
        for writer in writers:
            writer.close()
        writers.clear()

        # Nothing leaked, nothing counted out twice: the peer gets its cap, and not one more.
        held = [await opened() for _ in range(cap)]
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        assert guard.peers == {"127.0.0.2": cap}
        extra_reader, _extra = await opened()
        assert await asyncio.wait_for(extra_reader.read(), 5) == PEER_OVER_CAPACITY_RESPONSE
        other_reader, other = await open_from("127.0.0.1", port)  # another peer is still served
        writers.append(other)
        other.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(other_reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    finally:
        for writer in writers:
            writer.close()
        await runner.cleanup()
        loop.set_exception_handler(previous_handler)


SLOW_HEADER = b"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def post_status(port: int, i: int) -> int:
    try:
        return post(port, {"type": "call.status", "call_sid": f"CA-peer{i}", "data": {"status": "ringing"}},
                    f"peer-{i}")
    except urllib.error.HTTPError as error:
        return error.code


def gauge(metrics: str, name: str) -> float:
    return next(float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def test_one_peer_holding_slow_sockets_cannot_make_another_senders_webhooks_503() -> None:
    """The attack report: one address opens more trickling sockets than the server takes at all,
    while another sends signed webhooks. Its sockets past the per-peer cap are closed at once (the
    timers here are 60 s, so nothing else can have closed them), and every webhook is answered 2xx."""
    cap, flood, rounds, per_round = 4, 40, 40, 2
    proc = start_service("serve", LEDGER_MAX_CONNECTIONS="24", LEDGER_MAX_CONNECTIONS_PER_PEER=str(cap),
                               LEDGER_HEADER_TIMEOUT_S="60", LEDGER_KEEPALIVE_TIMEOUT_S="60")
    port = proc.port
    socks: list[socket.socket] = []
    try:
        socks = [connect_from("127.0.0.2", port) for _ in range(flood)]  # more than LEDGER_MAX_CONNECTIONS
        answers = {sock: b"" for sock in socks}
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + 10
        while len(closed) < flood - cap:
            assert time.monotonic() < deadline, f"{len(closed)} of the {flood - cap} extra sockets closed"
            readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.05)
            for sock in readable:
                chunk = sock.recv(65536)
                answers[sock] += chunk
                if not chunk:
                    closed.add(sock)
        assert all(answers[sock] == PEER_OVER_CAPACITY_RESPONSE for sock in closed)
        held = [sock for sock in socks if sock not in closed]
        assert len(held) == cap and not any(answers[sock] for sock in held)

        statuses = []
        for i in range(rounds):
            for sock in held:  # the flood's admitted sockets trickle their headers, a byte each round
                sock.send(SLOW_HEADER[i:i + 1])
            for _ in range(per_round):  # and it keeps trying for more
                with connect_from("127.0.0.2", port) as extra:
                    assert read_until_closed(extra) == PEER_OVER_CAPACITY_RESPONSE
            statuses.append(post_status(port, i))
        assert statuses == [200] * rounds
        assert not any(is_closed(sock) for sock in held)  # the flood held its share to the end
    finally:
        for sock in socks:
            sock.close()
    try:
        deadline = time.monotonic() + 10
        while True:  # every slot is given back: only the scrape's own connection is open
            metrics = metrics_text(port)
            if (gauge(metrics, "ledger_http_connections_open"), gauge(metrics, "ledger_http_connection_peers")) \
                    == (1, 1):
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
        assert closed_count(metrics, "peer_over_capacity") == flood - cap + rounds * per_round
        assert closed_count(metrics, "over_capacity") == 0
    finally:
        code, out, _took = stop(proc)
    assert code == 0
    refusal_lines = [line for line in out.splitlines() if "peer_connections_refused" in line]
    assert 1 <= len(refusal_lines) <= 2  # one per 10 s at most, not one per refused connection
    assert '"peer":"127.0.0.2"' in refusal_lines[0]
