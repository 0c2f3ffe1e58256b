"""Outbound deliveries (SPEC §15): each endpoint's queue of messages, their leases, and the log of attempts.

Fan-out copies each outbox message into the queue of every endpoint that wants it (`enqueue`, at most once
per endpoint and message); the delivery loops `claim` what is due and `settle` each attempt. The keys of
one endpoint share one hash tag (call_ledger.store.keys: `cl:wh:{<ep>}:...`), so every step is one
atomic script, on a Redis Cluster too.

A claim re-scores the message in `due` to the end of a lease (now + the request timeout + a margin):
until then no other process claims it, and a settle counts only if the message still carries the lease
it was claimed with. A process killed mid-delivery loses nothing: its lease runs out and another
process sends the message again (at least once, never two at once).
"""

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from call_ledger.core.outbound import OutboxMessage, iso_ms
from call_ledger.store.client import text
from call_ledger.store.errors import CommandRefused
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua, run_pipeline

ENQUEUE = Lua("delivery_enqueue.lua")
CLAIM = Lua("delivery_claim.lua")
SETTLE = Lua("delivery_settle.lua")
RECOVER = Lua("delivery_recover.lua")
TRIM = Lua("delivery_trim.lua")

# The attempts log keeps about this many entries per endpoint (the attempts route lists them).
LOG_MAXLEN = 10_000
# Messages dropped per endpoint per script by `trim` (it loops): one script never runs long.
TRIM_BATCH = 1000
# Messages re-queued per script by `recover` (about 8 ms of Redis time).
RECOVER_PAGE = 500
# A cursor of the attempts route: a log entry id as Redis writes them.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

State = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed message of one endpoint: what to send, how often it was tried, and the lease it was
    claimed under (`settle` needs it back)."""

    endpoint_id: str
    message_id: str
    type: str
    call_sid: str
    revision: int
    created_ms: int
    attempts: int
    body: bytes
    lease_ms: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a claim got, and when the endpoint's next message falls due (None: nothing left pending)."""

    deliveries: list[Delivery]
    next_due_ms: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result as `settle` records it: the attempt's number (1 = the first try), the state it
    leaves the message in, when it is tried next (pending only), and what the endpoint answered."""

    attempt: int
    state: State
    next_ms: int | None
    at_ms: int
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptsPage:
    """A page of the attempts route (SPEC §15), newest first; `next` is the cursor of the next page."""

    attempts: list[dict[str, object]]
    next: str | None


@dataclass(frozen=True, slots=True)
class PendingStats:
    """An endpoint's pending messages: how many, and how long the oldest has waited (0 when none)."""

    count: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One message for one endpoint, as fan-out hands it to `enqueue_all`."""

    endpoint_id: str
    message: OutboxMessage


def delivery_json(message: OutboxMessage) -> bytes:
    """The delivery as stored in `cl:wh:{<ep>}:msg`: the body as it will be sent on every attempt (its
    `timestamp` is the message's creation, so retries and recovery send the same bytes)."""
    return orjson.dumps({"id": message.id, "type": message.type, "sid": message.call_sid, "rev": message.revision,
                         "created": message.created_ms, "attempt": 0, "state": "pending", "lease": 0,
                         "body": message.body().decode()})



class Deliveries:
    """Every endpoint's delivery queue and attempts log (the keys: call_ledger.store.keys)."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def _queue_keys(self, endpoint_id: str) -> list[str]:
        k = self.keys
        return [k.delivery_messages(endpoint_id), k.delivery_due(endpoint_id), k.delivery_pending(endpoint_id),
                k.delivery_created(endpoint_id)]

    # -- fan-out -------------------------------------------------------------------------------------

    async def enqueue(self, endpoint_id: str, message: OutboxMessage, now_ms: int) -> bool:
        """Queue the message for the endpoint, due now; False if it was queued already (nothing changes)."""
        return bool(await ENQUEUE.run(self.redis, self._queue_keys(endpoint_id),
                                      [message.id, delivery_json(message), now_ms, message.created_ms]))

    async def enqueue_all(self, items: list[Enqueue], now_ms: int) -> int:
        """`enqueue` for many (one pipeline: one round trip); how many were new."""
        if not items:
            return 0

        def build(pipe: Any) -> None:
            for item in items:
                ENQUEUE.queue(pipe, self._queue_keys(item.endpoint_id),
                              [item.message.id, delivery_json(item.message), now_ms, item.message.created_ms])

        return sum(int(reply) for reply in await run_pipeline(self.redis, build, (ENQUEUE,)))

    # -- delivery ------------------------------------------------------------------------------------

    async def claim(self, endpoint_id: str, now_ms: int, limit: int, lease_ms: int) -> Claimed:
        """Up to `limit` of the endpoint's due messages, leased to this caller until now + `lease_ms`."""
        k = self.keys
        reply = await CLAIM.run(self.redis, [k.delivery_messages(endpoint_id), k.delivery_due(endpoint_id),
                                             k.delivery_pending(endpoint_id)], [now_ms, limit, now_ms + lease_ms])
        first, *raws = reply
        deliveries = []
        for raw in raws:
            d = orjson.loads(raw)
            deliveries.append(Delivery(endpoint_id, d["id"], d["type"], d["sid"], int(d["rev"]), int(d["created"]),
                                       int(d["attempt"]), d["body"].encode(), int(d["lease"])))
        first_text = text(first)
        return Claimed(deliveries, int(float(first_text)) if first_text else None)

    async def settle(self, delivery: Delivery, outcome: Outcome) -> bool:
        """Record an attempt and the message's state after it; False (nothing recorded) if the lease was
        lost: another process has claimed the message since, and its attempt is the one that counts."""
        k, ep = self.keys, delivery.endpoint_id
        return bool(await SETTLE.run(
            self.redis,
            [k.delivery_messages(ep), k.delivery_due(ep), k.delivery_pending(ep), k.delivery_log(ep)],
            [delivery.message_id, delivery.lease_ms, outcome.attempt, outcome.state,
             "" if outcome.next_ms is None else outcome.next_ms, outcome.at_ms,
             "" if outcome.status_code is None else outcome.status_code, outcome.error or "", LOG_MAXLEN]))

    # -- the routes ----------------------------------------------------------------------------------

    async def attempts(self, endpoint_id: str, after: str | None, limit: int) -> AttemptsPage:
        """The endpoint's attempts, newest first, `limit` a page, continuing after the cursor `after`
        (a log entry id: what the previous page's `next` said); ValueError for anything else."""
        if after is not None and not _ENTRY_ID.fullmatch(after):
            raise ValueError("not a cursor of this log")
        if after == "0-0":  # nothing is older than the first possible id (Redis refuses the empty range)
            return AttemptsPage([], None)
        top = f"({after}" if after else "+"
        try:
            entries = await self.redis.xrevrange(self.keys.delivery_log(endpoint_id), top, "-", count=limit + 1)
        except CommandRefused:  # an id Redis cannot hold (past 2^64 - 1): not one it gave out
            raise ValueError("not a cursor of this log") from None
        page = [self._attempt(fields) for _, fields in entries[:limit]]
        return AttemptsPage(page, text(entries[limit - 1][0]) if len(entries) > limit else None)

    @staticmethod
    def _attempt(fields: dict[Any, Any]) -> dict[str, object]:
        f = {text(key): text(value) for key, value in fields.items()}
        return {"message_id": f["m"], "type": f["t"], "call_sid": f["s"], "attempt": int(f["a"]),
                "status_code": int(f["c"]) if f["c"] else None, "error": f["e"] or None,
                "at": iso_ms(int(f["at"])), "next_attempt_at": iso_ms(int(f["n"])) if f["n"] else None}

    async def recover(self, endpoint_id: str, since_ms: int, now_ms: int) -> int:
        """Every kept message created since `since_ms` back to pending, due now, with its attempt count
        (and its `webhook-id`) kept; how many that is."""
        keys, total, offset = self._queue_keys(endpoint_id), 0, 0
        while True:  # a page per script: Redis serves others between pages (an endpoint may keep 100,000s)
            count, scanned = await RECOVER.run(self.redis, keys, [since_ms, now_ms, offset, RECOVER_PAGE])
            total, offset = total + int(count), offset + int(scanned)
            if int(scanned) < RECOVER_PAGE:
                return total

    # -- upkeep ----------------------------------------------------------------------------------------

    async def pending_stats(self, endpoint_ids: list[str], now_ms: int) -> dict[str, PendingStats]:
        """Per endpoint: its pending messages and the oldest one's age (the metrics). One round trip."""
        if not endpoint_ids:
            return {}

        def build(pipe: Any) -> None:
            for ep in endpoint_ids:
                pipe.zcard(self.keys.delivery_pending(ep))
                pipe.zrange(self.keys.delivery_pending(ep), 0, 0, withscores=True)

        replies = await run_pipeline(self.redis, build, ())
        stats = {}
        for i, ep in enumerate(endpoint_ids):
            count, oldest = int(replies[2 * i]), replies[2 * i + 1]
            age = max(0.0, (now_ms - float(oldest[0][1])) / 1000) if oldest else 0.0
            stats[ep] = PendingStats(count, age)
        return stats

    async def trim(self, endpoint_ids: list[str], retention_days: int, now_ms: int) -> int:
        """Drop the endpoints' delivered and failed messages (and logged attempts) older than the retention;
        how many messages were dropped."""
        cutoff = now_ms - retention_days * 86_400_000
        dropped = 0
        for ep in endpoint_ids:
            k = self.keys
            keys = [k.delivery_messages(ep), k.delivery_pending(ep), k.delivery_created(ep), k.delivery_log(ep)]
            while (batch := int(await TRIM.run(self.redis, keys, [cutoff, TRIM_BATCH]))) > 0:
                dropped += batch
                if batch < TRIM_BATCH:
                    break
        return dropped

    async def drop(self, endpoint_id: str) -> None:
        """Forget everything of a deleted endpoint: its queue and its attempts."""
        await self.redis.delete(*self._queue_keys(endpoint_id), self.keys.delivery_log(endpoint_id))
