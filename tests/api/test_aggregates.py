"""Analytics (SPEC §9) is exact over periods that cross month and ISO-week boundaries: whatever
months, weeks and days a period is read from, its answer equals the sums over the records
(folded here, not read back), for every period and token scope, with and without the month
rollups in use; and calls_by_assistant names each assistant by its latest call in the period."""

import random
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.api import aggregates
from call_ledger.api.aggregates import period_days, period_units
from call_ledger.app import create_app
from call_ledger.core.events import STATUSES, TERMINAL_STATUSES, CallEvent, Cost
from call_ledger.core.indexes import day_of
from call_ledger.core.money import format_nano
from call_ledger.core.rules import record_json, render_record
from call_ledger.store import Store
from call_ledger.store.indexes import IndexStore
from tests.support.calls import ADMIN, ORG7, TOKENS, auth, event, load
from tests.support.settings import make_settings
from tests.support.workers import fold

DAY_US = 86_400_000_000
# Instants the periods end on: a Monday, a month's first day, the end of a leap February, a
# Sunday at the end of a month, a year's last day.
NOWS = ["2026-12-07T13:00:00", "2026-03-01T00:00:05", "2024-02-29T23:59:59", "2026-05-31T12:00:00",
        "2025-12-31T18:30:00"]


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000


def test_a_period_is_the_signed_sum_of_whole_months_weeks_and_days() -> None:
    """Every period of 1, 7, 30 and 90 days ending on any day of two years: its plan adds up to
    each of its days exactly once and to no other day, and reads few hashes of past days."""
    worst = {}
    for offset in range(731):
        now = datetime(2024, 1, 1, 12, tzinfo=UTC) + timedelta(days=offset)
        for n in (1, 7, 30, 90):
            days = period_days(n, now.timestamp())
            net: dict[str, int] = {}
            past = 0
            for sign, kind, start in period_units(days):
                first = date.fromisoformat(start)
                assert kind != "week" or first.weekday() == 0
                assert kind != "month" or first.day == 1
                length = {"day": 1, "week": 7}.get(kind) or _month_length(first)
                for k in range(length):
                    day = (first + timedelta(days=k)).isoformat()
                    net[day] = net.get(day, 0) + sign
                past += start <= days[-1]
            assert sorted(day for day, count in net.items() if count) == days, (now, n)
            assert all(count in (0, 1) for count in net.values()), (now, n)
            worst[n] = max(worst.get(n, 0), past)
    assert worst == {1: 1, 7: 5, 30: 8, 90: 13}


def _month_length(first: date) -> int:
    following = (first.replace(year=first.year + 1, month=1) if first.month == 12
                 else first.replace(month=first.month + 1))
    return (following - first).days


def _calendar(start: date, n: int) -> list[str]:
    return [(start + timedelta(days=k)).isoformat() for k in range(n)]


def random_calls(rng: random.Random, n: int, now_us: int) -> list[CallEvent]:
    events: list[CallEvent] = []
    for c in range(n):
        sid = f"CA-an-{c}"
        start = now_us - rng.randrange(-2, 100) * DAY_US + rng.randrange(-3600, 3600) * 1_000_000
        status = rng.choice(["completed", "failed", "busy", "ongoing", "completed"])
        events.append(event(sid, f"{sid}-s", start, status=status,
                            **({"duration": rng.randrange(300)} if status == "completed" else {})))
        for k in range(rng.randrange(0, 3)):  # several metadata events: the rules pick the values
            meta: dict[str, Any] = {"assistant_id": rng.choice([1, 2, 3, 4])}
            if rng.random() < 0.8:
                meta["assistant_name"] = rng.choice(["Alpha", "Beta", "=Gamma", f"bot {rng.randrange(50)}"])
            if rng.random() < 0.7:
                meta["organization_id"] = rng.choice([7, 8])
            events.append(event(sid, f"{sid}-m{k}", start + rng.randrange(-5, 600) * 1_000_000, **meta))
        for k in range(rng.randrange(0, 3)):
            events.append(event(sid, f"{sid}-u{k}", start + rng.randrange(600) * 1_000_000,
                                costs=(Cost(component="llm", amount_nano=rng.choice([1, 123_456_789, 10**13]),
                                            currency="USD"),)))
    return events


def _money(total: int, any_cost: bool) -> float | None:
    return float(Decimal(format_nano(total))) if any_cost else None


