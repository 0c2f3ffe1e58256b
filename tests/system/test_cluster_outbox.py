"""Outbound call events on a real three-node Redis Cluster: the commit's fourth key (the call's outbox)
shares the call's slot, the schedules live in their index shard's slot, and the finalizer and fan-out
calls each touch one slot (SPEC §15)."""

import time
from typing import Any

import pytest

from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.delivery import Outbound
from call_ledger.worker.outbound import Finalizer
from tests.support.polling import until
from tests.support.receivers import verifying_receiver
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage

pytestmark = pytest.mark.real_redis
S = 1_000_000


async def test_calls_over_every_node_announce_finalize_and_revise_on_a_cluster(cluster_url: str) -> None:
    settings = make_settings(redis_url=cluster_url, redis_cluster=True)
    store = Store.from_settings(settings)
    sids = [f"CA-cluster-outbox-{i}" for i in range(30)]
    try:
        for sid in sids:
            for event in (make_event(sid, "s1", 0, status="ongoing"), usage(sid, "u1", S, "llm", 1000),
                          make_event(sid, "s2", 60 * S, status="completed", duration=60)):
                await store.append(event.model_dump_json().encode())
        consumer = Consumer(store, settings, Metrics())
        assert await consumer.run_burst() == 90
        nodes = {store.redis.get_node_from_key(store.keys.outbox(sid)).port for sid in sids}
        assert len(nodes) == 3  # the outboxes really are spread over the cluster
        for sid in sids:
            [message] = await store.outbox.messages(sid, settings.policy)
            assert (message.type, message.revision) == ("call.ended", 0)
        # Every call is finalized once, however many finalizers run.
        finalizers = [Finalizer(store, settings, Metrics()) for _ in range(2)]
        assert sum([await finalizer.run_once(10**13) for finalizer in finalizers]) == len(sids)
        # A late cost revises each; fan-out empties every outbox.
        for sid in sids:
            await store.append(usage(sid, "u2", 2 * S, "tts", 2000).model_dump_json().encode())
        await consumer.run_burst()
        fanned_out = 0
        for shard in range(16):
            for claim in await store.outbox.claim_due(shard, 10**13, 100, 30_000):
                messages = await store.outbox.messages(claim.sid, settings.policy)
                assert [(m.type, m.revision) for m in messages] == [
                    ("call.ended", 0), ("call.finalized", 1), ("call.revised", 2)]
                await store.outbox.done(claim, [m.id for m in messages])
                fanned_out += 1
        assert fanned_out == len(sids)
        for sid in sids:
            assert await store.redis.hgetall(store.keys.outbox(sid)) == {}
            assert await store.redis.zscore(store.keys.outbox_due(shard_of(sid)), sid) is None
    finally:
        await store.close()


async def test_one_call_is_delivered_end_to_end_on_a_cluster(cluster_url: str, aiohttp_server: Any) -> None:
    """The whole outbound path on three masters: the endpoint registry, the commit's outbox, fan-out, the
    endpoint's queue (its own slot: `cl:wh:{<ep>}:*`), the delivery and its attempts log."""
    secret = new_secret()
    server, got = await verifying_receiver(aiohttp_server, secret)
    settings = make_settings(redis_url=cluster_url, redis_cluster=True, outbound_allow_private=True)
    store = Store.from_settings(settings)
    endpoint = Endpoint(id="ep_" + "c" * 24, url=str(server.make_url("/hook")), events=MESSAGE_TYPES,
                        description="", organization_id=None, secrets=((secret, None),),
                        created_ms=int(time.time() * 1000))
    outbound = Outbound(store.outbox, store.endpoints, store.deliveries, settings, Metrics())
    try:
        assert await store.endpoints.create(endpoint, 50)
        assert [e.id for e in await store.endpoints.all()] == [endpoint.id]
        sid = "CA-cluster-delivered"
        await store.append(make_event(sid, "s1", 60 * S, status="completed", duration=60).model_dump_json().encode())
        consumer = Consumer(store, settings, Metrics(), fanout_due=outbound.due)
        await outbound.start()
        assert await consumer.run_burst() == 1
        await until(lambda: len(got) == 1, 15, "call.ended delivered")
        assert got[0][1]["type"] == "call.ended" and got[0][1]["data"]["call"]["call_sid"] == sid
        async def logged() -> Any:
            page = await store.deliveries.attempts(endpoint.id, None, 10)
            return page if page.attempts else None

        page = await until(logged, 10, "the attempt logged")
        assert [(a["message_id"], a["status_code"], a["attempt"]) for a in page.attempts] == [(got[0][0], 204, 1)]
        nodes = {store.redis.get_node_from_key(key).port for key in (
            store.keys.outbox(sid), store.keys.delivery_messages(endpoint.id), store.keys.endpoints)}
        assert len(nodes) >= 2  # the call's slot and the endpoint's are not one node's
    finally:
        await outbound.stop()
        await store.close()
