"""Process-wide tuning of the long-running roles (serve, worker, api, intake)."""

import gc

# Collect reference cycles after 50,000 net allocations instead of 700. The apply loop makes and
# drops tens of objects per event while its caches keep hundreds of thousands alive, and each
# young collection walked them: the default thresholds were a quarter of the worker's CPU on
# bench/run.py's apply workload (124 -> 89 µs per event). The loop's garbage is nearly all freed
# by reference counts; the few cycles (asyncio's) wait a little longer.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, schemas: never garbage, and no longer walked by
    each collection) and collect cycles less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
