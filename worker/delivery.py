"""Outbound call events, sent (SPEC §15): fan-out from the calls' outboxes to each endpoint's queue, and one
delivery loop per endpoint that posts its messages, signed with Standard Webhooks, and retries them.

    FanOut         the outbox index's due calls (store.outbox.claim_due) -> each message to every endpoint
                   that wants it (store.deliveries.enqueue_all) -> the outbox emptied (store.outbox.done)
    EndpointLoop   one endpoint: claim what is due (a lease per message), post it, settle the attempt
    DeliveryLoops  the endpoints' loops, started and stopped as endpoints come and go; the metrics; retention
    Outbound       both loops for an app's lifetime (serve, worker, deliver)

Isolation: an endpoint's loop holds at most LEDGER_OUTBOUND_PER_ENDPOINT requests, the process at most
LEDGER_OUTBOUND_CONCURRENCY (one pool of slots and one connection pool of that size), and every request
ends within LEDGER_OUTBOUND_TIMEOUT_S: a slow or dead endpoint occupies its own share and nothing else.
Memory is bounded by the same numbers: at most that many bodies in hand, each response read to at most
64 KiB and thrown away. Several processes may run all of this at once: the outbox claims and the delivery
leases (call_ledger.store.deliveries) keep any one message in at most one process's hands.
"""

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver

from call_ledger.core.indexes import SHARDS
from call_ledger.core.outbound import Endpoint, OutboxMessage, iso_ms, retry_delay
from call_ledger.core.policy import Policy
from call_ledger.core.standard_webhooks import signature_header, signing_key
from call_ledger.settings import Settings
from call_ledger.store.deliveries import Deliveries, Delivery, Enqueue, Outcome, State
from call_ledger.web.metrics import Metrics
from call_ledger.web.ssrf import AddressRefused, host_refusal

log = structlog.get_logger("ledger.outbound")

# How long an endpoint list read from Redis is used before it is read again (design: at most 2 s).
ENDPOINTS_TTL_S = 2.0
# Fan-out: calls claimed per shard per round, how long a claim is ours, how often an idle loop looks.
FANOUT_BATCH = 100
FANOUT_LEASE_MS = 30_000
FANOUT_IDLE_S = 0.2
# An endpoint loop with nothing due looks again at least this often (another process may have enqueued).
DELIVERY_IDLE_S = 1.0
# A delivery's lease is the request's timeout and this margin: the request has surely ended by then.
LEASE_MARGIN_MS = 5_000
# What is read of a response body (then discarded): an endpoint cannot make us hold more.
RESPONSE_READ_LIMIT = 64 * 1024
# The delivery supervisor's rounds: endpoints and metrics, and retention.
SUPERVISE_EVERY_S = 1.0
STATS_EVERY_S = 5.0
TRIM_EVERY_S = 600.0


# -- what delivery needs of the store's other parts (store.outbox: P; store.endpoints: E) -------------------

class OutboxClaimLike(Protocol):
    @property
    def sid(self) -> str: ...


class OutboxPort(Protocol):
    """`store.outbox` as fan-out uses it (call_ledger.store.outbox)."""

    async def claim_due(self, shard: int, now_ms: int, limit: int, lease_ms: int) -> Sequence[Any]: ...

    async def messages(self, sid: str, policy: Policy) -> list[OutboxMessage]: ...

    async def done(self, claim: Any, message_ids: list[str]) -> None: ...


class EndpointsPort(Protocol):
    """`store.endpoints` as delivery uses it (call_ledger.store.endpoints)."""

    async def all(self) -> list[Endpoint]: ...

    async def get(self, endpoint_id: str) -> Endpoint | None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class EndpointCache:
    """`store.endpoints.all()`: read fresh by fan-out once per round, and again when older than ENDPOINTS_TTL_S
    by the delivery loops' supervisor (a new endpoint's loop starts, a deleted one's stops, within the TTL)."""

    def __init__(self, endpoints: EndpointsPort, ttl_s: float = ENDPOINTS_TTL_S) -> None:
        self.endpoints = endpoints
        self.ttl_s = ttl_s
        self._list: list[Endpoint] = []
        self._read_at = -float("inf")

    async def get(self) -> list[Endpoint]:
        """The list, read again if older than the TTL (the delivery loops' supervisor)."""
        if time.monotonic() - self._read_at >= self.ttl_s:
            await self.refresh()
        return self._list

    async def refresh(self) -> list[Endpoint]:
        """The list read now (fan-out, once per round with something to fan out)."""
        self._list = await self.endpoints.all()
        self._read_at = time.monotonic()
        return self._list


# -- fan-out -------------------------------------------------------------------------------------------------

