"""Moving a store to a later layout (3: short members, call_ledger.core.members; 4: a call's core as plain
fields, call_ledger.core.plain) with its processes running: who is connected and what each reads, then
the mark.

A worker that recognises only the long members (a version before layout 3) would take an event applied
under its short member for a new one and apply it twice; one that reads no plain fields (a version
before layout 4) would take a call of layout 4 for one without a state. So a store moves to a layout only
while no process that does not read it is connected: when it is moved (`call-ledger layout --upgrade`),
and when a store without a mark is marked (a new store, or one whose data was lost: FLUSHALL, a restart
without persistence) by the first process of this version that starts on it, which marks it the newest
layout every connected process reads. Every connection of this version is named with the layouts it
reads (call_ledger.store.client `CLIENT_NAME`); the check reads CLIENT LIST on every primary and counts
the connections to this database that are either named for a version that does not read the layout, or
unnamed and last ran a command only call-ledger's processes send (the stream's reads, claims,
acknowledgements and maintenance, appends, scripts): what a process of a version before names existed
looks like. Other clients (redis-cli, a monitor) are not counted. One CLIENT LIST is a snapshot: a move
looks several times, over more than a worker's claim interval, and again after it set the mark (undoing
it if a process showed up meanwhile). A store never moves back to an earlier layout.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from call_ledger.store.client import CLIENT_NAME_PREFIX, is_cluster, text
from call_ledger.store.keys import LAYOUT, LAYOUTS, NEWEST_LAYOUT, Keys

__all__ = ["Blocker", "LayoutMove", "blockers", "find_blockers", "upgrade_layout"]

# The commands an unnamed connection of an older call-ledger sends: the stream's reads, claims,
# acknowledgements and maintenance (workers), its appends (intake), the scripts (every role).
_LEDGER_COMMANDS = frozenset({"xreadgroup", "xautoclaim", "xclaim", "xack", "xpending", "xgroup", "xtrim", "xinfo",
                              "xadd", "evalsha", "eval", "evalsha_ro"})
# A move's look: this many CLIENT LISTs this far apart (a worker polls its stream at least once a second).
MOVE_SAMPLES = 4
MOVE_SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True)
class Blocker:
    """A connection that may belong to a process which does not read the layout a store moves to."""

    address: str
    name: str
    command: str

    def __str__(self) -> str:
        who = f"named {self.name!r}" if self.name else "unnamed"
        return f"{self.address} ({who}, last command {self.command})"


@dataclass(frozen=True)
class LayoutMove:
    """What `upgrade_layout` found and did."""

    before: str  # the layout it found ('' on a store without a mark)
    after: str  # the store's layout now ('' when it still has no mark)
    blockers: tuple[Blocker, ...] = ()
    unknown: str = ""  # why the connections could not be listed (CLIENT LIST refused), if so


def blockers(clients: list[dict[str, Any]], db: int = 0, layout: str = NEWEST_LAYOUT) -> list[Blocker]:
    """The connections (CLIENT LIST rows) to database `db` that keep a store from `layout`."""
    found = []
    for client in clients:
        if int(client.get("db") or 0) != db:  # another deployment's database on the same server
            continue
        name, command = text(client.get("name") or ""), text(client.get("cmd") or "").split("|")[0].lower()
        if name.startswith(CLIENT_NAME_PREFIX):
            if layout in name[len(CLIENT_NAME_PREFIX):].split("."):
                continue
        elif name or command not in _LEDGER_COMMANDS:
            continue
        found.append(Blocker(text(client.get("addr") or "?"), name, command))
    return found


async def connected_clients(redis: Any) -> list[dict[str, Any]]:
    """CLIENT LIST of every primary (a Cluster's each), as rows."""
    if is_cluster(redis):
        replies = await redis.client_list(target_nodes=redis.PRIMARIES)
        rows: list[dict[str, Any]] = []
        for reply in (replies.values() if isinstance(replies, dict) else [replies]):
            rows += reply
        return rows
    return list(await redis.client_list())


def _db(redis: Any) -> int:
    """The database this client works in (a Cluster has only 0)."""
    pool = getattr(redis, "connection_pool", None)
    return int(pool.connection_kwargs.get("db") or 0) if pool is not None else 0


async def find_blockers(redis: Any, samples: int = 1, every_s: float = 0.0,
                        layout: str = NEWEST_LAYOUT) -> list[Blocker]:
    """The blockers of `layout` seen in `samples` CLIENT LISTs `every_s` apart; ResponseError when Redis
    refuses CLIENT LIST (an ACL without it, the command renamed)."""
    found: dict[str, Blocker] = {}
    for sample in range(samples):
        if sample:
            await asyncio.sleep(every_s)
        for blocker in blockers(await connected_clients(redis), _db(redis), layout):
            found.setdefault(blocker.address, blocker)
    return list(found.values())


async def fresh_store_layout(redis: Any) -> str:
    """The layout to mark a store without a mark with: the newest every connected process reads (an
    earlier version's may be connected when the data was lost under a running fleet); 2, which every
    version reads (and `call-ledger layout --upgrade` moves on), when the connections cannot be listed."""
    try:
        clients = await connected_clients(redis)
    except ResponseError:
        return LAYOUT
    db = _db(redis)
    return next((layout for layout in reversed(LAYOUTS) if not blockers(clients, db, layout)), LAYOUT)


async def upgrade_layout(redis: Any, keys: Keys, force: bool = False, samples: int = MOVE_SAMPLES,
                         every_s: float = MOVE_SAMPLE_EVERY_S, to: str = NEWEST_LAYOUT) -> LayoutMove:
    """Mark the store layout `to` unless a connection may not read it (`force`: whatever is connected, and
    when the connections cannot be listed). A store in `to` or later stays; one in a layout this version
    does not read is refused by the caller's check before this runs."""
    before = text(await redis.get(keys.layout) or b"")
    if before and LAYOUTS.index(before) >= LAYOUTS.index(to):
        return LayoutMove(before, before)
    try:
        found = tuple(await find_blockers(redis, samples, every_s, to))
    except ResponseError as exc:
        if not force:
            return LayoutMove(before, before, unknown=str(exc))
        found = ()
    if found and not force:
        return LayoutMove(before, before, found)
    await redis.set(keys.layout, to)
    if not force:
        # A process that started between the looks and the mark passed its check against the layout
        # before: while the mark is only milliseconds old no worker of this version has written in the
        # new one (they read it every 5 s), so it can still be undone.
        late = tuple(await find_blockers(redis, layout=to))
        if late:  # a store without a mark gets the layout every version reads
            await redis.set(keys.layout, before or LAYOUT)
            return LayoutMove(before, before or LAYOUT, late)
    return LayoutMove(before, to, found)
