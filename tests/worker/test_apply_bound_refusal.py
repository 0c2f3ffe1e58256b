"""A redelivery of an applied event to a cached call at LEDGER_MAX_EVENTS_PER_CALL, older than
the 32 event keys the worker cache keeps, is a duplicate, not a refusal: a refusal judged on the
cache is judged again on the call as read from Redis, whose order index knows every applied event.
(It was once refused and dead-lettered though applied.)"""

from call_ledger.store.records import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import KNOWN_EVENTS
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import usage


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
