"""Intake and apply throughput on one Redis and on a 3-master Redis Cluster, with 1 and 2
processes and LEDGER_STREAM_SHARDS 1 and 6, and what each event costs each Redis node.

    python bench/cluster.py            # 8 configurations, 12,000 webhooks each (a few minutes)
    python bench/cluster.py --quick    # 3,000 webhooks each (about a minute)

For each configuration, on freshly flushed nodes:

- intake: signed platform webhooks (Standard Webhooks, ~10 per call: statuses, metadata,
  usage; 10% posted twice, as redeliveries) posted by an aiohttp client (32 in flight,
  round-robin over the processes) to N intake processes: the product's `worker` app
  without its consumer (`python bench/cluster.py _intake`), served like `call-ledger`.
  So intake is measured alone, and it fills the stream shards through the product's own
  path (each event on its call's shard);
- apply: N `call-ledger worker` processes drain what intake stored, timed from the first
  entry taken to the last acknowledged (the group's lag and pending polled every 25 ms).

Per node and phase, divided by the events: the redis-server process's CPU time (utime +
stime from /proc: the whole cost, networking and parsing included), INFO commandstats
deltas (calls and usec per command; commands a script runs are counted both under their
own name and inside EVAL/EVALSHA) and INFO stats total_net_input/output_bytes deltas.

Everything shares this machine's cores: the load generator, the ledger processes and every
redis-server. Absolute rates are what the machine gives with all of them competing; the
per-event Redis costs are what carry over to real hardware. Starts its own redis-server
processes on free ports (no persistence, no replicas).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "whsec_" + base64.b64encode(b"bench-cluster-platform-secret-32").decode()
CONCURRENCY = 32
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free port below the ephemeral range whose cluster bus port (+10000) is free too."""
    for _ in range(500):
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


# -- Redis ----------------------------------------------------------------------------------------

