"""Redis connections that pack commands in C.

redis-py packs every command in Python, joining a growing buffer once per argument: for
the apply loop's scripts (hundreds of arguments per batch) that was a tenth of the
worker's CPU. hiredis, which redis-py already uses to parse replies, packs the same
protocol in one C call. The bytes on the wire are the same: a float is written as
Python's repr (as redis-py does) before hiredis sees it.
"""

from collections.abc import Iterable
from typing import Any

import hiredis
from redis.asyncio.connection import Connection, SSLConnection


def pack_command(*args: Any) -> list[bytes]:
    """One command in the Redis protocol, as redis-py's `pack_command` would write it."""
    first = args[0]
    # A command name of several words ("SCRIPT LOAD", "XINFO GROUPS") is several arguments.
    if isinstance(first, str):
        if " " in first:
            args = (*first.split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    if float in map(type, args):  # the scan runs in C: a generator here cost 3% of the worker
        args = tuple(repr(arg) if type(arg) is float else arg for arg in args)
    return [hiredis.pack_command(args)]


def pack_commands(commands: Iterable[Iterable[Any]]) -> list[bytes]:
    """A pipeline's commands as one buffer: the bytes of redis-py's `pack_commands`, which also
    cuts them into chunks by size, in one join (its per-chunk loop was a tenth of an intake tick)."""
    packed = b"".join([pack_command(*command)[0] for command in commands])
    return [packed] if packed else []


class FastConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return pack_commands(commands)


class FastSSLConnection(SSLConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return pack_commands(commands)
