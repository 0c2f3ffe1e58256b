"""Record ids stay unique when the id counter goes backwards (SPEC §12): replication is
asynchronous, so a replica promoted after its master died can hold an older `cl:ids` than
the ids the master handed out. The allocator (call_ledger/store/lua/ids.lua) jumps forward whenever the
counter was last advanced on another node or history; these tests make the counter go
backwards, on one server (as a promoted replica would find it) and on a real cluster
(a replica that missed the last increments, then promoted), and check every id is new."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from call_ledger.app import create_app
from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.record_ids import counter_of
from call_ledger.store import Store
from call_ledger.store.records import ID_JUMP
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.cluster import Cluster, replicated_cluster
from tests.support.redis_server import RedisServer
from tests.support.settings import AUTH, make_settings
from tests.support.workers import nth_record_id, record_ids, usage


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


async def counters(store: Store, ids: Any) -> list[int]:
    """The counter values these opaque ids were made from (call_ledger.core.record_ids), in the ids' order."""
    key = await store.redis.get(store.ids_key)
    return [counter_of(key, record_id) for record_id in ids]


async def apply_new_calls(store: Store, sids: list[str]) -> dict[str, int]:
    """One event for each (new) call, applied by a burst-mode worker; the calls' record ids."""
    settings = make_settings(redis_url="redis://unused")
    for sid in sids:
        await store.append(usage(sid, f"{sid}-e1", 0, "llm", 1_000).model_dump_json().encode(), sid)
    await Consumer(store, settings, Metrics()).run_burst()
    return await record_ids(store, sids)


@pytest.mark.real_redis
async def test_a_fresh_store_counts_from_one_and_does_not_jump_without_a_cause(client: Any) -> None:
    store = Store(client)
    ids = await apply_new_calls(store, [f"CA-one-{i}" for i in range(5)])
    assert sorted(await counters(store, ids.values())) == [1, 2, 3, 4, 5]
    assert await counters(store, await store.allocate_ids(3)) == [6, 7, 8]


@pytest.mark.real_redis
async def test_a_counter_that_went_backwards_hands_out_no_id_twice(client: Any, aiohttp_client: Any) -> None:
    store = Store(client)
    first = await apply_new_calls(store, [f"CA-before-{i}" for i in range(30)])
    # What a replica promoted before it received the last increments holds: an older counter,
    # last advanced on its old master (whose replication id is in the fence, not ours).
    await client.set(store.ids, 3)
    await client.set(store.ids_fence, "9" * 40)
    second = await apply_new_calls(store, [f"CA-after-{i}" for i in range(30)])

    ids = [*first.values(), *second.values()]
    assert len(set(ids)) == len(ids) == 60, "two calls share a record id"
    after = sorted(await counters(store, second.values()))
    assert after[0] > ID_JUMP  # it jumped, and counts on from there
    assert after == list(range(after[0], after[0] + 30))

    settings = make_settings(redis_url="redis://unused")
    api = await aiohttp_client(create_app(settings, "api", store))
    for sid, record_id in {**first, **second}.items():
        response = await api.get(f"/api/v1/calls/{record_id}", headers=AUTH)
        assert response.status == 200, (sid, record_id)
        assert (await response.json())["call_sid"] == sid, record_id


@pytest.mark.real_redis
async def test_a_restarted_server_jumps_its_counter_once(redis_server: RedisServer) -> None:
    # A restart gives the server a new replication id: the counter may be older than the ids
    # given (an RDB snapshot from before them), so it jumps; then it counts on by one again.
    connection = aioredis.Redis.from_url(redis_server.url)
    store = Store(connection)
    assert await counters(store, await store.allocate_ids(2)) == [1, 2]
    await connection.aclose()
    redis_server.stop()
    redis_server.start()
    connection = aioredis.Redis.from_url(redis_server.url)
    try:
        store = Store(connection)
        await connection.set(store.ids, 1)  # the snapshot it came back with predates id 2
        assert await counters(store, await store.allocate_ids(2)) == [ID_JUMP + 2, ID_JUMP + 3]
        assert await counters(store, await store.allocate_ids(1)) == [ID_JUMP + 4]
    finally:
        await connection.aclose()


