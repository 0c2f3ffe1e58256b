"""An index update Redis refuses for a transient reason (out of memory here) leaves the batch
pending, not acknowledged: on one server the acks after the index scripts are a script that Redis
refuses too, where a plain XACK would run (it is not refused for memory)."""

from typing import Any

import pytest
from redis.exceptions import OutOfMemoryError

from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.index_dump import dump_indexes
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import make_event


async def test_an_index_update_refused_for_memory_is_not_acknowledged(redis_server: RedisServer) -> None:
    settings = make_settings(redis_url=redis_server.url)
    store = Store.from_settings(settings)
    consumer = Consumer(store, settings, Metrics())
    commit = store.commit

    async def commit_then_memory_full(writes: Any) -> Any:
        result = await commit(writes)
        await store.redis.config_set("maxmemory", "1")  # the commit's writes passed the limit
        return result

    store.commit = commit_then_memory_full  # type: ignore[method-assign]
    await store.append(make_event("CA-oom", "s1", 0, status="completed", duration=30).model_dump_json().encode())
    with pytest.raises(OutOfMemoryError):  # the batch stays pending (the service's loop logs it, backs off)
        await consumer.run_burst()
    assert (await store.group_stats())[1] == 1  # pending, not acknowledged
    await store.redis.config_set("maxmemory", "0")  # memory freed again
    store.commit = commit  # type: ignore[method-assign]
    await consumer.run_burst(claim_idle_ms=0)  # anything left pending is retried now
    assert await store.get_call("CA-oom") is not None
    indexed = await dump_indexes(store.redis)
    pending = await store.group_stats()
    await store.close()
    assert indexed, f"the call is committed but in no index; pending/lag {pending}"
