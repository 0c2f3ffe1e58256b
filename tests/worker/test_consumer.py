"""worker/consumer.py under SPEC §14: nothing one call's events do stops the apply loop.

The poison batch of the attacker's report (19 events of 10^9 each on one call, queued with
innocent calls), a Telnyx cost with many parts, a bug in one call's rendering or commit, and
entries that keep failing for reasons no outcome records: each fails its own call's entries
only, is dead-lettered with a reason, and leaves nothing pending to hold stream trimming back.
Events go straight into the stream (what intake writes), on fake Redis in burst mode; the
last test runs the reproduction through `serve` on a real redis-server.
"""

import time
from typing import Any

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoPermissionError, ResponseError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.events import CallEvent
from call_ledger.core.money import MAX_AMOUNT_NANO
from call_ledger.store import CommitWrite, Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer, of_one_call
from tests.support import payloads_telnyx as tx
from tests.support.redis_server import RedisServer
from tests.support.service import start_service, stop
from tests.support.settings import AUTH, make_settings
from tests.support.sync_http import get_record, post
from tests.support.workers import make_event, usage

INNOCENTS = [f"CA-innocent-{i}" for i in range(5)]


async def append(store: Store, *events: CallEvent) -> None:
    for event in events:
        await store.append(event.model_dump_json().encode())


async def append_batch(store: Store) -> None:
    """The report's poison batch: 19 usage events of 10^9 on one call, among 5 innocent calls."""
    poison = [usage("CA-poison", f"p{i}", i, "llm", MAX_AMOUNT_NANO) for i in range(19)]
    innocent = [make_event(sid, f"{sid}-s", 0, status="completed", duration=30) for sid in INNOCENTS]
    await append(store, *poison[:10], *innocent, *poison[10:])


async def test_a_poison_batch_applies_the_innocent_calls_and_dead_letters_what_passes_the_bound(
        store: Store) -> None:
    consumer = Consumer(store, make_settings(batch_size=500), Metrics())
    await append_batch(store)
    assert await consumer.run_burst() == 24
    for sid in INNOCENTS:
        assert (await store.get_call(sid)) is not None
    _, state = await store.get_call("CA-poison")  # type: ignore[misc]
    assert state.costs == {"llm": MAX_AMOUNT_NANO}  # the first reaches the bound exactly: applied
    dead = await store.dead_letters()
    assert len(dead) == 18
    assert {d["reason"] for d in dead} == {"the call's llm cost would pass 1000000000 USD"}
    assert await store.group_stats() == (0, 0)  # nothing pending: trimming is not held back
    # Trimming moves on to the last entry delivered (the report's stream grew without end).
    await store.trim(0, now_ms=await store.now_ms() + 1000)
    assert await store.redis.xlen(store.stream) <= 3


async def test_the_total_across_components_is_bounded_too(store: Store) -> None:
    consumer = Consumer(store, make_settings(), Metrics())
    half = MAX_AMOUNT_NANO // 2
    await append(store, usage("CA1", "a", 0, "llm", half), usage("CA1", "b", 1, "tts", half),
                 usage("CA1", "c", 2, "stt", 1))
    await consumer.run_burst()
    _, state = await store.get_call("CA1")  # type: ignore[misc]
    assert state.costs == {"llm": half, "tts": half}
    [dead] = await store.dead_letters()
    assert dead["reason"] == "the call's total cost would pass 1000000000 USD"


