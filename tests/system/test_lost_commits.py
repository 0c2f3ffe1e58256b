"""When Redis comes back without a worker's last commit (a node restarted from an older snapshot,
a promoted replica that had not received it), nothing the worker cached about that commit is
trusted: a redelivered event is applied again, not taken for a duplicate, and a version that
another worker reached by another history is a conflict (the commit token)."""

import asyncio

from call_ledger.core.errors import StoreUnavailable
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import usage


async def _append(store: Store, raw: bytes, sid: str) -> None:
    for _ in range(20):  # the first append after a restart may answer 503: the provider retries
        try:
            await store.append(raw, sid)
            return
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("append never succeeded")


async def test_an_event_whose_commit_redis_lost_is_applied_when_redelivered(redis_server: RedisServer) -> None:
    settings = make_settings(redis_url=redis_server.url)
    store = Store.from_settings(settings)
    worker = Consumer(store, settings.model_copy(update={"consumer_name": "w"}), Metrics())
    await _append(store, usage("CA-lost", "u1", 0, "llm", 5).model_dump_json().encode(), "CA-lost")
    await worker.run_burst()
    await _append(store, usage("CA-lost", "u2", 1, "llm", 7).model_dump_json().encode(), "CA-lost")
    await store.redis.save()  # the snapshot holds u2's entry (answered 2xx), not yet applied
    await worker.run_burst()  # u2 committed and acknowledged: the worker caches its key
    assert (await store.get_call("CA-lost") or (0, None))[1].costs == {"llm": 12}

    redis_server.stop()  # --save "": nothing more is written; the restart loads the snapshot
    redis_server.start()

    for _ in range(20):
        try:
            await worker.run_burst()  # u2's entry, never acknowledged in this history
            break
        except Exception:
            await asyncio.sleep(0.1)
    found = await store.get_call("CA-lost")
    pending = await store.redis.xpending("cl:events", "ledger")
    await store.close()
    assert found is not None
    assert found[1].costs == {"llm": 12}, f"u2 lost: record {found[1].costs}, pending {pending['pending']}"


async def test_a_record_is_the_fold_of_its_journal_after_redis_lost_a_commit(redis_server: RedisServer) -> None:
    """The version alone is the compare-and-set: when Redis comes back without a worker's last
    commit (older snapshot, promoted replica) and another worker commits a different event, the
    call is back at the version the first worker cached, with other events. The first worker's
    next commit passes the check and writes its cached state over it: the record counts an event
    that is in no journal and misses one that is. (The cache was version-keyed before this change
    too; the decoded state makes no difference here.)"""
    settings = make_settings(redis_url=redis_server.url)
    a_store, b_store = Store.from_settings(settings), Store.from_settings(settings)
    a = Consumer(a_store, settings.model_copy(update={"consumer_name": "a"}), Metrics())
    b = Consumer(b_store, settings.model_copy(update={"consumer_name": "b"}), Metrics())
    await _append(a_store, usage("CA-aba", "u1", 0, "llm", 1).model_dump_json().encode(), "CA-aba")
    await a.run_burst()
    await a_store.redis.save()  # the snapshot: the call at version 1
    await _append(a_store, usage("CA-aba", "u2", 1, "llm", 10).model_dump_json().encode(), "CA-aba")
    await a.run_burst()  # a caches the call at version 2 = {u1, u2}
    redis_server.stop()
    redis_server.start()  # back at version 1; u2 is gone with the writes after the snapshot
    await _append(b_store, usage("CA-aba", "u3", 2, "llm", 100).model_dump_json().encode(), "CA-aba")
    for _ in range(20):
        try:
            await b.run_burst()  # version 2 = {u1, u3}
            break
        except Exception:
            await asyncio.sleep(0.1)
    await _append(a_store, usage("CA-aba", "u4", 3, "llm", 1000).model_dump_json().encode(), "CA-aba")
    for _ in range(20):
        try:
            await a.run_burst()
            break
        except Exception:
            await asyncio.sleep(0.1)
    found = await a_store.get_call("CA-aba")
    journal = sorted(await a_store.applied_keys("CA-aba"))
    await a_store.close()
    await b_store.close()
    assert found is not None
    expected = {"platform:u1": 1, "platform:u2": 10, "platform:u3": 100, "platform:u4": 1000}
    assert found[1].costs == {"llm": sum(expected[k] for k in journal)}, (
        f"journal {journal}, record llm cost {found[1].costs}")
