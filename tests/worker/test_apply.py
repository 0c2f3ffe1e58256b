"""The worker's cache of calls it committed (worker/apply.py KnownCalls): what it spares Redis,
and that it never makes a record wrong. Outcomes are the records in Redis and the commands sent."""

from typing import Any

from call_ledger.core.events import CallEvent
from call_ledger.core.rules import render_record
from call_ledger.store import Entry, Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import KNOWN_EVENTS, NewCallGuess
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage


async def append(store: Store, *events: CallEvent) -> None:
    for event in events:
        await store.append(event.model_dump_json(exclude_defaults=True).encode())


def counting(store: Store) -> dict[str, int]:
    """Count load_calls and commit calls of the store."""
    counts = {"loads": 0, "commits": 0}
    load, commit = store.load_calls, store.commit

    async def counted_load(*args: Any, **kwargs: Any) -> Any:
        counts["loads"] += 1
        return await load(*args, **kwargs)

    async def counted_commit(*args: Any, **kwargs: Any) -> Any:
        counts["commits"] += 1
        return await commit(*args, **kwargs)

    store.load_calls = counted_load  # type: ignore[method-assign]
    store.commit = counted_commit  # type: ignore[method-assign]
    return counts


async def record(store: Store, sid: str) -> dict[str, Any]:
    found = await store.get_call(sid)
    assert found is not None
    return render_record(sid, *found, make_settings().policy)


async def test_a_retry_of_a_recent_event_is_a_duplicate_without_a_reread(store: Store) -> None:
    consumer = Consumer(store, make_settings(), Metrics())
    await append(store, usage("CA-c", "u1", 0, "llm", 5), make_event("CA-c", "m1", 1, assistant_name="Bot"))
    await consumer.run_burst()
    counts = counting(store)
    await append(store, usage("CA-c", "u1", 0, "llm", 5), usage("CA-c", "u2", 2, "llm", 7))  # u1 again
    assert await consumer.run_burst() == 2
    # Planned from the cache: no read of the call, one commit (no refused compare-and-set).
    assert counts == {"loads": 0, "commits": 1}
    assert (await record(store, "CA-c"))["llm_cost"] == 12
    assert await store.applied_keys("CA-c") == {"platform:u1", "platform:m1", "platform:u2"}


async def test_a_call_read_from_redis_knows_its_latest_events(store: Store) -> None:
    first = Consumer(store, make_settings(), Metrics())
    await append(store, *(usage("CA-r", f"u{i}", i, "tts", 1) for i in range(KNOWN_EVENTS + 5)))
    await first.run_burst()
    fresh = Consumer(store, make_settings(), Metrics())  # another worker: nothing cached
    counts = counting(store)
    await append(store, usage("CA-r", f"u{KNOWN_EVENTS + 4}", KNOWN_EVENTS + 4, "tts", 1))  # the latest, again
    await fresh.run_burst()
    # Guessed new (NewCallGuess), refused by the commit (the call has a version), read once; a
    # duplicate: nothing more to commit.
    assert counts == {"loads": 1, "commits": 1}
    await append(store, usage("CA-r", "u0", 0, "tts", 1))  # older than the latest 32: the script finds it
    await fresh.run_burst()
    assert (await record(store, "CA-r"))["tts_cost"] == KNOWN_EVENTS + 5


async def test_a_cached_call_missing_a_call_meta_key_is_read_again_only_if_it_may_exist(store: Store) -> None:
    consumer = Consumer(store, make_settings(), Metrics())
    await append(store, make_event("CA-m", "m1", 0, call_meta={"a": 1}))
    await consumer.run_burst()
    counts = counting(store)
    await append(store, make_event("CA-m", "m2", 1, call_meta={"b": 2}))  # the cache holds the call's every key
    await consumer.run_burst()
    assert counts["loads"] == 0
    # Another worker adds a key this one never saw: its cached version is stale, the commit is
    # refused, and the call is read again; the record has both workers' keys.
    other = Consumer(store, make_settings(), Metrics())
    await append(store, make_event("CA-m", "m3", 2, call_meta={"c": 3}))
    await other.run_burst()
    counts.update(loads=0, commits=0)
    await append(store, make_event("CA-m", "m4", 3, call_meta={"a": 10}))
    await consumer.run_burst()
    assert counts == {"loads": 1, "commits": 2}  # refused with the stale version, read, committed
    assert (await record(store, "CA-m"))["call_meta"] == {"a": 10, "b": 2, "c": 3}


