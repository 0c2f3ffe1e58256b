"""The event streams in Redis: intake's XADD, the consumer group, claims, dead letters,
retention and lag, over K stream shards (SPEC §12, `call_ledger.store.shards`).

`Store` (call_ledger/store/facade.py) composes this class with the call records, the indexes and the
signature ledger; every key name is call_ledger.store.keys'.

Every shard key that was ever written (any K) is registered in the set `<prefix>:streams`,
and workers consume every registered shard: changing LEDGER_STREAM_SHARDS never strands
events in a shard that the new K no longer writes to.
"""

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.exceptions import ResponseError

from call_ledger.core.errors import DurabilityUnavailable
from call_ledger.store.append_batcher import AppendBatcher
from call_ledger.store.client import is_cluster, text
from call_ledger.store.errors import REDIS_FAILURES, redis_failure
from call_ledger.store.keys import Keys
from call_ledger.store.shards import Shard, all_shards, shard_index, shard_of_stream

GROUP = "ledger"
T = TypeVar("T")



def _call_sid_of(event_json: bytes) -> str:
    return str(orjson.loads(event_json).get("call_sid", ""))


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Made several times per event by the apply loop, so not frozen (a frozen dataclass's __init__
# sets each field through object.__setattr__: ~2 µs an object); nothing changes one once made.
@dataclass(slots=True, unsafe_hash=True)
class Entry:
    """One stream entry as a worker received it."""

    entry_id: str
    event_json: bytes | None  # None when the entry has no event field (never written by intake)
    deliveries: int = 1
    stream: str = ""  # the shard's stream key ("" in tests that build entries: the first shard)

    @property
    def ref(self) -> tuple[str, str]:
        """Unique across shards (two shards can hand out the same entry id)."""
        return self.stream, self.entry_id



class StreamStore:
    """Intake's streams and the worker's consumer group over them."""

    def __init__(self, redis: Any, prefix: str = "cl", *, stream_shards: int = 1, durable_ack: str = "none",
                 durable_ack_timeout_ms: int = 1000, append_timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.durable_ack = durable_ack
        self.durable_ack_timeout_ms = durable_ack_timeout_ms
        self.shards = all_shards(prefix, stream_shards)
        # The first shard's keys; with one shard (the default) the only ones.
        self.stream, self.dead, self.failures = self.shards[0].stream, self.shards[0].dead, self.shards[0].failures
        keys = Keys(prefix)
        self._registry = keys.streams
        self._consumed: list[Shard] = list(self.shards)
        self._durability_key = keys.durability_check
        self._cluster = is_cluster(redis)
        # Intake's writes (XADD, the signature ledger's SET), one pipeline per event-loop tick,
        # bounded in time per tick rather than per request.
        self.batcher = AppendBatcher(redis, durable_ack=durable_ack, durable_ack_timeout_ms=durable_ack_timeout_ms,
                                     timeout_s=append_timeout_s)

    def shard_for(self, call_sid: str) -> Shard:
        return self.shards[shard_index(call_sid, len(self.shards))]

    def _shard(self, stream: str) -> Shard:
        return shard_of_stream(self.prefix, stream or self.stream)

    # -- intake ---------------------------------------------------------------------------

    async def append(self, event_json: bytes, call_sid: str | None = None) -> str:
        """Intake's XADD, coalesced with the others of its event-loop tick into one pipeline
        (`call_ledger.store.append_batcher`; durability as in `_append`). Failures, the tick's
        timeout included, are StoreUnavailable (503)."""
        try:
            return await self._append(event_json, call_sid)
        except REDIS_FAILURES as exc:  # the server refused it (OOM, ...)
            raise redis_failure(exc) from exc

    async def append_claimed(self, event_json: bytes, call_sid: str, signature_key: str, digest: bytes,
                             ttl_s: int) -> str | None:
        """`append` with a signature ledger claim in the same step (one server only: see
        `claims_with_append`): None, and nothing stored, if the signature is known with other
        parameters. Failures are StoreUnavailable (503), with nothing claimed in Redis (intake
        then holds the claim itself: call_ledger.store.signatures)."""
        try:
            return await self._append_claimed(event_json, call_sid, signature_key, digest, ttl_s)
        except REDIS_FAILURES as exc:
            raise redis_failure(exc) from exc

    async def _append(self, event_json: bytes, call_sid: str | None = None) -> str:
        """XADD one normalised event to its call's shard. No MAXLEN: trimming here could
        drop unapplied events.

        With durable_ack "aof", also wait (same round trip) until Redis has fsynced the
        entry to its AOF; with "replica", until at least one replica has it (WAIT counts
        the replicas that acknowledged this connection's writes). If that is not confirmed
        in time it raises StoreUnavailable: the caller answers 503 and the provider retries
        (the redelivery is then a harmless duplicate).
        """
        if call_sid is None:  # replays and tools: the event says which call it is
            call_sid = _call_sid_of(event_json)
        # The same path as intake's (one pipeline per event-loop tick, durability on the same
        # connection, per node on a Cluster), so tools keep the durability promise too.
        return await self.batcher.xadd(self.shard_for(call_sid).stream, event_json)

    @property
    def claims_with_append(self) -> bool:
        """Whether a signature can be claimed in the XADD's own step (one server, not a Cluster)."""
        return not self._cluster

    async def _append_claimed(self, event_json: bytes, call_sid: str, signature_key: str, digest: bytes,
                              ttl_s: int) -> str | None:
        """`_append`, with the signature ledger's claim in the same script (call_ledger/store/append_batcher.py):
        the entry id, or None (nothing stored) when the signature is known with other parameters."""
        return await self.batcher.claim_and_xadd(signature_key, digest, ttl_s, self.shard_for(call_sid).stream,
                                                 event_json)

    async def replicas_in_sync(self) -> int:
        """How many replicas the server has connected now (INFO replication); on a Cluster, the
        fewest any master has (a master without one answers its shards' webhooks 503)."""
        if not self._cluster:
            return int((await self.redis.info("replication")).get("connected_slaves", 0))
        counts = []
        for node in self.redis.get_primaries():
            info = await self.redis.info("replication", target_nodes=node)
            counts.append(int(info.get("connected_slaves", 0)))
        return min(counts, default=0)

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

    async def register_shards(self) -> None:
        """Name this K's shard keys in the registry, so that every worker drains them."""
        await self.redis.sadd(self._registry, *(shard.stream for shard in self.shards))

    # -- worker: the consumer group ---------------------------------------------------------

    async def refresh_shards(self) -> list[Shard]:
        """Every shard to consume: this K's, and any other K's still registered."""
        registered = {text(s) for s in await self.redis.smembers(self._registry)}
        mine = [shard.stream for shard in self.shards]
        self._consumed = [self._shard(s) for s in [*mine, *sorted(registered - set(mine))]]
        return self._consumed

    async def ensure_group(self) -> None:
        """Register the shards and create the group on each, from the stream's start, so
        events posted before any worker ran count."""
        await self.register_shards()
        for shard in await self.refresh_shards():
            try:
                await self.redis.xgroup_create(shard.stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    @staticmethod
    def _entries(stream: str, raw: Iterable[Any], deliveries: dict[str, int] | None = None) -> list[Entry]:
        entries = []
        for entry_id, fields in raw:
            if fields is None:  # deleted while pending (XAUTOCLAIM reports those separately)
                continue
            eid = text(entry_id)
            event = fields.get(b"e", fields.get("e"))
            entries.append(Entry(eid, event, (deliveries or {}).get(eid, 1), stream))
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
        """Up to about `count` new entries, a fair share from each shard (a busy shard cannot
        starve the others: XREADGROUP's COUNT applies to each stream)."""
        shards = self._consumed
        per_shard = max(1, -(-count // len(shards)))
        if len(shards) == 1 or not self._cluster:
            streams = {shard.stream: ">" for shard in shards}
            reply = await self._group_command(lambda: self.redis.xreadgroup(
                GROUP, consumer, streams, count=per_shard, block=block_ms))
            return [e for stream, raw in (reply or []) for e in self._entries(text(stream), raw)]

        # On a cluster one command reads one slot: a non-blocking read per shard, pipelined
        # (the loop paces itself when they all come back empty).
        async def read_all() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards:
                pipe.xreadgroup(GROUP, consumer, {shard.stream: ">"}, count=per_shard)
            return list(await pipe.execute())

        replies = await self._group_command(read_all)
        return [e for reply in replies for stream, raw in (reply or []) for e in self._entries(text(stream), raw)]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries pending longer than min_idle_ms on any consumer (a dead one, or us)."""
        claimed: list[Entry] = []
        for shard in self._consumed:
            if len(claimed) >= count:
                break
            claimed += await self._claim_shard(shard.stream, consumer, min_idle_ms, count - len(claimed))
        return claimed

    async def _claim_shard(self, stream: str, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        reply = await self._group_command(lambda: self.redis.xautoclaim(
            stream, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count))
        claimed = reply[1]
        if not claimed:
            return []
        first, last = text(claimed[0][0]), text(claimed[-1][0])
        pending = await self.redis.xpending_range(
            stream, GROUP, min=first, max=last, count=len(claimed) + 10, consumername=consumer)
        deliveries = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return self._entries(stream, claimed, deliveries)

    async def ack(self, entries: Iterable[Entry], failed_before: Iterable[Entry] = ()) -> None:
        """Acknowledge entries, and forget the failure reasons of those that had one."""
        entries = list(entries)
        failed_before = list(failed_before)
        streams = {entry.stream or self.stream for entry in entries}
        if len(streams) == 1 and not failed_before:  # the usual batch: one command, no pipeline's fixed cost
            await self.redis.xack(streams.pop(), GROUP, *(entry.entry_id for entry in entries))
            return
        by_stream: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            by_stream[entry.stream or self.stream].append(entry.entry_id)
        if not by_stream:
            return
        cleared: dict[str, list[str]] = defaultdict(list)
        for entry in failed_before:
            cleared[self._shard(entry.stream).failures].append(entry.entry_id)
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
        for failures, ids in cleared.items():
            pipe.hdel(failures, *ids)
        await pipe.execute()

    async def record_failures(self, reasons: Iterable[tuple[Entry, str]]) -> None:
        by_shard: dict[str, dict[str, str]] = defaultdict(dict)
        for entry, reason in reasons:
            by_shard[self._shard(entry.stream).failures][entry.entry_id] = reason
        for failures, mapping in by_shard.items():
            await self.redis.hset(failures, mapping=mapping)

    async def failure_reasons(self, entry_ids: list[str]) -> dict[str, str]:
        """Why each of these entries last failed, looked up in every shard (tests and tools)."""
        found: dict[str, str] = {}
        for shard in self._consumed:
            if entry_ids:
                values = await self.redis.hmget(shard.failures, entry_ids)
                found.update((eid, text(v)) for eid, v in zip(entry_ids, values, strict=True) if v is not None)
        return found

    async def dead_letter(self, entry: Entry, reason: str) -> str:
        """Move an entry to its shard's dead-letter stream, then ack it: never lost, at worst listed twice."""
        fields = {
            "e": entry.event_json or b"",
            "reason": reason,
            "original_id": entry.entry_id,
            "deliveries": entry.deliveries,
            "dead_at": int(time.time() * 1000),
        }
        dead_id = text(await self.redis.xadd(self._shard(entry.stream).dead, fields))
        await self.ack([entry], failed_before=[entry])
        return dead_id

    # -- maintenance ------------------------------------------------------------------------

    async def group_stats(self) -> tuple[int, int]:
        """(lag: entries not yet delivered to the group, pending: delivered, not acknowledged),
        summed over the shards."""
        stats = await self.shard_stats()
        return sum(lag for lag, _ in stats.values()), sum(pending for _, pending in stats.values())

    async def shard_stats(self) -> dict[str, tuple[int, int]]:
        """(lag, pending) of each consumed shard, by shard name."""
        return {shard.name: await self._stream_stats(shard.stream) for shard in self._consumed}

    async def _stream_stats(self, stream: str) -> tuple[int, int]:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet
            return 0, 0
        for group in groups:
            if text(group.get("name", b"")) != GROUP:
                continue
            lag = group.get("lag")
            if lag is None:  # Redis cannot tell (deletions in the middle): count what is left
                last = text(group["last-delivered-id"])
                lag = len(await self.redis.xrange(stream, min=f"({last}", max="+", count=100_000))
            return int(lag), int(group.get("pending") or 0)
        # No worker has created the group yet: everything in the stream is waiting.
        return int(await self.redis.xlen(stream)), 0

    async def oldest_pending_ages(self, now_ms: int | None = None) -> dict[str, float]:
        """Seconds since the oldest entry still pending (delivered, not acknowledged) of each
        consumed shard was added to the stream; 0 with none pending. An entry that stays pending
        holds trimming back (`trim`), so a growing age is a stuck entry before Redis fills."""
        now_ms = await self.now_ms() if now_ms is None else now_ms
        ages = {}
        for shard in self._consumed:
            try:
                summary = await self.redis.xpending(shard.stream, GROUP)
            except ResponseError:  # no stream or no group yet: nothing pending
                summary = {}
            oldest = summary.get("min") if summary.get("pending") else None
            ages[shard.name] = max(0, now_ms - entry_order(text(oldest))[0]) / 1000 if oldest else 0.0
        return ages

    async def trim(self, retention_s: int, now_ms: int | None = None) -> int:
        """Drop entries older than the retention from every shard, but never one a group has
        not acknowledged."""
        # Redis's clock, not ours: stream ids are Redis timestamps.
        now_ms = await self.now_ms() if now_ms is None else now_ms
        return sum([await self._trim_stream(shard.stream, retention_s, now_ms) for shard in self._consumed])

    async def _trim_stream(self, stream: str, retention_s: int, now_ms: int) -> int:
        """MINID is the oldest of: the retention cut-off, each group's oldest pending entry,
        and each group's last-delivered id (entries after it are not delivered yet)."""
        bound = (max(0, now_ms - retention_s * 1000), 0)
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0
        for group in groups:
            name = text(group["name"])
            bound = min(bound, entry_order(text(group["last-delivered-id"])))
            if int(group.get("pending") or 0):
                summary = await self.redis.xpending(stream, name)
                if summary.get("min"):
                    bound = min(bound, entry_order(text(summary["min"])))
        if bound <= (0, 0):
            return 0
        return int(await self.redis.xtrim(stream, minid=f"{bound[0]}-{bound[1]}"))

    async def trim_dead(self, retention_days: int, now_ms: int | None = None) -> int:
        """Drop dead letters older than `retention_days` (by their id: when they were dead-lettered,
        Redis's clock) from every consumed shard; how many were dropped. 0 days: none ever."""
        if retention_days <= 0:
            return 0
        now_ms = await self.now_ms() if now_ms is None else now_ms
        cutoff = now_ms - retention_days * 86_400_000
        if cutoff <= 0:
            return 0
        # Exact (no `~`): a dead letter within the retention is never dropped early, and the count
        # logged is what was dropped. Each pass only drops what aged out since the last.
        return sum([int(await self.redis.xtrim(shard.dead, minid=f"{cutoff}-0", approximate=False))
                    for shard in self._consumed])

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- dead letters -----------------------------------------------------------------------

    def _dead_id(self, shard: Shard, dead_id: str) -> str:
        """A dead letter's id as `dlq list` shows it: `<shard>/<id>` when sharded."""
        return dead_id if shard.name == "0" else f"{shard.name}/{dead_id}"

    async def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """Dead letters of every shard, at most `count`, each with its shard."""
        rows: list[dict[str, Any]] = []
        for shard in self._consumed:
            for dead_id, fields in await self.redis.xrange(shard.dead, min="-", max="+", count=count - len(rows)):
                row = {text(k): text(v) for k, v in fields.items()}
                row["id"] = self._dead_id(shard, text(dead_id))
                row["shard"] = shard.name
                rows.append(row)
            if len(rows) >= count:
                break
        return rows

    async def replay_dead(self, dead_ids: list[str] | None = None) -> list[tuple[str, str]]:
        """Re-queue dead letters (all, or the given ids) on their call's shard, then delete them.

        Re-queued first, deleted second: a crash in between replays an event twice,
        which the ledger's idempotency absorbs. Returns (dead id, new stream id) pairs.
        """
        wanted: list[tuple[Shard, Any, dict[Any, Any]]] = []
        for shard in self._consumed:
            if dead_ids is None:
                rows = await self.redis.xrange(shard.dead, min="-", max="+")
            else:
                rows = []
                for shown in dead_ids:
                    name, _, raw_id = shown.rpartition("/")
                    if (name or "0") == shard.name:
                        rows += await self.redis.xrange(shard.dead, min=raw_id, max=raw_id)
            wanted += [(shard, dead_id, fields) for dead_id, fields in rows]
        moved = []
        for shard, dead_id, fields in wanted:
            new_id = await self._append(fields.get(b"e", fields.get("e")) or b"{}")
            await self.redis.xdel(shard.dead, dead_id)
            moved.append((self._dead_id(shard, text(dead_id)), new_id))
        return moved
