"""LEDGER_REDIS_CLUSTER=true: the whole path on a real three-node Redis Cluster."""

from typing import Any

import pytest

from call_ledger.app import create_app
from call_ledger.core.indexes import member, shard_of
from call_ledger.store import Store
from call_ledger.store.client import CLIENT_NAME
from call_ledger.store.layout import blockers, connected_clients
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import AUTH, make_settings
from tests.support.signing import post_platform

pytestmark = pytest.mark.real_redis


async def test_calls_spread_over_slots_are_applied_and_read_back_on_a_cluster(
        aiohttp_client: Any, cluster_url: str) -> None:
    settings = make_settings(redis_url=cluster_url, redis_cluster=True)
    store = Store.from_settings(settings)
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    sids = [f"CA-cluster-{i}" for i in range(30)]  # enough to land on every node
    for sid in sids:
        for n, payload in enumerate([
            {"type": "call.status", "call_sid": sid, "occurred_at": "2026-11-24T10:00:00Z",
             "data": {"status": "ongoing"}},
            {"type": "call.usage", "call_sid": sid, "occurred_at": "2026-11-24T10:00:30Z",
             "data": {"component": "llm", "cost": "0.1"}},
            {"type": "call.status", "call_sid": sid, "occurred_at": "2026-11-24T10:01:00Z",
             "data": {"status": "completed"}},
        ]):
            response = await post_platform(client, payload, f"{sid}-{n}")
            assert response.status == 200, await response.text()
    consumer = Consumer(store, settings, Metrics())
    assert await consumer.run_burst() == 90
    # Commits go by SHA: a node that lost its scripts (a promoted replica, a restart) answers
    # NOSCRIPT, and the script is loaded and just those calls sent again.
    await store.redis.script_flush()
    await post_platform(client, {"type": "call.usage", "call_sid": sids[0], "occurred_at": "2026-11-24T10:00:40Z",
                                 "data": {"component": "llm", "cost": "0.2"}}, "late")
    await consumer.run_burst()

    for sid in sids:
        record = await (await client.get(f"/api/v1/calls/sid/{sid}", headers=AUTH)).json()
        assert (record["status"], record["duration"]) == ("completed", 60)
        assert record["llm_cost"] == (0.3 if sid == sids[0] else 0.1)
    nodes = {store.redis.get_node_from_key(store.call_key(sid)).port for sid in sids}
    assert len(nodes) == 3  # the records really are spread over the cluster
    assert (await client.get("/readyz")).status == 200
    # A fresh store is layout 5 (short members, plain fields, index entries as their payload), and every
    # connection on every primary is named with the layouts it reads: nothing keeps `call-ledger layout
    # --upgrade` from going ahead.
    assert await store.records.layout() == "5"
    fields = await store.redis.hgetall(store.call_key(sids[1]))
    assert b"s" not in fields
    entry = await store.redis.hget(store.indexes.entries_key(shard_of(sids[1])), member(int(fields[b"id"])))
    assert entry is not None and b"\n" not in entry
    assert await store.redis.zrange(store.order_key(sids[1]), 0, -1) == [b"0.-0", b"0.-1", b"0.-2"]
    clients = await connected_clients(store.redis)
    assert {client["name"] for client in clients} >= {CLIENT_NAME} and len(clients) >= 3
    assert blockers(clients) == []
    await store.close()


async def test_six_stream_shards_spread_over_the_masters_and_drain_exactly(cluster_url: str) -> None:
    import random
    from collections import Counter

    from tests.support.workers import assert_records_exact, call_events

    settings = make_settings(redis_url=cluster_url, redis_cluster=True, stream_shards=6, batch_size=60)
    store = Store.from_settings(settings)
    assert await store.ping()  # the cluster client learns the slot map
    nodes = Counter(store.redis.get_node_from_key(shard.stream).port for shard in store.shards)
    assert sorted(nodes.values()) == [2, 2, 2]  # 6 shards, 2 on each master
    rng = random.Random(3)
    events = [e for i in range(18) for e in call_events(f"CA-shard-{i}", rng, usages=4)]
    rng.shuffle(events)
    for event in events:
        await store.append(event.model_dump_json().encode(), event.call_sid)
    consumer = Consumer(store, settings, Metrics())
    assert await consumer.run_burst() == len(events)
    await assert_records_exact(store, events, settings)
    assert await store.group_stats() == (0, 0)
    assert set(await store.shard_stats()) == {shard.name for shard in store.shards}
    await store.close()


async def test_the_signature_ledger_and_dead_letters_work_on_a_cluster(aiohttp_client: Any, cluster_url: str) -> None:
    """SPEC §12 "everything on the cluster": §8's signature ledger (a re-split replay is refused)
    and dead letters listed and replayed over stream shards on several masters."""
    from urllib.parse import urlencode

    from tests.support import payloads_twilio as tw
    from tests.support.resplits import resplits, sign

    common: dict[str, Any] = {"redis_url": cluster_url, "redis_cluster": True, "stream_shards": 6,
                              "max_deliveries": 1, "twilio_auth_token": tw.AUTH_TOKEN, "public_url": tw.PUBLIC_URL}
    settings = make_settings(**common)
    store = Store.from_settings(settings)
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    params = tw.completed()
    headers = sign("twilio", params)
    for _ in range(2):  # the original, then its exact redelivery: both 2xx
        response = await client.post(tw.PATH, data=urlencode(params).encode(), headers=headers)
        assert response.status == 200, await response.text()
    _, moved = next(resplits(params))
    response = await client.post(tw.PATH, data=urlencode(moved).encode(), headers=headers)
    assert response.status == 401  # the same signature with its boundaries moved
    assert await store.redis.keys("cl:sig:*", target_nodes=store.redis.ALL_NODES)  # the ledger is in the cluster

    # Events without an FX rate on calls spread over every shard: dead-lettered, then replayed.
    sids = [f"CA-dead-{i}" for i in range(12)]
    for sid in sids:
        await post_platform(client, {"type": "call.usage", "call_sid": sid, "occurred_at": "2026-11-24T10:00:00Z",
                                     "data": {"component": "llm", "cost": "0.1", "currency": "EUR"}}, f"{sid}-eur")
    assert await Consumer(store, settings, Metrics()).run_burst() >= len(sids)
    dead = await store.dead_letters()
    assert len([row for row in dead if "EUR" in row["reason"]]) == len(sids)
    assert len({row["id"].split("/")[0] for row in dead}) > 1  # several shards hold them
    fixed = make_settings(**common, fx_rates="EUR=2", consumer_name="replayer")
    assert len(await store.replay_dead()) == len(dead)
    replayer = Store.from_settings(fixed)
    assert await Consumer(replayer, fixed, Metrics()).run_burst() == len(dead)
    await replayer.close()
    for sid in sids:
        record = await (await client.get(f"/api/v1/calls/sid/{sid}", headers=AUTH)).json()
        assert record["llm_cost"] == 0.2
    await store.close()