class FanOut:
    """Copies each call's outbox messages into the queue of every endpoint that wants them, then empties
    the outbox. At least once, never twice: enqueue is idempotent per endpoint and message, and the outbox
    is emptied only after every copy is queued (a crash in between re-runs the copy, which adds nothing)."""

    def __init__(self, outbox: OutboxPort, deliveries: Deliveries, endpoints: EndpointCache, policy: Policy,
                 wake: Callable[[str], None] = lambda endpoint_id: None) -> None:
        self.outbox = outbox
        self.deliveries = deliveries
        self.endpoints = endpoints
        self.policy = policy
        self.wake = wake

    async def run_once(self, now: int) -> int:
        """One round over the 16 outbox shards; how many messages were fanned out. The endpoints are read once
        per round that has something to fan out, after its first claim: an endpoint created before a message
        was claimed receives it (a cached list would miss endpoints created in the last seconds)."""
        fanned = 0
        endpoints: list[Endpoint] | None = None
        for shard in range(SHARDS):
            for claim in await self.outbox.claim_due(shard, now, FANOUT_BATCH, FANOUT_LEASE_MS):
                try:
                    if endpoints is None:
                        endpoints = await self.endpoints.refresh()
                    fanned += await self.fan(claim, now, endpoints)
                except Exception as exc:  # this call's claim runs out and it is fanned out again
                    log.error("outbound_fanout_error", call_sid=claim.sid, error=f"{type(exc).__name__}: {exc}")
        return fanned

    async def fan(self, claim: OutboxClaimLike, now: int, endpoints: list[Endpoint]) -> int:
        messages = await self.outbox.messages(claim.sid, self.policy)
        items = [Enqueue(endpoint.id, message) for message in messages for endpoint in endpoints
                 if endpoint.wants(message)]
        await self.deliveries.enqueue_all(items, now)
        await self.outbox.done(claim, [message.id for message in messages])
        for endpoint_id in {item.endpoint_id for item in items}:
            self.wake(endpoint_id)  # this process's loop sends it now, not at its next look
        return len(messages)


# -- delivery --------------------------------------------------------------------------------------------------

class Slots:
    """The process's requests in flight, across endpoints (LEDGER_OUTBOUND_CONCURRENCY). Slots are taken
    before a claim, so a claimed message never waits for one (its lease runs from the claim)."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._starved: set[asyncio.Event] = set()

    def take(self, want: int, wake: asyncio.Event) -> int:
        taken = min(want, self.free)
        self.free -= taken
        if taken < want:
            self._starved.add(wake)  # woken when a slot comes back
        return taken

    def give(self, count: int) -> None:
        if count <= 0:
            return
        self.free += count
        starved, self._starved = self._starved, set()
        for wake in starved:
            wake.set()


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST came to: the metric's outcome, the status code if the endpoint answered, else why not."""

    outcome: str  # delivered, http_error, timeout, connection_error, refused_address
    status_code: int | None = None
    error: str | None = None