# -- a real failover that loses the counter's last increments --------------------------------

@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with replicated_cluster() as running:
        yield running


def replica_of(cluster: Cluster, master_port: int) -> int:
    nodes = redis.Redis(host="127.0.0.1", port=master_port).cluster("nodes")
    master_id = next(n["node_id"] for addr, n in nodes.items() if addr.endswith(f":{master_port}"))
    return next(int(addr.split(":")[1].split("@")[0]) for addr, n in nodes.items()
                if "slave" in n["flags"] and n["master_id"] == master_id)


async def until_allocated(store: Store, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await store.allocate_ids(count)
        except (RedisError, RedisClusterException, OSError):
            assert time.monotonic() < deadline, "no id allocated after the failover"
            await asyncio.sleep(0.2)


@pytest.mark.real_redis
async def test_ids_stay_unique_when_a_replica_that_missed_increments_is_promoted(cluster: Cluster) -> None:
    connection = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
    try:
        store = Store(connection)
        given = await store.allocate_ids(10)
        master = cluster.master_of(store.ids)
        replica = replica_of(cluster, master)
        replica_client = redis.Redis(host="127.0.0.1", port=replica, single_connection_client=True)
        replica_client.execute_command("READONLY")  # a replica answers reads of its slots
        deadline = time.monotonic() + 10
        last = max(await counters(store, given))
        while int(replica_client.get(store.ids) or 0) != last:  # the replica has these
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # ... but will not get the next ones: it is frozen, and its master drops the link.
        os.kill(cluster.procs[replica].pid, signal.SIGSTOP)
        redis.Redis(host="127.0.0.1", port=master).client_kill_filter(_type="replica")
        given += await store.allocate_ids(10)
        cluster.kill(master)
        os.kill(cluster.procs[replica].pid, signal.SIGCONT)
        cluster.wait_ok()
        assert cluster.master_of(store.ids) == replica
        behind = int(replica_client.get(store.ids) or 0)
        assert behind < max(await counters(store, given)), "the promoted replica was not behind: nothing was tested"

        after = await until_allocated(store, 10)
        after += await store.allocate_ids(5)
        assert not set(after) & set(given), (behind, given, after)
        assert len(set(after)) == 15
    finally:
        await connection.aclose()


# -- a restart of a Redis without persistence ------------------------------------------------------------

# Record ids stay unique across a restart of a Redis without persistence: the counter and its
# fence are gone, so ids.lua starts again at 1, and a worker must not hand out ids it took before
# the restart (a reserve across batches once did: two calls, one id).

async def _apply(store: Store, consumer: Consumer, sids: list[str]) -> dict[str, int]:
    for sid in sids:
        for _ in range(5):  # intake's first append after a restart may answer 503: the provider retries
            try:
                await store.append(usage(sid, f"{sid}-e1", 0, "llm", 1_000).model_dump_json().encode(), sid)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
    await consumer.run_burst()
    return await record_ids(store, sids)


async def test_ids_stay_unique_after_an_empty_redis_restart(redis_server: RedisServer) -> None:
    settings = make_settings(redis_url=redis_server.url)
    store = Store.from_settings(settings)  # the service's client: reconnects after a restart
    a = Consumer(store, settings.model_copy(update={"consumer_name": "a"}), Metrics())
    # The first id (a reserve would hold the next 32 now).
    assert await _apply(store, a, ["CA-before"]) == {"CA-before": await nth_record_id(store)}

    redis_server.stop()
    redis_server.start()  # no persistence: an empty server, same address

    b = Consumer(store, settings.model_copy(update={"consumer_name": "b"}), Metrics())
    ids = {}
    ids.update(await _apply(store, a, ["CA-a1", "CA-a2"]))  # from a's reserve: 2, 3
    ids.update(await _apply(store, b, ["CA-b1", "CA-b2", "CA-b3"]))  # from the counter: 1, 2, 3
    await store.close()
    assert len(set(ids.values())) == len(ids), f"two calls share a record id: {ids}"
