"""call_ledger.store.archive and its scripts on fake Redis (the Lua the embedded store runs): holding a call
refuses its commits, tombstones replace exactly the held calls, the way out of the indexes keeps what
`count` says, the lock is one holder's, and a resumed step changes nothing twice."""

from typing import Any

import fakeredis
import orjson
import pytest

from call_ledger.core.indexes import index_entry, member, shard_of
from call_ledger.core.rules import CallState
from call_ledger.settings import Settings
from call_ledger.store import CommitWrite, Store
from call_ledger.store.archive import GONE_GRACE_MS, is_tombstone, placement
from call_ledger.store.indexes import archived_in
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.outbound import Finalizer
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage

S = 1_000_000
DAY_US = 86_400 * S
FAR_FUTURE_MS = 10**13


class Ledger:
    """A fake Redis with the real consumer and finalizer."""

    def __init__(self, **overrides: Any) -> None:
        self.settings: Settings = make_settings(**overrides)
        self.store = Store(fakeredis.FakeAsyncRedis(), self.settings.key_prefix)
        self.consumer = Consumer(self.store, self.settings, Metrics())
        self.redis = self.store.redis
        self.keys = self.store.keys

    async def call(self, sid: str, *, org: int | None = None, end: bool = True) -> None:
        """A call that ended (and is finalized, its outbox emptied as a fan-out would)."""
        events = [make_event(sid, "ringing", 1 * S, status="ringing"), usage(sid, "llm", 20 * S, "llm", 1_500_000)]
        if org is not None:
            events.append(make_event(sid, "org", 2 * S, organization_id=org))
        if end:
            events.append(make_event(sid, "completed", 60 * S, status="completed", duration=55))
        for event in events:
            await self.store.append(event.model_dump_json().encode())
        await self.consumer.run_burst()
        await Finalizer(self.store, self.settings, Metrics()).run_once(FAR_FUTURE_MS)
        await self.redis.delete(self.keys.outbox(sid))
        await self.redis.hdel(self.keys.call(sid), "ob")

    async def fields(self, sid: str) -> dict[bytes, bytes]:
        return dict(await self.redis.hgetall(self.keys.call(sid)))

    async def freeze(self, sid: str, marker: str = "@p1") -> bool:
        fields = await self.fields(sid)
        return (await self.store.archive.freeze(marker, [(sid, int(fields[b"v"]), fields[b"t"].decode())]))[0]


@pytest.fixture
async def ledger() -> Any:
    ledger = Ledger()
    yield ledger
    await ledger.store.close()


async def test_a_finalized_call_is_a_candidate_and_is_held_only_as_read(ledger: Ledger) -> None:
    await ledger.call("CA1")
    await ledger.call("CA-live", end=False)
    assert await ledger.store.archive.candidates(FAR_FUTURE_MS, 100) == ["CA1"]  # finalized only
    fields = await ledger.fields("CA1")
    stale = await ledger.store.archive.freeze("@p1", [("CA1", int(fields[b"v"]) - 1, fields[b"t"].decode())])
    assert stale == [False]  # another version than the one read: not held
    assert b"a" not in await ledger.fields("CA1")
    assert await ledger.freeze("CA1")
    assert await ledger.freeze("CA1")  # the same pass again (a resumed one): still held
    assert not await ledger.freeze("CA1", "@p2")  # another pass: not
    assert (await ledger.fields("CA1"))[b"a"] == b"@p1"


async def test_a_call_not_finalized_or_with_messages_to_fan_out_is_not_held(ledger: Ledger) -> None:
    await ledger.call("CA-live", end=False)
    assert not await ledger.freeze("CA-live")
    await ledger.call("CA-ob")
    await ledger.redis.hset(ledger.keys.call("CA-ob"), "ob", "1")
    assert not await ledger.freeze("CA-ob")


async def test_a_held_call_takes_no_commit_and_its_events_are_dead_lettered_call_archived(ledger: Ledger) -> None:
    await ledger.call("CA1")
    assert await ledger.freeze("CA1")
    before = await ledger.fields("CA1")
    late = usage("CA1", "late", 90 * S, "tts", 2_000_000)
    await ledger.store.append(late.model_dump_json().encode())
    await ledger.consumer.run_burst()  # the consumer's cache knows the call: its commit is what refuses it
    assert await ledger.fields("CA1") == before
    dead = await ledger.store.dead_letters()
    assert [(orjson.loads(d["e"])["event_id"], d["reason"]) for d in dead] == [("late", "call_archived")]


