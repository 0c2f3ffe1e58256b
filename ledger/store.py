"""All Redis access, and every key name, in one place.

Layout (prefix `cl` by default, LEDGER_KEY_PREFIX):

    cl:events                  stream of normalised events (intake XADDs, workers XREADGROUP)
    cl:dead                    dead-letter stream: events that could not be applied, with the reason
    cl:failures                hash: stream entry id -> why its last apply failed (until acked)
    cl:ids                     counter that hands out record ids
    cl:call:{<sid>}            hash: id, v (events applied), state (CallState JSON),
                               and e:<event_id> -> normalised event JSON (dedupe + /events)

Everything about one call is one hash, so one Lua script updates it atomically and a
worker learns a call's version, state and which of its batch's event ids are already
applied with one HMGET. The `{<sid>}` hash tag keeps any key added per call later on
the same Redis Cluster slot. Records never name the stream, so the stream can later
be sharded (one per hash of the SID) without touching them.
"""

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ledger.errors import DurabilityUnavailable, StoreUnavailable
from ledger.settings import Settings

GROUP = "ledger"
REQUEST_TIMEOUT_S = 5.0
EVENT_FIELD = "e:"  # call-hash field prefix of an applied event: e:<event_id>
EVENT_FIELD_BYTES = EVENT_FIELD.encode()
COMMIT_LUA = files("ledger").joinpath("commit.lua").read_text()
COMMIT_MANY_LUA = files("ledger").joinpath("commit_many.lua").read_text()

P = ParamSpec("P")
T = TypeVar("T")


def open_redis(settings: Settings) -> Any:
    """The Redis client for these settings: a server, a cluster, or the embedded store."""
    # No per-command socket timeout: redis-py would arm one per reply, a real cost in the
    # apply loop's pipelines. Request paths bound each call instead (REQUEST_TIMEOUT_S), and
    # the worker bounds each batch.
    # A pooled connection that Redis closed (restart, failover) fails its next command once:
    # retry that on a fresh connection rather than answer 503 for nothing.
    common: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": 2.0,
                              "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                              "retry_on_error": [RedisConnectionError]}
    if settings.redis_url is None:
        import fakeredis  # the embedded store is only imported when it is used

        return fakeredis.FakeAsyncRedis()
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **common)
    return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, **common)


