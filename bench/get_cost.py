"""A GET by SID's CPU with and without the stored rendered record `j` (issue 22: does the copy pay for itself?).

Applies the bench's events (bench/run.py: call_events(2000, 10), seed 7) with the product's worker twice, on a
store in layout 3 and on one in layout 4, reads every call's hash (HGETALL, as `Records.call_fields` does), then
times, per call, what the GET route does with it (call_ledger/core/served.py `StoredCall.served`):

  stored   layout 3: the hash has a current `j`: its bytes, with the call's call_meta put in place of its `{}`
  render   layout 4: no `j`; the record is rendered from the plain fields (call_ledger/core/plain.py)

Best of --repeat passes over the 2000 calls, µs per GET (the HTTP and Redis round trip are the same in
both and left out). Also the hash's size (bytes of HGETALL reply fields) in each layout, and an export row's
CPU in the API (CSV and JSON, api/export.py) from each.

    .venv/bin/python bench/get_cost.py [--repeat 9]
"""

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
import redis as redis_py  # noqa: E402
import run  # noqa: E402

from call_ledger.core.served import RECORD_FIELD, StoredCall  # noqa: E402
from call_ledger.settings import Settings  # noqa: E402


def best_us(calls: list[StoredCall], settings: Settings, repeat: int) -> tuple[float, int]:
    policy = settings.policy
    best, size = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = sum(len(call.served(policy)) for call in calls)
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / len(calls), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    random.seed(7)
    events = run.call_events(2000, 10)
    sids = sorted({orjson_sid(raw) for raw in events})
    hashes: dict[str, list[dict[bytes, bytes]]] = {}
    for layout in ("3", "4"):
        server = run.RedisServer()
        try:
            server.flush()
            asyncio.run(run.product_apply(server.url, events, 500, layout=layout))
            client = redis_py.Redis.from_url(server.url)
            hashes[layout] = [client.hgetall(f"bench:call:{{{sid}}}") for sid in sids]
            client.close()
        finally:
            server.stop()
    assert all(h.get(RECORD_FIELD) for h in hashes["3"]), "expected every call of layout 3 with a stored `j`"
    assert not any(h.get(RECORD_FIELD) or h.get(b"s") for h in hashes["4"]), "expected layout 4's plain fields"
    settings = Settings(redis_url="redis://127.0.0.1:1", key_prefix="bench", consumer_name="bench")
    stored = [StoredCall(sid, h) for sid, h in zip(sids, hashes["3"], strict=True)]
    bare = [StoredCall(sid, h) for sid, h in zip(sids, hashes["4"], strict=True)]
    same = all(without_id(a.served(settings.policy)) == without_id(b.served(settings.policy))
               for a, b in zip(stored, bare, strict=True))  # record ids are each store's own
    size = {layout: sum(len(k) + len(v) for h in found for k, v in h.items()) / len(found)
            for layout, found in hashes.items()}
    for _ in range(2):  # alternate, twice
        s_us, s_size = best_us(stored, settings, args.repeat)
        r_us, r_size = best_us(bare, settings, args.repeat)
        print(f"GET CPU per call, best of {args.repeat}: stored j {s_us:.2f} µs, render {r_us:.2f} µs "
              f"(bodies {s_size / len(stored):.0f} / {r_size / len(bare):.0f} B, identical: {same})")
    print(f"hash (HGETALL fields) {size['3']:.0f} B in layout 3, {size['4']:.0f} B in layout 4")
    # What an export row costs the API (api/export.py: the CSV and JSON rows of a batch), without Redis.
    from call_ledger.api.export import csv_rows_of_calls, json_rows
    for name, rows in (("csv", csv_rows_of_calls), ("json", json_rows)):
        timed = []
        for calls in (stored, bare, stored, bare):
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                rows(calls, settings.policy)
                best = min(best, time.perf_counter() - started)
            timed.append(1e6 * best / len(calls))
        print(f"export {name} row, best of {args.repeat}: layout 3 {timed[0]:.1f} / {timed[2]:.1f} µs, "
              f"layout 4 {timed[1]:.1f} / {timed[3]:.1f} µs")


def without_id(body: bytes) -> bytes:
    record = orjson.loads(body)
    del record["id"]
    return orjson.dumps(record)


def orjson_sid(raw: bytes) -> str:
    return str(orjson.loads(raw)["call_sid"])


if __name__ == "__main__":
    main()
