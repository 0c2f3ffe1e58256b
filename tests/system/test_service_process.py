"""The real `call-ledger` process: JSON logs on stdout, no secrets in them, SIGTERM → exit 0."""

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.core.events import CallEvent
from tests.support.polling import until_sync
from tests.support.redis_server import RedisServer
from tests.support.service import start_service, stop
from tests.support.settings import API_TOKEN, PLATFORM_SECRET
from tests.support.sync_http import get_record, post


def test_serve_logs_json_lines_without_secrets_and_exits_zero_on_sigterm() -> None:
    proc = start_service("serve")
    port = proc.port
    try:
        assert post(port, {"type": "call.status", "call_sid": "CA-proc", "data": {"status": "ongoing"}}, "m1") == 200
        until_sync(lambda: get_record(port, "CA-proc") is not None, 10, "the record of CA-proc")
        assert get_record(port, "CA-proc") is not None
    finally:
        code, out, took = stop(proc)
    assert code == 0
    assert took < 10
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line is JSON
    events = {line["event"] for line in lines}
    assert {"service_starting", "embedded_store", "webhook_received", "event_applied", "worker_stopped"} <= events
    applied = next(line for line in lines if line["event"] == "event_applied")
    assert (applied["call_sid"], applied["source"], applied["event_id"], applied["outcome"]) == (
        "CA-proc", "platform", "m1", "applied")
    for secret in (PLATFORM_SECRET, PLATFORM_SECRET.removeprefix("whsec_"), API_TOKEN):
        assert secret not in out


def test_invalid_configuration_stops_start_up_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "call_ledger.cli", "serve"], capture_output=True, text=True,
                            env={**os.environ, "LEDGER_FX_RATES": "EUR:1.08"}, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "call-ledger: invalid LEDGER_FX_RATES: 'EUR:1.08': expected CODE=RATE, e.g. EUR=1.08"]
    assert "Traceback" not in result.stderr


def test_secret_values_never_appear_in_configuration_errors() -> None:
    result = subprocess.run([sys.executable, "-m", "call_ledger.cli", "serve"], capture_output=True, text=True,
                            env={**os.environ, "LEDGER_PLATFORM_WEBHOOK_SECRET": "not-a-whsec-super-secret"},
                            timeout=30)
    assert result.returncode == 2
    assert "LEDGER_PLATFORM_WEBHOOK_SECRET" in result.stderr
    assert "not-a-whsec-super-secret" not in result.stderr


@pytest.mark.real_redis
def test_worker_under_load_exits_zero_on_sigterm_and_leaves_nothing_lost(redis_server: RedisServer) -> None:
    """SIGTERM mid-stream: what the worker acknowledged is applied, the rest is still pending or unread."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    events = [CallEvent(source="platform", event_id=f"e{i}", call_sid=f"CA{i % 50}", type="call.status",
                        occurred_at="2026-11-24T10:00:00Z", occurred_us=1_795_514_400_000_000, status="ringing")
              for i in range(20_000)]
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd("cl:events", {"e": event.model_dump_json()})
    pipe.execute()
    proc = start_service("worker", LEDGER_REDIS_URL=redis_server.url, LEDGER_BATCH_SIZE="100",
                                LEDGER_CONSUMER_NAME="sigterm-test")

    def reading() -> bool:
        groups = client.xinfo_groups("cl:events")
        return bool(groups) and int(groups[0]["entries-read"] or 0) > 0

    until_sync(reading, 20, "the worker to read its first batch", interval=0.02)
    code, out, took = stop(proc)
    assert code == 0 and took < 10
    applied = sum(1 for line in out.splitlines() if '"outcome":"applied"' in line)
    group = client.xinfo_groups("cl:events")[0]
    acked = int(group["entries-read"]) - int(group["pending"])
    # Every acknowledged event was applied. A batch cut short by the grace period may have been
    # applied without its ack: it stays pending, and its redelivery will be a duplicate.
    assert acked <= applied <= acked + int(group["pending"])
    stored = sum(client.hlen(f"cl:journal:{{CA{c}}}") for c in range(50))
    assert stored == applied
    assert acked + int(group["pending"]) + int(group["lag"]) == len(events)  # nothing lost


async def test_applied_events_are_logged_with_their_outcome(client: Any, consumer: Any) -> None:
    from tests.support.signing import post_platform

    for _ in range(2):
        await post_platform(client, {"type": "call.status", "call_sid": "CA-log", "data": {"status": "ringing"}}, "m")
    with capture_logs() as logs:
        await consumer.run_burst()
    lines = [(log["event"], log["call_sid"], log["source"], log["event_id"], log["outcome"]) for log in logs]
    assert lines == [("event_applied", "CA-log", "platform", "m", "applied"),
                     ("event_applied", "CA-log", "platform", "m", "duplicate")]
