"""All Redis access, and every key name, in one place.

Layout (prefix `cl` by default, LEDGER_KEY_PREFIX):

    cl:events                  stream of normalised events (intake XADDs, workers XREADGROUP)
    cl:dead                    dead-letter stream: events that could not be applied, with the reason
    cl:failures                hash: stream entry id -> why its last apply failed (until acked)
    cl:ids                     counter that hands out record ids
    cl:layout                  the version of this layout ("2"); start-up refuses data of another
    cl:call:{<sid>}            hash: id, v (events applied), s (the core state JSON: status, times,
                               costs, provider, call_meta size), r:<register> and m:<call_meta key>
                               -> [occurred_us, event_id, source, value]
    cl:journal:{<sid>}         hash: <source>:<event_id> -> the applied event's JSON (dedupe + /events)
    cl:order:{<sid>}           sorted set (score 0): "<occurred_us + 2^62 as 19 digits>|<source>:<event_id>",
                               the journal in time order, paged by member (ZRANGEBYLEX)

The call hash stays small whatever the call's history (the journal is elsewhere, call_meta is
bounded), so a lookup reads it whole; a commit writes its core, the journal entries and the
fields its events won, never a rewrite of everything. The `{<sid>}` hash tag puts a call's
three keys on one Redis Cluster slot, so one script commits them atomically. Records never
name the stream, so the stream can be sharded without touching them.
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

from ledger.errors import DurabilityUnavailable, LayoutMismatch, StoreUnavailable
from ledger.index_store import IndexStore
from ledger.rules import CallState
from ledger.settings import Settings

GROUP = "ledger"
REQUEST_TIMEOUT_S = 5.0
LAYOUT = "2"
COMMIT_LUA = files("ledger").joinpath("commit.lua").read_text()
EVENTS_PAGE_LUA = files("ledger").joinpath("events_page.lua").read_text()
# A page of /events ends after the event that reaches this many bytes of JSON.
EVENTS_PAGE_BYTES = 1024 * 1024
# Order members sort by time: occurred_us shifted to be non-negative, fixed width.
_ORDER_OFFSET = 2**62
_ORDER_WIDTH = 19

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
    """What a worker knows of a call before applying a batch to it."""

    version: int
    core: bytes | None  # the core state JSON
    fields: dict[str, bytes | None]  # the r:/m: fields asked for (None: not set)
    record_id: int | None
    applied: frozenset[str]  # journal keys of the asked events that the call already has


@dataclass(frozen=True)
class CommitWrite:
    call_sid: str
    version: int
    new_version: int
    core: bytes
    record_id: int
    events: list[tuple[str, str, bytes]]  # (journal key, order member, event JSON)
    fields: list[tuple[str, bytes]]  # the registers and call_meta keys that changed


def order_member(occurred_us: int, journal_key: str) -> str:
    """The journal's order-index member of an event: sorts by time, then by source:event_id."""
    return f"{occurred_us + _ORDER_OFFSET:0{_ORDER_WIDTH}d}|{journal_key}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _commit_args(w: CommitWrite) -> list[Any]:
    """One call's share of the commit script's ARGV (see commit.lua)."""
    args: list[Any] = [w.version, w.new_version, w.core, w.record_id, len(w.events)]
    for key, member, event_json in w.events:
        args += [key, member, event_json]
    args.append(len(w.fields))
    for name, value in w.fields:
        args += [name, value]
    return args


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Store:
    """The Redis layout above, as the worker and the API use it."""

    def __init__(self, redis: Any, prefix: str = "cl", *, durable_ack: str = "none",
                 durable_ack_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.prefix = prefix
        self.durable_ack = durable_ack
        self.durable_ack_timeout_ms = durable_ack_timeout_ms
        self.stream = f"{prefix}:events"
        self.dead = f"{prefix}:dead"
        self.failures = f"{prefix}:failures"
        self.ids = f"{prefix}:ids"
        self._durability_key = f"{prefix}:durability-check"
        self._call_prefix = f"{prefix}:call:"
        self._layout_key = f"{prefix}:layout"
        self._journal_prefix = f"{prefix}:journal:"
        self._order_prefix = f"{prefix}:order:"
        # The calls API's index shards (their own module: they span calls, not one call's slot).
        self.indexes = IndexStore(redis, prefix)
        self._commit = redis.register_script(COMMIT_LUA)
        self._events_page = redis.register_script(EVENTS_PAGE_LUA)
        # A cluster pipeline cannot pre-load scripts on each node: send the script itself.
        self._cluster = isinstance(redis, RedisCluster)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(open_redis(settings), settings.key_prefix, durable_ack=settings.durable_ack,
                   durable_ack_timeout_ms=settings.durable_ack_timeout_ms)

    def call_key(self, call_sid: str) -> str:
        return f"{self._call_prefix}{{{call_sid}}}"

    def journal_key(self, call_sid: str) -> str:
        return f"{self._journal_prefix}{{{call_sid}}}"

    def order_key(self, call_sid: str) -> str:
        return f"{self._order_prefix}{{{call_sid}}}"

    def call_keys(self, call_sid: str) -> list[str]:
        """The three keys of one call, in the order the commit script takes them."""
        return [self.call_key(call_sid), self.journal_key(call_sid), self.order_key(call_sid)]

    async def check_layout(self) -> None:
        """Refuse to run on data written in another key layout; mark a fresh store with ours.

        Nothing converts old data: an older layout (event ids not namespaced by source, the
        whole state in one field) is refused with what to do, never half-read.
        """
        found = await self.redis.get(self._layout_key)
        if found is None:
            # Record ids are handed out only by this layout's `allocate_ids`, which marks it:
            # ids without the mark were written by an older version. (Stream entries are
            # the same in both layouts.)
            if await self.redis.exists(self.ids):
                raise LayoutMismatch(
                    f"Redis holds call-ledger data in an older key layout under prefix {self._call_prefix[:-6]!r}: "
                    "delete those keys (see README, Redis layout) or set another LEDGER_KEY_PREFIX")
            await self.redis.set(self._layout_key, LAYOUT, nx=True)
        elif _text(found) != LAYOUT:
            raise LayoutMismatch(f"Redis holds call-ledger data in key layout {_text(found)!r}; "
                                 f"this version reads layout {LAYOUT!r}")

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

    async def load_calls(self, wanted: dict[str, tuple[list[str], list[str]]]) -> dict[str, LoadedCall]:
        """Per call: version, core state, id, the given r:/m: fields, and which of the given
        journal keys it already has. `wanted`: call -> (journal keys, field names)."""
        sids = list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            keys, fields = wanted[sid]
            pipe.hmget(self.call_key(sid), "v", "s", "id", *fields)
            # Values of events already applied come back too: only redeliveries have any.
            pipe.hmget(self.journal_key(sid), keys)
        replies = await pipe.execute()
        loaded = {}
        for i, sid in enumerate(sids):
            keys, fields = wanted[sid]
            call, journal = replies[2 * i], replies[2 * i + 1]
            version, core, record_id = call[:3]
            loaded[sid] = LoadedCall(
                int(version or 0), core, dict(zip(fields, call[3:], strict=True)),
                int(record_id) if record_id else None,
                frozenset(key for key, value in zip(keys, journal, strict=True) if value is not None),
            )
        return loaded

    async def allocate_ids(self, count: int) -> list[int]:
        """`count` fresh record ids (unique, positive; a lost race wastes one, harmlessly)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._layout_key, LAYOUT, nx=True)  # whoever writes records marks their layout
        pipe.incrby(self.ids, count)
        last = int((await pipe.execute())[1])
        return list(range(last - count + 1, last + 1))

    async def commit(self, writes: list[CommitWrite]) -> list[bool]:
        """Run the commit script for each call; False where another worker got there first."""
        if not writes:
            return []
        if not self._cluster:
            # One script call for the whole batch: redis-py's per-command cost dominates otherwise.
            keys: list[str] = []
            args: list[Any] = []
            for w in writes:
                keys += self.call_keys(w.call_sid)
                args += _commit_args(w)
            return [bool(r) for r in await self._commit(keys=keys, args=args)]
        # On a cluster one script may only touch one slot: one call per script, pipelined.
        pipe = self.redis.pipeline(transaction=False)
        for w in writes:
            # A cluster pipeline cannot pre-load scripts on each node: send the script itself.
            pipe.eval(COMMIT_LUA, 3, *self.call_keys(w.call_sid), *_commit_args(w))
        return [bool(r[0]) for r in await pipe.execute()]

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
    async def get_call(self, call_sid: str) -> tuple[int, CallState] | None:
        """The call's record id and whole state (one bounded hash), or None."""
        fields = await self.redis.hgetall(self.call_key(call_sid))
        record_id, core = fields.get(b"id"), fields.get(b"s")
        if record_id is None or core is None:
            return None
        return int(record_id), CallState.from_fields(core, {_text(k): v for k, v in fields.items()})

    @unavailable_on_error
    async def get_calls(self, call_sids: list[str]) -> list[tuple[int, CallState] | None]:
        """`get_call` for many calls in one round trip (a list page)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hgetall(self.call_key(sid))
        out: list[tuple[int, CallState] | None] = []
        for fields in await pipe.execute():
            record_id, core = fields.get(b"id"), fields.get(b"s")
            out.append(None if record_id is None or core is None else (
                int(record_id), CallState.from_fields(core, {_text(k): v for k, v in fields.items()})))
        return out

    @unavailable_on_error
    async def events_page(self, call_sid: str, after: str, limit: int) -> tuple[list[bytes], str | None] | None:
        """Applied events oldest first, at most `limit` and about EVENTS_PAGE_BYTES, after the
        order member `after` ('' = the start); with the member to continue from, or None at
        the end. None when the call does not exist."""
        keys = [self.order_key(call_sid), self.journal_key(call_sid)]
        args = [after, limit, EVENTS_PAGE_BYTES]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hexists(self.call_key(call_sid), "id")
        if self._cluster:
            pipe.eval(EVENTS_PAGE_LUA, 2, *keys, *args)
        else:
            await self._events_page(keys=keys, args=args, client=pipe)
        exists, reply = await pipe.execute()
        if not exists:
            return None
        more, items = int(reply[0]), reply[1:]
        return items[1::2], (_text(items[-2]) if more and items else None)

    async def all_events(self, call_sid: str) -> list[bytes]:
        """Every applied event, oldest first, page by page: for tests and tools, not requests."""
        events: list[bytes] = []
        after: str | None = ""
        while after is not None:
            page = await self.events_page(call_sid, after, 1000)
            if page is None:
                break
            batch, after = page
            events += batch
        return events

    async def applied_keys(self, call_sid: str) -> set[str]:
        """Every journal key (source:event_id) applied to the call: for tests and tools, not requests."""
        return {_text(key) for key in await self.redis.hkeys(self.journal_key(call_sid))}

    async def event_count(self, call_sid: str) -> int:
        return int(await self.redis.hget(self.call_key(call_sid), "v") or 0)

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
