"""call_ledger/core/record_ids.py: record ids reveal nothing of other tenants' calls (SPEC §14), and stay
unique, below 2^53 and apart from the sequential ids of earlier versions."""

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from call_ledger.core.record_ids import OPAQUE_BASE, counter_of, opaque_id
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import make_event, record_ids

KEY = bytes(range(32))


@given(st.integers(min_value=0, max_value=OPAQUE_BASE - 1))
def test_an_id_is_a_permutation_of_the_counter_into_the_upper_half_below_2_53(counter: int) -> None:
    record_id = opaque_id(KEY, counter)
    assert OPAQUE_BASE <= record_id < 2**53
    assert counter_of(KEY, record_id) == counter


def test_consecutive_counters_give_ids_that_say_nothing_of_their_distance() -> None:
    ids = [opaque_id(KEY, counter) for counter in range(1, 1001)]
    assert len(set(ids)) == 1000
    gaps = {b - a for a, b in itertools.pairwise(ids)}
    assert len(gaps) == 999  # no regular step to read a count from
    assert sum(b > a for a, b in itertools.pairwise(ids)) not in (0, 999)  # not even monotonic


def test_another_store_key_gives_other_ids() -> None:
    assert [opaque_id(KEY, c) for c in range(1, 50)] != [opaque_id(b"another key", c) for c in range(1, 50)]


async def test_a_tenant_cannot_count_the_calls_made_between_two_of_its_own(store: Store) -> None:
    consumer = Consumer(store, make_settings(), Metrics())
    mine, theirs = ["CA-mine-1", "CA-mine-2"], [f"CA-theirs-{i}" for i in range(7)]
    for sid in [mine[0], *theirs, mine[1]]:  # applied one batch at a time, as they happen
        await store.append(make_event(sid, f"{sid}-e", 0, status="ringing",
                                      organization_id=1 if sid in mine else 2).model_dump_json().encode())
        await consumer.run_burst()
    ids = await record_ids(store, [*mine, *theirs])
    assert len(set(ids.values())) == 9 and all(OPAQUE_BASE <= i < 2**53 for i in ids.values())
    first, second = ids[mine[0]], ids[mine[1]]
    assert abs(second - first) != 8  # the 7 calls between them do not show as a distance
    key: Any = await store.redis.get(store.ids_key)
    assert counter_of(key, second) - counter_of(key, first) == 8  # ... which only the store's key reveals
