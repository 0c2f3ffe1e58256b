"""The calls API's indexes on a real three-master Redis Cluster (SPEC §12): each shard's keys
share one slot (the index script runs there), the shards spread over the masters, and every
route answers from them."""

import time
from typing import Any

import orjson
import pytest

from call_ledger.app import create_app
from call_ledger.core.indexes import SHARDS
from call_ledger.store import Store
from call_ledger.store.indexes import IndexStore
from call_ledger.store.reindex import reindex
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.calls import ADMIN, ORG7, TOKENS, auth, call
from tests.support.settings import make_settings

pytestmark = pytest.mark.real_redis


async def test_indexes_and_every_calls_route_on_a_cluster(aiohttp_client: Any, cluster_url: str) -> None:
    settings = make_settings(redis_url=cluster_url, redis_cluster=True, api_tokens=TOKENS)
    store = Store.from_settings(settings)
    now = int(time.time() * 1_000_000)
    events = []
    for i in range(40):
        events += call(f"CA-cl-{i}", now - i * 1_000_000, org=7 if i % 2 else 8, assistant=i % 3,
                       name=f"Bot{i % 3}", cost=100_000_000, status="completed" if i % 4 else "failed")
    for e in events:
        await store.append(e.model_dump_json().encode())
    consumer = Consumer(store, settings, Metrics())
    await consumer.run_burst()
    await consumer.run_burst(claim_idle_ms=0)  # nothing left, and a second pass changes nothing
    client = await aiohttp_client(create_app(settings, "api", store))

    async def get(path: str, token: str = ADMIN, **params: Any) -> Any:
        response = await client.get(path, headers=auth(token), params=params)
        assert response.status == 200, await response.text()
        return await response.json()

    seen, cursor = [], None
    while True:
        body = await get("/api/v1/calls", limit=7, **({"cursor": cursor} if cursor else {}))
        assert body["total"] == 40
        seen += [i["call_sid"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"CA-cl-{i}" for i in range(40)]
    org7 = [f"CA-cl-{i}" for i in range(40) if i % 2]
    assert [i["call_sid"] for i in (await get("/api/v1/calls", token=ORG7, limit=100))["items"]] == org7
    assert (await get("/api/v1/calls/count", status="failed"))["count"] == 10
    assert (await get("/api/v1/calls/count", token=ORG7, assistant_id=1))["count"] == len(
        [i for i in range(40) if i % 2 and i % 3 == 1])
    stats = await get("/api/v1/calls/stats", token=ORG7)
    assert (stats["total_calls"], stats["total_duration"]) == (20, 60 * 20)
    analytics = await get("/api/v1/calls/analytics", period="7d")
    assert analytics["total_calls"] == 40 and analytics["total_cost"] == 4
    assert [r["call_sid"] for r in await get("/api/v1/calls/search", q="ca-cl-3", limit=200)] == [
        "CA-cl-3", *(f"CA-cl-{i}" for i in range(30, 40))]  # newest first
    export = await client.get("/api/v1/calls/export", headers=auth(), params={"format": "json"})
    assert [r["call_sid"] for r in orjson.loads(await export.read())] == seen
    record = await get("/api/v1/calls/sid/CA-cl-5")
    assert await get(f"/api/v1/calls/{record['id']}") == record
    assert (await get(f"/api/v1/calls/{record['id']}/costs"))["call_summary"]["total_cost"] == 0.1

    indexes = IndexStore(store.redis)
    nodes = {store.redis.get_node_from_key(indexes.entries_key(shard)).port for shard in range(SHARDS)}
    assert len(nodes) == 3  # the shards really are spread over the masters
    # reindex scans every master's call keys; every entry is current, so nothing is rewritten
    assert await reindex(store, settings) == (40, 0)
    await store.close()
