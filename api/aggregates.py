"""Stats and analytics (SPEC §9), summed from the index shards' rollups, never a scan of calls.

`stats` reads one totals hash per shard; `analytics` the day hashes of the period, and the
per-assistant counters of the fewest whole months, ISO weeks and days that make up the period,
each shard adding them up in one script (`call_ledger/store/lua/rollup_days.lua`), all in one pipeline. The
period `Nd` is the N UTC days ending today (the rollups are per day of list time), `1d` being
today.

An assistant's `assistant_name` in calls_by_assistant is the name its latest call in the period
carries (greatest list time, then greatest id), read from that call's index entry: the rollups
count calls, durations and costs per assistant, never names, so they stay small however many
names a platform sends.
"""

import time
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from call_ledger.api.calls import indexes_of, scope_of, store_errors
from call_ledger.api.query import parse_period
from call_ledger.core.events import STATUSES, TERMINAL_STATUSES
from call_ledger.core.indexes import (
    Rollup,
    assistant_lists_prefix,
    day_assistants_key,
    day_key,
    month_key,
    scope_name,
    score,
    totals_key,
    week_key,
    week_of,
)
from call_ledger.core.money import format_nano
from call_ledger.store.indexes import IndexStore, PeriodSums

DAY_US = 86_400_000_000


def _money(rollup: Rollup) -> orjson.Fragment | None:
    """A rollup's exact cost as a JSON number, or null when no call in it had a cost."""
    cost = rollup.cost_nano
    return None if cost is None else orjson.Fragment(format_nano(cost).encode())


def by_status(rollup: Rollup) -> dict[str, int]:
    return {status: rollup.with_status(status) for status in STATUSES}


def stats_body(counters: dict[str, int]) -> dict[str, Any]:
    totals = Rollup(counters)
    statuses = by_status(totals)
    return {
        "total_calls": totals.calls,
        "ongoing_calls": sum(n for s, n in statuses.items() if s not in TERMINAL_STATUSES),
        "completed_calls": statuses["completed"],
        "failed_calls": sum(n for s, n in statuses.items() if s in TERMINAL_STATUSES and s != "completed"),
        "average_duration": totals.average_duration,
        "total_duration": totals.duration,
        "calls_by_status": statuses,
    }


