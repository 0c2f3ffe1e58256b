"""The worker's per-event line written directly (call_ledger.web.logs.EventLines) is the line structlog writes."""

import io
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from call_ledger.web.logs import configure_logging, event_lines, flush_logs

SECRET = "whsec_event-lines-secret-value"
FIELDS = {"call_sid": "CA-lines", "source": "twilio", "event_id": "CA-lines:3", "entry_id": "1795500062000-0",
          "outcome": "refused", "reason": "over the bound"}
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the logging configured in the test writes (pytest resets sys.stdout after the fixtures
    are set up: `configure` patches it in the test's own body)."""
    text = io.StringIO()
    yield text
    structlog.contextvars.clear_contextvars()
    configure_logging("json", "info")  # the tick logger on pytest's stdout again


def configure(out: io.StringIO, log_format: str, level: str, secrets: list[str] | None = None) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        configure_logging(log_format, level, secrets=secrets or [])


def lines(text: io.StringIO) -> list[dict[str, Any]]:
    flush_logs()
    return [json.loads(line) for line in text.getvalue().splitlines()]


def test_the_direct_line_has_structlogs_keys_order_and_values(out: io.StringIO) -> None:
    configure(out, "json", "info", [SECRET])
    structlog.contextvars.bind_contextvars(request_id="req-7")
    structlog.get_logger("ledger.worker").info("event_not_applied", **FIELDS)
    writer = event_lines()
    assert writer is not None
    writer("event_not_applied", FIELDS)
    via_structlog, direct = lines(out)
    assert list(direct) == list(via_structlog) == [*FIELDS, "event", "request_id", "level", "timestamp"]
    assert {**direct, "timestamp": ""} == {**via_structlog, "timestamp": ""}
    assert STAMP.fullmatch(direct["timestamp"]) and STAMP.fullmatch(via_structlog["timestamp"])


def test_the_direct_line_is_redacted_like_any_other(out: io.StringIO) -> None:
    configure(out, "json", "info", [SECRET])
    writer = event_lines()
    assert writer is not None
    writer("event_applied", {**FIELDS, "event_id": f"x{SECRET}y", "reason": "Bearer abc.def"})
    (line,) = lines(out)
    assert SECRET not in out.getvalue() and "abc.def" not in out.getvalue()
    assert line["event_id"] == "x[redacted]y" and line["reason"] == "Bearer [redacted]"


def test_lines_go_through_structlog_when_it_is_not_our_json_chain(out: io.StringIO) -> None:
    configure(out, "json", "warning")
    assert event_lines() is None  # info lines are not written at all
    configure(out, "console", "info")
    assert event_lines() is None
    configure(out, "json", "info")
    assert event_lines() is not None
    with capture_logs() as captured:
        assert event_lines() is None  # a test capturing the lines sees every one
        structlog.get_logger("test").info("event_applied", **FIELDS)
    assert captured == [{**FIELDS, "event": "event_applied", "log_level": "info"}]
    assert event_lines() is not None  # the chain is back


def test_no_info_line_at_warning_level(out: io.StringIO) -> None:
    configure(out, "json", "warning")
    structlog.get_logger("test").info("event_applied", **FIELDS)
    assert lines(out) == []


def test_a_batch_of_lines_is_what_one_at_a_time_writes_with_one_instant(out: io.StringIO) -> None:
    configure(out, "json", "info", [SECRET])
    structlog.contextvars.bind_contextvars(request_id="req-8", outcome="from-the-context")
    writer = event_lines()
    assert writer is not None
    batch = [("event_applied", {**FIELDS, "outcome": "applied", "event_id": f"e{n}"}) for n in range(3)]
    for name, fields in batch:
        writer(name, fields)
    writer.many(batch)
    written = lines(out)
    one_by_one, together = written[:3], written[3:]
    assert [list(line) for line in together] == [list(line) for line in one_by_one]
    assert [{**line, "timestamp": ""} for line in together] == [{**line, "timestamp": ""} for line in one_by_one]
    assert together[0]["outcome"] == "applied"  # the line's own key wins over the context's
    assert len({line["timestamp"] for line in together}) == 1 and STAMP.fullmatch(together[0]["timestamp"])


def test_a_batch_with_a_secret_in_one_line_redacts_that_line_only(out: io.StringIO) -> None:
    configure(out, "json", "info", [SECRET])
    writer = event_lines()
    assert writer is not None
    writer.many([("event_applied", {**FIELDS, "event_id": "clean"}),
                 ("event_not_applied", {**FIELDS, "event_id": f"x{SECRET}y", "reason": "Bearer abc.def"}),
                 ("event_applied", {**FIELDS, "event_id": "also clean\u2028"})])
    first, second, third = lines(out)
    assert SECRET not in out.getvalue() and "abc.def" not in out.getvalue()
    assert first["event_id"] == "clean" and third["event_id"] == "also clean\u2028"
    assert second["event_id"] == "x[redacted]y" and second["reason"] == "Bearer [redacted]"
    assert len(out.getvalue().splitlines()) == 3  # U+2028 escaped: still three lines for any splitter
