"""The archive's Redis side (SPEC §16): candidates, the lock, a pass's state, holding calls, tombstones,
and the calls' way out of the indexes.

Keys (call_ledger.store.keys): `cl:arc:{n}` the candidates per index shard, `cl:archive:lock`, `:pass`,
`:batch`, `:files`, `:seq`, and per index shard the archived counts `cl:ix:{n}:ac:<scope>:<filter>`.

A pass (worker/archive.py drives it) moves through states written in `cl:archive:pass`, so that a pass
killed at any point is finished by the next one, never done twice:

    selecting  the batch's calls are recorded (`cl:archive:batch`: sid -> record id), then held
               (archive_freeze.lua: `a` = "@<pass id>"; commits refuse them from then on)
    placed     each held call has its file and row (batch: sid -> "<record id> <file no>.<row>"), and
               the files are registered (`cl:archive:files`); the files are being written
    cleaning   every file is complete: tombstones replace the calls (archive_tombstone.lua), then the
               calls leave the indexes (archive_unindex.lua)

A held call is never changed again, so a resumed pass rebuilds the same rows from it; a file that
exists is complete (written aside, then renamed; or one confirmed PUT) and is not written again.
"""

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from call_ledger.core.indexes import SHARDS, member, shard_of
from call_ledger.store.client import is_cluster, text
from call_ledger.store.errors import unavailable_on_error
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua, run_pipeline

__all__ = ["ArchiveStore", "LockLost", "PassState", "is_tombstone"]


class LockLost(Exception):
    """Another process holds the archive's lock now: this one stops where it is (the other finishes)."""

FREEZE = Lua("archive_freeze.lua")
TOMBSTONE = Lua("archive_tombstone.lua")
UNINDEX = Lua("archive_unindex.lua")
LOCK = Lua("archive_lock.lua")
FORGET = Lua("archive_forget.lua")
FENCED = Lua("archive_fenced.lua")
RELEASE = Lua("archive_release.lua")
FIELDS_PER_COMMAND = 1000  # a fenced HSET's fields: unpack() of many thousands would overflow Lua's C stack
# How long an archived call's index version stays at its maximum (archive_unindex.lua): far longer than a
# worker holds what it read of a call before it sends the call's index update.
GONE_GRACE_MS = 600_000
ARCHIVED = b"a"  # the call hash's field: "@<pass id>" while held, "<file no>.<row>" once archived
CHUNK = 500  # calls per script call on a single Redis (a Cluster takes one call per script)


def is_tombstone(fields: dict[bytes, bytes]) -> bool:
    """Whether a call hash is an archived call's tombstone (not a call held by a pass: that one is whole)."""
    mark = fields.get(ARCHIVED)
    return mark is not None and not mark.startswith(b"@")


def placement(mark: bytes) -> tuple[int, int]:
    """A tombstone's (file no, row)."""
    file_no, _, row = mark.partition(b".")
    return int(file_no), int(row)


@dataclass
class PassState:
    """The pass under way, as `cl:archive:pass` holds it."""

    pass_id: str
    archived_at_us: int
    state: str  # selecting | placed | cleaning
    files: dict[str, int] = field(default_factory=dict)  # partition -> file no

    @property
    def marker(self) -> str:
        return "@" + self.pass_id


@dataclass(frozen=True, slots=True)
class HeldCall:
    """A call of the pass's batch: its record id, and its place once placed."""

    call_sid: str
    record_id: int
    place: str | None  # "<file no>.<row>"


class ArchiveStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._cluster = is_cluster(redis)

    # -- candidates ------------------------------------------------------------------------------

    async def schedule(self, due: dict[str, int], only_new: bool = False) -> None:
        """Put calls (sid -> ms) on their shards' candidate sets (`only_new`: leave a scheduled one be)."""
        by_shard: dict[int, dict[str, int]] = defaultdict(dict)
        for sid, ms in due.items():
            by_shard[shard_of(sid)][sid] = ms
        pipe = self.redis.pipeline(transaction=False)
        for shard, members in by_shard.items():
            pipe.zadd(self.keys.archive_due(shard), members, nx=only_new)
        await pipe.execute()

    async def candidates(self, cutoff_ms: int, limit: int) -> list[str]:
        """Up to `limit` calls scheduled at or before `cutoff_ms`, oldest first in each shard."""
        per_shard = max(1, -(-limit // SHARDS))
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zrangebyscore(self.keys.archive_due(shard), "-inf", cutoff_ms, start=0, num=per_shard)
        found = [text(sid, "surrogateescape") for sids in await pipe.execute() for sid in sids]
        return found[:limit]

    async def pending(self, cutoff_ms: int) -> int:
        """How many candidates are due at `cutoff_ms` (a metric, and `archive`'s progress)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zcount(self.keys.archive_due(shard), "-inf", cutoff_ms)
        return sum(int(n) for n in await pipe.execute())

    async def unschedule(self, sids: Iterable[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.zrem(self.keys.archive_due(shard_of(sid)), sid)
        await pipe.execute()

    # -- the lock --------------------------------------------------------------------------------

    async def lock(self, token: str, lease_ms: int, what: str = "take") -> bool:
        """Take, renew or release the archive's lock (archive_lock.lua): whether `token` holds it after."""
        return bool(int(await LOCK.run(self.redis, [self.keys.archive_lock], [token, lease_ms, what])))

    # -- a pass's state --------------------------------------------------------------------------

    async def current(self) -> PassState | None:
        found = await self.redis.hgetall(self.keys.archive_pass)
        if not found:
            return None
        return PassState(text(found[b"id"]), int(found[b"at"]), text(found[b"state"]),
                         orjson.loads(found.get(b"files", b"{}")))

    async def _fenced(self, token: str, key: str, *command: Any) -> Any:
        """One write to the pass's state, made only if `token` holds the lock (archive_fenced.lua)."""
        reply = await FENCED.run(self.redis, [self.keys.archive_lock, key], [token, *command])
        if not int(reply[0]):
            raise LockLost("another process holds the archive's lock now")
        return reply[1]

    async def _fenced_fields(self, token: str, key: str, command: str, items: list[Any], step: int) -> None:
        """A fenced HSET or HDEL of many fields, in commands of at most FIELDS_PER_COMMAND fields."""
        for start in range(0, len(items), FIELDS_PER_COMMAND * step):
            await self._fenced(token, key, command, *items[start:start + FIELDS_PER_COMMAND * step])

    async def begin(self, token: str, pass_id: str, archived_at_us: int) -> PassState:
        """A new pass, unless one is under way (then LockLost: another process made it since we looked)."""
        if not int(await self._fenced(token, self.keys.archive_pass, "HSETNX", "id", pass_id)):
            raise LockLost("another pass was begun meanwhile")
        await self._fenced(token, self.keys.archive_pass, "HSET", "at", archived_at_us, "state", "selecting")
        return PassState(pass_id, archived_at_us, "selecting")

    async def advance(self, token: str, state: PassState, to: str) -> None:
        state.state = to
        await self._fenced(token, self.keys.archive_pass, "HSET", "state", to, "files", orjson.dumps(state.files))

    async def finish(self, token: str) -> None:
        """The pass is over: its batch, then its state, go."""
        await self._fenced(token, self.keys.archive_batch, "DEL")
        await self._fenced(token, self.keys.archive_pass, "DEL")

    async def intend(self, token: str, calls: dict[str, int]) -> None:
        """Record the calls the pass is about to hold (sid -> record id): before holding them, so that
        a pass killed in between finds every call it may have held."""
        await self._fenced_fields(token, self.keys.archive_batch, "HSET",
                                  [item for pair in calls.items() for item in pair], 2)

    async def drop(self, token: str, sids: list[str]) -> None:
        """Calls the pass did not hold leave its batch."""
        await self._fenced_fields(token, self.keys.archive_batch, "HDEL", list(sids), 1)

    async def batch(self) -> list[HeldCall]:
        found = await self.redis.hgetall(self.keys.archive_batch)
        calls = []
        for sid, value in found.items():
            record_id, _, place = text(value).partition(" ")
            calls.append(HeldCall(text(sid, "surrogateescape"), int(record_id), place or None))
        return calls

    async def new_files(self, token: str, count: int) -> list[int]:
        """`count` fresh file numbers."""
        last = int(await self._fenced(token, self.keys.archive_seq, "INCRBY", count))
        return list(range(last - count + 1, last + 1))

    async def place(self, token: str, paths: dict[int, str], places: dict[str, tuple[int, str]]) -> None:
        """Register the pass's files (file no -> path) and each held call's place (sid -> (record id,
        "<file no>.<row>")): what the tombstones will say, and what GET reads."""
        await self._fenced_fields(token, self.keys.archive_files, "HSET",
                                  [item for no, path in paths.items() for item in (str(no), path)], 2)
        await self._fenced_fields(token, self.keys.archive_batch, "HSET",
                                  [item for sid, (record_id, place) in places.items()
                                   for item in (sid, f"{record_id} {place}")], 2)

    @unavailable_on_error
    async def file_path(self, file_no: int) -> str | None:
        found = await self.redis.hget(self.keys.archive_files, str(file_no))
        return None if found is None else text(found)

    # -- the calls -------------------------------------------------------------------------------

    async def freeze(self, marker: str, calls: list[tuple[str, int, str]]) -> list[bool]:
        """Hold each (sid, version, token) for the pass (archive_freeze.lua); whether it is held."""
        replies = await self._per_call(FREEZE, [([self.keys.call(sid)], [version, token])
                                                for sid, version, token in calls], [marker])
        return [bool(int(reply)) for reply in replies]

    async def release(self, holds: list[tuple[str, str]]) -> int:
        """Release each (sid, hold) a pass will not archive (archive_release.lua); how many were released."""
        replies = await self._per_call(RELEASE, [([self.keys.call(sid)], [hold]) for sid, hold in holds], [],
                                       chunked=False)
        return sum(int(reply) for reply in replies)

    async def tombstone(self, marker: str, calls: list[tuple[str, str]]) -> int:
        """Replace each held (sid, place) by its tombstone (archive_tombstone.lua); how many were now."""
        keys = self.keys
        replies = await self._per_call(TOMBSTONE, [
            ([keys.call(sid), keys.journal(sid), keys.order(sid), keys.outbox(sid)], [place])
            for sid, place in calls], [marker], chunked=False)
        return sum(int(reply) for reply in replies)

    async def forget_gone(self, now_ms: int, page: int = 1000) -> int:
        """End the grace period of the calls archived more than GONE_GRACE_MS ago (archive_forget.lua)."""
        forgotten = 0
        shards = list(range(SHARDS))
        while shards:
            def build(pipe: Any, shards: list[int] = shards) -> None:
                for shard in shards:
                    FORGET.queue(pipe, [self.keys.index_versions(shard), self.keys.index_gone(shard)],
                                 [now_ms - GONE_GRACE_MS, page])

            replies = [int(n) for n in await run_pipeline(self.redis, build, (FORGET,))]
            forgotten += sum(replies)
            shards = [shard for shard, n in zip(shards, replies, strict=True) if n == page]
        return forgotten

    async def unindex(self, calls: list[tuple[str, int]]) -> int:
        """Take each (sid, record id) out of its index shard's lists, counting it as archived there
        (archive_unindex.lua); how many entries were removed."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for sid, record_id in calls:
            by_shard[shard_of(sid)] += [member(record_id), sid]
        keys = self.keys
        now = int(time.time() * 1000)

        def build(pipe: Any) -> None:
            for shard, args in by_shard.items():
                for start in range(0, len(args), 2 * CHUNK):
                    UNINDEX.queue(pipe, [keys.index_entries(shard), keys.index_versions(shard),
                                         keys.archive_due(shard), keys.index_gone(shard)],
                                  [keys.index_base(shard), now, *args[start:start + 2 * CHUNK]])

        return sum(int(n) for n in await run_pipeline(self.redis, build, (UNINDEX,)))

    async def _per_call(self, script: Lua, calls: list[tuple[list[str], list[Any]]], shared: list[Any],
                        chunked: bool = True) -> list[Any]:
        """Run a per-call script (each call's keys in one slot) over many calls: on a single Redis a
        chunk of calls per script call, on a Cluster one call per script call, pipelined. The scripts
        are idempotent, so a NOSCRIPT re-run is safe. Replies: one per call, in order (`chunked`
        False: one per script call)."""
        size = CHUNK if not self._cluster else 1
        groups = [calls[start:start + size] for start in range(0, len(calls), size)]

        def build(pipe: Any) -> None:
            for group in groups:
                keys = [key for call_keys, _ in group for key in call_keys]
                args = [arg for _, call_args in group for arg in call_args]
                script.queue(pipe, keys, [*shared, *args])

        replies = await run_pipeline(self.redis, build, (script,))
        if not chunked:
            return replies
        return [reply for group in replies for reply in group]

    async def held_fields(self, sids: list[str]) -> list[dict[bytes, bytes]]:
        """The held calls' hashes, whole (they change no more)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(self.keys.call(sid))
        return list(await pipe.execute())

    async def events(self, sids: list[str]) -> list[list[tuple[bytes, int, bytes]]]:
        """Each held call's applied events, oldest first: (journal key, occurred_us, journal entry)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.zrange(self.keys.order(sid), 0, -1, withscores=True)
            pipe.hgetall(self.keys.journal(sid))
        replies = await pipe.execute()
        found = []
        for i in range(len(sids)):
            order, journal = replies[2 * i], replies[2 * i + 1]
            found.append([(key, int(score), journal[key]) for key, score in order if key in journal])
        return found

    @unavailable_on_error
    async def mark(self, call_sid: str) -> bytes | None:
        """The call hash's `a` field: None for a call that is not archived (nor held)."""
        found: bytes | None = await self.redis.hget(self.keys.call(call_sid), ARCHIVED)
        return found
