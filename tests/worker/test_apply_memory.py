"""LEDGER_WORKER_CACHE_BYTES bounds what KnownCalls holds, the call_meta field names included:
refused events with huge call_meta objects (their keys asked for, never set) once made one
cached call hold megabytes the cache counted as ~2 KB."""

import sys

from call_ledger.core.events import CallEvent
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import make_event


def deep_size(value: object) -> int:
    if isinstance(value, frozenset | set | tuple | list):
        return sys.getsizeof(value) + sum(deep_size(item) for item in value)
    return sys.getsizeof(value)


async def test_the_cache_counts_the_field_names_it_holds(store: Store) -> None:
    settings = make_settings(batch_size=50)
    consumer = Consumer(store, settings, Metrics())
    events: list[CallEvent] = [make_event("CA-mem", "ok", 0, assistant_name="Bot")]
    for i in range(40):  # each refused: 600 keys > LEDGER_MAX_CALL_META_KEYS (256)
        events.append(make_event("CA-mem", f"big{i}", i + 1,
                                 call_meta={f"k{i:03d}-{j:04d}-{'x' * 60}": 0 for j in range(600)}))
    for event in events:
        raw = event.model_dump_json(exclude_defaults=True).encode()
        assert len(raw) < 64 * 1024  # what intake accepts
        await store.append(raw)
    await consumer.run_burst()
    cached = consumer.known.peek("CA-mem")
    assert cached is not None
    held = deep_size(cached.meta_fields)
    counted = consumer.known.bytes
    assert held <= counted, f"one cached call holds {held:,} B of field names, the cache counts {counted:,} B"
