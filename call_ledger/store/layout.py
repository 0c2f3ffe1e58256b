"""Moving a store from layout 2 to layout 3 (short order-index and journal members) with its
processes running: who is connected and what each reads, then the mark.

A worker that recognises only the long members (a version before this one) would take an event
applied under its short member for a new one and apply it twice. So a store moves only while no
such worker is connected. Every connection of this version is named with the layouts it reads
(call_ledger.store.client `CLIENT_NAME`); the move reads CLIENT LIST on every primary and refuses
while a connection is either named for a version that does not read layout 3, or unnamed and last
ran a command only call-ledger's processes send (a stream read or claim, a script): what a worker
or API of a version before names existed looks like. Other clients (redis-cli, a monitor) are not
counted.
A version before this one refuses a store in layout 3 at start (call_ledger.store.records).
"""

from dataclasses import dataclass
from typing import Any

from call_ledger.store.client import is_cluster, text
from call_ledger.store.keys import LAYOUT, SHORT_LAYOUT, Keys

__all__ = ["Blocker", "LayoutMove", "blockers", "move_to_short_members"]

_NAME_PREFIX = "call-ledger/reads-"  # call_ledger.store.client.CLIENT_NAME's, whatever the version
# The commands an unnamed connection of an older call-ledger keeps sending: the stream's reads and
# claims (workers), its appends (intake), the scripts (every role).
_LEDGER_COMMANDS = frozenset({"xreadgroup", "xautoclaim", "xclaim", "xadd", "evalsha", "eval", "evalsha_ro"})


@dataclass(frozen=True)
class Blocker:
    """A connection that may belong to a process which does not read layout 3."""

    address: str
    name: str
    command: str

    def __str__(self) -> str:
        who = f"named {self.name!r}" if self.name else "unnamed"
        return f"{self.address} ({who}, last command {self.command})"


@dataclass(frozen=True)
class LayoutMove:
    """What `move_to_short_members` found and did."""

    before: str  # the layout it found ('' on a store nothing has written yet)
    after: str
    blockers: tuple[Blocker, ...] = ()


def blockers(clients: list[dict[str, Any]]) -> list[Blocker]:
    """The connections (CLIENT LIST rows) that keep a store from moving to layout 3."""
    found = []
    for client in clients:
        name, command = text(client.get("name") or ""), text(client.get("cmd") or "").split("|")[0].lower()
        if name.startswith(_NAME_PREFIX):
            if SHORT_LAYOUT in name[len(_NAME_PREFIX):].split("."):
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


async def move_to_short_members(redis: Any, keys: Keys, force: bool = False) -> LayoutMove:
    """Mark the store layout 3 unless a connection may not read it (`force`: whatever is connected).
    A store already in layout 3 stays; one in a layout this version does not read is refused by the
    caller's check_layout before this runs."""
    before = text(await redis.get(keys.layout) or b"")
    if before == SHORT_LAYOUT:
        return LayoutMove(before, before)
    found = tuple(blockers(await connected_clients(redis)))
    if found and not force:
        return LayoutMove(before, before, found)
    # A store nothing has written yet is marked as a writer would (check_layout), then moved.
    await redis.set(keys.layout, SHORT_LAYOUT)
    return LayoutMove(before or LAYOUT, SHORT_LAYOUT, found)
