"""Index writes from writers that know different things: with the right base, a stale one or none, in
either form of entry (layout 4: the payload and its rollups; layout 5: the payload alone), in any
order of versions, beside the previous release's index script on a layout-4 store. Whatever the
interleaving, the shard ends as an index built once from the newest version (index.lua: a delta
applies only while its base is the version indexed; otherwise the writer derives it again from the
entry the shard answers with)."""

import asyncio
from typing import Any

import fakeredis
import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.core.indexes import IndexEntry, entry_delta, shard_of
from call_ledger.store.indexes import IndexStore, IndexWrite
from tests.support.calls import BASE_US
from tests.support.index_dump import dump_indexes
from tests.support.previous_release import PREVIOUS_RELEASE, previous_release_file

SID = "CA-writers"
SHARD = shard_of(SID)
DAY_US = 86_400_000_000
# The previous release's index script (it undoes a stored entry from the rollups after its newline): what
# runs beside this release's on a layout-4 store during a rolling upgrade.
PREVIOUS_INDEX = previous_release_file("call_ledger/store/lua/index.lua")
needs_previous = pytest.mark.skipif(PREVIOUS_INDEX is None, reason=f"this checkout's history lacks the previous "
                                    f"release {PREVIOUS_RELEASE[:7]} (a shallow clone)")

_VERSION_FIELDS = st.fixed_dictionaries({
    "list_us": st.sampled_from([BASE_US, BASE_US + 5, BASE_US + DAY_US, 2**60 + 7]),  # the last: no exact score
    "organization_id": st.sampled_from([None, 7]),
    "assistant_id": st.sampled_from([0, 3]),
    "status": st.sampled_from(["queued", "in-progress", "completed", "failed"]),
    "duration": st.sampled_from([None, 0, 42]),
    "total_cost": st.sampled_from([None, 0, 1, 10**9 + 7, 3 * 10**9]),
})


def entry_of(fields: dict[str, Any], record_id: int = 11) -> IndexEntry:
    return IndexEntry(SID, record_id, fields["list_us"], fields["organization_id"], fields["assistant_id"],
                      "Bot", fields["status"], fields["duration"], fields["total_cost"], "+1555", "+1666")


async def fresh_build(entry: IndexEntry, version: int, payload_only: bool) -> dict[bytes, Any]:
    fresh = fakeredis.FakeAsyncRedis()
    assert await IndexStore(fresh).update([(SHARD, entry, version)], payload_only=payload_only) == [True]
    dumped = await dump_indexes(fresh)
    await fresh.aclose()
    return dumped


async def previous_release_write(redis: Any, indexes: IndexStore, entry: IndexEntry, version: int,
                                 basis: tuple[int, IndexEntry] | None) -> int:
    """A write as the previous release's worker sends it: the entry with its rollups, and a delta from
    the entry it wrote last unless the list time moved (its full path then)."""
    base, delta = "", b""
    if basis is not None and basis[1].list_us == entry.list_us:
        base, delta = str(basis[0]), entry_delta(basis[1], entry) or b""
    reply = await redis.eval(PREVIOUS_INDEX, 2, indexes.entries_key(SHARD), indexes.versions_key(SHARD),
                             indexes.base(SHARD), entry.member, version, str(entry.list_us), entry.encode(), base,
                             delta)
    return int(reply[0])


@needs_previous
@hsettings(max_examples=150, deadline=None)
@given(versions=st.lists(_VERSION_FIELDS, min_size=1, max_size=5),
       writes=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["none", "right", "stale"]),
                                 st.sampled_from(["4", "5", "previous"])), min_size=1, max_size=12))
def test_any_writers_in_any_order_leave_the_index_a_fresh_build_of_the_newest_version(
        versions: list[dict[str, Any]], writes: list[tuple[int, str, str]]) -> None:
    async def scenario() -> None:
        redis = fakeredis.FakeAsyncRedis()
        indexes = IndexStore(redis)
        entries = [entry_of(fields) for fields in versions]
        indexed = 0  # the version the shard holds, as this test follows it
        moved = any(form == "5" for _, _, form in writes)
        written = []
        for pick, basis, form in writes:
            version = pick % len(entries) + 1
            entry = entries[version - 1]
            if moved and form == "previous":
                form = "4"  # the previous release is stopped before a store moves to layout 5
            known = {"none": None, "right": indexed or None,
                     "stale": max(indexed - 1, 0) or None}[basis]
            base_entry = (known, entries[known - 1]) if known else None
            if form == "previous":
                took = await previous_release_write(redis, indexes, entry, version, base_entry)
            else:
                write = IndexWrite.of(SHARD, entry, version, payload_only=form == "5")
                if base_entry is not None:
                    delta = entry_delta(base_entry[1], entry)
                    assert delta is not None
                    write.base, write.delta = str(known), delta
                [took] = await indexes.write([write])
            assert bool(took) == (version > indexed), (version, indexed, form, basis)
            if took:
                indexed = version
                written.append(form)
        newest = max(pick % len(entries) + 1 for pick, _, _ in writes)
        assert indexed == newest
        got = await dump_indexes(redis)
        assert got == await fresh_build(entries[newest - 1], newest, payload_only=False)
        stored = await redis.hget(indexes.entries_key(SHARD), entries[newest - 1].member)
        assert (b"\n" not in stored) == (written[-1] == "5")
        await redis.aclose()

    asyncio.run(scenario())