class Nodes:
    """One redis-server, or `masters` cluster masters (slots split evenly, no replicas)."""

    def __init__(self, masters: int) -> None:
        import redis

        self.cluster = masters > 1
        self.dir = tempfile.mkdtemp(prefix="ledger-bench-cluster-")
        self.ports = [free_port() for _ in range(masters)]
        self.procs = []
        for port in self.ports:
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", self.dir, "--logfile", f"node-{port}.log"]
            if self.cluster:
                args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, cwd=self.dir))
        self.clients = [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]
        for client in self.clients:
            self._until(client.ping)
        if self.cluster:
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, timeout=60)
            self._until(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in self.clients))
        self.url = ",".join(f"redis://127.0.0.1:{p}" for p in self.ports) if self.cluster else \
            f"redis://127.0.0.1:{self.ports[0]}/0"

    @staticmethod
    def _until(check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not come up")
            time.sleep(0.05)

    def node_of(self, key: str) -> int:
        """Index of the node that holds `key`."""
        if not self.cluster:
            return 0
        slot = self.clients[0].cluster("keyslot", key)
        for first, last, master, *_ in self.clients[0].cluster("slots"):
            if first <= slot <= last:
                return self.ports.index(int(master[1]))
        raise RuntimeError(f"no node holds {key}")

    def flush(self) -> None:
        for client in self.clients:
            client.flushall()

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for client, proc in zip(self.clients, self.procs, strict=True):
            stats = client.info("stats")
            out.append({"cpu": cpu_seconds(proc.pid), "in": stats["total_net_input_bytes"],
                        "out": stats["total_net_output_bytes"],
                        "cmd": {k.removeprefix("cmdstat_"): (v["calls"], v["usec"])
                                for k, v in client.info("commandstats").items()}})
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class NodeCost:
    """One node's cost of one phase, per event."""

    port: int
    cpu_us: float
    calls: float
    net_in: float
    net_out: float
    commands: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (calls, usec) per event


def costs(nodes: Nodes, before: list[dict[str, Any]], after: list[dict[str, Any]], events: int) -> list[NodeCost]:
    out = []
    for port, b, a in zip(nodes.ports, before, after, strict=True):
        commands = {}
        for name, (calls, usec) in a["cmd"].items():
            calls0, usec0 = b["cmd"].get(name, (0, 0))
            if calls - calls0 > 0:
                commands[name] = ((calls - calls0) / events, (usec - usec0) / events)
        calls = sum(c for c, _ in commands.values())  # scripts' own commands included
        out.append(NodeCost(port, (a["cpu"] - b["cpu"]) * 1e6 / events, calls, (a["in"] - b["in"]) / events,
                            (a["out"] - b["out"]) / events, commands))
    return out


# -- the load ----------------------------------------------------------------------------------------

def webhooks(events: int, seed: int) -> list[tuple[str, bytes]]:
    """(webhook id, body) of platform events for events/11 calls (10 each + 10% redeliveries), shuffled."""
    import orjson

    rng = random.Random(seed)
    out = []
    for c in range(max(1, events * 10 // 11 // 10)):
        sid = f"CA{seed:04x}{c:028x}"
        items: list[tuple[str, dict[str, Any]]] = [
            ("call.status", {"status": "ringing"}), ("call.status", {"status": "ongoing"}),
            ("call.metadata", {"assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support",
                               "to_phone_number": "+15551234567", "customer_phone_number": "+15559876543",
                               "call_meta": {"customer_id": f"cust_{c}"}}),
        ]
        items += [("call.usage", {"component": ("llm", "tts", "stt")[i % 3], "cost": f"0.00{i}{c % 97}"})
                  for i in range(6)]
        items.append(("call.status", {"status": "completed", "duration": 54}))
        for n, (kind, data) in enumerate(items):
            body = orjson.dumps({"type": kind, "call_sid": sid, "occurred_at": f"2026-11-24T10:00:{n:02d}Z",
                                 "data": data})
            out.append((f"{sid}-{n}", body))
    out += rng.sample(out, len(out) // 10)
    rng.shuffle(out)
    return out


def signed(webhook_id: str, body: bytes) -> dict[str, str]:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    timestamp = str(int(time.time()))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{base64.b64encode(mac).decode()}"}


async def post_all(ports: list[int], hooks: list[tuple[str, bytes]]) -> float:
    """Post every webhook (CONCURRENCY in flight, round-robin over the ports); the seconds it took."""
    import aiohttp

    requests = [(f"http://127.0.0.1:{ports[i % len(ports)]}/webhooks/platform", body, signed(wid, body))
                for i, (wid, body) in enumerate(hooks)]
    queue = iter(requests)
    failures = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def client() -> None:
            for url, body, headers in queue:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(response.status)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} webhooks not stored: {sorted(set(failures))}")
    return elapsed


# -- the processes ------------------------------------------------------------------------------------

def ledger_env(nodes: Nodes, shards: int, port: int, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({"LEDGER_MAX_CONNECTIONS_PER_PEER": "0",  # one load generator stands in for many senders
                "LEDGER_REDIS_URL": nodes.url, "LEDGER_REDIS_CLUSTER": str(nodes.cluster).lower(),
                "LEDGER_STREAM_SHARDS": str(shards), "LEDGER_PLATFORM_WEBHOOK_SECRET": SECRET,
                "LEDGER_PORT": str(port), "LEDGER_LOG_FORMAT": "json", "LEDGER_CONSUMER_NAME": name,
                "PYTHONPATH": str(ROOT)})
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # The per-event log lines are part of the cost: written, to nowhere.
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on {port} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing ready on {port}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


def open_store(nodes: Nodes, shards: int) -> Any:
    from call_ledger.settings import Settings
    from call_ledger.store import Store

    return Store.from_settings(Settings(redis_url=nodes.url, redis_cluster=nodes.cluster, stream_shards=shards))


async def drain_seconds(nodes: Nodes, shards: int, total: int,
                        workers: list[subprocess.Popen[bytes]]) -> tuple[float, float]:
    """(seconds from the first entry taken to the last acknowledged, the workers' CPU seconds then)."""
    store = open_store(nodes, shards)
    try:
        deadline = time.monotonic() + 600
        started = cpu0 = None
        while time.monotonic() < deadline:
            lag, pending = await store.group_stats()
            now = time.perf_counter()
            if started is None and lag < total:  # a worker took its first entries
                started, cpu0 = now, sum(cpu_seconds(w.pid) for w in workers)
            if started is not None and lag == 0 and pending == 0:
                return now - started, sum(cpu_seconds(w.pid) for w in workers) - (cpu0 or 0)
            await asyncio.sleep(0.025)
        raise RuntimeError("workers did not drain the stream in 10 minutes")
    finally:
        await store.close()


async def dead_letters(nodes: Nodes, shards: int) -> int:
    store = open_store(nodes, shards)
    try:
        return sum([int(await store.redis.xlen(s.dead)) for s in store.shards])
    finally:
        await store.close()


@dataclass
class Result:
    topology: str
    shards: int
    procs: int
    events: int
    intake_rate: float
    intake_per_core: float
    apply_rate: float
    apply_per_core: float
    intake_nodes: list[NodeCost]
    apply_nodes: list[NodeCost]
    ids_node: int  # index of the node holding cl:ids


def run_config(nodes: Nodes, topology: str, shards: int, procs: int, events: int, seed: int) -> Result:
    nodes.flush()
    hooks = webhooks(events, seed)
    ports = [free_port() for _ in range(procs)]
    intake = [start(["bench/cluster.py", "_intake"], ledger_env(nodes, shards, port, f"intake{i}"))
              for i, port in enumerate(ports)]
    try:
        for port, proc in zip(ports, intake, strict=True):
            wait_ready(port, proc)
        cpu0 = sum(cpu_seconds(p.pid) for p in intake)
        before = nodes.snapshot()
        elapsed = asyncio.run(post_all(ports, hooks))
        after = nodes.snapshot()
        intake_cpu = sum(cpu_seconds(p.pid) for p in intake) - cpu0
    finally:
        stop(intake)
    intake_nodes = costs(nodes, before, after, len(hooks))

    before = nodes.snapshot()
    workers = [start(["-m", "call_ledger.cli", "worker"], ledger_env(nodes, shards, free_port(), f"w{i}"))
               for i in range(procs)]
    try:
        drained, worker_cpu = asyncio.run(drain_seconds(nodes, shards, len(hooks), workers))
        after = nodes.snapshot()
    finally:
        stop(workers)
    assert asyncio.run(dead_letters(nodes, shards)) == 0
    return Result(topology, shards, procs, len(hooks), len(hooks) / elapsed, len(hooks) / max(intake_cpu, 1e-9),
                  len(hooks) / drained, len(hooks) / max(worker_cpu, 1e-9), intake_nodes,
                  costs(nodes, before, after, len(hooks)), nodes.node_of("cl:ids"))


def id_allocation_cost(nodes: Nodes, rounds: int = 2000) -> tuple[int, float, float]:
    """(the counter's node, server µs per allocation: the whole script, usec of EVAL/EVALSHA
    per call, and commandstats usec of its INCRBY + INFO)."""
    async def allocate() -> None:
        store = open_store(nodes, 1)
        try:
            for _ in range(rounds):
                await store.allocate_ids(20)
        finally:
            await store.close()

    node = nodes.node_of("cl:ids")
    before = nodes.snapshot()[node]["cmd"]
    asyncio.run(allocate())
    after = nodes.snapshot()[node]["cmd"]

    def delta(name: str) -> tuple[int, int]:
        c, u = after.get(name, (0, 0))
        c0, u0 = before.get(name, (0, 0))
        return c - c0, u - u0

    script = max((delta(n) for n in ("eval", "evalsha")), key=lambda d: d[0])
    inner = sum(delta(n)[1] for n in ("incrby", "info"))
    return nodes.ports[node], script[1] / max(1, script[0]), inner / rounds


# -- report --------------------------------------------------------------------------------------------

def report(results: list[Result], script_us: dict[str, float]) -> None:
    print("\n| Redis | stream shards | processes | intake events/s | intake events/s per intake core "
          "| apply events/s | apply events/s per worker core |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.topology} | {r.shards} | {r.procs} | {r.intake_rate:,.0f} | {r.intake_per_core:,.0f} "
              f"| {r.apply_rate:,.0f} | {r.apply_per_core:,.0f} |")
    print("\nThe id counter (cl:ids) during apply: allocations per event (INCRBY calls) x the server time of "
          "one allocation, against its node's CPU per event:\n")
    print("| Redis | shards | procs | node | allocations/event | share of the node's commands | id µs/event "
          "| node CPU µs/event | share of its CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        node = r.apply_nodes[r.ids_node]
        allocations = node.commands.get("incrby", (0.0, 0.0))[0]
        cost = allocations * script_us[r.topology]
        print(f"| {r.topology} | {r.shards} | {r.procs} | :{node.port} | {allocations:.3f} "
              f"| {allocations / max(node.calls, 1e-9):.2%} | {cost:.2f} "
              f"| {node.cpu_us:.1f} | {cost / max(node.cpu_us, 1e-9):.1%} |")
    print("\nRedis cost per event, per node (CPU: the redis-server process; calls: every command, "
          "those scripts run included):")
    print("\n| Redis | shards | procs | phase | node | CPU µs/event | calls/event | net in B/event "
          "| net out B/event | top commands (calls/event, µs/event) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for phase, costs_ in (("intake", r.intake_nodes), ("apply", r.apply_nodes)):
            for c in costs_:
                top = sorted(c.commands.items(), key=lambda kv: -kv[1][1])[:4]
                shown = ", ".join(f"{n} {calls:.2f}/{usec:.1f}" for n, (calls, usec) in top)
                print(f"| {r.topology} | {r.shards} | {r.procs} | {phase} | :{c.port} | {c.cpu_us:.1f} "
                      f"| {c.calls:.2f} | {c.net_in:.0f} | {c.net_out:.0f} | {shown} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 webhooks per configuration")
    parser.add_argument("--events", type=int, default=None, help="webhooks per configuration (default 12,000)")
    args = parser.parse_args()
    events = args.events or (3000 if args.quick else 12000)
    print(f"bench/cluster.py: {events:,} signed platform webhooks per configuration, {CONCURRENCY} in flight; "
          f"{os.cpu_count()} cores shared by the client, the ledger processes and every redis-server")
    results = []
    script_us: dict[str, float] = {}
    id_lines = []
    seed = 1
    for topology, masters in (("one redis-server", 1), ("cluster, 3 masters", 3)):
        nodes = Nodes(masters)
        try:
            for shards in (1, 6):
                for procs in (1, 2):
                    seed += 1
                    result = run_config(nodes, topology, shards, procs, events, seed)
                    print(f"  {topology}, {shards} shard(s), {procs} process(es): intake {result.intake_rate:,.0f}"
                          f" events/s, apply {result.apply_rate:,.0f} events/s", flush=True)
                    results.append(result)
            nodes.flush()
            port, script_us[topology], inner_us = id_allocation_cost(nodes)
            id_lines.append(f"id allocation (call_ledger/store/lua/ids.lua) on {topology} (:{port}): "
                            f"{script_us[topology]:.1f} µs of Redis command time per allocation (the script), "
                            f"of which INCRBY + INFO {inner_us:.1f} µs")
        finally:
            nodes.stop()
    report(results, script_us)
    print()
    for line in id_lines:
        print(line)


def intake_main() -> None:
    """One intake process: the product's worker app without its consumer, served as the CLI serves it."""
    from call_ledger.app import create_app
    from call_ledger.settings import Settings
    from call_ledger.web import serving
    from call_ledger.web.logs import configure_logging, secret_values

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, secrets=secret_values(settings))
    serving.run(create_app(settings, "worker", run_consumer=False), settings)


if __name__ == "__main__":
    if sys.argv[1:] == ["_intake"]:
        intake_main()
    else:
        main()