def period_days(days: int, now: float) -> list[str]:
    """The `days` UTC dates ending with today's, oldest first."""
    today = datetime.fromtimestamp(now, tz=UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def period_plan(days: list[str]) -> tuple[list[str], set[str]]:
    """(the ISO weeks wholly inside the period, the days outside them): per-assistant counters
    are read from those weeks' hashes and only the remaining days' hashes."""
    weeks: dict[str, list[str]] = {}
    for day in days:
        weeks.setdefault(week_of(day), []).append(day)
    full = [monday for monday, members in weeks.items() if len(members) == 7]
    edge = {day for monday, members in weeks.items() if len(members) < 7 for day in members}
    return full, edge


# A rollup hash of days after today costs next to nothing to read (calls are rarely dated in
# the future): a period ending today is read as, say, this month minus its days to come.
_FUTURE_WEIGHT = 0.01
# How deep a plan nests subtractions: 1 (a month less its first week, plus a day of it) plans
# a 90-day period in about 10 ms the first time (then cached); 2 took 30 ms and saved at most
# one hash (tests/api/test_aggregates.py checks the plans' sizes).
_DEPTH = 1

Term = tuple[int, str, str]  # (+1 or -1, "day" | "week" | "month", its first day YYYY-MM-DD)


def period_units(days: list[str]) -> list[Term]:
    """Whole months, ISO weeks and days whose signed sum is exactly the period (consecutive
    `days`, oldest first, ending today): per-assistant counters are summed from those hashes.
    The plan reads the fewest full hashes: a period starting mid-month is that month minus its
    first days (its first week minus a day or two, ...), one ending today is today's month
    minus the days to come. 90 days read 3 to 13 hashes of past days, 7.5 on average (18 as
    whole weeks and days)."""
    first = date.fromisoformat(days[0]).toordinal()
    last = date.fromisoformat(days[-1]).toordinal()
    _, terms = _plan(first, last, last, _DEPTH)
    return [(sign, kind, date.fromordinal(start).isoformat()) for sign, kind, start in terms]


def _month_bounds(day: int) -> tuple[int, int]:
    d = date.fromordinal(day)
    start = d.replace(day=1)
    following = (start.replace(year=start.year + 1, month=1) if start.month == 12
                 else start.replace(month=start.month + 1))
    return start.toordinal(), following.toordinal() - 1


def _week_bounds(day: int) -> tuple[int, int]:
    start = day - date.fromordinal(day).weekday()
    return start, start + 6


@lru_cache(maxsize=4096)
def _plan(a: int, b: int, today: int, depth: int) -> tuple[float, tuple[tuple[int, str, int], ...]]:
    """(weight, signed terms) of the cheapest plan of the days [a, b] (ordinals)."""
    if a > b:
        return 0.0, ()

    def weight(start: int) -> float:
        return _FUTURE_WEIGHT if start > today else 1.0

    def neg(terms: tuple[tuple[int, str, int], ...]) -> tuple[tuple[int, str, int], ...]:
        return tuple((-sign, kind, start) for sign, kind, start in terms)

    rest, terms = _plan(a + 1, b, today, depth)
    best = (weight(a) + rest, ((1, "day", a), *terms))
    for kind, (s, e) in (("week", _week_bounds(a)), ("month", _month_bounds(a))):
        if s == a and e <= b:  # a whole unit inside
            rest, terms = _plan(e + 1, b, today, depth)
            option = (weight(s) + rest, ((1, kind, s), *terms))
        elif depth > 0:  # the unit around a, less its days outside [a, b]
            before, before_terms = _plan(s, a - 1, today, depth - 1)
            if e <= b:
                rest, terms = _plan(e + 1, b, today, depth)
            else:
                rest, after_terms = _plan(b + 1, e, today, depth - 1)
                terms = neg(after_terms)
            option = (weight(s) + before + rest, ((1, kind, s), *neg(before_terms), *terms))
        else:
            continue
        if option[0] < best[0] - 1e-9:
            best = option
    return best


def _assistants(period: Rollup, names: dict[int, str | None]) -> list[dict[str, Any]]:
    """calls_by_assistant from the period's per-assistant counters and the names of the
    assistants' latest calls."""
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for aid, counters in period.per_assistant().items():
        if not counters.calls:
            continue
        rows.append((counters.calls, aid, {"assistant_id": aid, "assistant_name": names.get(aid),
                                           "calls": counters.calls, "duration": counters.duration,
                                           "cost": _money(counters)}))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [row[2] for row in rows]


def analytics_body(period: str, days: list[str], per_day: dict[str, dict[str, int]],
                   assistants: dict[str, int], names: dict[int, str | None]) -> dict[str, Any]:
    """The answer from each day's own totals and the period's per-assistant counters."""
    summed: dict[str, int] = {}
    calls_by_day = []
    for day in days:
        counters = per_day.get(day, {})
        for field, value in counters.items():
            summed[field] = summed.get(field, 0) + value
        day_totals = Rollup(counters)
        if day_totals.calls:
            calls_by_day.append({"date": day, "total": day_totals.calls, "completed": day_totals.completed,
                                 "failed": day_totals.failed, "duration": day_totals.duration,
                                 "cost": _money(day_totals)})
    totals = Rollup(summed)
    return {
        "period": period,
        "total_calls": totals.calls,
        "completed_calls": totals.completed,
        "failed_calls": totals.failed,
        "average_duration": totals.average_duration,
        "total_duration": totals.duration,
        "total_cost": _money(totals),
        "calls_by_day": calls_by_day,
        "calls_by_assistant": _assistants(Rollup(assistants), names),
        "calls_by_status": by_status(totals),
    }


@store_errors
async def call_stats(request: web.Request) -> web.Response:
    scope = scope_name(scope_of(request))
    totals = (await indexes_of(request).sum_hashes([totals_key(scope)]))[totals_key(scope)]
    return web.Response(body=orjson.dumps(stats_body(totals)), content_type="application/json")


async def period_sums(indexes: IndexStore, scope: str, days: list[str]) -> PeriodSums:
    """The rollups analytics reads for `days` (consecutive, oldest first) in `scope`."""
    if await indexes.months_complete():
        terms = period_units(days)
    else:  # a store indexed before the month rollups, not yet reindexed: weeks and days only
        weeks, edge = period_plan(days)
        terms = [(1, "week", monday) for monday in weeks] + [(1, "day", day) for day in sorted(edge)]
    added = [_unit_key(scope, kind, start) for sign, kind, start in terms if sign > 0]
    subtracted = [_unit_key(scope, kind, start) for sign, kind, start in terms if sign < 0]
    lo = _day_start_us(days[0])
    hi = _day_start_us(days[-1]) + DAY_US - 1
    return await indexes.sum_days([day_key(scope, day) for day in days], added, subtracted,
                                  lists=assistant_lists_prefix(scope), hi=repr(score(hi)), lo=repr(score(lo)))


def _unit_key(scope: str, kind: str, start: str) -> str:
    if kind == "month":
        return month_key(scope, start[:7])
    return week_key(scope, start) if kind == "week" else day_assistants_key(scope, start)


def _day_start_us(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * 1_000_000


@store_errors
async def call_analytics(request: web.Request) -> web.Response:
    scope = scope_name(scope_of(request))
    period, n = parse_period(request.query)
    days = period_days(n, time.time())
    sums = await period_sums(indexes_of(request), scope, days)
    per_day = {day: sums.days[day_key(scope, day)] for day in days}
    body = analytics_body(period, days, per_day, sums.assistants, sums.names)
    return web.Response(body=orjson.dumps(body), content_type="application/json")
