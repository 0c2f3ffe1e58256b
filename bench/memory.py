"""Redis bytes per completed ~10-event call, by key, with the journal on and off.

    python bench/memory.py            # 2,000 calls of 10 events each
    python bench/memory.py --calls 500

The layout a fresh store starts in (5: short members, plain fields, index entries as their payload
alone), and layouts 4 and 2 beside it. Applies realistic calls (statuses, metadata with call_meta,
usage costs, 10% redeliveries) through the product's own worker on a fresh redis-server (default encodings), then sums
`MEMORY USAGE` of every key of each call and of every index key, and divides by the calls.
The stream is not counted: it is retention, not the call's cost. Measured on Redis's
default encodings, and again with hashes kept as listpacks up to 1 KiB values
(`hash-max-listpack-value 1024`: most record fields are over the default 64 bytes, so the
record hash is a hashtable otherwise; the journal's compact entries fit, call_ledger/core/journal.py).
"""

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import DEVNULL, RedisServer, call_events, fill_stream  # noqa: E402


async def per_call(url: str, calls: int, journal: str, layout: str = "") -> dict[str, float]:
    from call_ledger.settings import Settings
    from call_ledger.store import Store, open_redis
    from call_ledger.web.logs import configure_logging
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.consumer import Consumer
    from call_ledger.worker.delivery import EndpointCache, FanOut

    random.seed(7)
    events = call_events(calls, 10)
    await fill_stream(url, events)
    sys.stdout = DEVNULL
    configure_logging("json", "info")
    try:
        settings = Settings(redis_url=url, key_prefix="bench", batch_size=500, consumer_name="memory",
                            journal=journal)  # type: ignore[arg-type]
        client: Any = open_redis(settings)
        store = Store(client, "bench")
        if layout:  # a store an earlier version started (a fresh one starts in the newest layout)
            await client.set(store.keys.layout, layout)
        await store.check_layout()
        await Consumer(store, settings, Metrics()).run_burst()
    finally:
        sys.stdout = sys.__stdout__
    out = await call_bytes(client, store, calls)
    # Settled: the fan-out has handed each call's `call.ended` to the endpoints' queues (there are none
    # here) and emptied its outbox, as a running service does within moments of the commit.
    fan_out = FanOut(store.outbox, store.deliveries, EndpointCache(store.endpoints), settings.policy)
    while await fan_out.run_once(int(time.time() * 1000)):
        pass
    out["settled"] = (await call_bytes(client, store, calls))["total"]
    await client.aclose()
    return out


async def call_bytes(client: Any, store: Any, calls: int) -> dict[str, float]:
    """MEMORY USAGE of each call's keys and of the indexes, per call."""
    totals = {"record": 0, "journal": 0, "order": 0, "outbox": 0}  # call_keys' order; the outbox: SPEC §15
    for c in range(calls):
        pipe = client.pipeline(transaction=False)
        for key in store.call_keys(f"CA{c:032x}"):
            pipe.memory_usage(key, samples=0)
        for name, used in zip(totals, await pipe.execute(), strict=True):
            totals[name] += int(used or 0)
    index = 0
    async for key in client.scan_iter(match="bench:ix:*", count=1000):
        index += int(await client.memory_usage(key, samples=0) or 0)
    out = {name: total / calls for name, total in totals.items()}
    out["indexes"] = index / calls
    out["total"] = sum(out.values())
    return out


LISTPACK = ("hash-max-listpack-value", "1024")


def measure(calls: int) -> dict[str, dict[str, float]]:
    """{"on" | "off" | "on, listpack" | "off, listpack" | "on, layout 4" | ... | "off, layout 2": bytes per
    call by key}; the newest layout (a fresh store's) unless named."""
    results = {}
    for layout in ("2", "4"):
        for journal in ("on", "off"):
            redis = RedisServer()
            try:
                results[f"{journal}, layout {layout}"] = asyncio.run(per_call(redis.url, calls, journal, layout))
            finally:
                redis.stop()
    for config in ((), LISTPACK):
        for journal in ("on", "off"):
            redis = RedisServer()
            try:
                if config:
                    subprocess.run(["redis-cli", "-p", str(redis.port), "CONFIG", "SET", *config], check=True,
                                   stdout=subprocess.DEVNULL)
                name = journal + (", listpack" if config else "")
                results[name] = asyncio.run(per_call(redis.url, calls, journal))
            finally:
                redis.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    for journal, row in measure(args.calls).items():
        print(f"journal {journal}: {row['total']:,.0f} B per call = record {row['record']:,.0f} + journal "
              f"{row['journal']:,.0f} + order {row['order']:,.0f} + outbox {row['outbox']:,.0f} "
              f"+ indexes {row['indexes']:,.0f}; {row['settled']:,.0f} B once the outbox is fanned out")


if __name__ == "__main__":
    main()
