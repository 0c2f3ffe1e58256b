"""The store's layout mark and the move to a later layout (call_ledger.store.layout) on a real
redis-server: refused while a connection may belong to a version that does not read it."""

import pytest
import redis.asyncio as aioredis

from call_ledger.core.errors import LayoutMismatch
from call_ledger.store import Store
from call_ledger.store.client import CLIENT_NAME
from call_ledger.store.layout import Blocker, blockers, upgrade_layout
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.real_redis


def test_which_connections_keep_the_store_from_moving() -> None:
    rows = [
        {"addr": "a:1", "name": CLIENT_NAME, "cmd": "xreadgroup"},  # this version: reads 2, 3, 4 and 5
        {"addr": "a:2", "name": "call-ledger/reads-2", "cmd": "client|list"},  # a version reading 2 only
        {"addr": "a:3", "name": "", "cmd": "xreadgroup"},  # an unnamed worker (a version before names)
        {"addr": "a:4", "name": "", "cmd": "evalsha"},  # an unnamed API or worker running a script
        {"addr": "a:5", "name": "", "cmd": "client|list"},  # redis-cli
        {"addr": "a:6", "name": "grafana", "cmd": "info"},  # another named client
        {"addr": "a:7", "name": "call-ledger/reads-3.4.5.6", "cmd": "get"},  # a later version
        {"addr": "a:10", "name": "call-ledger/reads-2.3.4", "cmd": "xreadgroup"},  # the release before this one
        {"addr": "a:8", "name": "", "cmd": "xpending", "db": "0"},  # an idle worker's maintenance
        {"addr": "a:9", "name": "", "cmd": "xreadgroup", "db": "1"},  # another deployment's database
    ]
    assert blockers(rows) == [Blocker("a:2", "call-ledger/reads-2", "client"), Blocker("a:3", "", "xreadgroup"),
                              Blocker("a:4", "", "evalsha"), Blocker("a:10", "call-ledger/reads-2.3.4", "xreadgroup"),
                              Blocker("a:8", "", "xpending")]
    # The release before this one reads layout 4: it keeps a store from 5, not from 4.
    assert Blocker("a:10", "call-ledger/reads-2.3.4", "xreadgroup") not in blockers(rows, layout="4")
    assert blockers(rows, db=1) == [Blocker("a:9", "", "xreadgroup")]
    assert "unnamed, last command xreadgroup" in str(blockers(rows)[1])


async def test_the_move_waits_for_every_worker_to_read_the_newest_layout(real_store: Store,
                                                                redis_server: RedisServer) -> None:
    store = real_store
    await store.redis.set(store.keys.layout, "2")  # a store the previous release wrote
    await store.check_layout()
    assert await store.records.layout() == "2" and not store.records.short_members
    assert CLIENT_NAME in {client["name"] for client in await store.redis.client_list()}  # its own connections

    old_worker = aioredis.Redis.from_url(redis_server.url)  # a worker of a version before this one
    await store.ensure_group()
    await old_worker.xreadgroup("ledger", "old", {store.stream: ">"}, count=1)
    try:
        refused = await upgrade_layout(store.redis, store.keys, samples=2, every_s=0.05)
        assert refused.after == "2" and [b.command for b in refused.blockers] == ["xreadgroup"]
        assert await store.records.layout() == "2"
        forced = await upgrade_layout(store.redis, store.keys, force=True)
        assert (forced.before, forced.after) == ("2", "5")
    finally:
        await old_worker.aclose()
    await store.records.refresh_layout()
    assert await store.records.refresh_layout() == "5" and store.records.payload_index  # at the second read
    assert (await upgrade_layout(store.redis, store.keys)).after == "5"  # stays
    assert (await upgrade_layout(store.redis, store.keys, to="3")).after == "5"  # never back

    fresh = Store(store.redis, store.prefix)  # a process starting on the moved store
    await fresh.check_layout()
    assert fresh.records.short_members and fresh.records.plain_state and fresh.records.payload_index


