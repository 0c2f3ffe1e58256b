"""Every index key's content, to compare the indexes of two stores (a live one and one rebuilt once
from the final records)."""

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from call_ledger.settings import Settings
    from call_ledger.store import Store


def _payload(entry: bytes) -> dict[str, Any]:
    """What an entry tells its readers, in either form: layout 5's lean payload leaves out null values
    and the list time (every list scores the entry by it, compared with the lists)."""
    payload = orjson.loads(entry.partition(b"\n")[0])
    return {key: value for key, value in payload.items() if value is not None and key not in ("c", "us")}


async def dump_indexes(redis: Any) -> dict[bytes, Any]:
    """Every index key's content, comparable across two stores. An entry is compared by its payload:
    before layout 5 its rollups follow it (the same as the rollups hashes hold, compared apart), in
    layout 5 it is the lean payload alone, and a store that moved holds both. The lean payload's cost (`c`)
    is left out: what it is for (undoing the entry) shows in the rollups."""
    out: dict[bytes, Any] = {}
    for key in await redis.keys("cl:ix:*"):
        kind = await redis.type(key)
        if kind == b"zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            fields = await redis.hgetall(key)
            if key.endswith(b":e"):
                fields = {member: _payload(entry) for member, entry in fields.items()}
            out[key] = fields
    return out


async def assert_indexes_exact(store: "Store", settings: "Settings", sids: list[str]) -> None:
    """The store's indexes equal an index built once, on a fresh Redis, from the calls' final records."""
    import fakeredis

    from call_ledger.core.indexes import index_entry, shard_of
    from call_ledger.store.indexes import IndexStore

    entries = []
    for sid in sids:
        found = await store.get_call(sid)
        assert found is not None, sid
        entries.append((shard_of(sid), index_entry(sid, found[0], found[1], settings.policy),
                        await store.event_count(sid)))
    fresh = fakeredis.FakeAsyncRedis()
    await IndexStore(fresh).update(entries)
    expected = await dump_indexes(fresh)
    await fresh.aclose()
    got = await dump_indexes(store.redis)
    diff = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
    assert not diff, f"indexes differ from a rebuild: {diff}"
