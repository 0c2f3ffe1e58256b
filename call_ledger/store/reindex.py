"""`call-ledger reindex`: (re)build the calls API's index entries from the records themselves.

For a store written before the indexes existed, or to repair one by hand: every call key is
read and its entry written at the call's version, through the same versioned index script
the worker uses, so it is safe while workers run (a newer entry is left alone, and one of the
same version only replaced when this version of call-ledger derives another) and safe to
repeat. After a whole pass every entry has the month rollups, which it records
(`Keys.index_months`): analytics reads them from then on. Run it once every worker runs a
version with them (issue #23), so that no older worker writes an entry without them after it. It also
puts every finalized call on the archive's candidates (SPEC §16) that is not there yet: the calls
finalized before the archive existed.
"""

from typing import Any

from call_ledger.core.indexes import index_entry, shard_of
from call_ledger.core.rules import CallState
from call_ledger.settings import Settings
from call_ledger.store.client import text
from call_ledger.store.facade import Store

BATCH = 500



async def _first_seen(store: Store, sid: str) -> int | None:
    """The earliest event's time, from the journal's time index (scored by occurred_us), for
    calls written before the state kept it."""
    first = await store.redis.zrange(store.order_key(sid), 0, 0, withscores=True)
    if not first:
        return None
    return int(first[0][1])


async def reindex(store: Store, settings: Settings) -> tuple[int, int]:
    """(calls seen, entries written); entries already current are not rewritten."""
    indexes = store.indexes
    prefix = store.keys.call_prefix  # "cl:call:"
    seen = written = 0
    batch: list[tuple[int, Any, int]] = []
    finalized: dict[str, int] = {}  # the archive's candidates (SPEC §16)

    async def flush() -> None:
        nonlocal written
        written += sum(await indexes.update(batch, payload_only=store.records.payload_index, rederive=True))
        batch.clear()
        await store.archive.schedule(finalized, only_new=True)
        finalized.clear()

    async for key in store.redis.scan_iter(match=f"{prefix}{{*}}", count=1000):
        name = text(key, "surrogateescape")
        sid = name[len(prefix) + 1:-1]
        fields = await store.redis.hgetall(key)
        found = CallState.from_hash(fields, sid)
        if found is None:
            continue
        record_id, state = found
        if int(fields.get(b"fr", 0)) >= 1 and b"a" not in fields:  # finalized by a version before the archive
            finalized[sid] = 0  # as finalize does: the next pass reads its ended_at
        if state.first_seen is None and state.started is None:
            state.first_seen = await _first_seen(store, sid)
        seen += 1
        entry = index_entry(sid, int(record_id), state, settings.policy)
        batch.append((shard_of(sid), entry, int(fields.get(b"v", 0))))
        if len(batch) >= BATCH:
            await flush()
    if batch:
        await flush()
    await indexes.mark_months_complete()
    return seen, written
