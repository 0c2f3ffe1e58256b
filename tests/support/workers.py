"""Helpers for the real-Redis tests: building events, folding them as one process would,
and a consumer process that dies holding its entries.

Run as a script, it is the doomed consumer:

    python tests/support/workers.py doomed <redis url> <count>

joins the group as consumer "doomed", reads up to <count> entries with XREADGROUP
(Store.read_new), prints how many, then blocks forever without acknowledging them,
until the test SIGKILLs it.
"""

import asyncio
import random
import sys
from collections.abc import Iterable
from typing import Any

from call_ledger.core.events import COMPONENTS, TERMINAL_STATUSES, CallEvent, Cost
from call_ledger.core.instants import format_us, parse_iso
from call_ledger.core.money import convert
from call_ledger.core.record_ids import opaque_id
from call_ledger.core.rules import CallState, apply_event, render_record
from call_ledger.settings import Settings
from call_ledger.store import Store

BASE = parse_iso("2026-11-24T10:00:00Z")


def make_event(sid: str, event_id: str, offset_us: int, **fields: Any) -> CallEvent:
    """A platform event `offset_us` after 2026-11-24T10:00:00Z."""
    us = BASE.us + offset_us
    kind = "call.status" if "status" in fields else "call.usage" if "costs" in fields else "call.metadata"
    return CallEvent(source="platform", event_id=event_id, call_sid=sid, type=kind,
                     occurred_at=format_us(us), occurred_us=us, **fields)


def platform_event(sid: str, event_id: str, us: int, **fields: Any) -> CallEvent:
    """A platform event at `us` (microseconds since the epoch), typed by what it carries."""
    kind = "call.status" if "status" in fields else "call.usage" if "costs" in fields else "call.metadata"
    return CallEvent(source="platform", event_id=event_id, call_sid=sid, type=kind, occurred_at=format_us(us),
                     occurred_us=us, **fields)


def usage(sid: str, event_id: str, offset_us: int, component: str, amount_nano: int,
          currency: str = "USD") -> CallEvent:
    return make_event(sid, event_id, offset_us,
                      costs=(Cost(component=component, amount_nano=amount_nano, currency=currency),))


def call_events(sid: str, rng: random.Random, usages: int) -> list[CallEvent]:
    """One call's events: statuses (sometimes two different endings), metadata that
    overwrites itself (with occurred_at ties), call_meta, and `usages` USD costs."""
    n = 0

    def eid() -> str:
        nonlocal n
        n += 1
        return f"{sid}-e{n:04d}"

    s = 1_000_000
    events = [
        make_event(sid, eid(), 0, status="ringing"),
        make_event(sid, eid(), 2 * s + rng.randrange(1000), status="ongoing"),
        make_event(sid, eid(), 5 * s, status="ongoing"),
    ]
    ending = rng.choice(["completed", "failed", "busy", "no-answer"])
    end_us = rng.randrange(60, 600) * s + rng.randrange(1_000_000)
    events.append(make_event(sid, eid(), end_us, status=ending,
                             duration=rng.randrange(30, 60) if ending == "completed" else None))
    if rng.random() < 0.5:  # a second, different ending: the ranking decides, not the order
        other = rng.choice(["canceled", "failed", "completed"])
        events.append(make_event(sid, eid(), end_us + s, status=other))
    for i in range(4):
        at = 10 * s if i >= 2 else (3 + i) * s  # two events tie on occurred_at: the larger id wins
        events.append(make_event(sid, eid(), at, assistant_id=100 + i, assistant_name=f"Bot {i}",
                                 flow_name=f"flow-{i}", direction=rng.choice(["inbound", "outbound"]),
                                 to_phone_number=f"+1555000{i:04d}", call_meta={"k": i, f"only{i}": True}))
    for _ in range(usages):
        component = rng.choice(["llm", "tts", "stt", "telephony"])
        amount = rng.choice([100_000_000, 200_000_000, rng.randrange(1, 5 * 10**9)])
        events.append(usage(sid, eid(), rng.randrange(600 * s), component, amount))
    return events


def with_duplicates(events: Iterable[CallEvent], rng: random.Random, share: float = 0.15) -> list[bytes]:
    """Each event's JSON once, some twice or three times (redeliveries), shuffled."""
    payloads = []
    for event in events:
        raw = event.model_dump_json().encode()
        copies = 1 + (rng.random() < share) + (rng.random() < share / 3)
        payloads += [raw] * copies
    rng.shuffle(payloads)
    return payloads


def fold(events: Iterable[CallEvent], settings: Settings) -> dict[str, CallState]:
    """What one process applying each event id once, in order, makes of the events."""
    states: dict[str, CallState] = {}
    seen: set[tuple[str, str]] = set()
    for event in events:
        if (event.call_sid, event.key) in seen:
            continue
        seen.add((event.call_sid, event.key))
        apply_event(states.setdefault(event.call_sid, CallState()), event, settings.policy)
    return states


def expected_status(events: Iterable[CallEvent]) -> str:
    """SPEC §5 directly: never backwards; completed > failed > busy > no-answer > canceled."""
    statuses = {e.status for e in events if e.status is not None}
    if not statuses:
        return "initiated"
    terminal = statuses & TERMINAL_STATUSES
    if terminal:
        for status in ("completed", "failed", "busy", "no-answer", "canceled"):
            if status in terminal:
                return status
    return max(statuses, key=("initiated", "ringing", "ongoing").index)


