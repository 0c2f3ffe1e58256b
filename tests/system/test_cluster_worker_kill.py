"""A worker SIGKILLed mid-batch on a real Redis Cluster (SPEC §12, "Many processes"): two
`call-ledger worker` processes drain six stream shards on 3 masters + 3 replicas; one dies
holding entries it was applying; the other claims them, and every record is exact, nothing
lost, nothing doubled, no entry left pending, and `call-ledger api` serves the records."""

import asyncio
import json
import os
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from call_ledger.app import create_app
from call_ledger.core.events import CallEvent
from call_ledger.core.rules import record_json, render_record
from call_ledger.settings import Settings
from call_ledger.store import GROUP, Store
from tests.support import service as services
from tests.support.cluster import Cluster, replicated_cluster
from tests.support.polling import until
from tests.support.redis_server import free_port
from tests.support.service import Service
from tests.support.settings import API_TOKEN, AUTH, PLATFORM_SECRET, make_settings
from tests.support.signing import sign_platform
from tests.support.workers import assert_records_exact, expected_status

SHARDS = 6
CALLS = 300


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with replicated_cluster() as running:
        yield running


def webhooks(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """(call_sid, webhook id, payload) of each call's platform events: statuses (sometimes two
    endings), metadata that overwrites itself, call_meta, costs as decimal text."""
    out = []
    for c in range(CALLS):
        sid = f"CA-kill-{c:04d}"
        events: list[tuple[str, dict[str, Any]]] = [
            ("call.status", {"status": "ringing"}),
            ("call.status", {"status": "ongoing"}),
            ("call.status", {"status": rng.choice(["completed", "failed", "busy"]), "duration": rng.randrange(5, 90)}),
        ]
        if rng.random() < 0.3:
            events.append(("call.status", {"status": "canceled"}))
        for i in range(2):
            events.append(("call.metadata", {"assistant_id": 10 + i, "assistant_name": f"Bot {i}",
                                             "customer_phone_number": f"+1555{c:04d}{i:03d}",
                                             "call_meta": {"k": i, f"only{i}": c}}))
        for _ in range(rng.randrange(1, 4)):
            events.append(("call.usage", {"component": rng.choice(["llm", "tts", "stt", "telephony"]),
                                          "cost": str(Decimal(rng.randrange(1, 10**6)) / 10**6)}))
        for n, (kind, data) in enumerate(events):
            at = f"2026-11-24T10:{n:02d}:{rng.randrange(60):02d}Z"
            out.append((sid, f"{sid}-w{n}", {"type": kind, "call_sid": sid, "occurred_at": at, "data": data}))
    return out


def cli_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({"LEDGER_REDIS_URL": cluster.url, "LEDGER_REDIS_CLUSTER": "true", "LEDGER_STREAM_SHARDS": str(SHARDS),
                "LEDGER_PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET, "LEDGER_API_TOKENS": API_TOKEN,
                "LEDGER_LOG_FORMAT": "json", "LEDGER_PORT": str(free_port()), **extra})
    return env


def start(role: str, env: dict[str, str], log: Path) -> Service:
    """`call-ledger <role>` with exactly `env`, stdout and stderr in `log`."""
    return services.start(role, env, log_dir=log.parent, name=log.stem, merge_stderr=True)


async def consumers(store: Store) -> dict[str, int]:
    """Pending entries per consumer, over every shard."""
    pending: dict[str, int] = {}
    for shard in store.shards:
        for consumer in await store.redis.xinfo_consumers(shard.stream, GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            pending[name] = pending.get(name, 0) + int(consumer["pending"])
    return pending


def tails(logs: list[Path]) -> Callable[[], str]:
    """What a timed-out wait shows: the end of every process's log."""
    return lambda: str([p.read_text()[-1500:] for p in logs])


async def check_records(store: Store, hooks: list[tuple[str, str, dict[str, Any]]], posted: int,
                        settings: Settings) -> int:
    """Every record exactly the single-process fold of what intake stored (each event id once),
    and what was posted applied once, checked without intake; returns the events applied."""
    connection = store.redis
    stored_events = [CallEvent.model_validate_json(fields[b"e"])
                     for shard in store.shards for _, fields in await connection.xrange(shard.stream)]
    assert len(stored_events) == posted
    applied = await assert_records_exact(store, stored_events, settings)
    assert applied == len(hooks)  # nothing lost, nothing doubled
    by_sid: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for sid, webhook_id, payload in hooks:
        by_sid.setdefault(sid, []).append((webhook_id, payload))
    for sid, items in by_sid.items():
        assert await store.applied_keys(sid) == {f"platform:{w}" for w, _ in items}, sid
        found = await store.get_call(sid)
        assert found is not None
        record = render_record(sid, found[0], found[1], settings.policy)
        assert record["status"] == expected_status(e for e in stored_events if e.call_sid == sid), sid
        posted_nano = sum(int(Decimal(p["data"]["cost"]) * 10**9) for _, p in items if p["type"] == "call.usage")
        assert record["total_cost"] == posted_nano, sid  # render_record keeps nano-units
    for shard in store.shards:  # nothing dead-lettered, no failure left on record
        assert int(await connection.xlen(shard.dead)) == 0
        assert await connection.hlen(shard.failures) == 0
    return applied


async def check_lookups(store: Store, base: str, hooks: list[tuple[str, str, dict[str, Any]]],
                        settings: Settings, logs: list[Path]) -> None:
    """`call-ledger api` on the cluster answers every record, by SID and by id, key for key."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def ready() -> bool:
            try:
                async with session.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, 30, "api not ready", interval=0.05, detail=tails(logs))
        for sid in dict.fromkeys(sid for sid, _, _ in hooks):
            found = await store.get_call(sid)
            assert found is not None
            expected = json.loads(record_json(render_record(sid, found[0], found[1], settings.policy)))
            for path in (f"/api/v1/calls/sid/{sid}", f"/api/v1/calls/{found[0]}"):
                async with session.get(base + path, headers=AUTH) as response:
                    assert response.status == 200, path
                    assert await response.json() == expected, path


@pytest.mark.real_redis
async def test_a_worker_killed_mid_batch_on_a_cluster_loses_and_doubles_nothing(
        cluster: Cluster, tmp_path: Path, aiohttp_client: Any, guarantees: Any) -> None:
    rng = random.Random(1207)
    hooks = webhooks(rng)
    posts = [h for h in hooks for _ in range(1 + (rng.random() < 0.2))]  # redeliveries
    rng.shuffle(posts)
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, stream_shards=SHARDS)
    connection = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
    store = Store(connection, stream_shards=SHARDS)
    await store.ensure_group()
    procs: list[Service] = []
    logs = [tmp_path / "w0.log", tmp_path / "w1.log", tmp_path / "call_ledger.api.log"]
    try:
        # Intake first (the in-process app, no consumer): the backlog the workers will share.
        intake = await aiohttp_client(create_app(settings, "worker", store, run_consumer=False))
        semaphore = asyncio.Semaphore(16)

        async def post(sid: str, webhook_id: str, payload: dict[str, Any]) -> int:
            body = orjson.dumps(payload)
            async with semaphore:
                response = await intake.post("/webhooks/platform", data=body, headers=sign_platform(body, webhook_id))
                return response.status

        statuses = await asyncio.gather(*(post(*p) for p in posts))
        assert set(statuses) == {200}
        lag, _ = await store.group_stats()
        assert lag == len(posts)
        assert {int(await connection.xlen(s.stream)) > 0 for s in store.shards} == {True}  # all six used

        # Small batches and a short claim idle: many batches to be in the middle of.
        worker_env = {"LEDGER_BATCH_SIZE": "20", "LEDGER_CLAIM_IDLE_MS": "1000"}
        for n in range(2):
            procs.append(start("worker", cli_env(cluster, LEDGER_CONSUMER_NAME=f"w{n}", **worker_env), logs[n]))
        victim = procs[0]

        async def victim_mid_batch() -> int:
            left, _ = await store.group_stats()
            held = (await consumers(store)).get("w0", 0)
            return held if left < len(posts) * 0.8 and left > 0 and held > 0 else 0

        held_at_kill = await until(victim_mid_batch, 60, "w0 never held entries mid-drain", interval=0.05,
                                   detail=tails(logs))
        victim.kill()
        left_at_kill, _ = await store.group_stats()
        assert left_at_kill > 0, "the backlog was drained before the kill: nothing was tested"

        async def drained() -> bool:
            lag, pending = await store.group_stats()
            return lag == 0 and pending == 0

        await until(drained, 120, "the survivor did not drain the shards and claim w0's entries",
                    interval=0.05, detail=tails(logs))
        assert (await consumers(store)).get("w0", 0) == 0  # what w0 held was claimed and acknowledged
        assert procs[1].alive()

        applied = await check_records(store, hooks, len(posts), settings)
        api_env = cli_env(cluster)
        procs.append(start("api", api_env, logs[2]))
        await check_lookups(store, f"http://127.0.0.1:{api_env['LEDGER_PORT']}", hooks, settings, logs)
        print(f"\nworker SIGKILLed holding {held_at_kill} entries with {left_at_kill} of {len(posts)} not yet "
              "acknowledged; the other claimed and applied them")
    finally:
        for proc in procs:
            if proc.alive():
                proc.terminate()
        await connection.aclose()
    guarantees.record("cluster 3+3, 6 stream shards: a worker SIGKILLed mid-batch, the other claims",
                      sent=len(posts), answered_2xx=len(posts), applied=applied,
                      duplicates_suppressed=len(posts) - applied, lost=0)
