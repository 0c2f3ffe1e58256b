"""Fan-out and delivery (call_ledger.worker.delivery) against real aiohttp receivers that verify every
message with the `standardwebhooks` library, on fake Redis, with in-test stand-ins for `store.outbox` and
`store.endpoints` (their interfaces exactly as the design names them)."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint, OutboxMessage
from call_ledger.core.policy import Policy
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.delivery import Outbound, now_ms
from tests.support.polling import until
from tests.support.settings import make_settings


@dataclass(frozen=True)
class FakeClaim:
    sid: str
    lease_score: int


class FakeOutbox:
    """`store.outbox`'s fan-out side: claim_due / messages / done, in memory."""

    def __init__(self) -> None:
        self.outboxes: dict[str, dict[str, OutboxMessage]] = {}

    def add(self, message: OutboxMessage) -> None:
        self.outboxes.setdefault(message.call_sid, {})[message.id] = message

    async def claim_due(self, shard: int, now_ms: int, limit: int, lease_ms: int) -> list[FakeClaim]:
        return [FakeClaim(sid, now_ms + lease_ms) for sid, box in self.outboxes.items()
                if box and shard_of(sid) == shard][:limit]

    async def messages(self, sid: str, policy: Policy) -> list[OutboxMessage]:
        return list(self.outboxes.get(sid, {}).values())

    async def done(self, claim: FakeClaim, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self.outboxes[claim.sid].pop(message_id, None)


class FakeEndpoints:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    async def all(self) -> list[Endpoint]:
        return list(self.endpoints)


@dataclass
class Receiver:
    """One endpoint's server: verifies each message, answers as told, remembers what it got."""

    secret: str = field(default_factory=new_secret)
    fail_first: int = 0
    status: int = 200
    delay_s: float = 0.0
    got: list[tuple[str, bytes, float]] = field(default_factory=list)  # (webhook-id, body, when)
    attempts: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    overlap: bool = False  # one message was in flight twice at once

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(self.secret).verify(body, dict(request.headers))  # raises if the signature is wrong
        webhook_id = request.headers["webhook-id"]
        self.attempts += 1
        if self.in_flight.get(webhook_id):
            self.overlap = True
        self.in_flight[webhook_id] = self.in_flight.get(webhook_id, 0) + 1
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.attempts <= self.fail_first or self.status >= 300:
                return web.Response(status=500 if self.status < 300 else self.status)
            self.got.append((webhook_id, body, time.monotonic()))
            return web.Response(status=204)
        finally:
            self.in_flight[webhook_id] -= 1


Start = Callable[..., Any]


@pytest.fixture
async def world(aiohttp_server: Any) -> AsyncIterator[Any]:
    """Receivers, endpoints, an outbox and running `Outbound`s on one fake Redis."""
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    outbox, endpoints = FakeOutbox(), FakeEndpoints()
    running: list[Outbound] = []

    class World:
        def __init__(self) -> None:
            self.outbox, self.endpoints, self.store = outbox, endpoints, Store(redis)

        async def endpoint(self, receiver: Receiver, path: str = "/hook") -> Endpoint:
            app = web.Application()
            app.router.add_post(path, receiver.handle)
            server = await aiohttp_server(app)
            endpoint = Endpoint(id=f"ep_{len(endpoints.endpoints):024x}", url=str(server.make_url(path)),
                                events=MESSAGE_TYPES, description="", organization_id=None,
                                secrets=((receiver.secret, None),), created_ms=now_ms())
            endpoints.endpoints.append(endpoint)
            return endpoint

        async def start(self, **overrides: Any) -> Outbound:
            settings: Settings = make_settings(outbound_allow_private=True, **overrides)
            outbound = Outbound(outbox, endpoints, self.store.deliveries, settings, Metrics())
            await outbound.start()
            running.append(outbound)
            return outbound

    yield World()
    for outbound in running:
        await outbound.stop()
    await redis.aclose()


def message(n: int, kind: str = "call.ended") -> OutboxMessage:
    return OutboxMessage(id=f"msg_{n:032x}", type=kind, revision=0, call_sid=f"CA{n:032x}",  # type: ignore[arg-type]
                         created_ms=now_ms(), organization_id=None, record=b'{"call_sid":"CA","cost":"0.01"}')


async def test_messages_arrive_signed_once_each(world: Any) -> None:
    receiver = Receiver()
    await world.endpoint(receiver)
    await world.start()
    for n in range(5):
        world.outbox.add(message(n))
    await until(lambda: len(receiver.got) == 5, 10, "five messages delivered")
    assert sorted(webhook_id for webhook_id, _, _ in receiver.got) == [message(n).id for n in range(5)]
    assert receiver.got[0][1].startswith(b'{"type":"call.ended","timestamp":')
    assert all(not box for box in world.outbox.outboxes.values())


async def test_a_failing_endpoint_is_retried_by_the_schedule_with_the_same_id(world: Any) -> None:
    receiver = Receiver(fail_first=3)
    endpoint = await world.endpoint(receiver)
    await world.start(outbound_retry_schedule=(0, 0, 0, 0))
    world.outbox.add(message(1))
    await until(lambda: len(receiver.got) == 1, 10, "delivered after three failures")
    assert receiver.attempts == 4 and receiver.got[0][0] == message(1).id
    page = await world.store.deliveries.attempts(endpoint.id, None, 10)
    assert [(a["attempt"], a["status_code"]) for a in page.attempts] == [(4, 204), (3, 500), (2, 500), (1, 500)]


async def test_an_endpoint_down_then_back_gets_its_messages_and_a_failed_one_is_recovered(world: Any) -> None:
    receiver = Receiver(status=503)
    endpoint = await world.endpoint(receiver)
    await world.start(outbound_retry_schedule=(1,))
    world.outbox.add(message(1))
    await until(lambda: receiver.attempts == 2, 10, "two failed attempts")
    await asyncio.sleep(0.3)
    assert receiver.attempts == 2  # the schedule is over: failed, no more tries
    receiver.status = 200
    assert await world.store.deliveries.recover(endpoint.id, 0, now_ms()) == 1
    await until(lambda: len(receiver.got) == 1, 10, "the recovered message delivered")
    assert receiver.got[0][0] == message(1).id  # the original webhook-id
    # Delivered messages can be recovered too, and are sent again with the same id.
    assert await world.store.deliveries.recover(endpoint.id, 0, now_ms()) == 1
    await until(lambda: len(receiver.got) == 2, 10, "sent again")
    assert receiver.got[1][0] == message(1).id and receiver.got[1][1] == receiver.got[0][1]


async def test_slow_and_dead_endpoints_do_not_delay_a_healthy_one(world: Any) -> None:
    """A blackhole (never answers), a 14 s one and a 500 one, each with more messages than their share of
    slots: the healthy endpoint's messages still arrive at once, not after anyone's timeout."""
    blackhole, slow, failing, healthy = Receiver(delay_s=3600), Receiver(delay_s=14), Receiver(status=500), Receiver()
    for receiver in (blackhole, slow, failing, healthy):
        await world.endpoint(receiver)
    await world.start(outbound_concurrency=16, outbound_per_endpoint=4, outbound_timeout_s=15)
    for n in range(20):
        world.outbox.add(message(n))
    await until(lambda: blackhole.attempts >= 4 and slow.attempts >= 4, 10, "the slow ones busy")
    started = time.monotonic()
    for n in range(100, 110):
        world.outbox.add(message(n))
    await until(lambda: len(healthy.got) == 30, 10, "the healthy endpoint's messages")
    took = max(when for _, _, when in healthy.got) - started
    assert took < 5, f"the healthy endpoint waited {took:.1f} s"
    assert blackhole.attempts == 4 and slow.attempts == 4  # at most their own share in flight


async def test_two_processes_never_send_one_message_at_once(world: Any) -> None:
    receiver = Receiver(delay_s=0.05, fail_first=10)
    await world.endpoint(receiver)
    for _ in range(2):
        await world.start(outbound_retry_schedule=(0,) * 10)
    for n in range(30):
        world.outbox.add(message(n))
    await until(lambda: len({webhook_id for webhook_id, _, _ in receiver.got}) == 30, 20, "all delivered")
    assert not receiver.overlap
    assert len(receiver.got) == 30  # each delivered once: a settled message is never claimed again


async def test_the_deliver_role_serves_health_and_metrics_only(aiohttp_client: Any, store: Store) -> None:
    from call_ledger.app import create_app

    client = await aiohttp_client(create_app(make_settings(), "deliver", store))
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "ledger_outbound_attempts_total" in metrics or "ledger_outbound_attempts" in metrics
    assert (await client.get("/openapi.json")).status == 404
    assert (await client.post("/webhooks/platform", data=b"{}")).status == 404