async def post(session: aiohttp.ClientSession, endpoint: Endpoint, delivery: Delivery, timeout_s: float,
               now: int, allow_private: bool = True) -> AttemptResult:
    """POST one message, signed with every current secret of the endpoint (newest first); never follows a
    redirect, never waits longer than `timeout_s`, reads at most 64 KiB of the answer. Unless `allow_private`,
    a literal IP host is checked here (aiohttp asks its resolver only about names: SafeResolver checks those)."""
    if not allow_private and (refused := host_refusal(urlsplit(endpoint.url).hostname or "")):
        return AttemptResult("refused_address", error=refused)
    timestamp = str(now // 1000)
    keys = [signing_key(secret) for secret in endpoint.current_secrets(now)]
    headers = {"content-type": "application/json", "user-agent": "call-ledger",
               "webhook-id": delivery.message_id, "webhook-timestamp": timestamp,
               "webhook-signature": signature_header(keys, delivery.message_id, timestamp, delivery.body)}
    answered: list[int] = []  # the status, once the answer's head has arrived
    try:
        async with asyncio.timeout(timeout_s + 0.5):  # aiohttp's own total timeout, made certain
            async with session.post(endpoint.url, data=delivery.body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                answered.append(response.status)
                read = 0
                while read < RESPONSE_READ_LIMIT and (chunk := await response.content.read(RESPONSE_READ_LIMIT)):
                    read += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if answered:  # the status came; only its body was slow or cut: the answer is the status
            return _answered(answered[0])
        return _failed(exc, timeout_s)
    return _answered(answered[0])


def _answered(status: int) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult("delivered", status_code=status)
    return AttemptResult("http_error", status_code=status)


def _failed(exc: BaseException, timeout_s: float) -> AttemptResult:
    """What an attempt that got no answer came to."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return AttemptResult("timeout", error=f"no answer within {timeout_s:g} s")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # A name that does not resolve is a gaierror; the SSRF resolver (call_ledger.web.ssrf) refuses with
        # another OSError, naming the address it refused.
        if isinstance(exc.os_error, socket.gaierror) and not isinstance(exc.os_error, AddressRefused):
            return AttemptResult("connection_error", error=f"dns: {exc.os_error}")
        return AttemptResult("refused_address", error=str(exc.os_error))
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, AddressRefused):
            return AttemptResult("refused_address", error=str(exc.os_error))
        return AttemptResult("connection_error", error=str(exc.os_error))
    return AttemptResult("connection_error", error=type(exc).__name__)


def outcome_of(delivery: Delivery, result: AttemptResult, schedule: tuple[int, ...], now: int) -> Outcome:
    """The message's state after this attempt: delivered, tried again after the schedule's next delay, or
    failed after the last."""
    attempt = delivery.attempts + 1
    state: State
    next_ms = None
    if result.outcome == "delivered":
        state = "delivered"
    elif (delay := retry_delay(attempt, schedule)) is None:
        state = "failed"
    else:
        state, next_ms = "pending", now + delay * 1000
    return Outcome(attempt, state, next_ms, now, result.status_code, result.error)


class EndpointLoop:
    """One endpoint's deliveries in this process: at most `per_endpoint` in flight, each under a lease."""

    def __init__(self, endpoint: Endpoint, owner: "DeliveryLoops") -> None:
        self.endpoint = endpoint  # replaced by the supervisor when the endpoint changes (a rotated secret)
        self.owner = owner
        self.wake = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"delivery {self.endpoint.id}")

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let the requests in flight end (bounded), then cancel what is left: a cancelled
        request's lease runs out and the message is sent again."""
        self._stopping = True
        self.wake.set()
        if self._task is not None:
            await self._task
        if self._inflight:
            _, left = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                wait_s = await self.step()
            except Exception as exc:  # Redis away: keep the loop, look again soon
                log.error("outbound_claim_error", endpoint_id=self.endpoint.id, error=f"{type(exc).__name__}: {exc}")
                wait_s = DELIVERY_IDLE_S
            if wait_s > 0:
                try:
                    await asyncio.wait_for(self.wake.wait(), wait_s)
                except TimeoutError:
                    pass
            self.wake.clear()

    async def step(self) -> float:
        """Claim what is due, as far as this endpoint's and the process's slots allow, and start sending it;
        how long to wait before looking again (a finished request or fan-out wakes us sooner)."""
        owner = self.owner
        want = owner.settings.outbound_per_endpoint - len(self._inflight)
        if want <= 0:
            return DELIVERY_IDLE_S
        taken = owner.slots.take(want, self.wake)
        if not taken:
            return DELIVERY_IDLE_S
        now = now_ms()
        try:
            claimed = await owner.deliveries.claim(self.endpoint.id, now, taken, owner.lease_ms)
        except BaseException:
            owner.slots.give(taken)
            raise
        owner.slots.give(taken - len(claimed.deliveries))
        if claimed.deliveries:
            # Read the endpoint as it is now, not as the supervisor last saw it: a message sent just after
            # a rotation carries the new secret's signature too. A deleted endpoint sends nothing (its
            # queue is gone; the leases run out on keys nobody reads).
            try:
                fresh = await owner.endpoints.endpoints.get(self.endpoint.id)
            except BaseException:
                owner.slots.give(len(claimed.deliveries))  # their leases run out; they are sent again
                raise
            if fresh is None:
                owner.slots.give(len(claimed.deliveries))
                return DELIVERY_IDLE_S
            self.endpoint = fresh
        for delivery in claimed.deliveries:
            task = asyncio.create_task(self._deliver(delivery))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if len(claimed.deliveries) == taken:
            return 0.0  # there may be more due
        if claimed.next_due_ms is None:
            return DELIVERY_IDLE_S
        return min(DELIVERY_IDLE_S, max(0.01, (claimed.next_due_ms - now) / 1000))

    async def _deliver(self, delivery: Delivery) -> None:
        owner = self.owner
        try:
            endpoint = self.endpoint
            result = await post(owner.session, endpoint, delivery, owner.settings.outbound_timeout_s, now_ms(),
                                owner.settings.outbound_allow_private)
            outcome = outcome_of(delivery, result, owner.settings.outbound_retry_schedule, now_ms())
            owner.metrics.labelled(owner.metrics.outbound_attempts, result.outcome).inc()
            # One line per attempt: ids, the number, the answer; never a secret, a URL or a body.
            log.info("outbound_attempt", endpoint_id=endpoint.id, message_id=delivery.message_id,
                     call_sid=delivery.call_sid, type=delivery.type, attempt=outcome.attempt,
                     outcome=result.outcome, status_code=result.status_code, error=result.error,
                     next_attempt_at=None if outcome.next_ms is None else iso_ms(outcome.next_ms))
            if not await owner.deliveries.settle(delivery, outcome):
                log.warning("outbound_lease_lost", endpoint_id=endpoint.id, message_id=delivery.message_id)
        except Exception as exc:  # settle could not reach Redis: the lease runs out, the message goes again
            log.error("outbound_settle_error", endpoint_id=self.endpoint.id, message_id=delivery.message_id,
                      error=type(exc).__name__)
        finally:
            owner.slots.give(1)
            self.wake.set()


class DeliveryLoops:
    """Every endpoint's loop in this process, one HTTP client session for all of them, the pending
    metrics and the retention of delivered messages."""

    def __init__(self, deliveries: Deliveries, endpoints: EndpointCache, settings: Settings, metrics: Metrics,
                 resolver: AbstractResolver | None = None) -> None:
        self.deliveries = deliveries
        self.endpoints = endpoints
        self.settings = settings
        self.metrics = metrics
        self.resolver = resolver
        self.slots = Slots(settings.outbound_concurrency)
        self.lease_ms = int(settings.outbound_timeout_s * 1000) + LEASE_MARGIN_MS
        self.loops: dict[str, EndpointLoop] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_stats = 0.0
        self._next_trim = 0.0

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "DeliveryLoops.start() first"
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.settings.outbound_concurrency, resolver=self.resolver)
        self._session = aiohttp.ClientSession(connector=connector)
        self._task = asyncio.create_task(self._run(), name="delivery")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        await asyncio.gather(*(loop.stop(self.settings.shutdown_grace_s) for loop in self.loops.values()))
        self.loops.clear()
        if self._session is not None:
            await self._session.close()

    def wake(self, endpoint_id: str) -> None:
        if (loop := self.loops.get(endpoint_id)) is not None:
            loop.wake.set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.supervise()
            except Exception as exc:
                log.error("outbound_supervise_error", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(self._stopping.wait(), SUPERVISE_EVERY_S)
            except TimeoutError:
                pass

    async def supervise(self) -> None:
        """Start a loop for each new endpoint, stop those of deleted ones, hand changed ones their new
        settings; now and then the pending metrics and retention."""
        endpoints = {endpoint.id: endpoint for endpoint in await self.endpoints.get()}
        for endpoint_id in self.loops.keys() - endpoints.keys():
            await self.loops.pop(endpoint_id).stop(self.settings.shutdown_grace_s)
        for endpoint_id, endpoint in endpoints.items():
            if (loop := self.loops.get(endpoint_id)) is not None:
                loop.endpoint = endpoint
            elif not self._stopping.is_set():
                loop = self.loops[endpoint_id] = EndpointLoop(endpoint, self)
                loop.start()
        clock = time.monotonic()
        if clock >= self._next_stats:
            self._next_stats = clock + STATS_EVERY_S
            stats = await self.deliveries.pending_stats(list(endpoints), now_ms())
            self.metrics.observe_outbound_pending({ep: (s.count, s.oldest_age_s) for ep, s in stats.items()})
        if clock >= self._next_trim:
            self._next_trim = clock + TRIM_EVERY_S
            await self.deliveries.trim(list(endpoints), self.settings.outbound_retention_days, now_ms())


class Outbound:
    """Fan-out and delivery for an app's lifetime (serve, worker, deliver)."""

    def __init__(self, outbox: OutboxPort, endpoints: EndpointsPort, deliveries: Deliveries, settings: Settings,
                 metrics: Metrics, resolver: AbstractResolver | None = None, due: asyncio.Event | None = None) -> None:
        cache = EndpointCache(endpoints)
        self.delivery = DeliveryLoops(deliveries, cache, settings, metrics, resolver)
        self.fanout = FanOut(outbox, deliveries, cache, settings.policy, self.delivery.wake)
        # Set by whatever in this process just scheduled outboxes for fan-out (the consumer after a commit,
        # the finalizer): fan-out looks at once, not at its next poll (FANOUT_IDLE_S, which stays the way
        # other processes' commits are found). Setting it is all a producer does: it never waits on fan-out.
        self.due = due if due is not None else asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.delivery.start()
        self._task = asyncio.create_task(self._fan_loop(), name="fan-out")

    async def stop(self) -> None:
        self._stopping.set()
        self.due.set()
        if self._task is not None:
            await self._task
        await self.delivery.stop()

    async def _fan_loop(self) -> None:
        while not self._stopping.is_set():
            self.due.clear()  # before the round: a schedule made during it wakes the next wait
            try:
                fanned = await self.fanout.run_once(now_ms())
            except Exception as exc:  # Redis away: look again in a second (a wake-up would only spin)
                log.error("outbound_fanout_error", error=f"{type(exc).__name__}: {exc}")
                fanned, wake = 0, self._stopping
                pause = 1.0
            else:
                wake, pause = self.due, FANOUT_IDLE_S
            if not fanned:
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass
