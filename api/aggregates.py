"""Stats and analytics (SPEC §9), summed from the index shards' rollups, never a scan of calls.

`stats` reads one totals hash per shard; `analytics` the day hashes of the period, each
shard adding up its days in one script (`ledger/rollup_days.lua`), all in one pipeline.
The period `Nd` is the N UTC days ending today (the rollups are per day of list time), `1d`
being today.
"""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from api.calls import indexes_of, scope_of, store_errors
from api.query import parse_period
from ledger.events import STATUSES, TERMINAL_STATUSES
from ledger.indexes import day_assistants_key, day_key, scope_name, totals_key, week_key, week_of
from ledger.money import NANO, format_nano


def _money(totals: dict[str, int]) -> orjson.Fragment | None:
    """A rollup's exact cost as a JSON number, or null when no call in it had a cost."""
    if not totals.get("cn"):
        return None
    return orjson.Fragment(format_nano(totals.get("cw", 0) * NANO + totals.get("cf", 0)).encode())


def _average(totals: dict[str, int]) -> float | None:
    return totals.get("d", 0) / totals["dn"] if totals.get("dn") else None


def by_status(totals: dict[str, int]) -> dict[str, int]:
    return {status: totals.get(f"s:{status}", 0) for status in STATUSES}


def stats_body(totals: dict[str, int]) -> dict[str, Any]:
    statuses = by_status(totals)
    return {
        "total_calls": totals.get("n", 0),
        "ongoing_calls": sum(n for s, n in statuses.items() if s not in TERMINAL_STATUSES),
        "completed_calls": statuses["completed"],
        "failed_calls": sum(n for s, n in statuses.items() if s in TERMINAL_STATUSES and s != "completed"),
        "average_duration": _average(totals),
        "total_duration": totals.get("d", 0),
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


def _assistants(period: dict[str, int]) -> list[dict[str, Any]]:
    """calls_by_assistant from the period's `a:<aid>:<field>` and `an:<aid>:<name>` counters."""
    sums: dict[int, dict[str, int]] = {}
    names: dict[int, dict[str, int]] = {}
    for field, value in period.items():
        if field.startswith("an:"):
            _, aid_text, name = field.split(":", 2)
            carried = names.setdefault(int(aid_text), {})
            carried[name] = carried.get(name, 0) + value
        elif field.startswith("a:"):
            _, aid_text, counter = field.split(":", 2)
            counters = sums.setdefault(int(aid_text), {})
            counters[counter] = counters.get(counter, 0) + value
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for aid, counters in sums.items():
        if not counters.get("n"):
            continue
        # The name most of the period's calls carried (ties: the greatest), order-independent.
        votes = names.get(aid, {})
        best = max(votes, key=lambda n: (votes[n], n)) if votes else None
        rows.append((counters["n"], aid, {"assistant_id": aid, "assistant_name": best, "calls": counters["n"],
                                          "duration": counters.get("d", 0), "cost": _money(counters)}))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [row[2] for row in rows]


def analytics_body(period: str, days: list[str], per_day: dict[str, dict[str, int]],
                   assistants: dict[str, int]) -> dict[str, Any]:
    """The answer from each day's own totals and the period's per-assistant counters."""
    totals: dict[str, int] = {}
    calls_by_day = []
    for day in days:
        day_totals = per_day.get(day, {})
        for field, value in day_totals.items():
            totals[field] = totals.get(field, 0) + value
        if day_totals.get("n"):
            calls_by_day.append({"date": day, "total": day_totals["n"], "completed": day_totals.get("c", 0),
                                 "failed": day_totals.get("f", 0), "duration": day_totals.get("d", 0),
                                 "cost": _money(day_totals)})
    return {
        "period": period,
        "total_calls": totals.get("n", 0),
        "completed_calls": totals.get("c", 0),
        "failed_calls": totals.get("f", 0),
        "average_duration": _average(totals),
        "total_duration": totals.get("d", 0),
        "total_cost": _money(totals),
        "calls_by_day": calls_by_day,
        "calls_by_assistant": _assistants(assistants),
        "calls_by_status": by_status(totals),
    }


@store_errors
async def call_stats(request: web.Request) -> web.Response:
    scope = scope_name(scope_of(request))
    totals = (await indexes_of(request).sum_hashes([totals_key(scope)]))[totals_key(scope)]
    return web.Response(body=orjson.dumps(stats_body(totals)), content_type="application/json")


@store_errors
async def call_analytics(request: web.Request) -> web.Response:
    scope = scope_name(scope_of(request))
    period, n = parse_period(request.query)
    days = period_days(n, time.time())
    weeks, edge = period_plan(days)
    sums, assistants = await indexes_of(request).sum_days(
        [day_key(scope, day) for day in days],
        [week_key(scope, monday) for monday in weeks] + [day_assistants_key(scope, day) for day in sorted(edge)])
    per_day = {day: sums[day_key(scope, day)] for day in days}
    body = analytics_body(period, days, per_day, assistants)
    return web.Response(body=orjson.dumps(body), content_type="application/json")
