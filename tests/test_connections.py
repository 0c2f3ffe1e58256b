"""Slow and idle connections are closed, open connections are capped (SPEC §8), on a real `call-ledger serve`."""

import select
import socket
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.test_service_process import start_service, stop

HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def guarded() -> Iterator[int]:
    """One `serve` with a 1 s header timeout and a 4 s idle timeout; yields its port."""
    proc, port = start_service("serve", LEDGER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                               LEDGER_KEEPALIVE_TIMEOUT_S=str(KEEPALIVE_TIMEOUT_S))
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
    proc, port = start_service("serve", LEDGER_MAX_CONNECTIONS="5")
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
