"""The real `call-ledger` process: JSON logs on stdout, no secrets in them, SIGTERM → exit 0."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.core.events import CallEvent
from tests.conftest import API_TOKEN, PLATFORM_SECRET, RedisServer, free_port, sign_platform


def start_service(role: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start `call-ledger <role>` with stdout and stderr going to files, never to pipes.

    A pipe that nobody reads fills after some 64 KiB of log lines (one per event) and then
    blocks the service mid-write: the test would wait for a process that is stuck on us.
    """
    port = int(env["LEDGER_PORT"]) if "LEDGER_PORT" in env else free_port()
    environment = {**os.environ, "LEDGER_PORT": str(port), "LEDGER_API_TOKENS": API_TOKEN,
                   "LEDGER_PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET, "LEDGER_LOG_FORMAT": "auto", **env}
    environment.pop("LEDGER_REDIS_URL", None) if "LEDGER_REDIS_URL" not in env else None
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "call_ledger.cli", role], env=environment, stdout=out, stderr=err)
    _OUTPUTS[proc.pid] = (out, err)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"{role} did not start: {_read(_OUTPUTS.pop(proc.pid)[1])}")


_OUTPUTS: dict[int, tuple[Any, Any]] = {}


def _read(file: Any) -> str:
    file.seek(0)
    text = file.read().decode()
    file.close()
    return str(text)


def post(port: int, payload: dict[str, Any], webhook_id: str) -> int:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/platform", data=body,
                                     headers=sign_platform(body, webhook_id), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def get_record(port: int, sid: str) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/calls/sid/{sid}",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    took = time.monotonic() - started
    out, err = _OUTPUTS.pop(proc.pid)
    _read(err)
    return proc.returncode, _read(out), took


def test_serve_logs_json_lines_without_secrets_and_exits_zero_on_sigterm() -> None:
    proc, port = start_service("serve")
    try:
        assert post(port, {"type": "call.status", "call_sid": "CA-proc", "data": {"status": "ongoing"}}, "m1") == 200
        deadline = time.monotonic() + 10
        while get_record(port, "CA-proc") is None and time.monotonic() < deadline:
            time.sleep(0.05)
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
    proc, _port = start_service("worker", LEDGER_REDIS_URL=redis_server.url, LEDGER_BATCH_SIZE="100",
                                LEDGER_CONSUMER_NAME="sigterm-test")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        groups = client.xinfo_groups("cl:events")
        if groups and int(groups[0]["entries-read"] or 0) > 0:
            break
        time.sleep(0.02)
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
    from tests.conftest import post_platform

    for _ in range(2):
        await post_platform(client, {"type": "call.status", "call_sid": "CA-log", "data": {"status": "ringing"}}, "m")
    with capture_logs() as logs:
        await consumer.run_burst()
    lines = [(log["event"], log["call_sid"], log["source"], log["event_id"], log["outcome"]) for log in logs]
    assert lines == [("event_applied", "CA-log", "platform", "m", "applied"),
                     ("event_applied", "CA-log", "platform", "m", "duplicate")]
