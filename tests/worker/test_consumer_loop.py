"""The background apply loop on the embedded store (fakeredis), as `call-ledger serve` runs it."""

from collections.abc import Awaitable, Callable
from typing import Any

from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.polling import until
from tests.support.settings import make_settings


async def _nothing(_seconds: float) -> None:
    pass


def record_pauses(consumer: Consumer, on_pause: Callable[[float], Awaitable[None]] = _nothing) -> list[float]:
    """The loop's pauses (idle or lingering), in order, seen as they begin; `on_pause` runs at the
    start of each. The tests wait on them, not on wall-clock windows."""
    pauses: list[float] = []
    original = consumer._pause

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await on_pause(seconds)
        await original(seconds)

    consumer._pause = pause  # type: ignore[method-assign]
    return pauses


async def test_idle_loop_does_not_spin_on_a_store_that_answers_blocking_reads_at_once(store: Store) -> None:
    """A store that returns from XREADGROUP BLOCK immediately (the embedded store once did; fakeredis
    now blocks, so the read here does not block): the loop must pause, not spin hot."""
    reads = 0
    original = store.read_new

    async def counting_read(consumer: str, count: int, block_ms: int | None) -> Any:
        nonlocal reads
        reads += 1
        return await original(consumer, count, None)  # answered at once, whatever block_ms asks

    store.read_new = counting_read  # type: ignore[method-assign]
    consumer = Consumer(store, make_settings(), Metrics())
    pauses = record_pauses(consumer)
    await consumer.start()
    # Let it idle for ten of its pauses (half a second of wall time), however slow the machine.
    await until(lambda: len(pauses) >= 10, 10, "ten idle pauses")
    await consumer.stop()
    assert set(pauses) == {0.05}
    # ~10 reads with the 50 ms pause; a hot loop does thousands in that time.
    assert 1 <= reads <= 50


async def test_running_loop_applies_what_arrives_and_stops_cleanly(store: Store) -> None:
    from call_ledger.core.events import CallEvent

    consumer = Consumer(store, make_settings(), Metrics())
    await consumer.start()
    event = CallEvent(source="platform", event_id="e1", call_sid="CA-loop", type="call.status",
                      occurred_at="2026-11-24T10:00:00Z", occurred_us=1_795_514_400_000_000, status="ringing")
    await store.append(event.model_dump_json().encode())
    await until(lambda: store.get_call("CA-loop"), 5, "CA-loop to be applied")
    assert await store.get_call("CA-loop") is not None
    await consumer.stop()
    assert consumer._task is not None and consumer._task.done()


async def test_after_draining_the_stream_the_loop_lingers_so_the_next_events_come_as_one_batch(store: Store) -> None:
    """LEDGER_APPLY_LINGER_MS: events arriving just after a small batch are read together."""
    from tests.support.workers import usage

    sizes: list[int] = []
    original = store.read_new

    async def recording_read(*args: Any, **kwargs: Any) -> Any:
        entries = await original(*args, **kwargs)
        if entries:
            sizes.append(len(entries))
        return entries

    store.read_new = recording_read  # type: ignore[method-assign]
    consumer = Consumer(store, make_settings(apply_linger_ms=400), Metrics())

    async def five_more_while_lingering(seconds: float) -> None:
        if seconds == 0.4 and sizes == [1]:
            for i in range(1, 6):  # within the 400 ms the loop waits after its batch of one
                await store.append(usage("CA-linger", f"u{i}", i, "llm", 1).model_dump_json().encode())

    record_pauses(consumer, on_pause=five_more_while_lingering)
    await consumer.start()
    await store.append(usage("CA-linger", "u0", 0, "llm", 1).model_dump_json().encode())
    await until(lambda: sum(sizes) >= 6, 5, "the six events to be read")
    await consumer.stop()
    assert sizes == [1, 5]
    found = await store.get_call("CA-linger")
    assert found is not None and found[1].costs == {"llm": 6}
