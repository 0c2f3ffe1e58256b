"""Stream shards (SPEC §12): which stream a call's events go to, and where the shards live.

Pure: no Redis I/O (the key names are call_ledger.store.keys'). With K shards, a call's events go
to shard `crc32(call_sid) % K`. Each
shard is three keys sharing one hash tag: the event stream, its dead letters and its
failure reasons, so a shard lives on one Redis Cluster node. The tags are chosen so that
the K shards' slots are spread evenly over the 16,384 slots: a cluster that splits its
slots evenly between its masters (what `redis-cli --cluster create` does) then holds the
shards on different masters. K = 1 keeps the unsharded key names (`cl:events`, `cl:dead`,
`cl:failures`).

Any shard would give the right record (the rules do not depend on order, and a call's
commit is a compare-and-set on the call's own keys), so changing K is safe: events of one
call may sit in an old and a new shard, and workers drain every shard ever registered.
"""

import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import key_slot

from call_ledger.store.keys import Keys

SLOTS = 16384
MAX_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """The keys of one stream shard."""

    name: str  # what metrics and `dlq list` call it: "2of6" (the third of six); "0" when unsharded
    stream: str
    dead: str
    failures: str


def shard_index(call_sid: str, shards: int) -> int:
    """The shard of a call: stable for a given K, spread evenly."""
    if shards == 1:
        return 0
    return zlib.crc32(call_sid.encode("utf-8", "surrogateescape")) % shards


@cache
def shard_tag(index: int, shards: int) -> str:
    """A hash tag whose slot falls in the index-th of `shards` equal slot ranges."""
    low, high = index * SLOTS // shards, (index + 1) * SLOTS // shards
    n = 0
    while True:
        tag = f"{index}of{shards}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        n += 1


def shard_keys(prefix: str, index: int, shards: int) -> Shard:
    keys = Keys(prefix)
    if shards == 1:
        return Shard("0", keys.events, keys.dead, keys.failures)
    return shard_of_stream(prefix, keys.shard_events(shard_tag(index, shards)))


def shard_of_stream(prefix: str, stream: str) -> Shard:
    """The shard a registered stream key belongs to (it may be of another K than ours)."""
    keys = Keys(prefix)
    if stream == keys.events:
        return shard_keys(prefix, 0, 1)
    tag = keys.shard_tag_of(stream)
    return Shard(tag.strip("{}").partition(".")[0], stream, keys.shard_dead(tag), keys.shard_failures(tag))


def all_shards(prefix: str, shards: int) -> list[Shard]:
    return [shard_keys(prefix, i, shards) for i in range(shards)]
