"""ledger_gc_pause_seconds times every garbage collection while an app runs, and stops with it (SPEC §13)."""

import gc
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from call_ledger.app import create_app
from call_ledger.store import Store
from tests.support.settings import make_settings


def gc_samples(metrics_text: str) -> dict[str, float]:
    """`generation` -> collections counted, and `longest` -> the longest pause's seconds."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "ledger_gc_pause_seconds_count":
                out[sample.labels["generation"]] = sample.value
            elif sample.name == "ledger_gc_pause_longest_seconds":
                out["longest"] = sample.value
    return out


async def test_each_collection_is_timed_by_generation(aiohttp_client: Any, store: Store) -> None:
    app = create_app(make_settings(), "serve", store, run_consumer=False)
    client = await aiohttp_client(app)
    before = gc_samples(await (await client.get("/metrics")).text())
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    after = gc_samples(await (await client.get("/metrics")).text())
    assert after["2"] - before.get("2", 0) >= 2
    assert after["0"] - before.get("0", 0) >= 1
    assert after["longest"] > 0


async def test_the_callback_is_removed_when_the_app_stops(aiohttp_client: Any, store: Store) -> None:
    callbacks = list(gc.callbacks)
    client = await aiohttp_client(create_app(make_settings(), "serve", store, run_consumer=False))
    assert len(gc.callbacks) == len(callbacks) + 1
    await client.close()
    assert gc.callbacks == callbacks
