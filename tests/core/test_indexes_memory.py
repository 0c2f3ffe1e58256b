"""IndexedEntries stays within its bytes whatever an entry holds: call ids up to 512 characters,
assistant names and phone numbers up to 1,024 (what intake accepts). It keeps a small basis per
call, sized by its strings, and shapes with long assistant names are not cached."""

import gc
import tracemalloc

from call_ledger.core.indexes import IndexEntry
from call_ledger.worker.apply import IndexedEntries


def test_the_index_cache_stays_within_its_bytes() -> None:
    budget = 1_200 * 500
    cache = IndexedEntries(budget)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2_000):
        entry = IndexEntry(call_sid=f"CA{i:06d}" + "s" * 500, record_id=i + 1, list_us=1_795_996_800_000_000,
                           organization_id=7, assistant_id=3, assistant_name=f"{i}" + "n" * 1_000,
                           status="completed", duration=60, total_cost=10**9,
                           to_phone_number=f"+1{i:010d}" + "1" * 1_000,
                           customer_phone_number=f"+2{i:010d}" + "2" * 1_000)
        entry.encode()  # as Consumer._index_writes does (makes its shape's encoding template)
        cache.remember(entry.call_sid, 1, entry)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert cache.bytes <= budget
    assert held <= 2 * budget, f"IndexedEntries of {budget:,} B holds {held:,} B ({len(cache)} entries)"
