"""Record ids stay unique across a restart of a Redis without persistence: the counter and its
fence are gone, so ids.lua starts again at 1, and a worker must not hand out ids it took before
the restart (a reserve across batches once did: two calls, one id)."""

import asyncio

from call_ledger.core.errors import StoreUnavailable
from call_ledger.store.records import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import nth_record_id, record_ids, usage


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
