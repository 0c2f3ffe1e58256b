"""Shared fixtures: settings, a fresh fake Redis per test, the app, a burst-mode worker,
and a real redis-server on a free port for the tests that need one."""

import base64
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fakeredis
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from call_ledger.app import create_app
from call_ledger.settings import Settings
from call_ledger.store import Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer

API_TOKEN = "test-api-token"
PLATFORM_SECRET = "whsec_" + base64.b64encode(b"platform-test-signing-key-32byte").decode()
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": API_TOKEN,
        "platform_webhook_secret": PLATFORM_SECRET,
        "consumer_name": "test-consumer",
        "claim_idle_ms": 60_000,
        "max_deliveries": 3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def store(fake_redis: fakeredis.FakeAsyncRedis, settings: Settings) -> Store:
    return Store(fake_redis, settings.key_prefix)


@pytest.fixture
def consumer(store: Store, settings: Settings) -> Consumer:
    return Consumer(store, settings, Metrics())


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, store: Store) -> Any:
    """The whole service (intake + read API) on fake Redis, without the background loop."""
    return await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))


def sign_platform(body: bytes, webhook_id: str, when: datetime | None = None,
                  secret: str = PLATFORM_SECRET) -> dict[str, str]:
    """Standard Webhooks headers, signed by the reference library (not our code)."""
    when = when or datetime.now(UTC)
    # (A body that is not UTF-8 cannot be signed by the library; its tests only parse.)
    signature = Webhook(secret).sign(webhook_id, when, body.decode("utf-8", "replace"))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def post_platform(client: Any, payload: dict[str, Any], webhook_id: str, **kwargs: Any) -> Any:
    body = json.dumps(payload).encode()
    return await client.post("/webhooks/platform", data=body, headers=sign_platform(body, webhook_id, **kwargs))


# -- a real redis-server ----------------------------------------------------------------------

def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+).

    Port 0 would hand out an ephemeral port, which any outgoing connection (tests open
    hundreds) can take between this check and the server's bind: seen as a flaky
    "address already in use". Ports below the range are only taken by servers.
    """
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def redis_args(self) -> list[str]:
        """redis-server's TLS options for these files (clients need no certificate of their own)."""
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]

    def client_kwargs(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca), "ssl_cert_reqs": "required"}


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, and a certificate for 127.0.0.1 and localhost signed by it, made here (the
    `cryptography` package): nothing checked in, nothing that expires between runs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def build(subject: str, issuer: x509.Name | None, issuer_key: Any, public_key: Any) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (build("call-ledger test CA", None, ca_key, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (build("localhost", ca.subject, ca_key, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.crt", directory / "redis.crt", directory / "redis.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


class RedisServer:
    """A redis-server (or Valkey: `binary`) of our own on a free port, in a directory of its
    own: stoppable, and restartable on the same port and --dir, so its AOF is loaded again.

    With `tls`, the port speaks TLS only (`--tls-port`, `--port 0`); with `password`, the default
    user needs it (`--requirepass`); `users` are ACL rules (`ledger on >pass ~cl:* +@all`), one
    `--user` each. `url` is then the default user's `rediss://` URL; `url_as` gives another's."""

    def __init__(self, directory: Path, appendonly: bool = False, *, binary: str = "redis-server",
                 appendfsync: str = "always", extra_args: tuple[str, ...] = (), tls: TlsFiles | None = None,
                 password: str | None = None, users: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.port = free_port()
        self.extra_args = extra_args
        self.appendonly = appendonly
        self.binary = binary
        self.appendfsync = appendfsync
        self.tls = tls
        self.password = password
        self.users = users
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_as(None, self.password)

    def url_as(self, username: str | None, password: str | None, *, scheme: str | None = None) -> str:
        """This server's URL with these credentials (percent-encoded), and its CA when TLS."""
        userinfo = f"{quote(username or '', safe='')}:{quote(password, safe='')}@" if password else ""
        query = f"?ssl_ca_certs={quote(str(self.tls.ca))}" if self.tls and scheme != "redis" else ""
        return f"{scheme or ('rediss' if self.tls else 'redis')}://{userinfo}127.0.0.1:{self.port}/0{query}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client for the test's own checks, as the default user."""
        options = {"password": self.password, **(self.tls.client_kwargs() if self.tls else {}), **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def start(self) -> None:
        log = self.dir / "server.log"
        ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.redis_args()] if self.tls else \
            ["--port", str(self.port)]
        args = [self.binary, *ports, "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.dir), "--logfile", str(log), "--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            args += ["--appendfsync", self.appendfsync]
        if self.password:
            args += ["--requirepass", self.password]
        for rule in self.users:
            args += ["--user", *rule.split()]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client(socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{self.binary} did not start: {tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("LEDGER_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and LEDGER_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH (set LEDGER_REQUIRE_REDIS=1 to make this a failure)")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh real redis-server for this test."""
    _require_redis()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def real_store(redis_server: RedisServer) -> AsyncIterator[Store]:
    """A Store on this test's own real redis-server, through the service's own client."""
    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    yield store
    await store.close()


# -- the guarantees table: every loss/duplication scenario reports its counts ------------------

_GUARANTEE_ROWS: list[dict[str, Any]] = []
GUARANTEE_COLUMNS = ("scenario", "sent", "answered_2xx", "applied", "duplicates_suppressed", "lost")


class Guarantees:
    """Record one row per scenario: what was sent, acknowledged, applied, deduplicated, lost."""

    def record(self, scenario: str, *, sent: int, answered_2xx: int, applied: int, duplicates_suppressed: int,
               lost: int) -> None:
        _GUARANTEE_ROWS.append({"scenario": scenario, "sent": sent, "answered_2xx": answered_2xx,
                                "applied": applied, "duplicates_suppressed": duplicates_suppressed, "lost": lost})


@pytest.fixture
def guarantees() -> Guarantees:
    return Guarantees()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the table (and write it to $LEDGER_GUARANTEES_REPORT as JSON when set)."""
    if not _GUARANTEE_ROWS:
        return
    terminalreporter.section("guarantees")
    widths = [max(len(c), *(len(str(r[c])) for r in _GUARANTEE_ROWS)) for c in GUARANTEE_COLUMNS]
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(GUARANTEE_COLUMNS, widths, strict=True)))
    for row in _GUARANTEE_ROWS:
        terminalreporter.write_line("  ".join(str(row[c]).ljust(w) for c, w in zip(GUARANTEE_COLUMNS, widths,
                                                                                    strict=True)))
    report = os.environ.get("LEDGER_GUARANTEES_REPORT")
    if report:
        Path(report).write_text(json.dumps(_GUARANTEE_ROWS, indent=2))
