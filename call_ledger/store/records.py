"""All Redis access, and every key name, in one place.

Layout (prefix `cl` by default, LEDGER_KEY_PREFIX):

    cl:events                  stream of normalised events (intake XADDs, workers XREADGROUP); with
                               LEDGER_STREAM_SHARDS=K one per shard, cl:events:{<tag>} (call_ledger.store.shards)
    cl:dead                    dead-letter stream: events that could not be applied, with the reason
                               (per shard: cl:dead:{<tag>}), kept LEDGER_DLQ_RETENTION_DAYS
    cl:failures                hash: stream entry id -> why its last apply failed (until acked; per shard)
    cl:streams                 set: every stream shard key ever written, what workers consume
    cl:ids                     counter that hands out record ids (each value made opaque: call_ledger.core.record_ids)
    {cl:ids}:fence             the replication id of the node that last advanced cl:ids (call_ledger/store/lua/ids.lua)
    {cl:ids}:key               the random key that makes counter values opaque record ids
    cl:layout                  the version of this layout ("2"); start-up refuses data of another
    cl:call:{<sid>}            hash: id, v (events applied), s (the core state JSON: status, times,
                               costs, provider, call_meta size, the fixed telephony estimate),
                               r:<register> and m:<call_meta key> -> [occurred_us, event_id, source,
                               value], j (the record rendered at commit, call_meta left `{}`:
                               call_ledger.core.served)
    cl:journal:{<sid>}         hash: <source>:<event_id> -> the applied event in the journal's
                               form (call_ledger.core.journal: what the key, the order score and the call do
                               not say; an entry of an earlier version is the event's JSON, and
                               reads as it is); not written with LEDGER_JOURNAL=off
    cl:order:{<sid>}           sorted set: <source>:<event_id> scored by occurred_us: every applied
                               event (what recognises a duplicate), the journal in time order (ties
                               by key), paged by rank from a cursor key

The call hash stays small whatever the call's history (the journal is elsewhere, call_meta is
bounded), so a lookup reads it whole; a commit writes its core, the journal entries and the
fields its events won, never a rewrite of everything. The `{<sid>}` hash tag puts a call's
three keys on one Redis Cluster slot, so one script commits them atomically. Records never
name the stream, so the stream can be sharded without touching them.
"""

import asyncio
import functools
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from call_ledger.core.errors import InvalidQuery, LayoutMismatch, StoreUnavailable
from call_ledger.core.journal import compact, restore
from call_ledger.core.record_ids import IdBlock
from call_ledger.core.rules import CallState
from call_ledger.core.served import RECORD_FIELD
from call_ledger.settings import Settings, redis_options
from call_ledger.store.indexes import IndexStore
from call_ledger.store.scripts import Lua, run_pipeline
from call_ledger.store.streams import GROUP, Entry, StreamStore, _text, entry_order
from call_ledger.store.wire import FastConnection, FastSSLConnection

__all__ = ["GROUP", "Entry", "Store", "entry_order", "open_redis"]

REQUEST_TIMEOUT_S = 5.0
LAYOUT = "2"
COMMIT = Lua("commit.lua")
EVENTS_PAGE = Lua("events_page.lua")
EXPORT_FIELDS = Lua("export_fields.lua")
IDS = Lua("ids.lua")
# How far the id counter jumps when it may have gone backwards (a failover, a restart, a slot
# moved): more ids than could be handed out and lost in any replication lag (a replica is
# promoted only if it heard from its master within about 10 x cluster-node-timeout), and
# the 2^52 counter values record ids are made from (call_ledger.core.record_ids) leave room for four million of them.
ID_JUMP = 10**9
# A page of /events ends after the event that reaches this many bytes of JSON.
EVENTS_PAGE_BYTES = 1024 * 1024

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
        # Every listed node is a way in: the client needs one that answers to learn the rest. The
        # credentials and TLS options (ssl_ca_certs, ...) apply to every node it finds.
        options = redis_options(settings.redis_url)
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in options.nodes],
                            username=options.username, password=options.password, ssl=options.tls,
                            **options.tls_options, **common)
    # Commands packed in C (call_ledger/store/wire.py). The cluster client keeps redis-py's packer:
    # it takes no connection class, and there every script carries one call's arguments only.
    # from_url reads the credentials and the TLS query parameters (the same ones: Settings refuses others).
    if settings.redis_url.startswith("unix:"):  # a local socket: redis-py's own connection class for it
        return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, **common)
    connection_class = FastSSLConnection if settings.redis_url.startswith("rediss:") else FastConnection
    return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, connection_class=connection_class,
                                   **common)


