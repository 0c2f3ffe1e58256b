"""Dead-letter retention (worker/retention.py, SPEC §14): the worker's maintenance drops dead
letters older than LEDGER_DLQ_RETENTION_DAYS from every shard's dead-letter stream, counts them
in `ledger_dead_letters_expired_total`, logs one line with the count, and keeps the rest."""

from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import usage

DAY_MS = 86_400_000


def expired(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("ledger_dead_letters_expired_total") or 0.0


async def dead_at(store: Store, dead_stream: str, ms: int, seq: int) -> str:
    """A dead letter as `dead_letter` writes one, dead-lettered at `ms` (Redis time)."""
    return (await store.redis.xadd(dead_stream, {"e": b"{}", "reason": "old", "original_id": "1-0", "deliveries": 5,
                                                 "dead_at": ms}, id=f"{ms}-{seq}")).decode()


async def dead_letter_now(store: Store, settings: Settings) -> None:
    """One dead letter through the worker's own path: a EUR cost with no FX rate, retried until
    LEDGER_MAX_DELIVERIES (1) gives up on it."""
    await store.append(usage("CA-dead", "eur", 0, "tts", 10**9, currency="EUR").model_dump_json().encode(), "CA-dead")
    consumer = Consumer(store, settings, Metrics())
    await consumer.run_burst()
    await consumer.run_burst(claim_idle_ms=0)
    assert len(await store.dead_letters()) >= 1


async def test_dead_letters_past_the_retention_are_dropped_counted_and_logged(store: Store) -> None:
    settings = make_settings(max_deliveries=1)
    assert settings.dlq_retention_days == 30  # the default
    now = await store.now_ms()
    old = [await dead_at(store, store.dead, now - 31 * DAY_MS, i) for i in range(3)]
    kept = [await dead_at(store, store.dead, now - 29 * DAY_MS, 0)]
    await dead_letter_now(store, settings)
    before = [row["id"] for row in await store.dead_letters()]
    assert before[:4] == [*old, *kept] and len(before) == 5

    metrics = Metrics()
    consumer = Consumer(store, settings, metrics)
    with capture_logs() as logs:
        await consumer.maintain()
    assert [row["id"] for row in await store.dead_letters()] == before[3:]  # the recent ones, as they were
    assert expired(metrics) == 3
    lines = [line for line in logs if line["event"] == "dead_letters_expired"]
    assert lines == [{"event": "dead_letters_expired", "entries": 3, "retention_days": 30, "log_level": "info"}]

    with capture_logs() as logs:  # nothing more has aged out: nothing dropped, nothing logged
        await consumer.maintain()
    assert expired(metrics) == 3 and not [line for line in logs if line["event"] == "dead_letters_expired"]
    assert len(await store.dead_letters()) == 2


async def test_every_shard_is_trimmed_and_the_count_is_their_sum(fake_redis: Any) -> None:
    settings = make_settings(stream_shards=3, dlq_retention_days=7)
    store = Store(fake_redis, settings.key_prefix, stream_shards=3)
    now = await store.now_ms()
    for n, shard in enumerate(store.shards):
        for i in range(n + 1):
            await dead_at(store, shard.dead, now - 8 * DAY_MS, i)
        await dead_at(store, shard.dead, now - 6 * DAY_MS, 0)
    metrics = Metrics()
    with capture_logs() as logs:
        await Consumer(store, settings, metrics).maintain()
    assert expired(metrics) == 1 + 2 + 3
    assert [line["entries"] for line in logs if line["event"] == "dead_letters_expired"] == [6]
    assert sorted(row["shard"] for row in await store.dead_letters()) == sorted(s.name for s in store.shards)


async def test_a_retention_of_zero_keeps_dead_letters_forever(store: Store) -> None:
    settings = make_settings(dlq_retention_days=0)
    now = await store.now_ms()
    await dead_at(store, store.dead, now - 3650 * DAY_MS, 0)
    metrics = Metrics()
    with capture_logs() as logs:
        await Consumer(store, settings, metrics).maintain()
    assert len(await store.dead_letters()) == 1 and expired(metrics) == 0
    assert not [line for line in logs if line["event"] == "dead_letters_expired"]


async def test_trimming_an_empty_or_missing_dead_letter_stream_drops_nothing(store: Store) -> None:
    assert await store.trim_dead(30) == 0
    now = await store.now_ms()
    await dead_at(store, store.dead, now - DAY_MS, 0)
    assert await store.trim_dead(30) == 0
    assert await store.trim_dead(1, now_ms=now + 1) == 1  # exactly a day old: past a one-day retention


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "36501"])
def test_a_bad_retention_stops_start_up(value: str) -> None:
    with pytest.raises(ValueError, match="dlq_retention_days"):
        make_settings(dlq_retention_days=value)


async def test_on_a_real_redis_exactly_the_dead_letters_past_the_retention_go(redis_server: Any) -> None:
    """Real XTRIM MINID, exact: across stream nodes (100 entries each), every old one goes and
    no recent one, whatever node it shares with an old one."""
    from call_ledger.store import open_redis

    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        now = await store.now_ms()
        for i in range(150):
            await dead_at(store, store.dead, now - 31 * DAY_MS, i)
        recent = [await dead_at(store, store.dead, now - 29 * DAY_MS, i) for i in range(30)]
        metrics = Metrics()
        with capture_logs() as logs:
            await Consumer(store, settings, metrics).maintain()
        assert [row["id"] for row in await store.dead_letters(count=1000)] == recent
        assert expired(metrics) == 150
        assert [line["entries"] for line in logs if line["event"] == "dead_letters_expired"] == [150]
    finally:
        await store.close()
