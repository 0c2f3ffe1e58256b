"""Fan-out and delivery (call_ledger.worker.delivery) against real aiohttp receivers that verify every
message with the `standardwebhooks` library, on fake Redis, with in-test stand-ins for `store.outbox` and
`store.endpoints` (their interfaces exactly as the design names them)."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import fakeredis
import orjson
import pytest
import standardwebhooks.webhooks
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from structlog.testing import capture_logs

from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint, OutboxMessage
from call_ledger.core.policy import Policy
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.web.ssrf import SafeResolver
from call_ledger.worker import delivery as delivery_module
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.delivery import Outbound, now_ms, post
from tests.support.polling import until
from tests.support.redis_server import free_port
from tests.support.settings import AUTH, make_settings
from tests.support.workers import make_event

T = TypeVar("T")


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

    async def get(self, endpoint_id: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)


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

        async def start(self, resolver: AbstractResolver | None = None, endpoints_port: Any = None,
                        **overrides: Any) -> Outbound:
            settings: Settings = make_settings(**{"outbound_allow_private": True, **overrides})
            outbound = Outbound(outbox, endpoints_port or endpoints, self.store.deliveries, settings, Metrics(),
                                resolver)
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
    # Delivered messages can be recovered too, and are sent again with the same id: once the delivery is
    # settled (the receiver has the request a moment before its sender records the answer, and a message
    # being sent is left to that attempt).
    messages = world.store.keys.delivery_messages(endpoint.id)

    async def settled() -> bool:
        raw = await world.store.redis.hget(messages, message(1).id)
        return raw is not None and orjson.loads(raw)["state"] == "delivered"

    await until(settled, 10, "the delivery settled")
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


# -- SSRF at delivery (SPEC §15: checked again at each delivery, against DNS rebinding) ---------------------

async def when(read: Callable[[], Awaitable[T]], check: Callable[[T], bool]) -> T | None:
    """`read()`'s value if it passes `check`, else None: a condition for `until` that hands back what it read."""
    value = await read()
    return value if check(value) else None


class CountingServer:
    """A TCP listener that only counts connections: `post` must refuse without ever connecting."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> int:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def delivery_of(endpoint: Endpoint) -> Any:
    from call_ledger.store.deliveries import Delivery

    return Delivery(endpoint.id, "msg_" + "a" * 32, "call.ended", "CA1", 0, now_ms(), 0, b"{}", 0)


def endpoint_at(url: str, secret: str | None = None) -> Endpoint:
    return Endpoint(id="ep_" + "5" * 24, url=url, events=MESSAGE_TYPES, description="", organization_id=None,
                    secrets=((secret or new_secret(), None),), created_ms=now_ms())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_literal_private_address_is_refused_at_delivery_without_connecting(host: str) -> None:
    listener = CountingServer()
    try:
        port = await listener.start(host)
    except OSError:
        pytest.skip(f"cannot listen on {host} here")
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/hook"
    try:
        async with aiohttp.ClientSession() as session:
            endpoint = endpoint_at(url)
            refused = await post(session, endpoint, delivery_of(endpoint), 5, now_ms(), allow_private=False)
            allowed = await post(session, endpoint, delivery_of(endpoint), 5, now_ms(), allow_private=True)
    finally:
        await listener.stop()
    assert refused.outcome == "refused_address" and refused.status_code is None
    assert refused.error == f"{host} is a loopback address"
    assert allowed.outcome != "refused_address"  # the same URL allowed: it does connect (the listener hangs up)
    assert listener.connections == 1  # that one, and none from the refused attempt


class Rebinding(AbstractResolver):
    """A name that resolved to a public address when the endpoint was created, and now resolves to 127.0.0.1."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


async def test_a_name_rebound_to_a_private_address_is_refused_retried_and_logged_without_the_url(world: Any) -> None:
    receiver = Receiver()
    endpoint = await world.endpoint(receiver)
    port = endpoint.url.split(":")[2].split("/")[0]
    # The receiver really listens on 127.0.0.1:port: only the check stands between the name and it.
    rebound = endpoint_at(f"http://hooks.example.com:{port}/hook?token=s3cret-in-the-query", receiver.secret)
    world.endpoints.endpoints[:] = [rebound]
    inner = Rebinding()
    with capture_logs() as logs:
        await world.start(resolver=SafeResolver(allow_private=False, inner=inner), outbound_allow_private=False,
                          outbound_retry_schedule=(1, 1))
        world.outbox.add(message(1))
        page = await until(lambda: when(lambda: world.store.deliveries.attempts(rebound.id, None, 10),
                                              lambda page: len(page.attempts) == 3), 15, "three attempts")
    assert receiver.attempts == 0 and inner.asked == ["hooks.example.com"] * 3
    attempts = list(reversed(page.attempts))
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, None), (2, None), (3, None)]
    reason = "refused to connect to hooks.example.com: 127.0.0.1 is a loopback address"
    assert all(a["error"] == reason for a in attempts)
    # On schedule: each retry one delay (1 s) after the attempt before; the last one failed.
    assert [a["next_attempt_at"] is None for a in attempts] == [False, False, True]
    lines = [line for line in logs if line["event"] == "outbound_attempt"]
    assert [(line["outcome"], line["attempt"], line["error"]) for line in lines] == [
        ("refused_address", n, reason) for n in (1, 2, 3)]
    assert "s3cret" not in repr(lines) and f"hooks.example.com:{port}" not in repr(lines)  # never the URL


