"""SPEC §14 "Redis is not an open door": LEDGER_REDIS_URL with a password or an ACL user, over TLS
(`rediss://`), for every role and the CLI, on one node and on a Cluster, against real redis-servers
that speak TLS only (`--port 0 --tls-port`) and require a password; and the password never shows."""

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from pydantic import ValidationError

from call_ledger.settings import redis_options
from call_ledger.web.logs import secret_values
from tests.support.cli import run_cli
from tests.support.cluster import Cluster
from tests.support.polling import until_sync
from tests.support.redis_server import RedisServer, TlsFiles, free_port, make_tls_files, require_redis
from tests.support.service import start_service, stop
from tests.support.settings import make_settings
from tests.support.sync_http import get_record, post

# Characters a URL must percent-encode, so that both spellings of each password are checked for.
ADMIN_PASSWORD = "adm1n/Pass@word%-x7Q"
LEDGER_USER = "ledger"
LEDGER_PASSWORD = "l3dger:Pass@word/9zK"
# The ACL deploy/README.md recommends: the ledger's keys (prefix cl), no dangerous command but INFO.
LEDGER_ACL = f"{LEDGER_USER} on >{LEDGER_PASSWORD} ~cl:* ~{{cl:* +@all -@dangerous +info"
PASSWORDS = (ADMIN_PASSWORD, LEDGER_PASSWORD, quote(ADMIN_PASSWORD, safe=""), quote(LEDGER_PASSWORD, safe=""))


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TlsFiles]:
    with tempfile.TemporaryDirectory() as directory:
        yield make_tls_files(Path(directory))


@pytest.fixture
def tls_redis(tls_files: TlsFiles) -> Iterator[RedisServer]:
    """A redis-server with TLS only on its port, `requirepass` for the default user, and the ledger's
    ACL user."""
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory), tls=tls_files, password=ADMIN_PASSWORD, users=(LEDGER_ACL,))
        server.start()
        yield server
        server.stop()