def id_key_key(ids_key: str) -> str:
    """The key of the ids' permutation, in the counter's slot like its fence."""
    return f"{{{ids_key}}}:key"


class RedisProblem(NamedTuple):
    """Why a Redis did not answer, in words fixed here (never an exception's text, which could
    quote more than we know), and whether trying again can help."""

    reason: str
    refused: bool  # credentials or ACL refused: the same answer every time


def describe_redis_error(error: BaseException) -> RedisProblem:
    """What went wrong, from the exception and those it was raised from (redis-py wraps an
    OSError in its ConnectionError, the Cluster client wraps that in RedisClusterException)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for exc in chain:
        if isinstance(exc, AuthenticationError | AuthorizationError):
            return RedisProblem("it refused the credentials: wrong password or ACL user, or none given", True)
        if isinstance(exc, NoPermissionError):
            return RedisProblem("its ACL user may not run PING (Redis answered NOPERM)", True)
    for exc in chain:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return RedisProblem(f"TLS: the server's certificate was not accepted ({exc.verify_message}); "
                                "the CA is given as ?ssl_ca_certs=/path on the rediss:// URL", False)
        if isinstance(exc, ssl.SSLError):
            return RedisProblem(f"TLS handshake failed ({exc.reason or type(exc).__name__}): "
                                "a rediss:// URL to a port without TLS?", False)
        if isinstance(exc, ConnectionRefusedError):
            return RedisProblem("connection refused", False)
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return RedisProblem("timed out", False)
        # A TLS port resets a connection that starts in plain text (redis-py may also say it its way).
        if isinstance(exc, ConnectionResetError | BrokenPipeError) or (
                isinstance(exc, RedisConnectionError) and "closed by server" in " ".join(map(str, exc.args))):
            return RedisProblem("the server closed the connection: a redis:// URL to a TLS port (that needs "
                                "rediss://)?", False)
    return RedisProblem(type(error).__name__, False)


def id_fence_key(ids_key: str) -> str:
    """The id counter's fence: `{cl:ids}:fence` hashes like `cl:ids` (call_ledger/store/lua/ids.lua needs both
    in one slot). Prefixes hold no braces (Settings.key_prefix), so the tag is the whole key."""
    return f"{{{ids_key}}}:fence"


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
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    return wrapper


# Not frozen, like call_ledger.store.streams.Entry: the apply loop makes one per call per batch.
@dataclass(slots=True)
class LoadedCall:
    """What a worker knows of a call before applying a batch to it."""

    version: int
    core: bytes | None  # the core state JSON
    fields: dict[str, bytes | None]  # the r:/m: fields asked for (None: not set)
    record_id: int | None
    applied: frozenset[str]  # journal keys it has: of the asked events, and maybe its latest
    # Already decoded (the worker's cache of calls it committed): used as it is, in place of
    # core and fields.
    state: CallState | None = None
    token: str = ""  # the token of the commit that made `version` ('' before tokens; commit.lua)
    # Not read at all: the worker guessed the call is new (worker/apply.py, NewCallGuess), and
    # the commit's compare-and-set against version 0 and no token says whether it was.
    guessed: bool = False


# Not frozen, like call_ledger.store.streams.Entry: the apply loop makes one per call per batch.
@dataclass(slots=True)
class CommitWrite:
    call_sid: str
    version: int
    new_version: int
    core: bytes
    record_id: int
    events: list[tuple[str, int, bytes]]  # (journal key, occurred_us, event JSON)
    fields: list[tuple[str, bytes]]  # the registers and call_meta keys that changed
    record: bytes = b""  # the record rendered ready to serve (call_ledger.core.served), written as `j`
    token: str = ""  # the commit token read with `version` (commit.lua)
    new_token: str = ""  # this commit's, unique


def _commit_args(w: CommitWrite) -> list[Any]:
    """One call's share of the commit script's ARGV (see commit.lua)."""
    args: list[Any] = [w.version, w.token, w.new_version, w.new_token, w.core, w.record_id, len(w.events)]
    for key, occurred_us, event_json in w.events:
        # A score is a double: exact for any instant before the year 2255. The journal keeps
        # what the key, the score and the call do not say already (call_ledger.core.journal).
        args += [key, occurred_us, compact(event_json, key, w.call_sid, occurred_us) if event_json else b""]
    fields = [*w.fields, (RECORD_FIELD.decode(), w.record)] if w.record else w.fields
    args.append(len(fields))
    for name, value in fields:
        args += [name, value]
    return args


class Store(StreamStore):
    """The Redis layout above, as the worker and the API use it: the streams (StreamStore)
    and the call records."""

    def __init__(self, redis: Any, prefix: str = "cl", *, stream_shards: int = 1, durable_ack: str = "none",
                 durable_ack_timeout_ms: int = 1000) -> None:
        super().__init__(redis, prefix, stream_shards=stream_shards, durable_ack=durable_ack,
                         durable_ack_timeout_ms=durable_ack_timeout_ms, append_timeout_s=REQUEST_TIMEOUT_S)
        self.ids = f"{prefix}:ids"
        self.ids_fence = id_fence_key(self.ids)
        self.ids_key = id_key_key(self.ids)
        self._call_prefix = f"{prefix}:call:"
        self._layout_key = f"{prefix}:layout"
        self._journal_prefix = f"{prefix}:journal:"
        self._order_prefix = f"{prefix}:order:"
        # The calls API's index shards (their own module: they span calls, not one call's slot).
        self.indexes = IndexStore(redis, prefix)
        self._commit = redis.register_script(COMMIT.source)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(open_redis(settings), settings.key_prefix, stream_shards=settings.stream_shards,
                   durable_ack=settings.durable_ack, durable_ack_timeout_ms=settings.durable_ack_timeout_ms)

    async def append(self, event_json: bytes, call_sid: str | None = None) -> str:
        """Intake's XADD, coalesced with the others of its event-loop tick into one pipeline
        (`call_ledger.store.append_batcher`; durability as in StreamStore._append). Failures, the tick's
        timeout included, are StoreUnavailable (503)."""
        try:
            return await self._append(event_json, call_sid)
        except (RedisError, RedisClusterException, OSError) as exc:  # the server refused it (OOM, ...)
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    async def append_claimed(self, event_json: bytes, call_sid: str, signature_key: str, digest: bytes,
                             ttl_s: int) -> str | None:
        """`append` with a signature ledger claim in the same step (one server only: see
        `claims_with_append`): None, and nothing stored, if the signature is known with other
        parameters. Failures are StoreUnavailable (503), with nothing claimed in Redis (intake
        then holds the claim itself: call_ledger.store.signatures)."""
        try:
            return await self._append_claimed(event_json, call_sid, signature_key, digest, ttl_s)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

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
            # A new store: every index entry it will hold has the month rollups (see
            # call_ledger.store.indexes.IndexStore.months_key; an older store gets it from `reindex`).
            await self.redis.set(self.indexes.months_key, "1", nx=True)
        elif _text(found) != LAYOUT:
            raise LayoutMismatch(f"Redis holds call-ledger data in key layout {_text(found)!r}; "
                                 f"this version reads layout {LAYOUT!r}")

    # -- health ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        return await self.ping_error() is None

    async def ping_error(self) -> BaseException | None:
        """None when Redis answers PING, else what went wrong (describe_redis_error says it in words)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return None if await self.redis.ping() else RedisError("PING did not answer PONG")
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            return exc

    async def close(self) -> None:
        await self.batcher.close()
        await self.redis.aclose()

    async def load_calls(self, wanted: dict[str, tuple[list[str], list[str]]],
                         latest: int = 0) -> dict[str, LoadedCall]:
        """Per call: version, core state, id, the given r:/m: fields, and which of the given
        journal keys it already has, with the keys of its `latest` latest events (by time).
        `wanted`: call -> (journal keys, field names)."""
        sids = list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            keys, fields = wanted[sid]
            pipe.hmget(self.call_key(sid), "v", "s", "id", "t", *fields)
            # The order index holds every applied event's key (the journal may be off).
            pipe.zmscore(self.order_key(sid), keys)
            if latest:
                pipe.zrange(self.order_key(sid), -latest, -1)
        replies = await pipe.execute()
        loaded = {}
        per_call = 3 if latest else 2
        for i, sid in enumerate(sids):
            keys, fields = wanted[sid]
            call, journal = replies[per_call * i], replies[per_call * i + 1]
            version, core, record_id, token = call[:4]
            applied = [key for key, value in zip(keys, journal, strict=True) if value is not None]
            if latest:
                applied += [_text(key) for key in replies[per_call * i + 2]]
            loaded[sid] = LoadedCall(
                int(version or 0), core, dict(zip(fields, call[4:], strict=True)),
                int(record_id) if record_id else None, frozenset(applied), token=_text(token) if token else "",
            )
        return loaded

    async def allocate_ids(self, count: int) -> list[int]:
        """`count` fresh record ids (unique, positive, opaque; a lost race wastes one, harmlessly).

        One INCRBY per batch of new calls, in a script that first makes the counter jump
        forward if it was last advanced on another node or history (call_ledger/store/lua/ids.lua): so ids
        stay unique when a failover hands the counter to a replica that had not received
        its last increments. Cheaper than claiming each id (a key per call, and a round trip
        to each claim's node per batch), and it needs no WAIT, which redis-py's cluster
        client cannot send on the connection of the write. Each counter value becomes an id
        under the store's permutation key (call_ledger.core.record_ids), so ids reveal no call volume.
        """
        return (await self.reserve_ids(count)).ids()

    async def reserve_ids(self, count: int) -> IdBlock:
        """`allocate_ids` without computing the ids: the block of counter values and the key
        they are made ids under (a bulk fill reserves a million at once, then each of its
        processes makes the ids of its own calls)."""
        keys, args = [self.ids, self.ids_fence, self.ids_key], [count, ID_JUMP, secrets.token_hex(32)]

        def build(pipe: Any) -> None:  # may run twice (NOSCRIPT): the id script had not run then
            pipe.set(self._layout_key, LAYOUT, nx=True)  # whoever writes records marks their layout
            IDS.queue(pipe, keys, args)

        last, key = (await run_pipeline(self.redis, build, (IDS,)))[1]
        return IdBlock(int(last) - count + 1, count, _text(key).encode())

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
        # On a cluster one script may only touch one slot: one call per script, pipelined, by
        # SHA (sending the script with every call was about 1.2 KB more per event to its node).
        # A node without it (a promoted replica, a restart, SCRIPT FLUSH) answers NOSCRIPT for
        # those calls only, which did not run: the script is loaded on every primary and just
        # they are sent again, so no compare-and-set runs twice.
        results: list[Any] = [None] * len(writes)
        todo = list(range(len(writes)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                w = writes[i]
                COMMIT.queue(pipe, self.call_keys(w.call_sid), _commit_args(w))
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = reply
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo or attempt:
                break
            await self.redis.script_load(COMMIT.source)
        for reply in results:
            if isinstance(reply, Exception):
                raise reply
        return [bool(r[0]) for r in results]

    # -- read API -------------------------------------------------------------------------

    @unavailable_on_error
    async def get_call(self, call_sid: str) -> tuple[int, CallState] | None:
        """The call's record id and whole state (one bounded hash), or None."""
        return CallState.from_hash(await self.redis.hgetall(self.call_key(call_sid)))

    @unavailable_on_error
    async def call_fields(self, call_sid: str) -> dict[bytes, bytes] | None:
        """The call's raw hash (one bounded HGETALL), or None when there is no such call."""
        fields = await self.redis.hgetall(self.call_key(call_sid))
        return fields if fields.get(b"id") is not None and fields.get(b"s") is not None else None

    @unavailable_on_error
    async def calls_fields(self, call_sids: list[str]) -> list[dict[bytes, bytes] | None]:
        """What an export writes each call's row from, for many calls in one round trip: for a
        call whose stored record `j` is current, `id`, `v`, `j`, the organization register and
        its call_meta fields; else its whole hash (`call_fields`). None where there is no record.

        On a single Redis one script reads the whole batch (call_ledger/store/lua/export_fields.lua): a
        pipeline of one HGETALL per call spent most of an export's time in redis-py's
        per-command reply handling. On a Cluster the calls lie in many slots: HGETALL each."""
        if not call_sids:
            return []
        if not self._cluster:
            replies = await EXPORT_FIELDS.run(self.redis, [self.call_key(sid) for sid in call_sids], [])
            return [dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None for flat in replies]
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hgetall(self.call_key(sid))
        return [fields if fields.get(b"id") is not None and fields.get(b"s") is not None else None
                for fields in await pipe.execute()]

    @unavailable_on_error
    async def get_calls(self, call_sids: list[str]) -> list[tuple[int, CallState] | None]:
        """`get_call` for many calls in one round trip (a list page)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hgetall(self.call_key(sid))
        return [CallState.from_hash(fields) for fields in await pipe.execute()]

    @unavailable_on_error
    async def events_page(self, call_sid: str, after: str, limit: int) -> tuple[list[bytes], str | None] | None:
        """Applied events oldest first, at most `limit` and about EVENTS_PAGE_BYTES, after the
        journal key `after` ('' = the start); with the key to continue from, or None at the end.
        None when the call does not exist; UnknownCursor when `after` is not one of its events."""
        keys = [self.order_key(call_sid), self.journal_key(call_sid)]
        args = [after, limit, EVENTS_PAGE_BYTES]

        def build(pipe: Any) -> None:
            pipe.hexists(self.call_key(call_sid), "id")
            EVENTS_PAGE.queue(pipe, keys, args)

        exists, reply = await run_pipeline(self.redis, build, (EVENTS_PAGE,))
        if not exists:
            return None
        more = int(reply[0])
        if more < 0:
            raise InvalidQuery("after is not a cursor of this call's events")
        # The script bounded the page by the bytes of the entries it read. The page ends as it
        # did when the entries were the events' JSON: an event restored is no shorter than its
        # entry, so the script read at least the page, and it ends after the event whose JSON
        # reaches the budget if another event follows (SPEC §8).
        events: list[bytes] = []
        size = 0
        end = len(reply)
        for i in range(2, end, 3):
            event = restore(reply[i + 2], reply[i], call_sid, int(float(reply[i + 1])))
            events.append(event)
            size += len(event)
            if size >= EVENTS_PAGE_BYTES and (i + 3 < end or int(reply[1])):
                more, end = 1, i + 3
                break
        return events, (_text(reply[end - 3]) if more and events else None)

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

    async def are_applied(self, events: list[tuple[str, str]]) -> list[bool]:
        """Whether each (call_sid, journal key) is applied to its call: its call's order index has
        it (kept with or without the journal). One pipelined ZSCORE each; each reads one slot."""
        if not events:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for call_sid, key in events:
            pipe.zscore(self.order_key(call_sid), key)
        return [score is not None for score in await pipe.execute()]

    async def applied_keys(self, call_sid: str) -> set[str]:
        """Every journal key (source:event_id) applied to the call: for tests and tools, not requests."""
        return {_text(key) for key in await self.redis.hkeys(self.journal_key(call_sid))}

    async def event_count(self, call_sid: str) -> int:
        return int(await self.redis.hget(self.call_key(call_sid), "v") or 0)
