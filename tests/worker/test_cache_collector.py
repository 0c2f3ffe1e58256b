"""The worker's caches keep calls as bytes (worker/apply.py BytesLRU): exact, bounded, and out of
the garbage collector's sight, so that a full collection does not stop a worker holding 100,000
calls (SPEC §13: no collector pauses on the hot path)."""

import gc

from hypothesis import given, settings

from call_ledger.core.indexes import IndexBasis, index_entry
from call_ledger.core.rules import CallState, render_record
from call_ledger.worker.apply import IndexedEntries, KnownCalls
from tests.support.archive_records import POLICY, calls


@settings(max_examples=150, deadline=None)
@given(calls())
def test_a_cached_call_comes_back_equal_to_the_one_remembered(call: tuple[str, int, CallState]) -> None:
    sid, record_id, state = call
    state.changed.clear()
    cache = KnownCalls()
    cache.remember(sid, 4, record_id, state, frozenset({"m:x"}), ("platform:e1",), "tok")
    found = cache.get(sid, ["m:x"])
    assert found is not None and found.state == state and found.state.estimate == state.estimate
    assert (found.version, found.record_id, found.token, found.applied) == (4, record_id, "tok", {"platform:e1"})
    assert render_record(sid, record_id, found.state, POLICY) == render_record(sid, record_id, state, POLICY)


@settings(max_examples=50, deadline=None)
@given(calls())
def test_an_index_basis_comes_back_equal(call: tuple[str, int, CallState]) -> None:
    sid, record_id, state = call
    entry = index_entry(sid, record_id, state, POLICY)
    cache = IndexedEntries(1 << 20)
    cache.remember(sid, 9, entry)
    found = cache.get(sid)
    assert found is not None and found[0] == 9
    basis, original = found[1], IndexBasis(entry)
    assert (basis.list_us, basis.record_id, basis.shape_key, basis.amounts) == (
        original.list_us, original.record_id, original.shape_key, original.amounts)
    assert basis.memberships() == original.memberships() and basis.increments() == original.increments()


def test_the_collector_tracks_nothing_of_what_the_caches_hold() -> None:
    known, indexed = KnownCalls(1 << 30), IndexedEntries(1 << 30)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2_000):
        state = CallState(status=[7, n, f"e{n}", "2026-01-01T00:00:00Z"], costs={"llm": n},
                          registers={"assistant_name": [n, f"e{n}", "platform", "Bot"]},
                          meta={"tags": [n, f"e{n}", "platform", ["a", {"b": n}]]})
        known.remember(f"CA{n}", 2, n + 1, state, frozenset({"m:tags"}), (f"platform:e{n}",), "t")
        indexed.remember(f"CA{n}", 2, index_entry(f"CA{n}", n + 1, state, POLICY))
    del state
    gc.collect()
    assert len(known) == len(indexed) == 2_000
    assert not gc.is_tracked(known._items) and not gc.is_tracked(indexed._items)
    assert len(gc.get_objects()) - before < 50  # not 2,000 calls' worth of lists, dicts and tuples


def test_the_caches_count_the_bytes_of_non_ascii_call_sids() -> None:
    """A call SID of 510 emoji (what intake accepts) takes 2 KB as a str, not 510 bytes: the caches
    count what they really hold, whatever the SIDs are made of."""
    import tracemalloc

    budget = 2_000_000
    known, indexed = KnownCalls(budget), IndexedEntries(budget)
    state = CallState(status=[7, 1, "e", "2026-01-01T00:00:00Z"])
    entry = index_entry("CA-x", 1, state, POLICY)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(8_000):
        sid = f"CA{n:08d}" + "\U0001F600" * 500
        known.remember(sid, 1, n + 1, state, frozenset(), (), "")
        indexed.remember(sid, 1, entry)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert known.bytes <= budget and indexed.bytes <= budget
    assert held <= known.bytes + indexed.bytes, (held, known.bytes, indexed.bytes)


def test_parts_carry_every_field_of_the_state_but_changed() -> None:
    """A field added to CallState must be added to parts()/of_parts() too, or a cached call would
    come back without it."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(CallState) if f.name != "changed"]
    state = CallState(**{name: f"value of {name}" for name in names})  # type: ignore[arg-type]
    assert len(state.parts()) == len(names)
    assert all(getattr(CallState.of_parts(state.parts()), name) == f"value of {name}" for name in names)
