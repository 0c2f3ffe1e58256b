"""worker/archive.py: archive passes through the real service on fake Redis, files in a local directory.

- every provider's call shape (and a platform-attributed call with call_meta and usage) is served by
  GET byte for byte as before its pass; count, stats and analytics say what they said; list, search and
  export cover the calls left in Redis; a late event is dead-lettered `call_archived`;
- retention: a call ended less than LEDGER_RETENTION_DAYS ago stays;
- a pass killed at any step and then run again leaves every call in exactly one row, and every call in
  Redis or archived with its tombstone, never neither.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from call_ledger.api.archived import UNREADABLE
from call_ledger.archive import ArchiveUnavailable, open_archive
from call_ledger.core.indexes import shard_of
from call_ledger.store import Store
from call_ledger.store.archive import LockLost, is_tombstone
from call_ledger.web.metrics import Metrics
from call_ledger.worker import archive as archive_module
from call_ledger.worker.archive import Archiver
from tests.support.archiving import SIDS, Killed, KilledAt, archived_rows, check_never_lost, fill_calls, settle
from tests.support.polling import until
from tests.support.provider_calls import (
    Ledger,
    StartLedger,
    WholeCall,
    attributed_twilio_call,
    plivo_call,
    telnyx_call,
    twilio_call,
    vonage_call,
)
from tests.support.settings import AUTH
from tests.support.signing import post_platform
from tests.support.workers import usage

READS = ("/api/v1/calls/count", "/api/v1/calls/count?status=completed", "/api/v1/calls/stats",
         "/api/v1/calls/analytics?period=90d", "/api/v1/calls/count?date_from=2026-11-24&date_to=2026-11-24")

CALLS = {
    "twilio-outbound": twilio_call(), "twilio-inbound-get": twilio_call("inbound", "GET"),
    "twilio-attributed": attributed_twilio_call(), "telnyx": telnyx_call(), "vonage": vonage_call(),
    "plivo": plivo_call(),
}


def archiver_of(ledger: Ledger, root: Path, cls: type[Archiver] = Archiver, **kwargs: Any) -> Archiver:
    store = ledger.consumer.store
    return cls(store, ledger.consumer.settings, open_archive(str(root)), Metrics(), **kwargs)


async def reads(ledger: Ledger) -> dict[str, Any]:
    found = {}
    for path in READS:
        response = await ledger.client.get(path, headers=AUTH)
        assert response.status == 200, await response.text()
        found[path] = await response.json()
    return found


async def body(ledger: Ledger, sid: str) -> tuple[int, bytes]:
    response = await ledger.client.get(f"/api/v1/calls/sid/{sid}", headers=AUTH)
    return response.status, await response.read()


@pytest.mark.parametrize("name", list(CALLS))
async def test_an_archived_call_is_served_byte_for_byte_and_still_counted(
        start_ledger: StartLedger, tmp_path: Path, name: str) -> None:
    call: WholeCall = CALLS[name]
    ledger = await start_ledger(**call.settings, archive_url=str(tmp_path), retention_days=0)
    await ledger.deliver(call.sends)
    store: Store = ledger.consumer.store
    await settle(store, ledger.consumer.settings)
    before, counted = await ledger.record_body(call.call_sid), await reads(ledger)
    applied = await store.all_events(call.call_sid)

    report = await archiver_of(ledger, tmp_path).run_pass()

    assert report is not None and (report.calls, report.files) == (1, 2)  # the calls file and its events file
    tomb = await store.redis.hgetall(store.keys.call(call.call_sid))
    assert is_tombstone(tomb) and len(tomb) == 1
    assert await body(ledger, call.call_sid) == (200, before)
    assert await reads(ledger) == counted
    listed = await (await ledger.client.get("/api/v1/calls", headers=AUTH)).json()
    assert (listed["items"], listed["total"]) == ([], 0)  # lists cover the calls in Redis, their total too
    [row] = archived_rows(tmp_path)
    assert row["call_sid"] == call.call_sid and row["record_json"] is None  # the typed columns reproduce it
    events = archived_rows(tmp_path, "events")
    assert [orjson.loads(e["event"]) for e in events] == [orjson.loads(e) for e in applied]


async def test_a_late_event_for_an_archived_call_is_dead_lettered_and_changes_nothing(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    call = attributed_twilio_call()
    ledger = await start_ledger(**call.settings, archive_url=str(tmp_path), retention_days=0)
    await ledger.deliver(call.sends)
    store: Store = ledger.consumer.store
    await settle(store, ledger.consumer.settings)
    before = await ledger.record_body(call.call_sid)
    await archiver_of(ledger, tmp_path).run_pass()

    payload = {"type": "call.usage", "call_sid": call.call_sid, "occurred_at": "2026-11-24T10:06:00Z",
               "data": {"component": "stt", "cost": "0.5", "currency": "USD"}}
    response = await post_platform(ledger.client, payload, "msg_late")
    assert response.status == 200
    await ledger.consumer.run_burst()

    assert [(orjson.loads(d["e"])["event_id"], d["reason"]) for d in await store.dead_letters()] == [
        ("msg_late", "call_archived")]
    assert await body(ledger, call.call_sid) == (200, before)
    assert len(archived_rows(tmp_path)) == 1


@pytest.mark.parametrize(("retention_days", "archived"), [(30, 0), (7, 1)])
async def test_a_call_is_archived_once_its_end_is_older_than_the_retention(
        start_ledger: StartLedger, tmp_path: Path, retention_days: int, archived: int) -> None:
    call = twilio_call()  # ended 2026-11-24T10:05:06Z
    ledger = await start_ledger(**call.settings, archive_url=str(tmp_path), retention_days=retention_days)
    await ledger.deliver(call.sends)
    await settle(ledger.consumer.store, ledger.consumer.settings)
    days_ago = (time.time() - 1_795_514_706) / 86_400
    assert 7 < days_ago < 30, "the retention cases assume the call ended 7 to 30 days ago"
    report = await archiver_of(ledger, tmp_path).run_pass()
    assert report is not None and report.calls == archived
    assert len(archived_rows(tmp_path)) == archived


# -- killed at any step ----------------------------------------------------------------------------------

STEPS = [("held", 1), ("held", 2), ("placed", 1), ("file_written", 1), ("file_written", 3), ("files_written", 1),
         ("tombstoned", 1), ("tombstoned", 2), ("unindexed", 1), ("unindexed", 2)]


@pytest.mark.parametrize(("step", "nth"), STEPS)
async def test_a_pass_killed_at_any_step_is_finished_by_the_next_exactly_once(
        start_ledger: StartLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, nth: int) -> None:
    monkeypatch.setattr(archive_module, "TOMBSTONES_PER_STEP", 4)
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    settings, files = ledger.consumer.settings, open_archive(str(tmp_path))
    await fill_calls(store, settings)
    served = {sid: await ledger.record_body(sid) for sid in SIDS}
    counted = await reads(ledger)

    with pytest.raises(Killed):
        await archiver_of(ledger, tmp_path, KilledAt, at=step, nth=nth, batch=10).run_pass()
    await check_never_lost(store, settings, files, served, done=False)  # between the two: nothing lost nor doubled

    report = await archiver_of(ledger, tmp_path, batch=10).run_pass()

    assert report is not None
    await check_never_lost(store, settings, files, served, done=True)
    for sid in SIDS:  # GET, through the API
        assert await body(ledger, sid) == (200, served[sid])
    assert await reads(ledger) == counted
    assert not await store.redis.exists(store.keys.archive_pass, store.keys.archive_batch)
    for sid in SIDS:
        assert not await store.redis.zcard(store.keys.archive_due(shard_of(sid)))


async def test_a_call_whose_record_no_row_can_hold_stays_and_does_not_stop_the_pass(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    await fill_calls(store, ledger.consumer.settings, ["CA-bad", "CA-good"])
    version = (await store.redis.hget(store.keys.call("CA-bad"), "v")).decode()
    await store.redis.hset(store.keys.call("CA-bad"), "j", f"{version}\n[1,2,3]")  # not a record
    report = await archiver_of(ledger, tmp_path).run_pass()
    assert report is not None and report.calls == 1
    assert [row["call_sid"] for row in archived_rows(tmp_path)] == ["CA-good"]
    assert b"id" in await store.redis.hgetall(store.keys.call("CA-bad"))  # left whole, no longer a candidate
    assert await store.archive.candidates(10**13, 10) == []


async def test_the_service_archives_every_few_seconds_and_counts_it(start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0, archive_every_s=1)
    store: Store = ledger.consumer.store
    await fill_calls(store, ledger.consumer.settings, ["CA-a", "CA-b"])
    archiver = archiver_of(ledger, tmp_path)
    await archiver.start()
    try:
        async def both_tombstoned() -> bool:
            return all([is_tombstone(await store.redis.hgetall(store.keys.call(sid))) for sid in ("CA-a", "CA-b")])

        await until(both_tombstoned, 10, "both calls archived by the loop")
        await until(lambda: archiver.metrics.archived_calls._value.get() == 2, 5, "the pass counted")
    finally:
        await archiver.stop()
    assert archiver.metrics.archived_calls._value.get() == 2
    assert archiver.metrics.archive_bytes._value.get() > 0


async def test_two_processes_passes_at_once_one_runs_the_other_finds_the_lock(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    await fill_calls(store, ledger.consumer.settings)
    first, second = archiver_of(ledger, tmp_path, batch=5), archiver_of(ledger, tmp_path, batch=5)
    reports = await asyncio.gather(first.run_pass(), second.run_pass())
    assert sorted(report is None for report in reports) == [False, True]  # one ran, one found the lock taken
    assert sorted(row["call_sid"] for row in archived_rows(tmp_path)) == SIDS
    assert not await store.redis.exists(store.keys.archive_lock)


async def test_a_batch_whose_files_cannot_be_written_is_abandoned_and_its_calls_take_events_again(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    settings = ledger.consumer.settings
    await fill_calls(store, settings, ["CA-x", "CA-y"])
    archiver = archiver_of(ledger, tmp_path)
    written = []

    def put_then_fail(rel: str, data: bytes) -> None:
        if written:
            raise ArchiveUnavailable("the disk is full")
        written.append(rel)
        open_archive(str(tmp_path)).put(rel, data)

    archiver.files.put = put_then_fail  # type: ignore[method-assign]
    with pytest.raises(ArchiveUnavailable):
        await archiver.run_pass()

    assert archived_rows(tmp_path) == [] and archived_rows(tmp_path, "events") == []  # the file written: removed
    for sid in ("CA-x", "CA-y"):
        assert b"a" not in await store.redis.hgetall(store.keys.call(sid))  # released
    assert not await store.redis.exists(store.keys.archive_pass, store.keys.archive_batch)
    await store.append(usage("CA-x", "after", 99 * 1_000_000, "stt", 5).model_dump_json().encode())
    await ledger.consumer.run_burst()
    assert await store.dead_letters() == []  # applied, not call_archived
    await settle(store, settings)  # its call.revised fanned out
    report = await archiver_of(ledger, tmp_path).run_pass()  # the archive works again: both archived
    assert report is not None and report.calls == 2


async def test_a_hold_left_by_a_process_that_lost_the_lock_is_released(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    await fill_calls(store, ledger.consumer.settings, ["CA-x"])
    await store.redis.hset(store.keys.call("CA-x"), "a", "@a-pass-that-never-began")
    assert (await archiver_of(ledger, tmp_path).run_pass()).calls == 0  # type: ignore[union-attr]
    assert b"a" not in await store.redis.hgetall(store.keys.call("CA-x"))
    assert (await archiver_of(ledger, tmp_path).run_pass()).calls == 1  # type: ignore[union-attr]


async def test_a_process_that_lost_the_lock_cannot_change_the_pass(start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    assert await store.archive.lock("someone-else", 60_000)
    with pytest.raises(LockLost):
        await store.archive.begin("me", "p1", 1)
    assert not await store.redis.exists(store.keys.archive_pass)


async def test_an_archive_that_cannot_be_read_is_a_503_that_names_no_path(
        start_ledger: StartLedger, tmp_path: Path) -> None:
    ledger = await start_ledger(archive_url=str(tmp_path), retention_days=0)
    store: Store = ledger.consumer.store
    await fill_calls(store, ledger.consumer.settings, ["CA-x"])
    await archiver_of(ledger, tmp_path).run_pass()
    for path in (tmp_path / "calls").rglob("*.parquet"):
        path.unlink()
    status, text = await body(ledger, "CA-x")
    assert status == 503
    assert orjson.loads(text) == {"error": "archive_unavailable", "detail": UNREADABLE}