async def test_a_stale_base_costs_one_more_round_trip_and_no_wrong_count() -> None:
    """Two workers on one call: each remembers only what it wrote itself, so each write after the
    other's goes with a base the shard no longer holds: it is answered with the entry indexed and
    resent as a delta from it (not applied from the stale base: the rollups would count the call's
    cost twice)."""
    redis = fakeredis.FakeAsyncRedis()
    indexes = IndexStore(redis)
    calls = 0
    run = indexes._run

    async def counted(writes: list[IndexWrite]) -> list[Any]:
        nonlocal calls
        calls += 1
        return await run(writes)

    indexes._run = counted  # type: ignore[method-assign]
    fields = {"list_us": BASE_US, "organization_id": None, "assistant_id": 3, "status": "in-progress",
              "duration": None, "total_cost": 10**9}
    first, second = entry_of(fields), entry_of({**fields, "total_cost": 3 * 10**9})
    third = entry_of({**fields, "status": "completed", "duration": 60, "total_cost": 5 * 10**9})
    assert await indexes.update([(SHARD, first, 1)], payload_only=True) == [True]  # worker A
    assert await indexes.update([(SHARD, second, 2)], payload_only=True) == [True]  # worker B: none of its own
    assert calls == 3  # B's creation was answered with A's entry, and resent
    calls = 0
    stale = IndexWrite.of(SHARD, third, 3, payload_only=True)
    stale.base, stale.delta = "1", entry_delta(first, third) or b""  # A's basis: version 1
    assert await indexes.write([stale]) == [True]
    assert calls == 2
    assert await dump_indexes(redis) == await fresh_build(third, 3, payload_only=True)
    totals = await redis.hgetall(indexes.base(SHARD) + "t:*")
    assert totals[b"cw"] == b"5" and totals[b"n"] == b"1" and totals[b"c"] == b"1", totals


async def test_reindex_rewrites_an_entry_of_the_same_version_into_the_store_s_form() -> None:
    """`call-ledger reindex` on a store moved to layout 5 replaces each entry written with its rollups
    by the payload alone (the same version: a rederive), and leaves one already in that form."""
    redis = fakeredis.FakeAsyncRedis()
    indexes = IndexStore(redis)
    entry = entry_of({"list_us": BASE_US, "organization_id": 7, "assistant_id": 3, "status": "completed",
                      "duration": 30, "total_cost": 2 * 10**9})
    assert await indexes.update([(SHARD, entry, 4)], payload_only=False) == [True]
    before = await dump_indexes(redis)
    assert await indexes.update([(SHARD, entry, 4)], payload_only=True) == [False]  # not a rederive: the same version
    assert await indexes.update([(SHARD, entry, 4)], payload_only=True, rederive=True) == [True]
    assert await redis.hget(indexes.entries_key(SHARD), entry.member) == orjson.dumps(entry.lean_payload())
    assert await dump_indexes(redis) == before  # the same lists and rollups
    assert await indexes.update([(SHARD, entry, 4)], payload_only=True, rederive=True) == [False]  # already so


@needs_previous
@pytest.mark.parametrize("payload_only", [False, True])
async def test_an_entry_written_by_another_release_is_undone_from_what_it_wrote(payload_only: bool) -> None:
    """An entry stored with its rollups is undone from them as they were written, even where this
    release would derive others (here: a rollup field an older release wrote that the shape no longer
    has): the index keeps no trace of it once the call moves on."""
    redis = fakeredis.FakeAsyncRedis()
    indexes = IndexStore(redis)
    entry = entry_of({"list_us": BASE_US, "organization_id": None, "assistant_id": 3, "status": "completed",
                      "duration": 30, "total_cost": 10**9})
    payload, _, rollups = entry.encode().partition(b"\n")
    memberships, by_key, score = orjson.loads(rollups)
    by_key["t:*"]["an:3:Bot"] = "1"  # a name count (issue #23 removed them)
    older = payload + b"\n" + orjson.dumps([memberships, by_key, score])
    await redis.eval(PREVIOUS_INDEX, 2, indexes.entries_key(SHARD), indexes.versions_key(SHARD), indexes.base(SHARD),
                     entry.member, 1, str(entry.list_us), older, "", "")
    assert await redis.hget(indexes.base(SHARD) + "t:*", "an:3:Bot") == b"1"
    later = entry_of({"list_us": BASE_US + DAY_US, "organization_id": 7, "assistant_id": 0, "status": "failed",
                      "duration": None, "total_cost": None})
    assert await indexes.update([(SHARD, later, 2)], payload_only=payload_only) == [True]
    assert await dump_indexes(redis) == await fresh_build(later, 2, payload_only=payload_only)
