"""The call records in Redis: one call's hash, journal and order index, the record ids, the layout mark.

Key names and what each key holds: call_ledger.store.keys (`cl:call:{<sid>}`, `cl:journal:{<sid>}`,
`cl:order:{<sid>}`, `cl:ids` and its fence and key, `cl:layout`). The call hash stays small whatever
the call's history (the journal is elsewhere, call_meta is bounded), so a lookup reads it whole; a
commit writes its core, the journal entries and the fields its events won, never a rewrite of
everything. The `{<sid>}` hash tag puts a call's four keys (with its outbox, `cl:out:{<sid>}`) on one
Redis Cluster slot, so one script (call_ledger/store/lua/commit.lua) commits them atomically, with the
outbound messages the commit announces (SPEC §15: a message exists iff its change was committed).
"""

import secrets
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

from call_ledger.core.errors import InvalidQuery, LayoutMismatch
from call_ledger.core.journal import compact, restore
from call_ledger.core.members import key_of, other_form, short_member
from call_ledger.core.plain import HASH_FIELDS
from call_ledger.core.record_ids import IdBlock
from call_ledger.core.rules import CallState, has_record
from call_ledger.core.served import DIGEST_FIELD, RECORD_FIELD
from call_ledger.store.client import is_cluster, text
from call_ledger.store.errors import unavailable_on_error
from call_ledger.store.keys import LAYOUT, LAYOUTS, PAYLOAD_INDEX_LAYOUT, PLAIN_LAYOUT, SHORT_LAYOUT, Keys
from call_ledger.store.layout import fresh_store_layout
from call_ledger.store.scripts import Lua, run_pipeline

__all__ = ["CommitReply", "CommitWrite", "LoadedCall", "Records"]

COMMIT = Lua("commit.lua", include=("announce.lua",))
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

# Not frozen, like call_ledger.store.streams.Entry: the apply loop makes one per call per batch.
@dataclass(slots=True)
class LoadedCall:
    """What a worker knows of a call before applying a batch to it."""

    version: int
    core: bytes | None  # the core state JSON (`s`); None in layout 4
    fields: dict[str, bytes | None]  # the r:/m: fields asked for, and layout 4's core fields (None: not set)
    record_id: int | None
    applied: frozenset[str]  # journal keys it has: of the asked events, and maybe its latest
    # Already decoded (the worker's cache of calls it committed): used as it is, in place of
    # core and fields.
    state: CallState | None = None
    token: str = ""  # the token of the commit that made `version` ('' before tokens; commit.lua)
    # Not read at all: the worker guessed the call is new (worker/apply.py, NewCallGuess), and
    # the commit's compare-and-set against version 0 and no token says whether it was.
    guessed: bool = False
    # Decoded from the worker's cache (worker/apply.py KnownCalls), not read: what the cache knew
    # besides (opaque here), which its next entry for the call starts from.
    cached: bool = False
    known: Any = None
    # Its outbound messages' state as read (`fe`, `fr`, `lc`, `ob`; call_ledger.store.keys): what a
    # redelivered event repairs the fan-out and finalize schedules from (worker/batch.py, `Due`).
    ended: bool = False
    revision: int = 0
    changed_ms: int = 0
    outbox: bool = False
    # Archived, or held by an archive pass (`a`, SPEC §16): its events are dead-lettered `call_archived`.
    archived: bool = False
    # Its hash's core is its plain fields (core.plain), not a core JSON `s` a commit of layout 3 wrote last:
    # a commit of layout 4 then writes only the pieces its events changed.
    plain: bool = True


# Not frozen, like call_ledger.store.streams.Entry: the apply loop makes one per call per batch.
@dataclass(slots=True)
class CommitWrite:
    call_sid: str
    version: int
    new_version: int
    core: bytes  # the core state JSON (`s`); b"" in layout 4, whose core fields are among `fields`
    record_id: int
    events: list[tuple[str, int, bytes]]  # (journal key, occurred_us, event JSON)
    fields: list[tuple[str, bytes]]  # the registers and call_meta keys that changed; layout 4's core fields
    record: bytes = b""  # the record rendered ready to serve (call_ledger.core.served), written as `j`
    # Layout 4, a terminal call: the record's digest (call_ledger.core.served.record_digest), written as `rh`
    digest: bytes = b""
    token: str = ""  # the commit token read with `version` (commit.lua)
    new_token: str = ""  # this commit's, unique
    terminal: bool = False  # the state after it has a terminal status (finality: commit.lua)
    at_ms: int = 0  # the time (ms) it stamps on a change of a terminal call and on its messages; 0: now