async def test_a_tombstoned_call_refuses_a_commit_even_one_that_guessed_it_new(ledger: Ledger) -> None:
    await ledger.call("CA1")
    assert await ledger.freeze("CA1")
    await ledger.store.archive.tombstone("@p1", [("CA1", "7.3")])
    write = CommitWrite(call_sid="CA1", version=0, new_version=1, core=b"{}", record_id=99,
                        events=[("platform:x", 1, b"")], fields=[], new_token="t")
    [reply] = await ledger.store.commit([write])
    assert reply.archived and not reply.ok
    assert await ledger.fields("CA1") == {b"a": b"7.3"}
    # A fresh consumer (no cache) reads the tombstone: dead-lettered without a commit.
    fresh = Consumer(ledger.store, ledger.settings, Metrics())
    await ledger.store.append(usage("CA1", "later", 95 * S, "stt", 1).model_dump_json().encode())
    await fresh.run_burst()
    assert [d["reason"] for d in await ledger.store.dead_letters()] == ["call_archived"]
    assert await ledger.fields("CA1") == {b"a": b"7.3"}


async def test_the_tombstone_replaces_exactly_the_held_calls_and_is_small(ledger: Ledger) -> None:
    await ledger.call("CA1")
    await ledger.call("CA2")
    assert await ledger.freeze("CA1")
    for _ in range(2):  # run again (a pass resumed halfway): nothing changes the second time
        done = await ledger.store.archive.tombstone("@p1", [("CA1", "12.0"), ("CA2", "12.1")])
        assert await ledger.fields("CA1") == {b"a": b"12.0"}
    assert done == 0
    assert b"id" in await ledger.fields("CA2")  # not held: left whole
    for key in (ledger.keys.journal("CA1"), ledger.keys.order("CA1"), ledger.keys.outbox("CA1")):
        assert not await ledger.redis.exists(key)
    tomb = await ledger.fields("CA1")
    assert is_tombstone(tomb) and placement(tomb[b"a"]) == (12, 0)
    assert sum(len(k) + len(v) for k, v in tomb.items()) <= 128


async def test_unindexing_keeps_count_and_stats_and_counts_nothing_twice(ledger: Ledger) -> None:
    await ledger.call("CA1", org=5)
    fields = await ledger.fields("CA1")
    record_id = int(fields[b"id"])
    shard = shard_of("CA1")
    base = ledger.keys.index_base(shard)
    lists = [key.decode() for key in await ledger.redis.keys(base + "z:*")]
    rollups = {key: await ledger.redis.hgetall(key) for key in await ledger.redis.keys(base + "[tdwm]*:*")}
    counts = {suffix: await ledger.store.indexes.count(suffix.removeprefix(base), "-inf", "+inf")
              for suffix in lists}
    assert set(counts.values()) == {1} and len(counts) == 8  # scopes * and o5, each '' s= a= s=|a=
    for _ in range(2):
        await ledger.store.archive.unindex([("CA1", record_id)])
        assert not await ledger.redis.hexists(ledger.keys.index_entries(shard), member(record_id))
        for key in lists:
            assert await ledger.redis.zscore(key, member(record_id)) is None
        assert {suffix: await ledger.store.indexes.count(suffix.removeprefix(base), "-inf", "+inf")
                for suffix in lists} == counts  # archived: still counted, once
        assert {key: await ledger.redis.hgetall(key) for key in rollups} == rollups  # stats and analytics
    assert await ledger.redis.zscore(ledger.keys.archive_due(shard), "CA1") is None


async def test_unindexing_an_entry_of_layout_5_does_what_it_does_with_one_of_layout_4() -> None:
    """archive_unindex.lua reads an entry's lists and list time from its rollups before layout 5, and derives
    them from the payload in layout 5: the same calls archived in either leave the same lists, archived
    counts and assistants' latest archived calls."""
    dumps = []
    for layout in ("4", "5"):
        ledger = Ledger()
        await ledger.redis.set(ledger.keys.layout, layout)
        await ledger.store.check_layout()
        big = 2**63 - 1  # ids beyond 2^53: a double (cjson's number) does not hold them
        calls = [("CA-a", 5), ("CA-b", None), ("CA-c", 5), ("CA-d", big), ("CA-e", 2**53 + 1)]
        for sid, org in calls:
            await ledger.call(sid, org=org)
        await ledger.store.append(make_event("CA-d", "big-assistant", 3 * S, assistant_id=big,
                                             assistant_name="Big").model_dump_json().encode())
        await ledger.consumer.run_burst()
        entries = {e for shard in range(16)
                   for e in (await ledger.redis.hgetall(ledger.keys.index_entries(shard))).values()}
        assert len(entries) == 5 and all((b"\n" not in e) == (layout == "5") for e in entries)
        ids = [(sid, int((await ledger.fields(sid))[b"id"])) for sid, _ in calls]
        assert await ledger.store.archive.unindex(ids) == 5
        for shard in range(16):  # every list left
            assert not await ledger.redis.keys(ledger.keys.index_base(shard) + "z:*"), layout
        dumped = repr(sorted({key: await ledger.redis.hgetall(key) if await ledger.redis.type(key) == b"hash"
                              else await ledger.redis.zrange(key, 0, -1, withscores=True)
                              for key in await ledger.redis.keys("cl:ix:*")
                              if not key.endswith((b":e", b":gone"))}.items()))
        for sid, record_id in ids:  # record ids differ between the two stores
            dumped = dumped.replace(member(record_id), sid)
        dumps.append(dumped)
        await ledger.store.close()
    assert dumps[0] == dumps[1]
    assert ":ac:" in dumps[0] and ":an:o5" in dumps[0] and "CA-c" in dumps[0]
    assert f"ac:o{2**63 - 1}:s=completed|a={2**63 - 1}" in dumps[0] and f"an:o{2**63 - 1}" in dumps[0]
    assert f":ac:o{2**53 + 1}:" in dumps[0]