async def test_a_plan_that_was_not_committed_is_never_planned_from_again(store: Store) -> None:
    """The cached state is folded into in place: a commit that fails (Redis away) must drop it,
    or the next batch would start from a state with events Redis never got."""
    consumer = Consumer(store, make_settings(), Metrics())
    await append(store, usage("CA-f", "u1", 0, "llm", 5))
    await consumer.run_burst()
    commit = store.commit

    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise ConnectionError("redis went away")

    store.commit = failing  # type: ignore[method-assign]
    await append(store, usage("CA-f", "u2", 1, "llm", 7))
    try:
        await consumer.run_burst()
    except ConnectionError:
        pass
    store.commit = commit  # type: ignore[method-assign]
    await consumer.run_burst(claim_idle_ms=0)  # u2 again (pending), from a fresh read
    assert (await record(store, "CA-f"))["llm_cost"] == 12  # 5 + 7, not 5 + 7 + 7


async def test_a_duplicate_of_a_call_this_worker_indexed_itself_sends_no_index_update(store: Store) -> None:
    """The re-index of a call found unchanged repairs what a dead worker missed; a call whose
    version this worker indexed itself (and the shard took) needs none."""
    consumer = Consumer(store, make_settings(), Metrics())
    await append(store, usage("CA-i", "u1", 0, "llm", 5))
    await consumer.run_burst()
    sent: list[Any] = []
    write = consumer.indexes.write

    async def spy(writes: list[Any]) -> list[bool]:
        sent.extend(writes)
        return await write(writes)

    consumer.indexes.write = spy  # type: ignore[method-assign]
    await append(store, usage("CA-i", "u1", 0, "llm", 5))  # a provider's retry
    assert await consumer.run_burst() == 1
    assert sent == []
    other = Consumer(store, make_settings(), Metrics())  # knows nothing it indexed: repairs
    other.indexes.write = spy  # type: ignore[method-assign]
    await append(store, usage("CA-i", "u1", 0, "llm", 5))
    await other.run_burst()
    assert [w.entry.call_sid for w in sent] == ["CA-i"]


async def test_a_call_the_worker_does_not_know_is_committed_as_new_without_reading_it(store: Store) -> None:
    consumer = Consumer(store, make_settings(), Metrics())
    counts = counting(store)
    await append(store, *(usage(f"CA-n{i}", f"u{i}", i, "llm", 10 + i) for i in range(3)),
                 usage("CA-n0", "u9", 9, "tts", 4))
    assert await consumer.run_burst() == 4
    assert counts == {"loads": 0, "commits": 1}  # guessed new, and they were: no read at all
    records = [await record(store, f"CA-n{i}") for i in range(3)]
    assert [(r["llm_cost"], r["tts_cost"]) for r in records] == [(10, 4), (11, None), (12, None)]
    assert len({r["id"] for r in records}) == 3
    assert consumer.guess.fail_rate == 0.0
    assert consumer.metrics.new_call_guesses.labels("right")._value.get() == 3


async def test_a_wrong_guess_is_refused_then_the_call_is_read_and_each_event_applied_once(store: Store) -> None:
    first = Consumer(store, make_settings(), Metrics())
    await append(store, usage("CA-g", "u1", 1, "llm", 5), make_event("CA-g", "s1", 2, status="ongoing"))
    await first.run_burst()
    before = await record(store, "CA-g")
    other = Consumer(store, make_settings(), Metrics())  # knows nothing of CA-g: guesses it new
    counts = counting(store)
    await append(store, usage("CA-g", "u1", 1, "llm", 5), usage("CA-g", "u2", 3, "llm", 7))  # u1 again, and a new one
    assert await other.run_burst() == 2
    # The guess (version 0) is refused, the call read, the plan committed on the version read.
    assert counts == {"loads": 1, "commits": 2}
    after = await record(store, "CA-g")
    assert after["llm_cost"] == 12 and after["status"] == "ongoing"
    assert after["id"] == before["id"]  # the id allocated for the guess is never used
    assert await store.applied_keys("CA-g") == {"platform:u1", "platform:s1", "platform:u2"}
    assert other.guess.fail_rate > 0
    assert other.metrics.new_call_guesses.labels("wrong")._value.get() == 1


def test_guessing_stops_while_guesses_fail_and_comes_back_when_they_hold() -> None:
    guess = NewCallGuess()
    fresh = [(Entry("1-0", b""), usage("CA-x", "u", 0, "llm", 1))]
    assert guess.allowed(fresh)
    assert not guess.allowed([(Entry("1-0", b"", deliveries=2), fresh[0][1])])  # redelivered: read first
    for _ in range(10):  # a worker sharing its calls with others: most calls it does not know exist
        guess.outcome(False)
    asked = [guess.allowed(fresh) for _ in range(3 * NewCallGuess.PROBE_EVERY)]
    assert asked.count(True) == 3  # one probe in PROBE_EVERY
    while guess.fail_rate >= NewCallGuess.FAIL_RATE:  # the probes succeed: calls are new again
        guess.outcome(True)
    assert all(guess.allowed(fresh) for _ in range(10))