class CommitReply(NamedTuple):
    """What the commit script answered for one call (commit.lua): `ok` False when another worker wrote it
    first; `outbox` when its outbox holds messages to fan out; `timer` when a finalize timer is due;
    `archived` (not `ok`) when the call is archived or being archived: nothing was written (SPEC §16)."""

    ok: bool
    outbox: bool = False
    timer: bool = False
    archived: bool = False

    @classmethod
    def of(cls, reply: int) -> "CommitReply":
        return cls(bool(reply & 1), bool(reply & 2), bool(reply & 4), bool(reply & 8))


def _commit_args(w: CommitWrite, now_ms: int, short: bool = False) -> list[Any]:
    """One call's share of the commit script's ARGV (see commit.lua); `short`: members in their
    short form (layout 3)."""
    args: list[Any] = [w.version, w.token, w.new_version, w.new_token, "1" if w.terminal else "0",
                       w.at_ms or now_ms, w.core, w.record_id, len(w.events)]
    sid = w.call_sid
    for key, occurred_us, event_json in w.events:
        # A score is a double: exact for any instant before the year 2255. The journal keeps
        # what the key, the score and the call do not say already (call_ledger.core.journal).
        # The member it is written as, and the other form it may have been applied as before.
        brief = short_member(key, sid)
        written, other = (key, "") if brief == key else (brief, key) if short else (key, brief)
        args += [written, occurred_us, compact(event_json, key, sid, occurred_us) if event_json else b"", other]
    # The record or its digest goes last: commit.lua's finality reads it there.
    fields = [*w.fields, (RECORD_FIELD.decode(), w.record)] if w.record else \
        [*w.fields, (DIGEST_FIELD.decode(), w.digest)] if w.digest else w.fields
    args.append(len(fields))
    for name, value in fields:
        args += [name, value]
    return args


def _members(keys: list[str], call_sid: str) -> list[list[str]]:
    """Each key's members: the key, and its short form where that differs (call_ledger.core.members)."""
    return [[key] if (other := other_form(key, call_sid)) is None else [key, other] for key in keys]


def _found(keys: list[str], members: list[list[str]], scores: list[Any]) -> list[str]:
    """The keys applied to the call, from the ZMSCORE of their `members`, flattened in order."""
    found, at = [], 0
    for key, forms in zip(keys, members, strict=True):
        if any(score is not None for score in scores[at:at + len(forms)]):
            found.append(key)
        at += len(forms)
    return found


