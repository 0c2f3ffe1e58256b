"""The store's layout mark and the move to layout 3 (call_ledger.store.layout) on a real
redis-server: refused while a connection may belong to a version that does not read layout 3."""

import pytest
import redis.asyncio as aioredis

from call_ledger.core.errors import LayoutMismatch
from call_ledger.store import Store
from call_ledger.store.client import CLIENT_NAME
from call_ledger.store.layout import Blocker, blockers, move_to_short_members
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.real_redis


def test_which_connections_keep_the_store_from_moving() -> None:
    rows = [
        {"addr": "a:1", "name": CLIENT_NAME, "cmd": "xreadgroup"},  # this version: reads 2 and 3
        {"addr": "a:2", "name": "call-ledger/reads-2", "cmd": "client|list"},  # a version reading 2 only
        {"addr": "a:3", "name": "", "cmd": "xreadgroup"},  # an unnamed worker (a version before names)
        {"addr": "a:4", "name": "", "cmd": "evalsha"},  # an unnamed API or worker running a script
        {"addr": "a:5", "name": "", "cmd": "client|list"},  # redis-cli
        {"addr": "a:6", "name": "grafana", "cmd": "info"},  # another named client
        {"addr": "a:7", "name": "call-ledger/reads-3.4", "cmd": "get"},  # a later version
    ]
    assert blockers(rows) == [Blocker("a:2", "call-ledger/reads-2", "client"), Blocker("a:3", "", "xreadgroup"),
                              Blocker("a:4", "", "evalsha")]
    assert "unnamed, last command xreadgroup" in str(blockers(rows)[1])


async def test_the_move_waits_for_every_worker_to_read_layout_3(real_store: Store,
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
        refused = await move_to_short_members(store.redis, store.keys)
        assert refused.after == "2" and [b.command for b in refused.blockers] == ["xreadgroup"]
        assert await store.records.layout() == "2"
        forced = await move_to_short_members(store.redis, store.keys, force=True)
        assert (forced.before, forced.after) == ("2", "3")
    finally:
        await old_worker.aclose()
    assert await store.records.refresh_layout()
    assert (await move_to_short_members(store.redis, store.keys)).after == "3"  # stays

    fresh = Store(store.redis, store.prefix)  # a process starting on the moved store
    await fresh.check_layout()
    assert fresh.records.short_members


async def test_a_fresh_store_starts_in_layout_3(real_store: Store) -> None:
    await real_store.check_layout()
    assert await real_store.records.layout() == "3" and real_store.records.short_members


async def test_the_move_goes_ahead_with_only_this_version_connected(real_store: Store) -> None:
    await real_store.redis.set(real_store.keys.layout, "2")
    await real_store.check_layout()
    move = await move_to_short_members(real_store.redis, real_store.keys)
    assert (move.before, move.after, move.blockers) == ("2", "3", ())


async def test_a_layout_this_version_does_not_read_is_refused_at_start(real_store: Store) -> None:
    await real_store.redis.set(real_store.keys.layout, "4")
    with pytest.raises(LayoutMismatch, match="reads layouts 2 and 3"):
        await real_store.check_layout()
