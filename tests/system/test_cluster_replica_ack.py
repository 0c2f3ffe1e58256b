"""LEDGER_DURABLE_ACK=replica on a real 3 + 3 Redis Cluster (SPEC §12): a master SIGKILLed and
replaced by its replica while signed platform webhooks flow loses nothing answered 2xx, intake
answers 503 (never 2xx) while a write cannot be confirmed, and 2xx is back by itself once the
shard's new master has a replica again. Also what the replica round trip costs per webhook."""

import statistics
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from call_ledger.store.shards import all_shards, shard_index
from tests.support.cluster import Cluster, lookup, start_on_cluster
from tests.support.polling import until
from tests.support.service import Service
from tests.support.signing import sign_platform

SHARDS = 3
COST = Decimal("0.001")


def sids_by_shard(per_shard: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    n = 0
    while any(len(v) < per_shard for v in found.values()):
        sid = f"CA-ra-{n}"
        if len(found[shard_index(sid, SHARDS)]) < per_shard:
            found[shard_index(sid, SHARDS)].append(sid)
        n += 1
    return found


async def post(session: aiohttp.ClientSession, service: Service, sid: str, webhook_id: str) -> int:
    body = (b'{"type":"call.usage","call_sid":"%s","occurred_at":"2026-11-24T10:00:00Z",'
            b'"data":{"component":"llm","cost":"0.001"}}' % sid.encode())
    async with session.post(service.url("/webhooks/platform"), data=body,
                            headers=sign_platform(body, webhook_id)) as response:
        return response.status


def stream_event_ids(port: int, stream: str) -> set[str]:
    """Event ids in a shard's stream, read straight from the node that now serves it."""
    client = redis.Redis(host="127.0.0.1", port=port)
    return {orjson.loads(fields[b"e"])["event_id"] for _, fields in client.xrange(stream)}


async def sequential_cost(session: aiohttp.ClientSession, service: Service, sids: list[str], count: int,
                          tag: str) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        assert await post(session, service, sids[i % len(sids)], f"{tag}-{i}") == 200
        times.append((time.perf_counter() - started) * 1000)
    return times


async def measure_replica_cost(session: aiohttp.ClientSession, nodes: Cluster, tmp_path: Path,
                               sids: list[str]) -> dict[str, str]:
    """What WAIT costs per webhook on the cluster: sequential posts through two intake processes,
    the same cluster, with and without it, in alternating blocks. Returns the events it posted."""
    plain = start_on_cluster(nodes.url, tmp_path / "none.log", "intake")
    acked = start_on_cluster(nodes.url, tmp_path / "replica.log", "intake", LEDGER_DURABLE_ACK="replica")
    costs: dict[str, list[float]] = {"none": [], "replica": []}
    try:
        await plain.wait_ready("/readyz", timeout=30, interval=0.1)
        await acked.wait_ready("/readyz", timeout=30, interval=0.1)
        for block in range(4):
            for mode, service in (("none", plain), ("replica", acked)):
                costs[mode] += await sequential_cost(session, service, sids, 75, f"cost-{mode}-{block}")
    finally:
        assert plain.terminate() == 0 and acked.terminate() == 0
    print("\nreplica-ack cost on a 3 + 3 cluster, 300 sequential signed platform webhooks each (ms):")
    for mode, times in costs.items():
        print(f"  {mode:8} median {statistics.median(times):.2f}  p95 {statistics.quantiles(times, n=20)[18]:.2f}")
    return {f"cost-{mode}-{block}-{i}": sids[i % len(sids)] for mode in costs for block in range(4) for i in range(75)}


async def retry_until_2xx(session: aiohttp.ClientSession, service: Service,
                          answers: dict[str, tuple[str, int]]) -> None:
    """What the provider does with every webhook that got no 2xx."""
    for webhook_id, (sid, status) in list(answers.items()):
        while status != 200:
            status = await post(session, service, sid, webhook_id)
        answers[webhook_id] = (sid, 200)


@pytest.mark.real_redis
async def test_replica_ack_on_a_cluster_loses_nothing_answered_2xx_through_a_master_failover(
        cluster: Cluster, tmp_path: Path, guarantees: Any) -> None:
    shards = all_shards("cl", SHARDS)
    by_shard = sids_by_shard(4)
    sids = [sid for group in by_shard.values() for sid in group]
    victim_shard = 0
    victim = cluster.master_of(shards[victim_shard].stream)
    answers: dict[str, tuple[str, int]] = {}  # webhook id -> (call, status)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        cost_events = await measure_replica_cost(session, cluster, tmp_path, sids)

        serve = start_on_cluster(cluster.url, tmp_path / "serve.log", "serve", LEDGER_DURABLE_ACK="replica",
                      LEDGER_DURABLE_ACK_TIMEOUT_MS="500")
        try:
            await serve.wait_ready("/readyz", timeout=30, interval=0.1)
            n = 0

            async def round_of_posts() -> list[int]:
                nonlocal n
                statuses = []
                for sid in sids:
                    webhook_id = f"{sid}-{n}"
                    status = await post(session, serve, sid, webhook_id)
                    answers[webhook_id] = (sid, status)
                    statuses.append(status)
                n += 1
                assert set(statuses) <= {200, 503}, statuses  # never anything else
                return statuses

            for _ in range(3):  # before: every shard has a replica in sync, everything is 2xx
                assert set(await round_of_posts()) == {200}

            cluster.kill(victim)  # SIGKILL, while webhooks keep coming
            killed_at = time.monotonic()

            async def promoted() -> bool:
                await round_of_posts()
                return cluster.master_of(shards[victim_shard].stream) != victim

            await until(promoted, 30, "the replica to be promoted", interval=0.1)
            new_master = cluster.master_of(shards[victim_shard].stream)
            cluster.wait_ok()

            # Nothing answered 2xx is lost: every event of the victim's shard that got a 200 is
            # in the stream on the promoted replica.
            victim_sids = set(by_shard[victim_shard])
            acknowledged = {w for w, (sid, status) in answers.items() if status == 200 and sid in victim_sids}
            acknowledged |= {w for w, sid in cost_events.items() if sid in victim_sids}
            assert acknowledged <= stream_event_ids(new_master, shards[victim_shard].stream)

            # The new master has no replica: no write to its shard can be confirmed, so each is 503.
            for i in range(5):
                for sid in by_shard[victim_shard]:
                    webhook_id = f"{sid}-alone-{i}"
                    status = await post(session, serve, sid, webhook_id)
                    answers[webhook_id] = (sid, status)
                    assert status == 503
            # The other shards' masters still have theirs: their webhooks are 2xx again by themselves.

            other_sids = [sid for k, group in by_shard.items() if k != victim_shard for sid in group]

            async def others_back() -> bool:
                statuses = []
                for sid in other_sids:
                    webhook_id = f"{sid}-other-{len(answers)}"
                    answers[webhook_id] = (sid, await post(session, serve, sid, webhook_id))
                    statuses.append(answers[webhook_id][1])
                return set(statuses) == {200}

            await until(others_back, 30, "the other shards to answer 2xx", interval=0.1)

            # The old master comes back as the new master's replica: 2xx again, by itself.
            cluster.start_node(victim)
            cluster.wait_ok(60)

            async def victim_back() -> bool:
                return set(await round_of_posts()) == {200}

            await until(victim_back, 60, "2xx on the failed-over shard once it has a replica again", interval=0.1)
            print(f"\nreplica ack through a failover: 2xx on every shard {time.monotonic() - killed_at:.1f} s "
                  "after the master's SIGKILL (the old master restarted as the new one's replica)")

            # The provider retries what got no 2xx; then every event is applied exactly once.
            await retry_until_2xx(session, serve, answers)
            expected = {sid: COST * (sum(1 for s, _ in answers.values() if s == sid)
                                     + sum(1 for s in cost_events.values() if s == sid)) for sid in sids}

            async def exact() -> bool:
                records = {sid: (await lookup(session, serve, sid))[1] for sid in sids}
                got = {sid: Decimal(str((r or {}).get("llm_cost") or 0)) for sid, r in records.items()}
                return got == expected

            await until(exact, 60, f"exact records {expected}", interval=0.1)
        finally:
            assert serve.terminate() == 0
    guarantees.record("cluster, durable ack replica: master SIGKILLed and replaced; 503 while unconfirmable",
                      sent=len(answers) + len(cost_events), answered_2xx=len(answers) + len(cost_events),
                      applied=len(answers) + len(cost_events), duplicates_suppressed=0, lost=0)


def test_replica_durability_is_accepted_on_a_cluster() -> None:
    from tests.support.settings import make_settings

    settings = make_settings(redis_url="redis://127.0.0.1:7000,redis://127.0.0.1:7001", redis_cluster=True,
                             durable_ack="replica")
    assert settings.durable_ack == "replica" and settings.redis_cluster
