"""The calls API's indexes in Redis: the index script, and the reads (SPEC §9, §10).

The layout (per index shard n in 0..15, every key of a shard under the hash tag `{n}`, so one
script updates one call's entry atomically on a Redis Cluster too) is documented with every other
key name in call_ledger.store.keys. Readers merge the shards: a list page is a k-way merge of each
shard's next items, a count or a rollup a sum. Indexes are derived from committed records by the
worker after each commit (and on each duplicate delivery, which repairs an update lost to a crash);
they may lag a record briefly, never diverge.
"""

import heapq
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from call_ledger.core.indexes import ALL, SHARDS, EntryPayload, IndexEntry, delta_from_stored, scope_name, score
from call_ledger.core.indexes import member as member_of
from call_ledger.store.client import text
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua, run_pipeline

INDEX = Lua("index.lua")
INDEX_PAGE = Lua("index_page.lua")
ROLLUP_DAYS = Lua("rollup_days.lua")


# Not frozen, like call_ledger.store.streams.Entry: the apply loop makes one per call per batch.
@dataclass(slots=True, unsafe_hash=True)
class IndexWrite:
    """One call's entry for the index script: `delta` (call_ledger.core.indexes) is what replacing
    the entry indexed at version `base` ('' for none: `delta` is then the entry's creation) by
    this one changes. The script applies it only while `base` is the version indexed; otherwise
    `IndexStore.write` derives it again from the entry the shard holds and resends (index.lua)."""

    shard: int
    entry: IndexEntry
    version: int
    encoded: bytes
    base: str = ""
    delta: bytes = b""
    rederive: bool = False  # `call-ledger reindex`: an entry of the same version is replaced when it differs

    @classmethod
    def of(cls, shard: int, entry: IndexEntry, version: int, payload_only: bool,
           rederive: bool = False) -> "IndexWrite":
        """The write of an entry by a writer that has no basis for it: its creation, which the
        shard applies if it holds no entry of the call (and answers with the one it holds if it does)."""
        return cls(shard, entry, version, entry.encode(payload_only), "", entry.creation(), rederive)

    def against(self, indexed: str, stored: bytes, score_text: str) -> "IndexWrite":
        """This write again, as a delta from the entry `stored` the shard holds at version `indexed`,
        scored `score_text` in its lists."""
        entry = self.entry
        delta = delta_from_stored(stored, entry.member, score_text, entry) if stored else entry.creation()
        return IndexWrite(self.shard, self.entry, self.version, self.encoded, indexed, delta, self.rederive)


# A write is resent while another writer's version lands between its read and its resend: each
# lands a newer version than the one before, below this write's, so this is far more than any
# real interleaving needs; past it the write fails as a transient error and its batch is retried.
MAX_RESENDS = 16


class IndexContention(Exception):
    """A write was answered with another entry MAX_RESENDS times in a row."""


@dataclass(frozen=True, slots=True)
class Item:
    """One call in a list, as the index holds it."""

    score_text: str  # the list time as Redis wrote it (for cursors)
    member: str  # zero-padded record id
    raw: bytes  # the payload's JSON, as the index stores it (IndexEntry.payload())

    @property
    def payload(self) -> EntryPayload:
        """The payload, parsed on each use: what a reader holds buffered stays its bytes (a
        parsed payload is several times their size, and an export holds pages of them)."""
        return EntryPayload(orjson.loads(self.raw))

    @property
    def order(self) -> tuple[float, int]:
        return float(self.score_text), int(self.member)



