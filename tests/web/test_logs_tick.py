"""Log lines are written once per event-loop turn (call_ledger.web.logs.TickLogger), in order, none lost."""

import asyncio
import io

import pytest

from call_ledger.web.logs import TickLogger


class CountingFile(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_the_lines_of_one_turn_are_one_write_in_order() -> None:
    out = CountingFile()
    logger = TickLogger(out)
    for n in range(50):
        logger.msg(f"line {n}")
    assert out.getvalue() == ""  # waiting for the loop's next turn
    await asyncio.sleep(0)
    assert out.getvalue().splitlines() == [f"line {n}" for n in range(50)] and out.writes == 1
    logger.msg("later")
    logger.flush()  # what the worker does before an XACK
    assert out.getvalue().endswith("later\n") and out.writes == 2


def test_outside_a_loop_and_past_the_bound_lines_are_written_at_once() -> None:
    out = CountingFile()
    logger = TickLogger(out)
    logger.msg("no loop")
    assert out.getvalue() == "no loop\n"

    async def many() -> None:
        for n in range(TickLogger.MAX_LINES):
            logger.msg(str(n))
        assert len(out.getvalue().splitlines()) == 1 + TickLogger.MAX_LINES  # flushed at the bound

    asyncio.run(many())


def test_a_closed_output_loses_the_lines_not_the_process() -> None:
    out = io.StringIO()
    logger = TickLogger(out)
    out.close()
    logger.msg("nowhere to go")  # no exception


@pytest.mark.parametrize("ns", [1_795_500_000_000_000_000, 1_795_500_000_000_001_000, 1_795_500_059_999_999_999,
                                1_795_500_001_250_000_000])
def test_the_timestamp_is_structlogs_iso_utc_text(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """Formatted once per second, but the same text structlog's TimeStamper(fmt="iso", utc=True) writes."""
    from datetime import UTC, datetime

    from call_ledger.web import logs

    stamper = logs.UtcStamper()
    monkeypatch.setattr(logs.time, "time_ns", lambda: ns)
    expected = datetime.fromtimestamp(ns // 1000 / 1_000_000, UTC)
    expected = expected.replace(microsecond=(ns // 1000) % 1_000_000)
    assert stamper(None, "info", {})["timestamp"] == expected.isoformat().replace("+00:00", "Z")
