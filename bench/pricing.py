"""What usage pricing costs per event in the apply loop (SPEC §11).

    python bench/pricing.py

Prices a 2-line usage event (input and output tokens) against a table of ~100 entries
(9 providers x 5 models x 2 usage types, a fifth of them with a later dated entry) with
`price_event`, and compares `plan_call` on that event with `plan_call` on an event that
reports the same cost (the price lookup, the exact arithmetic and the re-serialised
journal entry are the difference). Pure CPU, no Redis: prints microseconds per event.
"""

import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from call_ledger.core.events import CallEvent, Cost, UsageLine
from call_ledger.core.instants import parse_iso
from call_ledger.core.pricing import parse_document, price_event
from call_ledger.settings import Settings
from call_ledger.store import Entry, LoadedCall
from call_ledger.worker.apply import plan_call

ROUNDS, NUMBER = 7, 5_000


def table_doc() -> dict[str, object]:
    prices = []
    for p in range(9):
        for m in range(5):
            for kind, price in (("input_tokens", "0.15"), ("output_tokens", "0.6")):
                prices.append({"component": "llm", "provider": f"provider{p}", "model": f"model{m}",
                               "usage_type": kind, "unit_price": price, "unit_quantity": 1_000_000,
                               "effective_from": "2026-01-01T00:00:00Z"})
                if (p + m) % 5 == 0:
                    prices.append({**prices[-1], "unit_price": "0.12", "effective_from": "2026-12-01T00:00:00Z"})
    return {"prices": prices}


def best_us(fn: object) -> tuple[float, float]:
    times = [t / NUMBER * 1e6 for t in timeit.repeat(fn, number=NUMBER, repeat=ROUNDS)]  # type: ignore[arg-type]
    return min(times), statistics.median(times)


def main() -> None:
    table = parse_document(table_doc(), "USD", set())
    settings = Settings(pricing_file=table, consumer_name="bench")
    at = parse_iso("2026-11-24T10:00:00Z")
    common = {"source": "platform", "call_sid": "CA1", "type": "call.usage", "occurred_at": at.text,
              "occurred_us": at.us}
    usage = CallEvent(event_id="u1", **common, usage=tuple(
        UsageLine(component="llm", provider="provider7", model="model3", usage_type=kind, usage_amount=amount)
        for kind, amount in (("input_tokens", "8200"), ("output_tokens", "130"))))
    costed = CallEvent(event_id="c1", **common, costs=price_event(usage, table).costs)
    plain = CallEvent(event_id="p1", **common, costs=(Cost(component="llm", amount_nano=1_308_000,
                                                           currency="USD"),))
    loaded = LoadedCall(0, None, None, frozenset())

    def plan(event: CallEvent) -> object:
        raw = event.model_dump_json().encode()
        return lambda: plan_call(loaded, [(Entry("1-0", raw), event)], settings)

    print(f"table: {len(table)} entries; event: 2 usage lines")
    for name, fn in (("price_event", lambda: price_event(usage, table)),
                     ("plan_call, usage-only event (priced)", plan(usage)),
                     ("plan_call, same costs reported with detail", plan(costed)),
                     ("plan_call, one plain reported cost", plan(plain))):
        best, median = best_us(fn)
        print(f"{name:45s} {best:7.1f} us/event (median {median:.1f})")


if __name__ == "__main__":
    main()
