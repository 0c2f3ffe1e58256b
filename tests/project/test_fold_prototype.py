"""The server-side fold prototype (bench/prototypes/fold_server.py, issue 22's design a) folds like the
ledger's rules: on a real Redis, any order, 10% redeliveries, every call's state, time-index score,
event count and day rollups equal the reference fold of core.rules (its --check-only, smaller).

The prototype is measurement code, not the product; this keeps the numbers it was chosen by honest."""

import random

import pytest

from bench import run
from bench.prototypes import fold_server
from call_ledger.settings import Settings
from tests.support.redis_server import RedisServer


@pytest.mark.parametrize(("journal", "per_call"), [("compact", False), ("off", True)])
async def test_the_prototype_fold_equals_the_reference_rules(redis_server: RedisServer, journal: str,
                                                             per_call: bool) -> None:
    random.seed(11)
    events = run.call_events(150, 10)
    await run.fill_stream(redis_server.url, events)
    policy = Settings().policy
    counts = await fold_server.drain(redis_server.url, policy, journal, per_call, batch=97)
    assert counts["applied"] == 1_500 and counts["invalid"] == 0
    assert counts["skipped"] + counts["duplicates_in_batch"] == len(events) - 1_500
    result = fold_server.check(redis_server.url, events, policy)
    assert result == {"calls": 150, "mismatches": {}}