def cli(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`call-ledger <args>` to its end, with only the LEDGER_* variables given here."""
    started = time.monotonic()
    result = run_cli(*args, timeout=60, **{"LEDGER_PORT": str(free_port()), "LEDGER_LOG_FORMAT": "json", **env})
    return result, time.monotonic() - started


def assert_no_password(*texts: str) -> None:
    for text in texts:
        for password in PASSWORDS:
            assert password not in text


def wait_for_record(port: int, sid: str) -> dict[str, object]:
    return until_sync(lambda: get_record(port, sid), 15, f"{sid} to become visible")


@pytest.mark.real_redis
def test_intake_worker_api_and_cli_work_through_tls_as_an_acl_user(tls_redis: RedisServer) -> None:
    url = tls_redis.url_as(LEDGER_USER, LEDGER_PASSWORD)
    assert url.startswith("rediss://ledger:") and "ssl_ca_certs=" in url
    procs = {role: start_service(role, LEDGER_REDIS_URL=url, LEDGER_LOG_FORMAT="json",
                                 LEDGER_CONSUMER_NAME=f"tls-{role}") for role in ("intake", "worker", "api")}
    outputs: dict[str, str] = {}
    try:
        intake_port = procs["intake"].port
        payload = {"type": "call.status", "call_sid": "CA-tls", "data": {"status": "completed", "duration": 30}}
        assert post(intake_port, payload, "tls-1") == 200
        record = wait_for_record(procs["api"].port, "CA-tls")  # the worker applied it; the API reads it
        assert record["status"] == "completed" and record["duration"] == 30
    finally:
        for role, proc in procs.items():
            code, outputs[role], _ = stop(proc)
            assert code == 0, role
    assert '"event_applied"' in outputs["worker"]
    # The ledger's keys are there, written as the ACL user (whose rules allow nothing else).
    assert tls_redis.client().exists("cl:call:{CA-tls}") == 1
    # The CLI too: dlq and reindex connect the same way.
    listing, _ = cli("dlq", "list", LEDGER_REDIS_URL=url)
    assert listing.returncode == 0, listing.stderr
    assert listing.stderr.strip() == "0 dead-lettered event(s)"
    reindex, _ = cli("reindex", LEDGER_REDIS_URL=url)
    assert reindex.returncode == 0, reindex.stderr
    assert_no_password(*outputs.values(), listing.stdout, listing.stderr, reindex.stdout, reindex.stderr)


@pytest.mark.real_redis
@pytest.mark.parametrize("role", ["serve", "worker", "api", "intake", "dlq list"])
@pytest.mark.parametrize("credentials", ["wrong password", "none"])
def test_refused_credentials_stop_start_up_at_once_with_one_line_without_the_password(
        tls_redis: RedisServer, role: str, credentials: str) -> None:
    if credentials == "none":
        url = tls_redis.url_as(None, None)
    else:  # the ledger user with the admin's password: a real password, the wrong one for this user
        url = tls_redis.url_as(LEDGER_USER, ADMIN_PASSWORD)
    result, took = cli(*role.split(), LEDGER_REDIS_URL=url, LEDGER_REDIS_STARTUP_TIMEOUT_S="30")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"call-ledger: the Redis of LEDGER_REDIS_URL (127.0.0.1:{tls_redis.port}) answers, but it refused the "
        "credentials: wrong password or ACL user, or none given"]
    assert took < 15  # it did not wait for LEDGER_REDIS_STARTUP_TIMEOUT_S: asking again changes nothing
    assert_no_password(result.stdout, result.stderr)


@pytest.mark.real_redis
def test_a_plain_text_client_to_the_tls_port_fails_clearly(tls_redis: RedisServer) -> None:
    with pytest.raises(redis.ConnectionError):  # the port itself speaks TLS only
        tls_redis.client(ssl=False, socket_connect_timeout=2, socket_timeout=2).ping()
    url = tls_redis.url_as(LEDGER_USER, LEDGER_PASSWORD, scheme="redis")
    result, _ = cli("worker", LEDGER_REDIS_URL=url, LEDGER_REDIS_STARTUP_TIMEOUT_S="0.5")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"call-ledger: no Redis of LEDGER_REDIS_URL answers (127.0.0.1:{tls_redis.port}) after 0.5 s: the server "
        "closed the connection: a redis:// URL to a TLS port (that needs rediss://)?"]
    assert_no_password(result.stdout, result.stderr)


@pytest.mark.real_redis
def test_the_server_certificate_is_verified_against_the_given_ca_only(tls_redis: RedisServer) -> None:
    # Without ssl_ca_certs the system's CAs are used, and the test CA is not one of them.
    url = tls_redis.url_as(LEDGER_USER, LEDGER_PASSWORD).partition("?")[0]
    result, _ = cli("api", LEDGER_REDIS_URL=url, LEDGER_REDIS_STARTUP_TIMEOUT_S="0.5")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"call-ledger: no Redis of LEDGER_REDIS_URL answers (127.0.0.1:{tls_redis.port}) "
                           "after 0.5 s: TLS: the server's certificate was not accepted (")
    assert_no_password(result.stdout, result.stderr)


@pytest.mark.real_redis
def test_an_acl_user_without_a_command_the_ledger_needs_stops_start_up_with_one_line(
        tls_redis: RedisServer) -> None:
    tls_redis.client().acl_setuser("narrow", enabled=True, passwords=[f"+{LEDGER_PASSWORD}"], keys=["cl:*"],
                                   commands=["+ping", "+get", "+set"])
    result, _ = cli("worker", LEDGER_REDIS_URL=tls_redis.url_as("narrow", LEDGER_PASSWORD))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("call-ledger: the ACL user of LEDGER_REDIS_URL lacks a command the ledger runs: "), line
    assert line.endswith("this user has no permissions to run the 'exists' command"), line  # Redis's words
    assert_no_password(result.stdout, result.stderr)


@pytest.mark.real_redis
def test_serve_on_a_tls_cluster_with_a_password(tls_files: TlsFiles) -> None:
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory), masters=3, tls=tls_files, password=ADMIN_PASSWORD).start()
        try:
            url = cluster.url
            assert url.count("rediss://") == 3 and url.count("@") == 1  # credentials and CA on the first only
            proc = start_service("serve", LEDGER_REDIS_URL=url, LEDGER_REDIS_CLUSTER="true",
                                       LEDGER_STREAM_SHARDS="3", LEDGER_LOG_FORMAT="json")
            port = proc.port
            try:
                for i in range(6):  # calls on several masters
                    assert post(port, {"type": "call.status", "call_sid": f"CA-c{i}",
                                       "data": {"status": "ongoing"}}, f"c{i}") == 200
                for i in range(6):
                    assert wait_for_record(port, f"CA-c{i}")["status"] == "ongoing"
            finally:
                code, out, _ = stop(proc)
            assert code == 0
            assert_no_password(out)
        finally:
            cluster.stop()


# --- LEDGER_REDIS_URL's form: checked at start-up, messages without the URL ------------------------

def test_tls_options_are_read_from_the_url_and_given_to_every_cluster_node(tls_files: TlsFiles) -> None:
    url = (f"rediss://ledger:{quote(LEDGER_PASSWORD, safe='')}@10.0.0.1:7000?ssl_ca_certs={tls_files.ca}"
           "&ssl_check_hostname=false&ssl_cert_reqs=required,rediss://10.0.0.2:7001")
    options = redis_options(make_settings(redis_url=url, redis_cluster=True).redis_url or "")
    assert options.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert (options.username, options.password, options.tls) == (LEDGER_USER, LEDGER_PASSWORD, True)
    assert options.tls_options == {"ssl_ca_certs": str(tls_files.ca), "ssl_check_hostname": False,
                                   "ssl_cert_reqs": "required"}


@pytest.mark.parametrize(("url", "message"), [
    ("rediss://:{pw}@h:1?socket_timeout=1", "unknown query parameter 'socket_timeout'"),
    ("redis://:{pw}@h:1?ssl_ca_certs={ca}", "ssl_ca_certs is a TLS option: it needs a rediss:// URL"),
    ("rediss://:{pw}@h:1?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs: no such file '/nonexistent/ca.pem'"),
    ("rediss://:{pw}@h:1?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of none, optional, required"),
    ("rediss://:{pw}@h:1?ssl_certfile={ca}", "ssl_certfile and ssl_keyfile (a client certificate) go together"),
    ("rediss://:{pw}@h:1,redis://h:2", "its nodes mix redis:// and rediss://"),
    ("rediss://:{pw}@h:1,rediss://:other-password@h:2", "its nodes give different credentials"),
    ("redis://:{pw}@h:1/abc", "its database (the path after host:port) must be a number"),
    ("unix://:{pw}@/run/a.sock,unix://:{pw}@/run/b.sock", "a unix:// socket is one node"),
])
def test_a_bad_redis_url_is_refused_without_quoting_it(tls_files: TlsFiles, url: str, message: str) -> None:
    url = url.format(pw=quote(LEDGER_PASSWORD, safe=""), ca=tls_files.ca)
    with pytest.raises(ValidationError) as error:
        make_settings(redis_url=url, redis_cluster="," in url)
    assert message in str(error.value.errors()[0]["msg"])
    assert_no_password(str(error.value.errors()[0]["msg"]))


def test_the_redis_password_is_a_secret_of_the_log_redactor_in_both_spellings() -> None:
    url = f"rediss://ledger:{quote(LEDGER_PASSWORD, safe='')}@h:1"
    assert {LEDGER_PASSWORD, quote(LEDGER_PASSWORD, safe="")} <= set(secret_values(make_settings(redis_url=url)))


@pytest.mark.real_redis
def test_a_unix_socket_with_a_password_works(tmp_path: Path) -> None:
    """unix://:password@/path once crashed start-up with a traceback (the TCP connection class
    given to a socket path); it is a supported LEDGER_REDIS_URL like the others."""
    require_redis()
    socket_path = tmp_path / "redis.sock"
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--save", "",
                               "--dir", str(tmp_path), "--requirepass", LEDGER_PASSWORD],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline, "redis-server did not open its socket"
            time.sleep(0.02)
        url = f"unix://:{quote(LEDGER_PASSWORD, safe='')}@{socket_path}"
        proc = start_service("serve", LEDGER_REDIS_URL=url, LEDGER_LOG_FORMAT="json")
        port = proc.port
        try:
            payload = {"type": "call.status", "call_sid": "CA-unix", "data": {"status": "completed", "duration": 5}}
            assert post(port, payload, "unix-1") == 200
            assert wait_for_record(port, "CA-unix")["status"] == "completed"
        finally:
            code, out, _ = stop(proc)
        assert code == 0
        assert_no_password(out)
    finally:
        server.terminate()
        server.wait(10)