def expected(records: dict[str, dict[str, Any]], times: dict[str, int], orgs: dict[str, int | None],
             ids: dict[str, int], days: list[str], period: str, org: int | None) -> dict[str, Any]:
    """The analytics answer computed from the records."""
    chosen = [sid for sid in records if day_of(times[sid]) in set(days) and (org is None or orgs[sid] == org)]
    by_day: dict[str, list[str]] = {}
    for sid in chosen:
        by_day.setdefault(day_of(times[sid]), []).append(sid)

    def summary(sids: list[str]) -> dict[str, Any]:
        rs = [records[s] for s in sids]
        costs = [r["total_cost"] for r in rs if r["total_cost"] is not None]
        return {"total": len(rs), "completed": sum(r["status"] == "completed" for r in rs),
                "failed": sum(r["status"] in TERMINAL_STATUSES and r["status"] != "completed" for r in rs),
                "duration": sum(r["duration"] or 0 for r in rs), "cost": _money(sum(costs), bool(costs))}

    whole = summary(chosen)
    durations = [records[s]["duration"] for s in chosen if records[s]["duration"] is not None]
    assistants: dict[int, list[str]] = {}
    for sid in chosen:
        if records[sid]["assistant_id"]:
            assistants.setdefault(records[sid]["assistant_id"], []).append(sid)
    rows = []
    for aid, sids in assistants.items():
        latest = max(sids, key=lambda s: (times[s], ids[s]))
        part = summary(sids)
        rows.append({"assistant_id": aid, "assistant_name": records[latest]["assistant_name"],
                     "calls": part["total"], "duration": part["duration"], "cost": part["cost"]})
    rows.sort(key=lambda row: (-row["calls"], row["assistant_id"]))
    return {
        "period": period, "total_calls": whole["total"], "completed_calls": whole["completed"],
        "failed_calls": whole["failed"], "average_duration": sum(durations) / len(durations) if durations else None,
        "total_duration": whole["duration"], "total_cost": whole["cost"],
        "calls_by_day": [{"date": d, **summary(by_day[d])} for d in days if d in by_day],
        "calls_by_assistant": rows,
        "calls_by_status": {s: sum(records[c]["status"] == s for c in chosen) for s in STATUSES},
    }


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), now=st.sampled_from(NOWS))
async def test_analytics_across_month_and_week_boundaries_equals_the_sum_of_the_records(
        aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, seed: int, n: int, now: str) -> None:
    rng = random.Random(seed)
    now_us = _us(now)
    monkeypatch.setattr(aggregates.time, "time", lambda: now_us / 1e6)
    settings = make_settings(api_tokens=TOKENS, batch_size=rng.randint(1, 8))
    redis = fakeredis.FakeAsyncRedis()
    store = Store(redis)
    events = random_calls(rng, n, now_us)
    await load(store, settings, events)
    states = fold(events, settings)
    ids = {sid: (await store.get_call(sid) or (0, None))[0] for sid in states}
    records = {sid: render_record(sid, ids[sid], state, settings.policy) for sid, state in states.items()}
    assert all(orjson.loads(record_json(r)) for r in records.values())
    orgs = {sid: (s.registers.get("organization_id") or [None] * 4)[3] for sid, s in states.items()}
    times = {sid: (s.started[0] if s.started else s.first_seen) for sid, s in states.items()}
    for months in (False, True):  # weeks and days only (a store not reindexed yet), then months too
        if months:
            await IndexStore(redis).mark_months_complete()
        client = await aiohttp_client(create_app(settings, "api", store))
        for period, days_n in (("1d", 1), ("7d", 7), ("30d", 30), ("90d", 90)):
            days = period_days(days_n, now_us / 1e6)
            for token, org in ((ADMIN, None), (ORG7, 7)):
                response = await client.get("/api/v1/calls/analytics", params={"period": period},
                                            headers=auth(token))
                assert response.status == 200
                body = orjson.loads(await response.read())
                assert body == expected(records, times, orgs, ids, days, period, org), (period, token, months)
        await client.close()
    await redis.aclose()


async def test_old_name_counts_are_ignored_and_an_assistants_name_is_its_latest_calls(
        aiohttp_client: Any, store: Store) -> None:
    """Rollups written before issue #23 counted names (`an:<aid>:<name>`): analytics ignores
    them; the name shown is the one the assistant's latest call in the period carries."""
    settings = make_settings(api_tokens=TOKENS)
    now = int(time.time() * 1_000_000)
    events = [event("CA-n1", "s1", now - 3 * DAY_US, status="completed", duration=5),
              event("CA-n1", "m1", now - 3 * DAY_US, assistant_id=3, assistant_name="Old"),
              event("CA-n2", "s2", now - 2 * DAY_US, status="completed", duration=5),
              event("CA-n2", "m2", now - 2 * DAY_US, assistant_id=3, assistant_name="New"),
              event("CA-n3", "s3", now - 200 * DAY_US, status="completed", duration=5),
              event("CA-n3", "m3", now - 200 * DAY_US, assistant_id=3, assistant_name="Outside")]
    await load(store, settings, events)
    for shard in range(16):
        await store.redis.hset(f"cl:ix:{{{shard}}}:da:*:{day_of(now)}", "an:3:Stale", 1000)
    client = await aiohttp_client(create_app(settings, "api", store))
    response = await client.get("/api/v1/calls/analytics", params={"period": "7d"}, headers=auth(ADMIN))
    [row] = (await response.json())["calls_by_assistant"]
    assert (row["assistant_id"], row["assistant_name"], row["calls"]) == (3, "New", 2)


async def test_a_name_read_after_its_call_moved_to_another_organization_is_not_shown(
        aiohttp_client: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script finds each assistant's latest call; its entry is read a moment later. A call moved
    meanwhile to another organization (or assistant) must not lend that organization's name to the
    first one's analytics: the name is taken only if the entry still belongs to the scope."""
    settings = make_settings(api_tokens=TOKENS)
    now = int(time.time() * 1e6)
    await load(store, settings, [event("CA1", "s", now - 10**9, status="completed", duration=5),
                                 event("CA1", "m", now - 10**9, assistant_id=3, assistant_name="Seven's bot",
                                       organization_id=7)])
    original = IndexStore._names

    async def racing(self: IndexStore, *args: Any) -> Any:
        await load(store, settings, [event("CA1", "m2", now, assistant_id=3, assistant_name="ORG-8 SECRET",
                                           organization_id=8)])
        return await original(self, *args)

    monkeypatch.setattr(IndexStore, "_names", racing)
    client = await aiohttp_client(create_app(settings, "api", store))
    response = await client.get("/api/v1/calls/analytics", params={"period": "1d"}, headers=auth(ORG7))
    assert response.status == 200
    rows = orjson.loads(await response.read())["calls_by_assistant"]
    assert [row["assistant_name"] for row in rows] == [None]
