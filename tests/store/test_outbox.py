"""call_ledger/store/outbox.py and the scripts that write the outbox (commit.lua, finalize.lua; SPEC §15):
a message is written by the commit that makes its change, once per announcement, with the record exactly
as GET serves it then; the schedules say what is due; fan-out's claim and `done` never lose a message
written in between. On fake Redis (the embedded store's Lua) and on a real redis-server."""

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import fakeredis
import orjson
import pytest

from call_ledger.core.events import CallEvent
from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import OutboxMessage, iso_ms
from call_ledger.core.served import StoredCall
from call_ledger.settings import Settings
from call_ledger.store import Store, open_redis
from call_ledger.store.outbox import FinalizeResult
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer, require_redis
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage

SID = "CA-outbox"
AFTER_MS = 120_000


def message_id(sid: str, kind: str, revision: int, organization: str = "") -> str:
    """(call, type, revision, the organization's raw value: empty for none)."""
    return "msg_" + hashlib.sha1(f"{sid}\n{kind}\n{revision}\n{organization}".encode()).hexdigest()[:32]


@pytest.fixture(params=["fake", "real"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Settings]]:
    """A store and the settings of its worker, on fake Redis or on a real redis-server."""
    settings = make_settings()
    if request.param == "fake":
        store = Store(fakeredis.FakeAsyncRedis(), settings.key_prefix)
        yield store, settings
        await store.close()
        return
    require_redis()
    server = RedisServer(tmp_path)
    server.start()
    settings = make_settings(redis_url=server.url)
    store = Store.from_settings(settings)
    try:
        yield store, settings
    finally:
        await store.close()
        server.stop()


async def apply(store: Store, settings: Settings, *events: CallEvent) -> None:
    for event in events:
        await store.append(event.model_dump_json().encode())
    await Consumer(store, settings, Metrics()).run_burst()


async def served(store: Store, settings: Settings, sid: str = SID) -> bytes:
    fields = await store.records.call_fields(sid)
    assert fields is not None
    return StoredCall(sid, fields).served(settings.policy)


async def finality(store: Store, sid: str = SID) -> dict[str, bytes]:
    names = ("fe", "fr", "lc", "ob")
    values = await store.redis.hmget(store.keys.call(sid), *names)
    return {name: value for name, value in zip(names, values, strict=True) if value is not None}


async def scheduled(store: Store, sid: str = SID) -> tuple[float | None, float | None]:
    """The call's score in the fan-out schedule and in the finalize timers."""
    shard = shard_of(sid)
    return (await store.redis.zscore(store.keys.outbox_due(shard), sid),
            await store.redis.zscore(store.keys.finalize_due(shard), sid))


async def test_the_embedded_stores_sha1_is_sha1() -> None:
    """fakeredis's Lua has no redis.sha1hex: announce.lua computes it in arithmetic there."""
    from importlib.resources import files
    source = files("call_ledger.store").joinpath("lua", "announce.lua").read_text() + "\nreturn sha1hex(ARGV[1])"
    client = fakeredis.FakeAsyncRedis()
    rng = random.Random(5)
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 300):
        text = bytes(rng.randrange(256) for _ in range(size))
        assert (await client.eval(source, 0, text)).decode() == hashlib.sha1(text).hexdigest()
    await client.aclose()


async def test_a_live_call_announces_nothing_and_writes_no_finality(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="ongoing"), usage(SID, "u1", 1, "llm", 10))
    assert await store.redis.hgetall(store.keys.outbox(SID)) == {}
    assert await finality(store) == {}
    assert await scheduled(store) == (None, None)


async def test_the_end_is_announced_once_with_the_record_as_served(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="ongoing", organization_id=42,
                                            call_meta={"customer": "c/1", "tier": "ü"}))
    await apply(store, settings, make_event(SID, "s2", 60_000_000, status="completed", duration=60))
    [message] = await store.outbox.messages(SID, settings.policy)
    state = await finality(store)
    assert (state["fe"], state["ob"]) == (b"1", b"1") and "fr" not in state
    assert message == OutboxMessage(id=message_id(SID, "call.ended", 0, "42"), type="call.ended", revision=0,
                                    call_sid=SID, created_ms=int(state["lc"]), organization_id=42,
                                    record=await served(store, settings))
    assert orjson.loads(message.body()) == {
        "type": "call.ended", "timestamp": iso_ms(message.created_ms),
        "data": {"call": orjson.loads(message.record), "organization_id": 42, "revision": 0}}
    assert orjson.loads(message.record)["call_meta"] == {"customer": "c/1", "tier": "ü"}
    assert await scheduled(store) == (pytest.approx(message.created_ms, abs=5000), int(state["lc"]) + AFTER_MS)
    # Redelivered (a duplicate), and an event that changes nothing: no second message.
    await store.append(make_event(SID, "s2", 60_000_000, status="completed", duration=60).model_dump_json().encode())
    await apply(store, settings, make_event(SID, "s3", 30_000_000, status="ongoing"))
    assert [m.id for m in await store.outbox.messages(SID, settings.policy)] == [message.id]
    assert (await finality(store))["lc"] == state["lc"]