async def test_the_release_before_keeps_a_store_in_layout_3_until_it_stops(real_store: Store,
                                                                          redis_server: RedisServer) -> None:
    """A connection named as the release before this one names its own (it reads 2 and 3): a store without
    a mark becomes 3, which that release reads, and moves to 4 only once it is gone."""
    previous = aioredis.Redis.from_url(redis_server.url, client_name="call-ledger/reads-2.3")
    await previous.ping()
    try:
        await real_store.check_layout()
        assert await real_store.records.layout() == "3" and not real_store.records.plain_state
        refused = await upgrade_layout(real_store.redis, real_store.keys, samples=1)
        assert refused.after == "3" and [b.name for b in refused.blockers] == ["call-ledger/reads-2.3"]
    finally:
        await previous.aclose()
    assert (await upgrade_layout(real_store.redis, real_store.keys, samples=1)).after == "5"


async def test_the_release_before_keeps_a_store_in_layout_4_until_it_stops(real_store: Store,
                                                                          redis_server: RedisServer) -> None:
    """The release before this one reads 2, 3 and 4: its index script undoes an entry from the rollups stored
    after its payload, which layout 5 leaves out. A store without a mark becomes 4, and moves to 5 once it
    is gone."""
    previous = aioredis.Redis.from_url(redis_server.url, client_name="call-ledger/reads-2.3.4")
    await previous.ping()
    try:
        await real_store.check_layout()
        assert await real_store.records.layout() == "4" and real_store.records.plain_state
        assert not real_store.records.payload_index
        refused = await upgrade_layout(real_store.redis, real_store.keys, samples=1)
        assert refused.after == "4" and [b.name for b in refused.blockers] == ["call-ledger/reads-2.3.4"]
    finally:
        await previous.aclose()
    assert (await upgrade_layout(real_store.redis, real_store.keys, samples=1)).after == "5"


async def test_a_fresh_store_starts_in_layout_5(real_store: Store) -> None:
    await real_store.check_layout()
    assert await real_store.records.layout() == "5" and real_store.records.plain_state
    assert real_store.records.payload_index and real_store.records.short_members


async def test_the_move_goes_ahead_with_only_this_version_connected(real_store: Store) -> None:
    await real_store.redis.set(real_store.keys.layout, "2")
    await real_store.check_layout()
    move = await upgrade_layout(real_store.redis, real_store.keys)
    assert (move.before, move.after, move.blockers) == ("2", "5", ())


async def test_a_layout_this_version_does_not_read_is_refused_at_start(real_store: Store) -> None:
    await real_store.redis.set(real_store.keys.layout, "6")
    with pytest.raises(LayoutMismatch, match="reads layouts 2, 3, 4 and 5"):
        await real_store.check_layout()


async def test_a_store_without_a_mark_stays_layout_2_while_an_earlier_version_is_connected(
        real_store: Store, redis_server: RedisServer) -> None:
    """Its data lost (FLUSHALL) under a fleet that still runs an earlier version: that version's workers
    recognise long members only, so the first process of this one to start marks it 2, not 5."""
    await real_store.ensure_group()
    old_worker = redis_server.client()
    old_worker.xreadgroup("ledger", "old", {real_store.stream: ">"}, count=1)
    try:
        await real_store.check_layout()
    finally:
        old_worker.close()
    assert await real_store.records.layout() == "2" and not real_store.records.short_members


async def test_a_mark_lost_while_running_is_put_back_as_the_process_writes(real_store: Store) -> None:
    await real_store.check_layout()
    assert real_store.records.payload_index
    await real_store.redis.delete(real_store.keys.layout)
    assert await real_store.records.refresh_layout() == "5"
    assert await real_store.records.layout() == "5"  # not taken for layout 2 by an earlier version starting


async def test_without_client_list_a_new_store_is_layout_2_and_the_move_needs_force(
        real_store: Store, redis_server: RedisServer) -> None:
    admin = redis_server.client()
    admin.acl_setuser("nolist", enabled=True, nopass=True, keys=["*"], commands=["+@all", "-client|list"])
    admin.close()
    store = Store(aioredis.Redis.from_url(redis_server.url.replace("redis://", "redis://nolist:x@")), "cl")
    try:
        await store.check_layout()
        assert await store.records.layout() == "2"
        refused = await upgrade_layout(store.redis, store.keys)
        assert refused.after == "2" and "client|list" in refused.unknown.lower()
        assert (await upgrade_layout(store.redis, store.keys, force=True)).after == "5"
    finally:
        await store.close()
