"""The apply loop's bookkeeping without Redis (call_ledger.worker.batch) and the store's failure classes
(call_ledger.store.errors)."""

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from call_ledger.core.rules import CallState
from call_ledger.store import CommitWrite, Entry, LoadedCall
from call_ledger.store.errors import script_refused_for_good, transient
from call_ledger.worker.apply import CallPlan
from call_ledger.worker.batch import (
    APPLIED,
    DEFERRED,
    DUPLICATE,
    BatchResult,
    Committed,
    Outcome,
    check_write,
    committable,
    failure_text,
    group_by_call,
    rejudged,
    replanned,
)
from tests.support.workers import make_event


def entry(n: int, event: Any = None) -> Entry:
    return Entry(f"1-{n}", None if event is None else event.model_dump_json().encode())


def read(record_id: int | None = 7, version: int = 3) -> LoadedCall:
    """A call as read from Redis (no decoded state)."""
    return LoadedCall(version, None, {}, record_id, frozenset(), token="t")


def cached(version: int = 3) -> LoadedCall:
    return LoadedCall(version, None, {}, 7, frozenset(), CallState(), "t")


def guessed() -> LoadedCall:
    return LoadedCall(0, None, {}, None, frozenset(), CallState(), guessed=True)


def items(sid: str, count: int) -> list[tuple[Entry, Any]]:
    events = [make_event(sid, f"{sid}:{n}", n, status="ringing") for n in range(count)]
    return [(entry(n, event), event) for n, event in enumerate(events)]


def test_entries_are_grouped_by_call_in_stream_order_and_the_undecodable_set_apart() -> None:
    a0, b0, a1 = (make_event(sid, f"{sid}:{n}", n, status="ringing") for sid, n in (("CA-a", 0), ("CA-b", 0),
                                                                                      ("CA-a", 1)))
    entries = [entry(1, a0), Entry("1-2", b"{not json"), entry(3, b0), Entry("1-4", None), entry(5, a1),
               Entry("1-6", b'{"source": "platform"}')]
    grouped = group_by_call(entries)
    assert list(grouped.by_call) == ["CA-a", "CA-b"]
    assert [e.entry_id for e, _ in grouped.by_call["CA-a"]] == ["1-1", "1-5"]
    assert [event.event_id for _, event in grouped.by_call["CA-a"]] == ["CA-a:0", "CA-a:1"]
    assert [(u.entry.entry_id, u.reason.split(":")[0]) for u in grouped.undecodable] == [
        ("1-2", "undecodable event"), ("1-4", "undecodable event"), ("1-6", "undecodable event")]
    assert grouped.undecodable[2].reason.startswith("undecodable event: ")  # the model's first complaint


def test_which_plans_are_judged_again_committed_and_planned_again() -> None:
    (e0, ev0), (e1, ev1), (e2, ev2) = items("CA-x", 3)
    plan = CallPlan(CallState())
    assert not rejudged(plan, cached()) and not committable(plan, cached())
    plan.refused.append((e0, ev0, "bound"))
    assert rejudged(plan, cached()) and not rejudged(plan, read())  # a read already knows every event
    assert committable(plan, read())  # the version check confirms the refusal
    failing = CallPlan(CallState())
    failing.failed.append((e1, ev1, "no rate"))
    assert rejudged(failing, guessed()) and not rejudged(failing, read()) and not committable(failing, read())
    duplicate = CallPlan(CallState())
    duplicate.duplicates.append((e2, ev2))
    assert committable(duplicate, cached()) and not committable(duplicate, read())
    plan.applied.append((e1, ev1))
    plan.duplicates.append((e2, ev2))
    assert replanned(plan, cached()) == [(e1, ev1), (e0, ev0), (e2, ev2)]
    assert replanned(plan, read()) == [(e1, ev1), (e0, ev0)]  # a read's duplicates are settled


def test_a_check_write_writes_nothing_at_the_version_read() -> None:
    assert check_write("CA-c", read(None, 4)) == CommitWrite(call_sid="CA-c", version=4, new_version=4, core=b"",
                                                             record_id=0, events=[], fields=[], token="t")


def test_the_batch_result_settles_each_entry_once_per_round() -> None:
    (e0, ev0), (e1, ev1), (e2, ev2) = items("CA-r", 3)
    result = BatchResult()
    plan = CallPlan(CallState())
    plan.duplicates.append((e0, ev0))
    plan.failed.append((e1, ev1, "no rate"))
    result.planned({"CA-r": plan}, {"CA-r": cached()})
    assert result.outcomes == {e1.ref: Outcome("failed", "no rate")}  # a cached duplicate waits for the check
    result.planned({"CA-r": plan}, {"CA-r": read()})
    assert result.outcomes[e0.ref] is DUPLICATE
    result.found(plan, read(None), "CA-r")
    assert result.committed == {}  # no record yet: nothing to index
    result.found(plan, read(7, 3), "CA-r")
    assert result.committed == {"CA-r": Committed(7, 3, plan.state, None)}
    written = CallPlan(CallState())
    written.applied.append((e2, ev2))
    written.new_events.append(("k", 1, b"{}"))
    written.record = {"id": "r"}
    write = CommitWrite(call_sid="CA-r", version=3, new_version=4, core=b"", record_id=7, events=[], fields=[])
    result.written(written, read(), write)
    assert result.outcomes[e2.ref] is APPLIED
    assert result.committed["CA-r"] == Committed(7, 4, written.state, {"id": "r"})
    assert DEFERRED == ("deferred", "call updated concurrently; will retry")


@pytest.mark.parametrize(("error", "for_good"), [
    (ResponseError("ERR user_script:12: bad argument"), True),
    (ResponseError("BUSY Redis is busy running a script"), False),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), False),
    (RedisConnectionError("gone"), False),
    (ValueError("a bug"), False),
])
def test_an_index_script_failure_is_final_only_for_an_error_reply_that_is_not_transient(
        error: Exception, for_good: bool) -> None:
    assert script_refused_for_good(error) is for_good
    if isinstance(error, ResponseError):
        assert transient(error) is not for_good


def test_a_failure_text_is_bounded() -> None:
    assert failure_text("apply error", ValueError("x" * 1000)) == ("apply error: ValueError: " + "x" * 1000)[:500]
