"""`Store`: the one object the services hold, composed of the store's parts.

    store.streams     intake's streams and the worker's consumer group (call_ledger.store.streams)
    store.records     the call records and record ids (call_ledger.store.records)
    store.indexes     the calls API's index shards (call_ledger.store.indexes)
    store.signatures  the signature ledger, sharing the streams' append batcher (call_ledger.store.signatures)
    store.outbox      the calls' outboxes, the fan-out and finalize schedules (call_ledger.store.outbox)
    store.endpoints   the webhook endpoints of outbound call events (call_ledger.store.endpoints)
    store.deliveries  the outbound deliveries: each endpoint's queue and attempts (call_ledger.store.deliveries)
    store.archive     the archive's candidates, lock, passes and tombstones (call_ledger.store.archive)
    store.keys        every key name (call_ledger.store.keys)

All on one Redis client (call_ledger.store.client), built once. Nobody else builds a part from a
raw client: the worker, the API and `reindex` use these instances.

The methods below delegate to the parts, so that the many callers written against the former
`Store` (which inherited the streams) keep working. New code should call the part
(`store.records.get_call`, `store.streams.read_new`); the delegates can go once callers have moved.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from call_ledger.core.record_ids import IdBlock
from call_ledger.core.rules import CallState
from call_ledger.settings import Settings
from call_ledger.store.append_batcher import AppendBatcher
from call_ledger.store.archive import ArchiveStore
from call_ledger.store.client import open_redis
from call_ledger.store.deliveries import Deliveries
from call_ledger.store.endpoints import Endpoints
from call_ledger.store.errors import REDIS_FAILURES, REQUEST_TIMEOUT_S
from call_ledger.store.indexes import IndexStore
from call_ledger.store.keys import Keys
from call_ledger.store.outbox import Outbox
from call_ledger.store.records import CommitReply, CommitWrite, LoadedCall, Records
from call_ledger.store.shards import Shard
from call_ledger.store.signatures import SignatureLedger
from call_ledger.store.streams import Entry, StreamStore

DEFAULT_SIGNATURE_TTL_S = 7 * 86_400


class Store:
    """The Redis layout (call_ledger.store.keys), as the worker and the API use it."""

    def __init__(self, redis: Any, prefix: str = "cl", *, stream_shards: int = 1, durable_ack: str = "none",
                 durable_ack_timeout_ms: int = 1000, signature_ttl_s: int = DEFAULT_SIGNATURE_TTL_S) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.streams = StreamStore(redis, prefix, stream_shards=stream_shards, durable_ack=durable_ack,
                                   durable_ack_timeout_ms=durable_ack_timeout_ms, append_timeout_s=REQUEST_TIMEOUT_S)
        self.records = Records(redis, self.keys)
        # The calls API's index shards (their own part: they span calls, not one call's slot).
        self.indexes = IndexStore(redis, prefix)
        # Intake's claims go through the same batcher as its XADDs: one round trip per tick.
        self.signatures = SignatureLedger(redis, prefix, signature_ttl_s, batcher=self.streams.batcher)
        # Outbound messages (SPEC §15): the outboxes the commit writes, and what is due of them.
        self.outbox = Outbox(redis, self.keys)
        self.endpoints = Endpoints(redis, self.keys)
        self.deliveries = Deliveries(redis, self.keys)
        # Retention and the archive (SPEC §16): what a pass reads and writes in Redis.
        self.archive = ArchiveStore(redis, self.keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(open_redis(settings), settings.key_prefix, stream_shards=settings.stream_shards,
                   durable_ack=settings.durable_ack, durable_ack_timeout_ms=settings.durable_ack_timeout_ms,
                   signature_ttl_s=settings.signature_ttl_s)

    # -- health ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        return await self.ping_error() is None

    async def ping_error(self) -> BaseException | None:
        """None when Redis answers PING, else what went wrong (describe_redis_error says it in words)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return None if await self.redis.ping() else RedisError("PING did not answer PONG")
        except REDIS_FAILURES as exc:  # a timeout too (TimeoutError is an OSError)
            return exc

    async def close(self) -> None:
        await self.streams.batcher.close()
        await self.redis.aclose()

    # -- the streams' names ------------------------------------------------------------------

    @property
    def stream(self) -> str:
        return self.streams.stream

    @property
    def dead(self) -> str:
        return self.streams.dead

    @property
    def failures(self) -> str:
        return self.streams.failures

    @property
    def shards(self) -> list[Shard]:
        return self.streams.shards

    @property
    def batcher(self) -> AppendBatcher:
        return self.streams.batcher

    @property
    def claims_with_append(self) -> bool:
        return self.streams.claims_with_append

    def shard_for(self, call_sid: str) -> Shard:
        return self.streams.shard_for(call_sid)

    # -- the record keys -----------------------------------------------------------------------

    @property
    def ids(self) -> str:
        return self.keys.ids

    @property
    def ids_fence(self) -> str:
        return self.keys.ids_fence

    @property
    def ids_key(self) -> str:
        return self.keys.ids_key

    def call_key(self, call_sid: str) -> str:
        return self.keys.call(call_sid)

    def journal_key(self, call_sid: str) -> str:
        return self.keys.journal(call_sid)

    def order_key(self, call_sid: str) -> str:
        return self.keys.order(call_sid)

    def call_keys(self, call_sid: str) -> list[str]:
        return self.records.call_keys(call_sid)

    # -- delegates: the streams ------------------------------------------------------------------

    async def append(self, event_json: bytes, call_sid: str | None = None) -> str:
        return await self.streams.append(event_json, call_sid)

    async def append_claimed(self, event_json: bytes, call_sid: str, signature_key: str, digest: bytes,
                             ttl_s: int) -> str | None:
        return await self.streams.append_claimed(event_json, call_sid, signature_key, digest, ttl_s)

    async def replicas_in_sync(self) -> int:
        return await self.streams.replicas_in_sync()

    async def check_durability(self) -> None:
        await self.streams.check_durability()

    async def register_shards(self) -> None:
        await self.streams.register_shards()

    async def refresh_shards(self) -> list[Shard]:
        return await self.streams.refresh_shards()

    async def ensure_group(self) -> None:
        await self.streams.ensure_group()

    async def read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        return await self.streams.read_new(consumer, count, block_ms)

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        return await self.streams.claim_stale(consumer, min_idle_ms, count)

    async def ack(self, entries: Iterable[Entry], failed_before: Iterable[Entry] = ()) -> None:
        await self.streams.ack(entries, failed_before)

    async def record_failures(self, reasons: Iterable[tuple[Entry, str]]) -> None:
        await self.streams.record_failures(reasons)

    async def failure_reasons(self, entry_ids: list[str]) -> dict[str, str]:
        return await self.streams.failure_reasons(entry_ids)

    async def dead_letter(self, entry: Entry, reason: str) -> str:
        return await self.streams.dead_letter(entry, reason)

    async def group_stats(self) -> tuple[int, int]:
        return await self.streams.group_stats()

    async def shard_stats(self) -> dict[str, tuple[int, int]]:
        return await self.streams.shard_stats()

    async def oldest_pending_ages(self, now_ms: int | None = None) -> dict[str, float]:
        return await self.streams.oldest_pending_ages(now_ms)

    async def trim(self, retention_s: int, now_ms: int | None = None) -> int:
        return await self.streams.trim(retention_s, now_ms)

    async def trim_dead(self, retention_days: int, now_ms: int | None = None) -> int:
        return await self.streams.trim_dead(retention_days, now_ms)

    async def now_ms(self) -> int:
        return await self.streams.now_ms()

    async def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        return await self.streams.dead_letters(count)

    async def replay_dead(self, dead_ids: list[str] | None = None) -> list[tuple[str, str]]:
        return await self.streams.replay_dead(dead_ids)

    # -- delegates: the records ------------------------------------------------------------------

    async def check_layout(self) -> None:
        await self.records.check_layout()

    async def load_calls(self, wanted: dict[str, tuple[list[str], list[str]]],
                         latest: int = 0) -> dict[str, LoadedCall]:
        return await self.records.load_calls(wanted, latest)

    async def allocate_ids(self, count: int) -> list[int]:
        return await self.records.allocate_ids(count)

    async def reserve_ids(self, count: int) -> IdBlock:
        return await self.records.reserve_ids(count)

    async def commit(self, writes: list[CommitWrite]) -> list[CommitReply]:
        return await self.records.commit(writes)

    async def get_call(self, call_sid: str) -> tuple[int, CallState] | None:
        return await self.records.get_call(call_sid)

    async def call_fields(self, call_sid: str) -> dict[bytes, bytes] | None:
        return await self.records.call_fields(call_sid)

    async def calls_fields(self, call_sids: list[str]) -> list[dict[bytes, bytes] | None]:
        return await self.records.calls_fields(call_sids)

    async def get_calls(self, call_sids: list[str]) -> list[tuple[int, CallState] | None]:
        return await self.records.get_calls(call_sids)

    async def events_page(self, call_sid: str, after: str, limit: int) -> tuple[list[bytes], str | None] | None:
        return await self.records.events_page(call_sid, after, limit)

    async def all_events(self, call_sid: str) -> list[bytes]:
        return await self.records.all_events(call_sid)

    async def are_applied(self, events: list[tuple[str, str]]) -> list[bool]:
        return await self.records.are_applied(events)

    async def applied_keys(self, call_sid: str) -> set[str]:
        return await self.records.applied_keys(call_sid)

    async def event_count(self, call_sid: str) -> int:
        return await self.records.event_count(call_sid)
