"""What the worker's maintenance drops for age besides the stream's entries: dead letters
(SPEC §14, LEDGER_DLQ_RETENTION_DAYS), counted in a metric and logged in one line."""

import structlog

from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics

log = structlog.get_logger("ledger.worker")


async def expire_dead_letters(store: Store, settings: Settings, metrics: Metrics) -> int:
    """Drop the dead letters older than the retention; how many were dropped."""
    dropped = await store.trim_dead(settings.dlq_retention_days)
    if dropped:
        metrics.dead_letters_expired.inc(dropped)
        log.info("dead_letters_expired", entries=dropped, retention_days=settings.dlq_retention_days)
    return dropped