# -- secret rotation, through delivery ------------------------------------------------------------------------

class Recorder:
    """A receiver that keeps each request's headers and body, to verify afterwards."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


async def test_after_a_rotation_messages_verify_under_both_secrets_for_24_hours_then_only_the_new(
        world: Any, aiohttp_server: Any, aiohttp_client: Any, monkeypatch: Any) -> None:
    from call_ledger.app import create_app

    recorder = Recorder()
    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", recorder.handle)
    server = await aiohttp_server(receiver_app)
    api = await aiohttp_client(create_app(make_settings(outbound_allow_private=True), "api", world.store))
    created = await api.post("/api/v1/webhook-endpoints", headers=AUTH, json={"url": str(server.make_url("/hook"))})
    assert created.status == 201
    old = (await created.json())["secret"]
    rotated = await api.post(f"/api/v1/webhook-endpoints/{(await created.json())['id']}/rotate-secret", headers=AUTH)
    assert rotated.status == 200
    new = (await rotated.json())["secret"]
    assert new != old

    await world.start(endpoints_port=world.store.endpoints)
    world.outbox.add(message(1))
    await until(lambda: len(recorder.got) == 1, 10, "a message during the overlap")
    headers, body = recorder.got[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)  # raises if this secret's signature is not there

    # A day and a minute later (the sender's clock, and the receiver's, which checks the timestamp).
    later_ms = 86_400_000 + 60_000
    real_now_ms = now_ms
    monkeypatch.setattr(delivery_module, "now_ms", lambda: real_now_ms() + later_ms)

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "Later":
            return cls.fromtimestamp(time.time() + later_ms / 1000, tz)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", Later)
    world.outbox.add(message(2))
    await until(lambda: len(recorder.got) == 2, 10, "a message after the overlap")
    headers, body = recorder.got[1]
    assert len(headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


# -- metrics -----------------------------------------------------------------------------------------------------

def sample(text: str, name: str, **labels: str) -> float | None:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_metrics_show_an_endpoint_down_piling_up_then_back_at_zero(
        aiohttp_client: Any, store: Store, monkeypatch: Any) -> None:
    """A `deliver` process's /metrics while its endpoint's port has nothing listening: the attempts counted as
    connection errors, the pending messages and the oldest one's age growing; then the endpoint comes up on
    that port, the retries deliver everything, and both gauges are 0."""
    from call_ledger.app import create_app

    monkeypatch.setattr(delivery_module, "STATS_EVERY_S", 0.1)
    monkeypatch.setattr(delivery_module, "SUPERVISE_EVERY_S", 0.1)
    port = free_port()
    endpoint = endpoint_at(f"http://127.0.0.1:{port}/hook")
    assert await store.endpoints.create(endpoint, 50)
    settings = make_settings(outbound_allow_private=True, outbound_retry_schedule=(1,) * 20)
    client = await aiohttp_client(create_app(settings, "deliver", store))
    consumer = Consumer(store, settings, Metrics())

    async def end_calls(*sids: str) -> None:
        for sid in sids:
            await store.append(make_event(sid, "done", 60_000_000, status="completed", duration=60)
                               .model_dump_json().encode())
        await consumer.run_burst()

    async def metrics() -> str:
        return await (await client.get("/metrics")).text()

    def gauges(text: str) -> tuple[float | None, float | None]:
        return (sample(text, "ledger_outbound_pending_messages", endpoint=endpoint.id),
                sample(text, "ledger_outbound_oldest_pending_age_seconds", endpoint=endpoint.id))

    await end_calls("CA-m1", "CA-m2")
    def tried(text: str) -> bool:
        return gauges(text)[0] == 2 and (sample(text, "ledger_outbound_attempts_total",
                                                outcome="connection_error") or 0) >= 2

    text = await until(lambda: when(metrics, tried), 10, "two pending, tried")
    first_age = gauges(text)[1]
    assert first_age is not None
    await asyncio.sleep(1.2)
    await end_calls("CA-m3")
    text = await until(lambda: when(metrics, lambda text: gauges(text)[0] == 3), 10, "three pending")
    assert (gauges(text)[1] or 0) >= first_age + 1  # the oldest has waited a second more
    assert sample(text, "ledger_outbound_attempts_total", outcome="delivered") is None

    got: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        text = await until(lambda: when(metrics, lambda text: gauges(text) == (0.0, 0.0)), 15,
                           "all delivered, nothing pending")
    finally:
        await runner.cleanup()
    assert len(set(got)) == 3
    assert sample(text, "ledger_outbound_attempts_total", outcome="delivered") == 3
    assert (sample(text, "ledger_outbound_attempts_total", outcome="connection_error") or 0) >= 3


@pytest.mark.parametrize(("status", "outcome"), [(200, "delivered"), (503, "http_error")])
async def test_an_answer_whose_body_trickles_counts_by_its_status_not_as_a_timeout(status: int, outcome: str) -> None:
    # The status is the answer; a receiver that then sends its body one byte every half second must not
    # turn a delivered message into a timeout, retried until it is marked failed.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 1000\r\n\r\n".encode())
        try:
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.5)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            endpoint = endpoint_at(f"http://127.0.0.1:{port}/hook")
            result = await post(session, endpoint, delivery_of(endpoint), 1, now_ms())
    finally:
        server.close()
    assert (result.outcome, result.status_code) == (outcome, status)
