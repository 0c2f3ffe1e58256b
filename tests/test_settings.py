"""The LEDGER_* environment as Settings reads it (call_ledger/settings.py): the outbound settings' parsing;
the others are tested where they are used."""

import pytest
from pydantic import ValidationError

from call_ledger.core.outbound import DEFAULT_RETRY_SCHEDULE
from call_ledger.settings import Settings


def test_the_retry_schedule_is_read_from_the_environment_as_comma_separated_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().outbound_retry_schedule == DEFAULT_RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    monkeypatch.setenv("LEDGER_OUTBOUND_RETRY_SCHEDULE", "1,2, 3")
    assert Settings().outbound_retry_schedule == (1, 2, 3)
    monkeypatch.setenv("LEDGER_OUTBOUND_RETRY_SCHEDULE", "")
    assert Settings().outbound_retry_schedule == ()  # one attempt, no retry


@pytest.mark.parametrize("schedule", ["5,soon", "-5", "604801", ",".join(["1"] * 21)])
def test_a_retry_schedule_out_of_bounds_stops_start_up_with_the_rule(schedule: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_OUTBOUND_RETRY_SCHEDULE", schedule)
    with pytest.raises(ValidationError, match="outbound_retry_schedule"):
        Settings()


def test_the_outbound_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert (settings.finalize_after_s, settings.outbound_timeout_s, settings.outbound_allow_private,
            settings.outbound_concurrency, settings.outbound_per_endpoint, settings.outbound_retention_days,
            settings.max_endpoints) == (120, 15.0, False, 64, 4, 7, 50)