async def test_a_telnyx_cost_whose_parts_sum_past_the_bound_is_dead_lettered(store: Store,
                                                                              aiohttp_client: Any) -> None:
    from call_ledger.app import create_app

    signer = tx.TelnyxSigner()
    settings = make_settings(telnyx_public_key=signer.public_key_b64)
    service = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    parts = [{"call_part": f"part-{i}", "cost": "1000000000", "currency": "USD"} for i in range(20)]
    call = tx.whole_call(signer=signer)
    bodies = [*call.bodies, tx.encode(tx.cost(total_cost=None, cost_parts=parts))]
    for body in bodies:
        response = await service.post("/webhooks/telnyx", data=body,
                                      headers=signer.headers(body, int(time.time())))
        assert response.status == 200, await response.text()
    consumer = Consumer(store, settings, Metrics())
    queued = await store.redis.xlen(store.stream)  # what Telnyx sends for nothing is not queued
    assert await consumer.run_burst() == queued
    response = await service.get(f"/api/v1/calls/sid/{call.call_sid}", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["status"] == "completed"  # the call's other events are applied
    [dead] = await store.dead_letters()
    assert dead["reason"] == "the event's costs sum past 1000000000 USD (the bound on a call's costs)"
    assert orjson.loads(dead["e"])["costs"][0]["amount_nano"] == 20 * MAX_AMOUNT_NANO
    assert await store.group_stats() == (0, 0)


def break_rendering(monkeypatch: Any, sid: str, error: Exception) -> None:
    """A bug that raises while the worker renders one call's record, and only that call's."""
    import call_ledger.worker.consumer as module

    render = module.render_record

    def broken(call_sid: str, *args: Any) -> Any:
        if call_sid == sid:
            raise error
        return render(call_sid, *args)

    monkeypatch.setattr(module, "render_record", broken)


async def test_a_bug_rendering_one_call_fails_that_call_only(store: Store, monkeypatch: Any) -> None:
    break_rendering(monkeypatch, "CA-bad", KeyError("a bug"))
    consumer = Consumer(store, make_settings(max_deliveries=2), Metrics())
    await append(store, make_event("CA-bad", "b1", 0, status="ringing"),
                 *(make_event(sid, f"{sid}-s", 0, status="ringing") for sid in INNOCENTS))
    await consumer.run_burst()
    assert all([await store.get_call(sid) for sid in INNOCENTS])
    assert await store.get_call("CA-bad") is None
    assert await store.group_stats() == (0, 1)  # the bad call's entry only, kept for a retry
    assert await store.dead_letters() == []
    await consumer.run_burst(claim_idle_ms=0)  # its last delivery: dead-lettered with the reason
    [dead] = await store.dead_letters()
    assert dead["reason"] == "apply error: KeyError: 'a bug'"
    assert await store.group_stats() == (0, 0)


async def test_a_commit_script_error_for_one_call_fails_that_call_only(store: Store, monkeypatch: Any) -> None:
    commit = store.commit

    async def refusing(writes: list[CommitWrite]) -> list[bool]:
        if any(w.call_sid == "CA-bad" for w in writes):
            raise ResponseError("ERR user_script:1: a script error")
        return await commit(writes)

    monkeypatch.setattr(store, "commit", refusing)
    consumer = Consumer(store, make_settings(max_deliveries=1), Metrics())
    await append(store, make_event("CA-bad", "b1", 0, status="ringing"),
                 *(make_event(sid, f"{sid}-s", 0, status="ringing") for sid in INNOCENTS))
    await consumer.run_burst()
    assert all([await store.get_call(sid) for sid in INNOCENTS])
    [dead] = await store.dead_letters()
    assert dead["reason"] == "apply error: ResponseError: ERR user_script:1: a script error"
    assert await store.group_stats() == (0, 0)


async def test_redis_going_away_keeps_the_whole_batch_pending(store: Store, monkeypatch: Any) -> None:
    async def away(writes: list[CommitWrite]) -> list[bool]:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(store, "commit", away)
    consumer = Consumer(store, make_settings(), Metrics())
    await append(store, *(make_event(sid, f"{sid}-s", 0, status="ringing") for sid in INNOCENTS))
    with pytest.raises(ConnectionError):
        await consumer.run_burst()
    assert await store.group_stats() == (0, 5)  # nothing failed nor dead-lettered: retried as a whole
    assert await store.dead_letters() == []


async def test_an_entry_claimed_after_its_last_delivery_is_dead_lettered_whatever_the_reason(
        store: Store) -> None:
    settings = make_settings(max_deliveries=3)
    await store.ensure_group()
    await append(store, make_event("CA-stuck", "s1", 0, status="ringing"))
    # A worker that dies holding it, three times over: no failure was ever recorded.
    await store.read_new("doomed", 10, block_ms=None)
    for _ in range(2):
        await store.claim_stale("doomed", 0, 10)
    consumer = Consumer(store, settings, Metrics())
    await consumer.run_burst(claim_idle_ms=0)
    [dead] = await store.dead_letters()
    assert dead["reason"] == "not settled after 3 deliveries (LEDGER_MAX_DELIVERIES)"
    assert int(dead["deliveries"]) == 4
    assert await store.get_call("CA-stuck") is None
    assert await store.group_stats() == (0, 0)


async def test_the_oldest_pending_entry_age_is_a_metric(store: Store) -> None:
    await store.ensure_group()
    metrics = Metrics()
    assert await store.oldest_pending_ages() == {"0": 0.0}
    await append(store, make_event("CA1", "e1", 0, status="ringing"))
    await store.read_new("doomed", 10, block_ms=None)
    now = await store.now_ms()
    ages = await store.oldest_pending_ages(now_ms=now + 90_000)
    assert 90 <= ages["0"] < 100
    metrics.observe_oldest_pending(ages)
    value = metrics.registry.get_sample_value("ledger_stream_oldest_pending_age_seconds", {"shard": "0"})
    assert value == ages["0"]


@pytest.mark.real_redis
def test_the_reported_poison_batch_through_serve_on_real_redis(redis_server: RedisServer) -> None:
    """The report, literally: 19 signed `call.usage` of cost 1000000000 on one call, queued with 5
    other calls, LEDGER_MAX_DELIVERIES=3, a stream retention of 0 s."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    # Queued before the worker starts, so that they share its first batch.
    proc = start_service("intake", LEDGER_REDIS_URL=redis_server.url)
    port = proc.port
    try:
        for i in range(19):
            assert post(port, {"type": "call.usage", "call_sid": "CA-poison",
                               "occurred_at": f"2026-11-24T10:00:{i:02d}Z",
                               "data": {"component": "llm", "cost": "1000000000"}}, f"msg_p{i}") == 200
        for sid in INNOCENTS:
            assert post(port, {"type": "call.status", "call_sid": sid, "occurred_at": "2026-11-24T10:00:00Z",
                               "data": {"status": "completed"}}, f"msg_{sid}") == 200
    finally:
        stop(proc)
    proc = start_service("serve", LEDGER_REDIS_URL=redis_server.url, LEDGER_MAX_DELIVERIES="3",
                               LEDGER_STREAM_RETENTION="0", LEDGER_BATCH_SIZE="500")
    port = proc.port
    try:
        deadline = time.monotonic() + 30
        while client.xlen("cl:dead") < 18 or any(get_record(port, sid) is None for sid in INNOCENTS):
            assert time.monotonic() < deadline, "the batch was not settled"
            time.sleep(0.1)
        assert get_record(port, "CA-poison")["llm_cost"] == 1_000_000_000  # type: ignore[index]
        reasons = {fields[b"reason"] for _, fields in client.xrange("cl:dead")}
        assert reasons == {b"the call's llm cost would pass 1000000000 USD"}
        assert client.xpending("cl:events", "ledger")["pending"] == 0
        # Trimming moves on (by whole stream nodes: MINID ~), where the pending poison held it.
        while client.xlen("cl:events") >= 24:
            assert time.monotonic() < deadline, f"not trimmed: {client.xlen('cl:events')} entries"
            time.sleep(0.1)
        with urllib_get(port, "/metrics") as response:
            text = response.read().decode()
        assert 'ledger_stream_oldest_pending_age_seconds{shard="0"} 0.0' in text
    finally:
        code, out, _ = stop(proc)
    assert code == 0
    assert "apply_loop_error" not in out


def urllib_get(port: int, path: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)


async def test_nothing_is_left_pending_when_a_batch_mixes_every_failure(store: Store, monkeypatch: Any) -> None:
    """Poison, a bug and innocents in one batch: the innocents applied, the rest accounted for."""
    break_rendering(monkeypatch, "CA-bad", ValueError("a bug"))
    consumer = Consumer(store, make_settings(max_deliveries=1), Metrics())
    await append_batch(store)
    await append(store, make_event("CA-bad", "b1", 0, status="ringing"))
    await consumer.run_burst()
    assert all([await store.get_call(sid) for sid in INNOCENTS])
    reasons = sorted(d["reason"] for d in await store.dead_letters())
    assert reasons == ["apply error: ValueError: a bug"] + ["the call's llm cost would pass 1000000000 USD"] * 18
    assert await store.group_stats() == (0, 0)


async def test_an_entry_claimed_after_its_last_delivery_but_already_applied_is_acknowledged(store: Store) -> None:
    """Committed, then its acknowledgement lost each time: applied once, never also a dead letter."""
    settings = make_settings(max_deliveries=2)
    await store.ensure_group()
    await append(store, make_event("CA-done", "d1", 0, status="ringing"))
    [entry] = await store.read_new("doomed", 10, block_ms=None)
    await Consumer(store, settings, Metrics()).run_burst()  # nothing new for it: the entry is doomed's
    await store.claim_stale("doomed", 0, 10)
    # It was applied by a worker that died before acknowledging it.
    await append(store, make_event("CA-done", "d1", 0, status="ringing"))
    await Consumer(store, settings.model_copy(update={"consumer_name": "other"}), Metrics()).run_burst()
    assert await store.event_count("CA-done") == 1
    await Consumer(store, settings, Metrics()).run_burst(claim_idle_ms=0)  # its third delivery
    assert await store.dead_letters() == []
    assert await store.group_stats() == (0, 0)
    assert entry.deliveries == 1


@pytest.mark.parametrize(("error", "of_the_call"), [
    (KeyError("a bug"), True),
    (TypeError("Integer exceeds 64-bit range"), True),
    (ResponseError("ERR user_script:1: Script attempted to access nonexistent global variable"), True),
    (DataError("Invalid input of type: 'dict'"), True),
    (ConnectionError("Connection refused"), False),
    (RedisConnectionError("Error 111 connecting"), False),
    (RedisTimeoutError("Timeout reading"), False),
    (TimeoutError(), False),
    (ResponseError("OOM command not allowed when used memory > 'maxmemory'"), False),
    (ResponseError("READONLY You can't write against a read only replica."), False),
    (ResponseError("CLUSTERDOWN The cluster is down"), False),
    (NoPermissionError("NOPERM this user has no permissions to run the 'evalsha' command"), False),
    (SlotNotCoveredError("Command # 1 (EVALSHA) slot not covered"), False),
    (StoreUnavailable("redis: ConnectionError"), False),
])
def test_what_fails_one_call_and_what_holds_the_batch(error: Exception, of_the_call: bool) -> None:
    """A failure of one call's data or of a bug fails that call; Redis away, full or refusing for
    every call keeps the whole batch pending (nothing dead-lettered for what Redis did)."""
    assert of_one_call(error) is of_the_call
