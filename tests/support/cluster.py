"""A real Redis Cluster for tests: masters (and replicas) started from redis-server
--cluster-enabled yes and joined with redis-cli --cluster create, on ports below the
ephemeral range whose bus ports (+10000) are free too."""

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import redis

from tests.support import service as services
from tests.support.redis_server import TlsFiles, free_port, require_redis
from tests.support.service import Service, environment, ledger_env
from tests.support.settings import AUTH


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) exists and is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no port pair for a cluster node")


def wait_ping(port: int, timeout: float = 10, proc: "subprocess.Popen[bytes] | None" = None,
              **client_kwargs: Any) -> None:
    """Until a freshly started redis-server on `port` answers PING (NodeDidNotStart if it exited:
    another process took its port or bus port between our check and its bind)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise NodeDidNotStart(f"redis-server on {port} exited with {proc.returncode}")
        try:
            redis.Redis(host="127.0.0.1", port=port, **client_kwargs).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class NodeDidNotStart(Exception):
    pass


class Cluster:
    """`masters` masters with `replicas` replicas each; nodes can be SIGKILLed and restarted.

    With `tls`, every node speaks TLS only, the cluster bus and replication included; with
    `password`, every node requires it (and replicas use it with their master)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000, *,
                 tls: TlsFiles | None = None, password: str | None = None) -> None:
        self.dir = directory
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.tls, self.password = tls, password
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Every node, comma-separated: what LEDGER_REDIS_URL may hold. The password and the CA are
        given on the first node only (the others inherit them)."""
        scheme = "rediss" if self.tls else "redis"
        first = f"{scheme}://:{quote(self.password, safe='')}@" if self.password else f"{scheme}://"
        query = f"?ssl_ca_certs={quote(str(self.tls.ca))}" if self.tls else ""
        return ",".join(f"{first if i == 0 else scheme + '://'}127.0.0.1:{port}{query if i == 0 else ''}"
                        for i, port in enumerate(self.ports))

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, **self._client_kwargs())

    def _client_kwargs(self) -> dict[str, Any]:
        return {"password": self.password, **(self.tls.client_kwargs() if self.tls else {})}

    def start_node(self, port: int) -> None:
        ports = ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes", "--tls-replication", "yes",
                 *self.tls.redis_args()] if self.tls else ["--port", str(port)]
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        self.procs[port] = subprocess.Popen(
            ["redis-server", *ports, *auth, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", f"node-{port}.log",
             # A replica that never finished its first sync may not take over: sync at once.
             "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, cwd=self.dir)
        wait_ping(port, proc=self.procs[port], **self._client_kwargs())

    def start(self) -> "Cluster":
        try:
            for i in range(len(self.ports)):
                for attempt in range(3):  # a port taken by another process meanwhile: another port
                    try:
                        self.start_node(self.ports[i])
                        break
                    except (NodeDidNotStart, redis.ConnectionError):
                        self.kill(self.ports[i])
                        if attempt == 2:
                            raise
                        self.ports[i] = cluster_port()
            self._create()
        except BaseException:
            self.stop()  # no node left running behind a failed start
            raise
        return self

    def _create(self) -> None:
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None  # not on the command line
        subprocess.run(["redis-cli", *tls, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, timeout=60, env=env)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and sees every master with its replicas."""
        deadline = time.monotonic() + timeout
        while not all(self._ok(port) for port in self.procs):
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        try:
            client = self.client(port)
            if client.cluster("info").get("cluster_state") != "ok":
                return False
            nodes = client.cluster("nodes")
            healthy_masters = [n for n in nodes.values() if "master" in n["flags"] and "fail" not in n["flags"]]
            replication = client.info("replication")
            synced = replication["role"] == "master" or replication.get("master_link_status") == "up"
            return len(healthy_masters) == self.masters and synced
        except redis.RedisError:
            return False

    def master_of(self, key: str) -> int:
        slot = self.client(next(iter(self.procs))).cluster("keyslot", key)
        for port in self.procs:
            try:
                info = self.client(port).cluster("slots")
            except redis.RedisError:
                continue
            for start, end, master, *_ in info:
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no master for {key}")

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        if proc is None:
            return
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


@contextmanager
def replicated_cluster() -> Iterator[Cluster]:
    """3 masters + 3 replicas in a temporary directory, stopped afterwards (a node a test
    paused with SIGSTOP is resumed first, so that it can stop)."""
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        running = Cluster(Path(directory), masters=3, replicas=1, node_timeout_ms=1000).start()
        try:
            yield running
        finally:
            for proc in running.procs.values():
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            running.stop()


# -- a service on the cluster ---------------------------------------------------------------------

def start_on_cluster(url: str, log: Path, role: str = "serve", **extra_env: str) -> Service:
    """`call-ledger <role>` (serve by default) on the cluster at `url`, three stream shards, dead
    consumers' entries claimed after a second; stdout and stderr in `log`."""
    env = environment(ledger_env(LEDGER_REDIS_URL=url, LEDGER_REDIS_CLUSTER="true", LEDGER_STREAM_SHARDS="3",
                                   LEDGER_CLAIM_IDLE_MS="1000", **extra_env))
    return services.start(role, env, log_dir=log.parent, name=log.stem, merge_stderr=True)


async def lookup(session: aiohttp.ClientSession, service: Service, sid: str) -> tuple[int, Any]:
    """The record of `sid` as (status, body); (0, None) while the service does not answer."""
    try:
        async with session.get(service.url(f"/api/v1/calls/sid/{sid}"), headers=AUTH) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return 0, None