class IndexStore:
    """The index shards above, for the worker (update) and the API (reads)."""

    def __init__(self, redis: Any, prefix: str = "cl") -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        # Set (to "1") by `call-ledger reindex` after a full pass, and when a store is created:
        # from then on every entry has the month rollups. A store indexed by versions before
        # them (issue #23) has month hashes missing the calls no new worker rewrote since, so
        # analytics reads whole weeks and days only until then.
        self.months_key = self.keys.index_months
        self._months = False

    def base(self, shard: int) -> str:
        return self.keys.index_base(shard)

    def entries_key(self, shard: int) -> str:
        return self.keys.index_entries(shard)

    def versions_key(self, shard: int) -> str:
        return self.keys.index_versions(shard)

    # -- the worker ---------------------------------------------------------------------------

    async def update(self, entries: list[tuple[int, IndexEntry, int]], payload_only: bool = False,
                     rederive: bool = False) -> list[bool]:
        """Apply (shard, entry, version) for each call; True where the shard took it (newer).
        With `rederive` (reindex), an entry of the same version is replaced too when it differs.
        `payload_only`: the store is in layout 5 (entries without their rollups)."""
        return await self.write([IndexWrite.of(shard, entry, version, payload_only, rederive)
                                 for shard, entry, version in entries])

    async def write(self, writes: list["IndexWrite"]) -> list[bool]:
        """Apply each write; True where the shard took it (newer than the version indexed, or the
        same version of another entry for a `rederive` write).

        One script call per shard for all its calls: per-command costs dominated otherwise. A write
        whose base is not the version indexed is answered with the entry indexed, and resent as a
        delta from it, all such writes of the batch in one more round trip."""
        taken = [False] * len(writes)
        pending = list(range(len(writes)))
        current = list(writes)
        for _ in range(MAX_RESENDS):
            if not pending:
                return taken
            answers = await self._run([current[position] for position in pending])
            again = []
            for position, answer in zip(pending, answers, strict=True):
                if not isinstance(answer, list):
                    taken[position] = bool(int(answer))
                    continue
                indexed, stored, score_text = text(answer[0]), bytes(answer[1]), text(answer[2])
                write = current[position]
                if write.rederive and indexed == str(write.version) and stored == write.encoded:
                    continue  # the same entry at the same version: nothing to replace
                current[position] = write.against(indexed, stored, score_text)
                again.append(position)
            pending = again
        if pending:
            raise IndexContention(f"{len(pending)} index writes met another writer's entry {MAX_RESENDS} times")
        return taken

    async def _run(self, writes: list["IndexWrite"]) -> list[Any]:
        """The script's answer for each write (index.lua)."""
        calls = self._script_calls(writes)
        if len(calls) == 1:  # a small batch, one shard: one command, without a pipeline's fixed cost
            keys, args, _ = calls[0]
            replies = [await INDEX.run(self.redis, keys, args)]
        else:
            def build(pipe: Any) -> None:
                for keys, args, _ in calls:
                    INDEX.queue(pipe, keys, args)

            replies = await run_pipeline(self.redis, build, (INDEX,))
        answers: list[Any] = [None] * len(writes)
        for (_, _, positions), reply in zip(calls, replies, strict=True):
            for position, answer in zip(positions, reply, strict=True):
                answers[position] = answer
        return answers

    def _script_calls(self, writes: list["IndexWrite"]) -> list[tuple[list[str], list[Any], list[int]]]:
        """(keys, args, positions in `writes`) of one script call per shard."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, w in enumerate(writes):
            by_shard[w.shard].append(position)
        calls = []
        for shard, positions in by_shard.items():
            args: list[Any] = [self.base(shard)]
            for position in positions:
                w = writes[position]
                expected = "=" + w.base if w.rederive else w.base
                args += [w.entry.member, w.version, str(w.entry.list_us), w.encoded, expected, w.delta]
            calls.append(([self.entries_key(shard), self.versions_key(shard)], args, positions))
        return calls

    # -- reads --------------------------------------------------------------------------------

    async def count(self, suffix: str, lo: str, hi: str, archived: bool = True) -> int:
        """Calls in the list `suffix` with list time in [lo, hi], over every shard: those in Redis, and
        (`archived`) the archived ones (SPEC §16) of each UTC day inside [lo, hi] (`archived_in`)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zcount(self.base(shard) + suffix, lo, hi)
            if archived:
                pipe.hgetall(self.base(shard) + archived_key(suffix))
        replies = await pipe.execute()
        if not archived:
            return sum(int(n) for n in replies)
        return sum(int(n) for n in replies[::2]) + sum(archived_in(days, lo, hi) for days in replies[1::2])

    async def _pages(self, suffix: str, lo: str, hi: str, count: int,
                     after: dict[int, tuple[str, str] | None]) -> dict[int, "_Page"]:
        """For each shard of `after`, its next `count` items after its cursor: one round trip."""
        shards = list(after)

        def build(pipe: Any) -> None:
            for shard in shards:
                cursor = after[shard]
                INDEX_PAGE.queue(pipe, [self.base(shard) + suffix, self.entries_key(shard)],
                                 [hi, lo, count, *(cursor if cursor else ("", ""))])

        pages: dict[int, _Page] = {}
        for shard, reply in zip(shards, await run_pipeline(self.redis, build, (INDEX_PAGE,)), strict=True):
            items = []
            for i in range(0, len(reply), 3):
                raw = reply[i + 2]
                if not raw:  # a member whose entry is being replaced: it will be back
                    continue
                items.append(Item(text(reply[i + 1]), text(reply[i]), raw))
            last = (text(reply[-2]), text(reply[-3])) if reply else after[shard]
            pages[shard] = _Page(items, len(reply) // 3 < count, last)
        return pages

    async def iterate(self, suffix: str, lo: str = "-inf", hi: str = "+inf",
                      after: tuple[str, str] | None = None, batch: int = 200,
                      first: int | None = None, together: bool = False) -> AsyncGenerator[Item, None]:
        """Every call of the list `suffix` within [lo, hi], newest first (ties: id descending),
        after the cursor `after` = (score text, member): a k-way merge of the shards, reading
        `first` items of each shard at once (all in one round trip), then `batch` at a time
        when a shard runs out, so memory stays bounded for any length: each shard holds at
        most `first` or 1.5 x `batch` items not yet given.

        With `together` (a reader that goes on to the end, an export), a shard that runs out is
        read on with every other shard down to half a `batch`, in the same round trip: calls
        spread evenly over the shards, so they run low together, and reading them one at a
        time cost a round trip per `batch` items. Without it (a page, which may stop at any
        item) only the shard that ran out is read."""
        buffers: dict[int, deque[Item]] = {shard: deque() for shard in range(SHARDS)}
        cursors: dict[int, tuple[str, str] | None] = dict.fromkeys(range(SHARDS), after)
        open_ = set(range(SHARDS))
        heap: list[tuple[tuple[float, int], int]] = []

        async def read(shards: list[int], count: int) -> None:
            while shards:  # until each has an item or has ended (a page may be all skipped)
                for shard, page in (await self._pages(suffix, lo, hi, count,
                                                      {s: cursors[s] for s in shards})).items():
                    was_empty = not buffers[shard]
                    buffers[shard].extend(page.items)
                    cursors[shard] = page.last
                    if page.ended:
                        open_.discard(shard)
                    if was_empty and page.items:
                        heapq.heappush(heap, (_neg(page.items[0].order), shard))
                shards = [s for s in shards if s in open_ and not buffers[s]]

        await read(list(range(SHARDS)), first or batch)
        low = batch // 2 if together else -1
        while heap:
            _, shard = heapq.heappop(heap)
            items = buffers[shard]
            yield items.popleft()
            if items:
                heapq.heappush(heap, (_neg(items[0].order), shard))
            elif shard in open_:
                await read([shard, *(s for s in open_ if s != shard and len(buffers[s]) <= low)], batch)

    async def find(self, member: str) -> EntryPayload | None:
        """The payload of the call with this record id (its shard is unknown: ask all)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.hget(self.entries_key(shard), member)
        for raw in await pipe.execute():
            if raw:
                return EntryPayload.decode(raw)
        return None

    async def sum_hashes(self, suffixes: list[str]) -> dict[str, dict[str, int]]:
        """Each rollup hash summed over the shards: suffix -> field -> total."""
        pipe = self.redis.pipeline(transaction=False)
        for suffix in suffixes:
            for shard in range(SHARDS):
                pipe.hgetall(self.base(shard) + suffix)
        replies = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for i, suffix in enumerate(suffixes):
            summed: dict[str, int] = {}
            for fields in replies[i * SHARDS:(i + 1) * SHARDS]:
                for name, value in fields.items():
                    key = text(name)
                    summed[key] = summed.get(key, 0) + int(value)
            out[suffix] = summed
        return out


    async def sum_days(self, days: list[str], assistants: list[str], subtracted: Sequence[str] = (),
                       lists: str | None = None, hi: str = "+inf", lo: str = "-inf") -> "PeriodSums":
        """Rollups over every shard for analytics: each day-total hash summed over the shards,
        the fields of the `assistants` hashes summed less those of the `subtracted`, and with `lists` (the prefix of an
        assistant's list in the scope, `z:<scope>:a=`) each assistant's latest call in [lo, hi]
        (its name), each shard adding up its hashes and finding its names in one script."""
        extra = [lists, hi, lo] if lists is not None else []

        def build(pipe: Any) -> None:
            for shard in range(SHARDS):
                base = self.base(shard)
                ROLLUP_DAYS.queue(pipe, [base + s for s in [*days, *assistants, *subtracted]],
                                  [len(days), len(subtracted), *([base, *extra] if extra else [])])

        # Summed under the fields' names as Redis sends them, decoded once at the end (decoding
        # every field of every shard's reply was a fifth of a 90-day analytics at 1,000,000 calls).
        totals: dict[str, dict[bytes, int]] = {suffix: {} for suffix in days}
        summed: dict[bytes, int] = {}
        # assistant -> (score, member, shard, name as JSON if the call is archived, else '') of its latest call
        latest: dict[int, tuple[float, int, int, bytes]] = {}
        for shard, reply in enumerate(await run_pipeline(self.redis, build, (ROLLUP_DAYS,))):
            for suffix, flat in zip(days, reply, strict=False):
                _add(totals[suffix], flat)
            _add(summed, reply[len(days)])
            found = reply[len(days) + 1] if len(reply) > len(days) + 1 else []
            for i in range(0, len(found), 4):
                aid, at = int(found[i]), (float(found[i + 1]), int(found[i + 2]), shard, found[i + 3])
                if aid not in latest or at[:2] > latest[aid][:2]:
                    latest[aid] = at
        return PeriodSums({suffix: _decoded(fields) for suffix, fields in totals.items()}, _decoded(summed),
                          await self._names(latest, scope_of_list(lists)))

    async def _names(self, latest: dict[int, tuple[float, int, int, bytes]],
                     scope: str | None) -> dict[int, str | None]:
        """The assistant_name of each assistant's latest call: an archived call's as the script found it,
        else one entry read per assistant (the winner over the shards), in one pipeline. The entry is read
        after the script found it: if the call moved meanwhile (to another organization or assistant),
        its name is not taken."""
        names: dict[int, str | None] = {}
        for aid, (_, _, _, archived) in latest.items():
            if archived:
                name = orjson.loads(archived)
                names[aid] = name if isinstance(name, str) else None
        live = {aid: at for aid, at in latest.items() if not at[3]}
        if not live:
            return names
        pipe = self.redis.pipeline(transaction=False)
        for _, member, shard, _ in live.values():
            pipe.hget(self.entries_key(shard), member_of(member))
        for aid, stored in zip(live, await pipe.execute(), strict=True):
            payload = orjson.loads(stored.partition(b"\n")[0]) if stored else {}
            name = payload.get("an")
            still = payload.get("aid") == aid and (scope in (None, ALL) or scope == scope_name(payload.get("org")))
            names[aid] = name if still and isinstance(name, str) else None
        return names

    async def months_complete(self) -> bool:
        """Whether every entry of the store counts its per-assistant fields per month too (see
        MONTHS_KEY); once true, it stays true."""
        if not self._months:
            self._months = await self.redis.get(self.months_key) is not None
        return self._months

    async def mark_months_complete(self) -> None:
        await self.redis.set(self.months_key, "1")


@dataclass(frozen=True)
class PeriodSums:
    """What analytics reads: per day-total suffix its fields, the per-assistant fields summed,
    and each assistant's name (that of its latest call in the period)."""

    days: dict[str, dict[str, int]]
    assistants: dict[str, int]
    names: dict[int, str | None]


def _add(into: dict[bytes, int], flat: list[Any]) -> None:
    """Add a flat (field, value) reply into `into`, keyed by the field as received."""
    pairs = iter(flat)
    get = into.get
    for name, value in zip(pairs, pairs, strict=True):
        into[name] = get(name, 0) + int(value)


def scope_of_list(lists: str | None) -> str | None:
    """The scope of an assistant-list prefix `z:<scope>:a=` (None without one)."""
    return None if lists is None else lists.split(":", 2)[1]


def _decoded(fields: dict[bytes, int]) -> dict[str, int]:
    return {text(name): value for name, value in fields.items()}


@dataclass(frozen=True, slots=True)
class _Page:
    """One shard's page: its items, whether it ended the shard, the cursor after it."""

    items: list[Item]
    ended: bool
    last: tuple[str, str] | None


def _neg(order: tuple[float, int]) -> tuple[float, int]:
    return -order[0], -order[1]


def archived_key(list_suffix: str) -> str:
    """The archived-calls hash of a list (`z:<scope>:<filter>` -> `ac:<scope>:<filter>`; archive_unindex.lua)."""
    return "ac:" + list_suffix.removeprefix("z:")


def archived_in(days: dict[bytes, bytes], lo: str, hi: str) -> int:
    """The archived calls of the days (UTC day number -> calls) inside [lo, hi] (score bounds: '-inf',
    '+inf' or µs). An archived call is counted by its day of list time: a day is inside when it starts at or
    after `lo` and `hi` is in its last second or after it (`date_to=…T23:59:59Z` means the whole day); a bound
    elsewhere inside a day leaves that day's archived calls out (docs/archive.md)."""
    low = float(lo)
    high = float(hi)
    return sum(int(n) for day, n in days.items()
               if low <= int(day) * DAY_US and (int(day) + 1) * DAY_US - SECOND_US <= high)


DAY_US = 86_400_000_000
SECOND_US = 1_000_000


def bound(us: int | None, default: str) -> str:
    """A score bound for ZRANGEBYSCORE / ZCOUNT (inclusive)."""
    return default if us is None else repr(score(us))