def cost_sums(events: Iterable[CallEvent], settings: Settings | None = None) -> dict[str, int]:
    """SPEC §5 directly: per component, each event id once; a cost in another currency times
    its rate, rounded half-even per charge (only with `settings`)."""
    sums: dict[str, int] = {}
    seen: set[str] = set()
    for event in events:
        if event.key in seen:
            continue
        seen.add(event.key)
        for cost in event.costs:
            amount = cost.amount_nano
            if settings is not None and cost.currency != settings.currency:
                amount = convert(amount, settings.fx_rates[cost.currency])
            sums[cost.component] = sums.get(cost.component, 0) + amount
    return sums


def by_call(events: Iterable[CallEvent]) -> dict[str, list[CallEvent]]:
    calls: dict[str, list[CallEvent]] = {}
    for event in events:
        calls.setdefault(event.call_sid, []).append(event)
    return calls


class FailingRead:
    """A store's `calls_fields` (an export's batch read) that fails on its `nth` call: a Redis
    lost in the middle of an export. `calls` counts them; set it to 0 to start again."""

    def __init__(self, store: Store, error: Exception, nth: int = 2) -> None:
        self.real, self.error, self.nth, self.calls = store.calls_fields, error, nth, 0

    async def __call__(self, sids: list[str]) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise self.error
        return await self.real(sids)


async def nth_record_id(store: Store, n: int = 1) -> int:
    """The record id the store's n-th allocation gave (ids are opaque: call_ledger.core.record_ids)."""
    key = await store.redis.get(store.ids_key)
    assert key is not None, "no id was allocated yet"
    return opaque_id(key, n)


async def record_ids(store: Store, sids: list[str]) -> dict[str, int]:
    """Each call's record id; every call must have a record."""
    ids = {}
    for sid in sids:
        found = await store.get_call(sid)
        assert found is not None, sid
        ids[sid] = found[0]
    return ids


async def assert_records_exact(store: Store, events: list[CallEvent], settings: Settings) -> int:
    """Each call's stored state and record equal the single-process fold, every event applied
    exactly once, status and costs also checked against SPEC §5 directly; returns the events applied."""
    expected = fold(events, settings)
    calls = by_call(events)
    record_ids = set()
    applied = 0
    for sid, state in expected.items():
        found = await store.get_call(sid)
        assert found is not None, f"no record for {sid}"
        record_id, stored = found
        record_ids.add(record_id)
        record = render_record(sid, record_id, stored, settings.policy)
        assert record == render_record(sid, record_id, state, settings.policy), sid
        assert stored == state, sid
        assert record["status"] == expected_status(calls[sid]), sid
        sums = cost_sums(calls[sid], settings)
        for component in COMPONENTS:
            assert record[f"{component}_cost"] == sums.get(component), (sid, component)
        assert record["total_cost"] == (sum(sums.values()) if sums else None), sid

        unique = {e.key for e in calls[sid]}
        stored_ids = sorted(await store.applied_keys(sid))
        assert stored_ids == sorted(unique), sid
        assert await store.event_count(sid) == len(unique), sid
        applied += len(stored_ids)
    assert len(record_ids) == len(expected), "two calls share a record id"
    return applied


async def _doomed(url: str, count: int) -> None:
    import redis.asyncio as aioredis

    from call_ledger.store import Store

    store = Store(aioredis.Redis.from_url(url))
    await store.ensure_group()
    entries = await store.read_new("doomed", count, block_ms=None)
    print(f"read {len(entries)}", flush=True)
    await asyncio.Event().wait()  # hold them, never ack, until SIGKILL


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "doomed":
        sys.exit("usage: python tests/support/workers.py doomed <redis url> <count>")
    asyncio.run(_doomed(sys.argv[2], int(sys.argv[3])))


# -- a consumer that dies between commit and acknowledgement ---------------------------------
# (Appended after the script block above, which it leaves alone; run it with
#  python -c "import sys; from tests.support.workers import crash_after_commit_main as m; m(sys.argv[1:])" \
#      crash-after-commit <N> <redis url> <batch size> [<LEDGER_FX_RATES>]
# It prints "crashing before ack: <entry id>,<entry id>,..." and SIGKILLs itself.)

async def _crash_after_commit(batches: int, url: str, batch_size: int, fx_rates: str) -> int:
    """A real Consumer whose store's `ack` SIGKILLs this process on the `batches`-th batch:
    the commit script has written that batch's events, XACK never runs."""
    import os
    import signal

    from call_ledger.store import Store
    from call_ledger.web.logs import configure_logging
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.consumer import Consumer

    configure_logging("json", "info")
    settings = Settings(redis_url=url, consumer_name="crasher", batch_size=batch_size, fx_rates=fx_rates,
                        claim_idle_ms=3_600_000)
    store = Store.from_settings(settings)
    original_ack = store.ack
    acks = 0

    async def ack_or_die(entries: list[Any], failed_before: Iterable[Any] = ()) -> None:
        nonlocal acks
        entries = list(entries)
        if entries:
            acks += 1
            if acks == batches:
                print(f"crashing before ack: {','.join(e.entry_id for e in entries)}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        await original_ack(entries, failed_before)

    store.ack = ack_or_die  # type: ignore[method-assign]
    consumer = Consumer(store, settings, Metrics())
    await consumer.run_burst()
    print(f"drained after {acks} batches without crashing", flush=True)
    return 3


def crash_after_commit_main(argv: list[str]) -> None:
    if len(argv) not in (4, 5) or argv[0] != "crash-after-commit":
        sys.exit("usage: crash-after-commit <N> <redis url> <batch size> [<LEDGER_FX_RATES>]")
    sys.exit(asyncio.run(_crash_after_commit(int(argv[1]), argv[2], int(argv[3]),
                                             argv[4] if len(argv) == 5 else "")))