async def test_a_worker_whose_calls_all_exist_soon_reads_them_first(store: Store) -> None:
    first = Consumer(store, make_settings(), Metrics())
    await append(store, *(usage(f"CA-e{i}", "u0", 0, "llm", 1) for i in range(40)))
    await first.run_burst()
    other = Consumer(store, make_settings(), Metrics())
    counts = counting(store)
    for i in range(40):  # one call per batch: each unknown to `other`, each existing
        await append(store, usage(f"CA-e{i}", "u1", 1, "llm", 2))
        await other.run_burst()
    # Every wrong guess costs one refused commit; past the threshold it reads first (a probe
    # now and then), so far fewer than 40 commits were refused.
    refused = counts["commits"] - 40
    assert 5 <= refused <= 10
    assert counts["loads"] == 40
    assert [(await record(store, f"CA-e{i}"))["llm_cost"] for i in range(40)] == [3] * 40


async def test_a_cached_call_missing_a_call_meta_key_is_read_not_guessed_new(store: Store) -> None:
    """The cache knows the call exists even when it cannot plan from it: it is read, never guessed."""
    first = Consumer(store, make_settings(), Metrics())
    await append(store, make_event("CA-k", "m1", 0, call_meta={"a": 1, "c": 4}))
    await first.run_burst()
    worker = Consumer(store, make_settings(), Metrics())
    # Guessed new, wrong, read with m:a only: cached, knowing one of the call's two keys.
    await append(store, make_event("CA-k", "m2", 1, call_meta={"a": 2}))
    await worker.run_burst()
    assert worker.metrics.new_call_guesses.labels("wrong")._value.get() == 1
    counts = counting(store)
    await append(store, make_event("CA-k", "m3", 2, call_meta={"b": 3}))  # a key the cached call never read
    await worker.run_burst()
    assert counts == {"loads": 1, "commits": 1}  # read, then one commit: no refused guess
    assert worker.metrics.new_call_guesses.labels("wrong")._value.get() == 1
    assert (await record(store, "CA-k"))["call_meta"] == {"a": 2, "b": 3, "c": 4}


async def test_a_redelivered_event_that_would_fail_on_a_guess_is_still_found_a_duplicate(store: Store) -> None:
    """Applied with an FX rate that is gone by the time a copy reaches a worker that does not
    know the call: the guess's plan fails on the empty state, so the call is read, and the copy
    is the duplicate it is (acknowledged), not a failure dead-lettered after its one delivery."""
    await append(store, usage("CA-fx", "u1", 0, "llm", 1_000, currency="EUR"))
    await Consumer(store, make_settings(fx_rates="EUR=1.1"), Metrics()).run_burst()
    without_rate = Consumer(store, make_settings(max_deliveries=1), Metrics())
    await append(store, usage("CA-fx", "u1", 0, "llm", 1_000, currency="EUR"))
    assert await without_rate.run_burst() == 1
    assert without_rate.metrics.duplicates.labels("platform")._value.get() == 1
    assert await store.dead_letters() == []
    assert (await record(store, "CA-fx"))["llm_cost"] == 1_100


# -- an applied event at the bound of events per call ----------------------------------------------------

# A redelivery of an applied event to a cached call at LEDGER_MAX_EVENTS_PER_CALL, older than
# the 32 event keys the worker cache keeps, is a duplicate, not a refusal: a refusal judged on the
# cache is judged again on the call as read from Redis, whose order index knows every applied event.
# (It was once refused and dead-lettered though applied.)

async def test_an_applied_event_is_a_duplicate_not_refused_at_the_bound(store: Store) -> None:
    bound = KNOWN_EVENTS + 8
    consumer = Consumer(store, make_settings(max_events_per_call=bound, batch_size=10), Metrics())
    for i in range(bound):
        await store.append(usage("CA-b", f"u{i}", i, "llm", 1).model_dump_json().encode())
    await consumer.run_burst()
    assert await store.event_count("CA-b") == bound
    await store.append(usage("CA-b", "u0", 0, "llm", 1).model_dump_json().encode())  # a provider retry
    await consumer.run_burst()
    dead = await store.dead_letters()
    assert dead == [], f"an applied event dead-lettered: {[(d['e'][:60], d['reason']) for d in dead]}"