def test_an_archived_day_counts_when_the_range_holds_the_whole_day() -> None:
    days = {b"20416": b"3", b"20417": b"5"}  # 2025-11-24 and -25 (UTC day numbers)
    start = 20416 * DAY_US
    assert archived_in(days, "-inf", "+inf") == 8
    assert archived_in(days, str(start), str(start + DAY_US - 1)) == 3
    assert archived_in(days, str(start), str(start + 2 * DAY_US - 1)) == 8
    assert archived_in(days, str(start + 1), "+inf") == 5  # a bound inside a day leaves its archived calls out
    assert archived_in(days, "-inf", f"{float(start + 2 * DAY_US - 1_000_001)!r}") == 3
    assert archived_in(days, "-inf", f"{float(start + 2 * DAY_US - 1_000_000)!r}") == 8  # …T23:59:59Z: the day


async def test_the_lock_has_one_holder(ledger: Ledger) -> None:
    archive = ledger.store.archive
    assert await archive.lock("a", 60_000)
    assert not await archive.lock("b", 60_000)
    assert not await archive.lock("b", 60_000, "renew")
    assert await archive.lock("a", 60_000, "renew")
    assert not await archive.lock("b", 60_000, "release")
    assert await archive.lock("a", 60_000, "release")
    assert await archive.lock("b", 60_000)


async def test_an_index_update_read_before_the_tombstone_cannot_put_the_call_back(ledger: Ledger) -> None:
    """A worker that read the call before its pass (a duplicate's repair) and sends its index update after
    the unindexing: the update is older than what is indexed, and refused, until the grace period ends."""
    await ledger.call("CA1", org=5)
    fields = await ledger.fields("CA1")
    record_id, version = int(fields[b"id"]), int(fields[b"v"])
    found = CallState.from_hash(fields)
    assert found is not None
    stale = index_entry("CA1", record_id, found[1], ledger.settings.policy)
    shard = shard_of("CA1")
    base = ledger.keys.index_base(shard)
    rollups = {key: await ledger.redis.hgetall(key) for key in await ledger.redis.keys(base + "[tdwm]*:*")}
    await ledger.store.archive.unindex([("CA1", record_id)])

    assert await ledger.store.indexes.update([(shard, stale, version)]) == [False]
    assert await ledger.store.indexes.update([(shard, stale, version)], rederive=True) == [False]  # reindex
    assert {key: await ledger.redis.hgetall(key) for key in rollups} == rollups
    assert not await ledger.redis.hexists(ledger.keys.index_entries(shard), member(record_id))

    archived_ms = int(await ledger.redis.zscore(ledger.keys.index_gone(shard), member(record_id)))
    assert await ledger.store.archive.forget_gone(archived_ms + 1) == 0  # within the grace period: kept
    assert await ledger.store.archive.forget_gone(archived_ms + GONE_GRACE_MS + 1) == 1
    assert not await ledger.redis.hexists(ledger.keys.index_versions(shard), member(record_id))
    assert not await ledger.redis.exists(ledger.keys.index_gone(shard))


async def test_reindex_puts_calls_finalized_before_the_archive_on_its_candidates(ledger: Ledger) -> None:
    from call_ledger.store.reindex import reindex

    await ledger.call("CA1")
    await ledger.call("CA-live", end=False)
    await ledger.call("CA-held")
    assert await ledger.freeze("CA-held")
    shard_keys = {ledger.keys.archive_due(shard_of(sid)) for sid in ("CA1", "CA-live", "CA-held")}
    await ledger.redis.delete(*shard_keys)  # as a version before the archive left them
    await reindex(ledger.store, ledger.settings)
    assert await ledger.store.archive.candidates(0, 100) == ["CA1"]  # finalized, not held, scored 0