def unavailable_on_error(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Bound a request path's Redis call in time, and turn any failure into
    StoreUnavailable (HTTP 503: the provider retries)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await fn(*args, **kwargs)
        except TimeoutError as exc:
            raise StoreUnavailable("redis did not answer in time") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    return wrapper


@dataclass(frozen=True)
class Entry:
    """One stream entry as a worker received it."""

    entry_id: str
    event_json: bytes | None  # None when the entry has no event field (never written by intake)
    deliveries: int = 1


@dataclass(frozen=True)
class LoadedCall:
    version: int
    state_json: bytes | None
    record_id: int | None
    applied: frozenset[str]  # those of the asked event ids already applied to the call


@dataclass(frozen=True)
class CommitWrite:
    call_sid: str
    version: int
    new_version: int
    state_json: bytes
    record_id: int
    events: list[tuple[str, bytes]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Store:
    """The Redis layout above, as the worker and the API use it."""

    def __init__(self, redis: Any, prefix: str = "cl", *, durable_ack: str = "none",
                 durable_ack_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.durable_ack = durable_ack
        self.durable_ack_timeout_ms = durable_ack_timeout_ms
        self.stream = f"{prefix}:events"
        self.dead = f"{prefix}:dead"
        self.failures = f"{prefix}:failures"
        self.ids = f"{prefix}:ids"
        self._durability_key = f"{prefix}:durability-check"
        self._call_prefix = f"{prefix}:call:"
        self._commit = redis.register_script(COMMIT_LUA)
        self._commit_many = redis.register_script(COMMIT_MANY_LUA)
        # A cluster pipeline cannot pre-load scripts on each node: send the script itself.
        self._cluster = isinstance(redis, RedisCluster)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(open_redis(settings), settings.key_prefix, durable_ack=settings.durable_ack,
                   durable_ack_timeout_ms=settings.durable_ack_timeout_ms)

    def call_key(self, call_sid: str) -> str:
        return f"{self._call_prefix}{{{call_sid}}}"

    # -- health ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.redis.aclose()

    # -- intake ---------------------------------------------------------------------------

    @unavailable_on_error
    async def append(self, event_json: bytes) -> str:
        """XADD one normalised event. No MAXLEN: trimming here could drop unapplied events.

        With durable_ack "aof", also wait (same round trip) until Redis has fsynced the
        entry to its AOF; if it does not confirm in time the caller answers 503 and the
        provider retries (the redelivery is then a harmless duplicate).
        """
        if self.durable_ack != "aof":
            return _text(await self.redis.xadd(self.stream, {"e": event_json}))
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.stream, {"e": event_json})
        pipe.execute_command("WAITAOF", 1, 0, self.durable_ack_timeout_ms)
        entry_id, (local, _replicas) = await pipe.execute()
        if int(local) < 1:
            raise StoreUnavailable("event not confirmed on disk (WAITAOF) in time")
        return _text(entry_id)

    async def check_durability(self) -> None:
        """Raise DurabilityUnavailable unless this Redis confirms AOF writes (WAITAOF).

        A real write is needed: WAITAOF after no write returns at once, which says nothing
        about a server that never fsyncs (appendfsync no).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._durability_key, int(time.time()), px=60_000)
        pipe.execute_command("WAITAOF", 1, 0, self.durable_ack_timeout_ms)
        try:
            _, (local, _replicas) = await pipe.execute()
        except ResponseError as exc:
            message = str(exc).lower()
            if "unknown command" in message:
                raise DurabilityUnavailable(
                    "LEDGER_DURABLE_ACK=aof needs Redis >= 7.2 (WAITAOF); this server does not have it") from None
            if "appendonly" in message:
                raise DurabilityUnavailable(
                    "LEDGER_DURABLE_ACK=aof needs the Redis server to run with appendonly yes") from None
            raise
        if int(local) < 1:
            raise DurabilityUnavailable(
                "LEDGER_DURABLE_ACK=aof needs the Redis server to fsync its AOF (appendfsync always or everysec)")

    # -- worker: the consumer group ---------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the group from the stream's start, so events posted before any worker ran count."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _entries(raw: Iterable[Any], deliveries: dict[str, int] | None = None) -> list[Entry]:
        entries = []
        for entry_id, fields in raw:
            if fields is None:  # deleted while pending (XAUTOCLAIM reports those separately)
                continue
            eid = _text(entry_id)
            event = fields.get(b"e", fields.get("e"))
            entries.append(Entry(eid, event, (deliveries or {}).get(eid, 1)))
        return entries

    async def _group_command(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run a consumer-group command; if Redis lost the group (restart without persistence,
        failover, FLUSHALL), create it again and retry once instead of failing forever."""
        try:
            return await command()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return await command()

    async def read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = await self._group_command(lambda: self.redis.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms))
        if not reply:
            return []
        return self._entries(reply[0][1])

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries pending longer than min_idle_ms on any consumer (a dead one, or us)."""
        reply = await self._group_command(lambda: self.redis.xautoclaim(
            self.stream, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count))
        claimed = reply[1]
        if not claimed:
            return []
        first, last = _text(claimed[0][0]), _text(claimed[-1][0])
        pending = await self.redis.xpending_range(
            self.stream, GROUP, min=first, max=last, count=len(claimed) + 10, consumername=consumer
        )
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return self._entries(claimed, deliveries)

    async def load_calls(self, wanted: dict[str, list[str]]) -> dict[str, LoadedCall]:
        """Version, state and id of each call, and which of the given event ids it already has."""
        sids = list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(self.call_key(sid), "v", "state", "id", *(EVENT_FIELD + eid for eid in wanted[sid]))
        replies = await pipe.execute()
        loaded = {}
        for sid, reply in zip(sids, replies, strict=True):
            version, state, record_id = reply[:3]
            applied = frozenset(eid for eid, value in zip(wanted[sid], reply[3:], strict=True) if value is not None)
            loaded[sid] = LoadedCall(
                int(version or 0), state, int(record_id) if record_id else None, applied
            )
        return loaded

    async def allocate_ids(self, count: int) -> list[int]:
        """`count` fresh record ids (unique, positive; a lost race wastes one, harmlessly)."""
        last = int(await self.redis.incrby(self.ids, count))
        return list(range(last - count + 1, last + 1))

    async def commit(self, writes: list[CommitWrite]) -> list[bool]:
        """Run the commit script for each call; False where another worker got there first."""
        if not self._cluster and len(writes) > 1:
            # One script call for the whole batch: redis-py's per-command cost dominates otherwise.
            batch: list[Any] = []
            for w in writes:
                batch += [w.version, w.new_version, w.state_json, w.record_id, len(w.events)]
                for event_id, event_json in w.events:
                    batch += [EVENT_FIELD + event_id, event_json]
            replies = await self._commit_many(keys=[self.call_key(w.call_sid) for w in writes], args=batch)
            return [bool(r) for r in replies]
        pipe = self.redis.pipeline(transaction=False)
        for w in writes:
            args: list[Any] = [w.version, w.new_version, w.state_json, w.record_id]
            for event_id, event_json in w.events:
                args += [EVENT_FIELD + event_id, event_json]
            if self._cluster:
                pipe.eval(COMMIT_LUA, 1, self.call_key(w.call_sid), *args)
            else:
                await self._commit(keys=[self.call_key(w.call_sid)], args=args, client=pipe)
        return [bool(r) for r in await pipe.execute()]

    async def ack(self, entry_ids: list[str], failed_before: Iterable[str] = ()) -> None:
        if not entry_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *entry_ids)
        cleared = list(failed_before)
        if cleared:
            pipe.hdel(self.failures, *cleared)
        await pipe.execute()

    async def record_failures(self, reasons: dict[str, str]) -> None:
        if reasons:
            await self.redis.hset(self.failures, mapping=reasons)

    async def failure_reasons(self, entry_ids: list[str]) -> dict[str, str]:
        if not entry_ids:
            return {}
        values = await self.redis.hmget(self.failures, entry_ids)
        return {eid: _text(v) for eid, v in zip(entry_ids, values, strict=True) if v is not None}

    async def dead_letter(self, entry: Entry, reason: str) -> str:
        """Move an entry to the dead-letter stream, then ack it: never lost, at worst listed twice."""
        fields = {
            "e": entry.event_json or b"",
            "reason": reason,
            "original_id": entry.entry_id,
            "deliveries": entry.deliveries,
            "dead_at": int(time.time() * 1000),
        }
        dead_id = _text(await self.redis.xadd(self.dead, fields))
        await self.ack([entry.entry_id], failed_before=[entry.entry_id])
        return dead_id

    # -- maintenance ------------------------------------------------------------------------

    async def group_stats(self) -> tuple[int, int]:
        """(lag: entries not yet delivered to the group, pending: delivered, not acknowledged)."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            return 0, 0
        for group in groups:
            if _text(group.get("name", b"")) != GROUP:
                continue
            lag = group.get("lag")
            if lag is None:  # Redis cannot tell (deletions in the middle): count what is left
                last = _text(group["last-delivered-id"])
                lag = len(await self.redis.xrange(self.stream, min=f"({last}", max="+", count=100_000))
            return int(lag), int(group.get("pending") or 0)
        # No worker has created the group yet: everything in the stream is waiting.
        return int(await self.redis.xlen(self.stream)), 0

    async def trim(self, retention_s: int, now_ms: int | None = None) -> int:
        """Drop entries older than the retention, but never one a group has not acknowledged.

        MINID is the oldest of: the retention cut-off, each group's oldest pending entry,
        and each group's last-delivered id (entries after it are not delivered yet).
        """
        # Redis's clock, not ours: stream ids are Redis timestamps.
        now_ms = await self.now_ms() if now_ms is None else now_ms
        bound = (max(0, now_ms - retention_s * 1000), 0)
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:
            return 0
        for group in groups:
            name = _text(group["name"])
            bound = min(bound, entry_order(_text(group["last-delivered-id"])))
            if int(group.get("pending") or 0):
                summary = await self.redis.xpending(self.stream, name)
                if summary.get("min"):
                    bound = min(bound, entry_order(_text(summary["min"])))
        if bound <= (0, 0):
            return 0
        return int(await self.redis.xtrim(self.stream, minid=f"{bound[0]}-{bound[1]}"))

    # -- read API -------------------------------------------------------------------------

    @unavailable_on_error
    async def get_call(self, call_sid: str) -> tuple[int, bytes] | None:
        record_id, state = await self.redis.hmget(self.call_key(call_sid), "id", "state")
        if record_id is None or state is None:
            return None
        return int(record_id), state

    @unavailable_on_error
    async def get_events(self, call_sid: str) -> list[bytes]:
        fields = await self.redis.hgetall(self.call_key(call_sid))
        return [value for name, value in fields.items() if name.startswith(EVENT_FIELD_BYTES)]

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, count: int = 100, start: str = "-") -> list[dict[str, Any]]:
        rows = []
        for dead_id, fields in await self.redis.xrange(self.dead, min=start, max="+", count=count):
            row = {_text(k): _text(v) for k, v in fields.items()}
            row["id"] = _text(dead_id)
            rows.append(row)
        return rows

    async def replay_dead(self, dead_ids: list[str] | None = None) -> list[tuple[str, str]]:
        """Re-queue dead letters on the main stream (all, or the given ids), then delete them.

        Re-queued first, deleted second: a crash in between replays an event twice,
        which the ledger's idempotency absorbs. Returns (dead id, new stream id) pairs.
        """
        if dead_ids is None:
            rows = await self.redis.xrange(self.dead, min="-", max="+")
        else:
            rows = []
            for dead_id in dead_ids:
                rows += await self.redis.xrange(self.dead, min=dead_id, max=dead_id)
        moved = []
        for dead_id, fields in rows:
            event = fields.get(b"e", fields.get("e"))
            new_id = await self.append(event)
            await self.redis.xdel(self.dead, dead_id)
            moved.append((_text(dead_id), new_id))
        return moved

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
