"""A real redis-server (or Valkey) of the test's own on a free port, with TLS and ACL users when asked."""

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis


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


def require_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("LEDGER_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and LEDGER_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH (set LEDGER_REQUIRE_REDIS=1 to make this a failure)")