class Records:
    """The call records (keys in call_ledger.store.keys), as the worker writes them and the API reads them."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._cluster = is_cluster(redis)
        # The store's layout mark (read at start by check_layout, then again by refresh_layout):
        # commits write members in their short form from 3 on, the core as plain fields and no
        # rendered record from 4 on, index entries without their rollups in 5. Every form of every
        # layout is read always.
        self.mark = LAYOUT
        self._sighted = ""  # the mark refresh_layout read last

    @property
    def short_members(self) -> bool:
        return LAYOUTS.index(self.mark) >= LAYOUTS.index(SHORT_LAYOUT)

    @property
    def plain_state(self) -> bool:
        return LAYOUTS.index(self.mark) >= LAYOUTS.index(PLAIN_LAYOUT)

    @property
    def payload_index(self) -> bool:
        """Index entries are written as their payload alone (layout 5: call_ledger.core.indexes)."""
        return self.mark == PAYLOAD_INDEX_LAYOUT

    def call_keys(self, call_sid: str) -> list[str]:
        """The four keys of one call, in the order the commit script takes them."""
        return [self.keys.call(call_sid), self.keys.journal(call_sid), self.keys.order(call_sid),
                self.keys.outbox(call_sid)]

    async def check_layout(self) -> None:
        """Refuse to run on data written in another key layout; mark a fresh store with ours.

        Nothing converts old data: an older layout (event ids not namespaced by source, the
        whole state in one field) is refused with what to do, never half-read. A store without
        a mark starts in layout 3, unless a connection may belong to a version that reads layout 2
        only (its data was lost under a running fleet: call_ledger.store.layout); such a version
        refuses layout 3 at start.
        """
        found = await self.redis.get(self.keys.layout)
        if found is None:
            await self.check_unmarked()
            await self.redis.set(self.keys.layout, await fresh_store_layout(self.redis), nx=True)
            # A new store: every index entry it will hold has the month rollups (see
            # call_ledger.store.indexes.IndexStore.months_complete; an older store gets it from `reindex`).
            await self.redis.set(self.keys.index_months, "1", nx=True)
            found = await self.redis.get(self.keys.layout)  # ours, or another process's mark set first
        if found is None:  # emptied meanwhile (FLUSHDB): the long form, which every version reads
            self.mark = LAYOUT
        elif text(found) not in LAYOUTS:
            raise LayoutMismatch(f"Redis holds call-ledger data in key layout {text(found)!r}; "
                                 f"this version reads layouts {', '.join(LAYOUTS[:-1])} and {LAYOUTS[-1]}")
        else:
            self.mark = text(found)
        self._sighted = self.mark

    async def check_unmarked(self) -> None:
        """Refuse a store without a layout mark that holds record ids: they are handed out only by
        `allocate_ids`, which runs after the mark is set, so ids without one were written by a version
        before marks (stream entries are the same in every layout). What start-up refuses, and
        `call-ledger layout` before it shows or moves anything."""
        if await self.redis.exists(self.keys.ids):
            raise LayoutMismatch(
                f"Redis holds call-ledger data in an older key layout under prefix {self.keys.prefix!r}: "
                "delete those keys (see README, Redis layout) or set another LEDGER_KEY_PREFIX")

    async def layout(self) -> str:
        """The store's layout mark ('' before anything was written)."""
        return text(await self.redis.get(self.keys.layout) or b"")

    async def refresh_layout(self) -> str:
        """Read the store's layout again (it moves on while workers run: call_ledger.store.layout);
        the mark commits now write by. A later mark is taken once two reads in a row found it: a move
        that found a late blocker undoes its mark within milliseconds (call_ledger.store.layout), which a
        worker reading every 5 s can then never have written by. An earlier mark (that undo) is taken at
        once. A mark gone (FLUSHALL, a lost restart) is put back as this process writes: a store holding
        short members or plain fields must not be taken for an earlier layout by an earlier version
        starting on it."""
        found = await self.layout()
        if not found:
            await self.redis.set(self.keys.layout, self.mark, nx=True)
            found = await self.layout()
        # Another layout (a later version's) is refused at the next start, not mid-batch.
        if found in LAYOUTS and (LAYOUTS.index(found) < LAYOUTS.index(self.mark) or found == self._sighted):
            self.mark = found
        self._sighted = found
        return self.mark

    async def load_calls(self, wanted: dict[str, tuple[list[str], list[str]]],
                         latest: int = 0) -> dict[str, LoadedCall]:
        """Per call: version, core state, id, the outbound messages' state, the given r:/m: fields, and
        which of the given journal keys it already has, with the keys of its `latest` latest events (by
        time). `wanted`: call -> (journal keys, field names)."""
        sids = list(wanted)
        members = {sid: _members(wanted[sid][0], sid) for sid in sids}
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            keys, fields = wanted[sid]
            pipe.hmget(self.keys.call(sid), "v", "s", "id", "t", "fe", "fr", "lc", "ob", "a", *HASH_FIELDS, *fields)
            # The order index holds every applied event's member (the journal may be off), in
            # either form (call_ledger.core.members): both are asked for.
            pipe.zmscore(self.keys.order(sid), [member for forms in members[sid] for member in forms])
            if latest:
                pipe.zrange(self.keys.order(sid), -latest, -1)
        replies = await pipe.execute()
        loaded = {}
        per_call = 3 if latest else 2
        for i, sid in enumerate(sids):
            keys, fields = wanted[sid]
            call, journal = replies[per_call * i], replies[per_call * i + 1]
            version, core, record_id, token, ended, revision, changed_ms, outbox, archived = call[:9]
            applied = _found(keys, members[sid], journal)
            if latest:
                applied += [key_of(text(found), sid) for found in replies[per_call * i + 2]]
            loaded[sid] = LoadedCall(
                int(version or 0), core, dict(zip((*HASH_FIELDS, *fields), call[9:], strict=True)),
                int(record_id) if record_id else None, frozenset(applied), token=text(token) if token else "",
                ended=ended == b"1", revision=int(revision or 0), changed_ms=int(changed_ms or 0),
                outbox=outbox == b"1", archived=archived is not None, plain=core is None,
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
        keys, args = [self.keys.ids, self.keys.ids_fence, self.keys.ids_key], [count, ID_JUMP, secrets.token_hex(32)]

        def build(pipe: Any) -> None:  # may run twice (NOSCRIPT): the id script had not run then
            # Whoever writes records marks their layout: the one its commits write.
            pipe.set(self.keys.layout, self.mark, nx=True)
            IDS.queue(pipe, keys, args)

        last, key = (await run_pipeline(self.redis, build, (IDS,)))[1]
        return IdBlock(int(last) - count + 1, count, text(key).encode())

    async def commit(self, writes: list[CommitWrite]) -> list[CommitReply]:
        """Run the commit script for each call; not `ok` where another worker got there first."""
        if not writes:
            return []
        now = int(time.time() * 1000)  # for the writes that bring no `at_ms`
        if not self._cluster:
            # One script call for the whole batch: redis-py's per-command cost dominates otherwise.
            keys: list[str] = []
            args: list[Any] = []
            for w in writes:
                keys += self.call_keys(w.call_sid)
                args += _commit_args(w, now, self.short_members)
            return [CommitReply.of(int(r)) for r in await COMMIT.run(self.redis, keys, args)]
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
                COMMIT.queue(pipe, self.call_keys(w.call_sid), _commit_args(w, now, self.short_members))
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = reply
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo or attempt:
                break
            await self.redis.script_load(COMMIT.source)
        for reply in results:
            if isinstance(reply, Exception):
                raise reply
        return [CommitReply.of(int(r[0])) for r in results]

    # -- read API -------------------------------------------------------------------------

    @unavailable_on_error
    async def get_call(self, call_sid: str) -> tuple[int, CallState] | None:
        """The call's record id and whole state (one bounded hash), or None."""
        return CallState.from_hash(await self.redis.hgetall(self.keys.call(call_sid)), call_sid)

    @unavailable_on_error
    async def call_fields(self, call_sid: str) -> dict[bytes, bytes] | None:
        """The call's raw hash (one bounded HGETALL), or None when there is no such call."""
        fields = await self.redis.hgetall(self.keys.call(call_sid))
        return fields if has_record(fields) else None

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
            replies = await EXPORT_FIELDS.run(self.redis, [self.keys.call(sid) for sid in call_sids], [])
            return [dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None for flat in replies]
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hgetall(self.keys.call(sid))
        return [fields if has_record(fields) else None for fields in await pipe.execute()]

    @unavailable_on_error
    async def get_calls(self, call_sids: list[str]) -> list[tuple[int, CallState] | None]:
        """`get_call` for many calls in one round trip (a list page)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hgetall(self.keys.call(sid))
        return [CallState.from_hash(fields, sid) for fields, sid in zip(await pipe.execute(), call_sids, strict=True)]

    @unavailable_on_error
    async def events_page(self, call_sid: str, after: str, limit: int) -> tuple[list[bytes], str | None] | None:
        """Applied events oldest first, at most `limit` and about EVENTS_PAGE_BYTES, after the
        journal key `after` ('' = the start); with the key to continue from, or None at the end.
        None when the call does not exist; UnknownCursor when `after` is not one of its events."""
        keys = [self.keys.order(call_sid), self.keys.journal(call_sid)]
        args = [after, limit, EVENTS_PAGE_BYTES]

        def build(pipe: Any) -> None:
            pipe.hexists(self.keys.call(call_sid), "id")
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
        return events, (text(reply[end - 3]) if more and events else None)

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
        it in either form (kept with or without the journal). One pipelined ZMSCORE each; each
        reads one slot."""
        if not events:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for call_sid, key in events:
            pipe.zmscore(self.keys.order(call_sid), _members([key], call_sid)[0])
        return [any(score is not None for score in scores) for scores in await pipe.execute()]

    async def applied_keys(self, call_sid: str) -> set[str]:
        """Every journal key (source:event_id) applied to the call: for tests and tools, not requests."""
        return {key_of(text(found), call_sid) for found in await self.redis.hkeys(self.keys.journal(call_sid))}

    async def event_count(self, call_sid: str) -> int:
        return int(await self.redis.hget(self.keys.call(call_sid), "v") or 0)