async def test_a_quiet_terminal_call_is_finalized_once_then_revised(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="completed", duration=60, call_meta={"k": 1}))
    lc = int((await finality(store))["lc"])
    assert await store.outbox.timers_due(shard_of(SID), lc + AFTER_MS - 1, 10) == []
    assert await store.outbox.timers_due(shard_of(SID), lc + AFTER_MS, 10) == [SID]
    assert await store.outbox.finalize(SID, lc + 1000, AFTER_MS) == FinalizeResult("not_yet", lc + AFTER_MS)
    assert await store.outbox.finalize(SID, lc + AFTER_MS, AFTER_MS) == FinalizeResult("finalized")
    assert await store.outbox.finalize(SID, lc + AFTER_MS, AFTER_MS) == FinalizeResult("already_final")
    assert (await scheduled(store))[1] is None
    assert (await finality(store))["fr"] == b"1"

    await apply(store, settings, usage(SID, "u1", 1, "llm", 5_000_000))  # changes the record: revision 2
    await apply(store, settings, usage(SID, "u1", 1, "llm", 5_000_000))  # a duplicate: nothing
    await apply(store, settings, make_event(SID, "m1", 2, call_meta={"k": 1}))  # the same value: nothing
    await apply(store, settings, make_event(SID, "m2", 3, call_meta={"k": 2}))  # call_meta only: revision 3
    messages = await store.outbox.messages(SID, settings.policy)
    assert [(m.type, m.revision) for m in messages] == [
        ("call.ended", 0), ("call.finalized", 1), ("call.revised", 2), ("call.revised", 3)]
    assert [m.id for m in messages] == [message_id(SID, m.type, m.revision) for m in messages]
    assert orjson.loads(messages[1].record)["llm_cost"] is None
    assert orjson.loads(messages[2].record)["llm_cost"] == 0.005
    assert orjson.loads(messages[3].record)["call_meta"] == {"k": 2}
    assert messages[3].record == await served(store, settings)
    assert (await finality(store))["fr"] == b"3"
    assert (await scheduled(store))[1] is None  # a finalized call starts no timer


async def test_a_call_that_is_not_terminal_drops_its_timer(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="ongoing"))
    await store.outbox.schedule([], {SID: 5}, 0)
    assert await store.outbox.finalize(SID, 10**13, AFTER_MS) == FinalizeResult("not_terminal")
    assert await scheduled(store) == (None, None)
    assert await store.redis.hgetall(store.keys.outbox(SID)) == {}


async def test_fan_out_keeps_a_call_whose_outbox_got_a_message_after_its_claim(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="completed", duration=60))
    lc = int((await finality(store))["lc"])
    shard, now = shard_of(SID), lc + 5000  # the fan-out was scheduled just after the commit
    [claim] = await store.outbox.claim_due(shard, now, 10, 30_000)
    assert claim.sid == SID and await scheduled(store) == (now + 30_000, lc + AFTER_MS)
    assert await store.outbox.claim_due(shard, now + 1, 10, 30_000) == []  # leased
    first = await store.outbox.messages(SID, settings.policy)
    # Meanwhile the call is finalized: a new message, and the call is due again.
    assert (await store.outbox.finalize(SID, now + AFTER_MS, AFTER_MS)).outcome == "finalized"
    await store.outbox.done(claim, [m.id for m in first])
    [left] = await store.outbox.messages(SID, settings.policy)
    assert left.type == "call.finalized"
    assert (await finality(store))["ob"] == b"1" and (await scheduled(store))[0] == now + AFTER_MS
    [claim] = await store.outbox.claim_due(shard, now + AFTER_MS, 10, 30_000)
    await store.outbox.done(claim, [left.id])
    assert await store.redis.hgetall(store.keys.outbox(SID)) == {}
    assert "ob" not in await finality(store) and await scheduled(store) == (None, None)


async def test_done_leaves_a_call_rescored_by_a_commit_on_the_schedule(ledger: tuple[Store, Settings]) -> None:
    store, settings = ledger
    await apply(store, settings, make_event(SID, "s1", 0, status="completed", duration=60))
    shard, now = shard_of(SID), int((await finality(store))["lc"]) + 5000
    [claim] = await store.outbox.claim_due(shard, now, 10, 30_000)
    ids = [m.id for m in await store.outbox.messages(SID, settings.policy)]
    await store.outbox.schedule([SID], {}, now + 5)  # a commit re-scored it (its message is to come)
    await store.outbox.done(claim, ids)
    assert (await scheduled(store))[0] == now + 5


@pytest.mark.real_redis
async def test_messages_survive_a_redis_restart_from_its_aof(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    settings = make_settings(redis_url=server.url)
    sids = [f"CA-aof-{i}" for i in range(20)]
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        for sid in sids:
            await apply(store, settings, make_event(sid, "s1", 0, status="completed", duration=60))
        lc = {sid: int((await finality(store, sid))["lc"]) for sid in sids}
        for sid in sids[:10]:
            assert (await store.outbox.finalize(sid, lc[sid] + AFTER_MS, AFTER_MS)).outcome == "finalized"
        before = {sid: await store.outbox.messages(sid, settings.policy) for sid in sids}
        timers = {sid: await scheduled(store, sid) for sid in sids}
    finally:
        await store.close()
    server.stop()
    server.start()  # the same port and directory: the AOF is loaded again
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        assert {sid: await store.outbox.messages(sid, settings.policy) for sid in sids} == before
        assert {sid: await scheduled(store, sid) for sid in sids} == timers
        assert sum(len(messages) for messages in before.values()) == 30
    finally:
        await store.close()
        server.stop()


async def test_finality_holds_across_the_move_to_layout_4_and_a_worker_that_has_not_learned_it(
        ledger: tuple[Store, Settings]) -> None:
    """Layout 4 keeps a terminal call's record digest (`rh`) in place of `j`: a commit tells whether it
    changed the record from whichever of the two the call has, so the move (and a worker still writing
    layout 3 for a few seconds after it) announces no revision that changes nothing, and every one that does."""
    store, settings = ledger
    await store.redis.set(store.keys.layout, "3")
    await store.check_layout()
    await apply(store, settings, make_event(SID, "s1", 0, status="completed", duration=60, call_meta={"k": 1}))
    lc = int((await finality(store))["lc"])
    assert (await store.outbox.finalize(SID, lc + AFTER_MS, AFTER_MS)).outcome == "finalized"
    assert {b"s", b"j"} <= set(await store.redis.hgetall(store.keys.call(SID)))

    await store.redis.set(store.keys.layout, "4")  # `call-ledger layout --upgrade`
    await store.records.refresh_layout()
    assert await store.records.refresh_layout() == "4"  # taken at the second read
    lagging = Store(store.redis, store.prefix)  # a worker that has not read the mark again yet
    await lagging.redis.set(store.keys.layout, "3")
    await lagging.check_layout()
    await store.redis.set(store.keys.layout, "4")

    async def revisions() -> list[tuple[str, int]]:
        return [(m.type, m.revision) for m in await store.outbox.messages(SID, settings.policy)]

    await apply(store, settings, make_event(SID, "m1", 2, call_meta={"k": 1}))  # the same value: nothing
    fields = await store.redis.hgetall(store.keys.call(SID))
    assert b"s" not in fields and b"j" not in fields and b"rh" in fields and b"fs" in fields
    assert await revisions() == [("call.ended", 0), ("call.finalized", 1)]
    await apply(store, settings, usage(SID, "u1", 1, "llm", 5_000_000))  # changes the record
    await apply(lagging, settings, make_event(SID, "m2", 3, call_meta={"k": 1}))  # layout 3 after 4: nothing
    assert await revisions() == [("call.ended", 0), ("call.finalized", 1), ("call.revised", 2)]
    await apply(lagging, settings, usage(SID, "u2", 4, "tts", 1_000_000))  # layout 3 after 4, a change
    assert {b"s", b"j"} <= set(await store.redis.hgetall(store.keys.call(SID)))
    await apply(store, settings, make_event(SID, "m3", 5, call_meta={"k": 1}))  # layout 4 after 3: nothing
    await apply(store, settings, usage(SID, "u3", 6, "stt", 1_000_000))  # layout 4 after 3, a change
    messages = await store.outbox.messages(SID, settings.policy)
    assert [(m.type, m.revision) for m in messages] == [
        ("call.ended", 0), ("call.finalized", 1), ("call.revised", 2), ("call.revised", 3), ("call.revised", 4)]
    costs = [(orjson.loads(m.record)["tts_cost"], orjson.loads(m.record)["stt_cost"]) for m in messages]
    assert costs == [(None, None), (None, None), (None, None), (0.001, None), (0.001, 0.001)]
    assert messages[-1].record == await served(store, settings)
    assert b"s" not in await store.redis.hgetall(store.keys.call(SID))


def test_a_message_decodes_what_either_lua_encodes() -> None:
    """cjson writes an empty table as {} (Redis) or [] (fakeredis), numbers maybe as floats."""
    from call_ledger.store.outbox import message_of

    raw = orjson.dumps({"id": "msg_1", "type": "call.ended", "revision": 0.0, "at": 1796000000000.0, "v": 2.0,
                        "rid": "1234567890123456", "j": '{"id":1,"call_meta":{}}', "m": []})
    message = message_of("CA1", raw, make_settings().policy)
    assert (message.revision, message.created_ms, message.organization_id) == (0, 1796000000000, None)
    assert message.record == b'{"id":1,"call_meta":{}}'
