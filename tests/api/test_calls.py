"""The calls API of SPEC §9-§10 through raw HTTP on fake Redis: the list's envelope, order,
filters, cursor paging, 422s, one call by id, count, stats, analytics, search, export, costs,
and tenant isolation on every route. Events go straight into the stream (what intake
writes); the worker runs in burst mode, so the indexes are what it derived."""

import csv
import io
import time
from typing import Any

import orjson
import pytest

from call_ledger.app import create_app
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.instants import format_us
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.calls import ADMIN, BASE_US, DAY_US, ORG7, ORG8, TOKENS, auth, call, event, load
from tests.support.settings import make_settings
from tests.support.workers import FailingRead


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=TOKENS)


@pytest.fixture
async def api(aiohttp_client: Any, settings: Settings, store: Store) -> Any:
    return await aiohttp_client(create_app(settings, "api", store))


async def get(api: Any, path: str, token: str = ADMIN, **params: Any) -> Any:
    response = await api.get(path, headers=auth(token), params=params)
    assert response.status == 200, (path, params, await response.text())
    return await response.json()


async def test_list_envelope_newest_first_ties_by_id_desc(api: Any, store: Store, settings: Settings) -> None:
    events = call("CA-old", BASE_US) + call("CA-mid-a", BASE_US + 10) + call("CA-mid-b", BASE_US + 10)
    events += call("CA-new", BASE_US + 20)
    # A call with no status event: listed by its earliest event.
    events.append(event("CA-meta-only", "m1", BASE_US + 15, assistant_id=3))
    await load(store, settings, events)
    body = await get(api, "/api/v1/calls")
    assert set(body) == {"items", "total", "skip", "limit", "next_cursor"}
    assert (body["total"], body["skip"], body["limit"], body["next_cursor"]) == (5, 0, 100, None)
    sids = [item["call_sid"] for item in body["items"]]
    ids = {item["call_sid"]: item["id"] for item in body["items"]}
    tied = sorted(["CA-mid-a", "CA-mid-b"], key=lambda s: -ids[s])
    assert sids == ["CA-new", "CA-meta-only", *tied, "CA-old"]
    for item in body["items"]:
        assert len(item) == 18
        assert item == await get(api, f"/api/v1/calls/sid/{item['call_sid']}")


async def test_cursor_pages_have_no_duplicates_or_gaps(api: Any, store: Store, settings: Settings) -> None:
    events: list[CallEvent] = []
    for i in range(53):  # some on the same microsecond, spread over the shards
        events += call(f"CA-page-{i}", BASE_US + (i // 3) * 1_000_000, status="completed" if i % 2 else "failed")
    await load(store, settings, events)
    everything = [item["call_sid"] for item in (await get(api, "/api/v1/calls", limit=1000))["items"]]
    assert len(everything) == len(set(everything)) == 53
    for status in (None, "failed"):
        expected = [s for s in everything if status is None or int(s.rsplit("-", 1)[1]) % 2 == 0]
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 7, **({"status": status} if status else {})}
        while True:
            body = await get(api, "/api/v1/calls", **params)
            assert body["total"] == len(expected)
            seen += [item["call_sid"] for item in body["items"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert seen == expected
    # skip/limit pages agree with the cursor pages
    skipped = [item["call_sid"] for item in (await get(api, "/api/v1/calls", skip=10, limit=5))["items"]]
    assert skipped == everything[10:15]


async def test_filters_combine_and_total_is_exact(api: Any, store: Store, settings: Settings) -> None:
    events = call("CA-f1", BASE_US, assistant=1, name="Sales Bot", customer="+15551110001", duration=30)
    events += call("CA-f2", BASE_US + DAY_US, assistant=1, name="Sales Bot", customer="+15551110002", duration=90)
    events += call("CA-f3", BASE_US + 2 * DAY_US, status="busy", assistant=2, name="Support", duration=None)
    events += call("CA-f4", BASE_US + 3 * DAY_US, status="ongoing", assistant=2, name="support", duration=None)
    await load(store, settings, events)

    async def sids(**params: Any) -> list[str]:
        body = await get(api, "/api/v1/calls", **params)
        count = await get(api, "/api/v1/calls/count", **params)
        assert count == {"count": body["total"]} and body["total"] == len(body["items"])
        return [item["call_sid"] for item in body["items"]]

    assert await sids(assistant_id=1) == ["CA-f2", "CA-f1"]
    assert await sids(status="busy") == ["CA-f3"]
    assert await sids(status="completed", assistant_id=1, min_duration=60) == ["CA-f2"]
    # busy, never answered: duration 0 (SPEC §5); ongoing: no duration, which matches neither bound
    assert await sids(max_duration=30) == ["CA-f3", "CA-f1"]
    assert await sids(min_duration=0) == ["CA-f3", "CA-f2", "CA-f1"]
    assert await sids(customer_phone="1110002") == ["CA-f2"]
    assert await sids(assistant_name="SUPPORT") == ["CA-f4", "CA-f3"]
    assert await sids(call_sid="ca-F3") == ["CA-f3"]
    day2 = format_us(BASE_US + DAY_US)[:10]
    assert await sids(date_from=day2, date_to=day2) == ["CA-f2"]  # date-only: the whole day
    assert await sids(date_from=format_us(BASE_US + DAY_US)) == ["CA-f4", "CA-f3", "CA-f2"]
    assert await sids(date_to=format_us(BASE_US + DAY_US)) == ["CA-f2", "CA-f1"]  # inclusive
    assert await sids(date_from="2030-01-01", date_to="2020-01-01") == []
    # a "+00:00" offset sent unescaped arrives as a space
    assert await sids(date_from=format_us(BASE_US + DAY_US).replace("Z", " 00:00")) == ["CA-f4", "CA-f3", "CA-f2"]


@pytest.mark.parametrize(("params", "name"), [
    ({"skip": "-1"}, "skip"), ({"skip": "x"}, "skip"), ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
    ({"limit": "1.5"}, "limit"), ({"status": "done"}, "status"), ({"assistant_id": "abc"}, "assistant_id"),
    ({"date_from": "yesterday"}, "date_from"), ({"date_to": "2026-13-01"}, "date_to"),
    ({"min_duration": "-5"}, "min_duration"), ({"max_duration": "1e3"}, "max_duration"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "AAAA"}, "cursor"),
    ({"customer_phone": "x" * 2000}, "customer_phone"),
])
async def test_bad_list_parameters_are_422_naming_them(api: Any, params: dict[str, str], name: str) -> None:
    for path in ("/api/v1/calls", "/api/v1/calls/count", "/api/v1/calls/export"):
        if name in ("skip", "limit", "cursor") and path != "/api/v1/calls":
            continue
        response = await api.get(path, headers=auth(), params=params)
        assert response.status == 422, (path, params)
        body = await response.json()
        assert body["error"] == "invalid_parameter" and body["detail"].startswith(name), body


@pytest.mark.parametrize(("path", "params", "name"), [
    ("/api/v1/calls/search", {"q": "ab"}, "q"), ("/api/v1/calls/search", {}, "q"),
    ("/api/v1/calls/search", {"q": "abc", "limit": "201"}, "limit"),
    ("/api/v1/calls/analytics", {"period": "2d"}, "period"), ("/api/v1/calls/export", {"format": "xml"}, "format"),
])
async def test_bad_parameters_of_other_routes_are_422(api: Any, path: str, params: dict[str, str], name: str) -> None:
    response = await api.get(path, headers=auth(), params=params)
    assert response.status == 422
    assert (await response.json())["detail"].startswith(name)


@pytest.mark.parametrize("query", ["status=completed&status=busy", "limit=5&q=abc&limit=50", "format=csv&format=json",
                                   "period=7d&period=1d", "after=&after=x", "status=busy&STATUS=x&status=busy"])
async def test_a_parameter_given_twice_is_422_naming_it_on_every_route(api: Any, store: Store, settings: Settings,
                                                                      query: str) -> None:
    """No route takes one of two values silently (a proxy in front may have taken the other)."""
    await load(store, settings, call("CA-twice", BASE_US, cost=5))
    record = await get(api, "/api/v1/calls/sid/CA-twice")
    name = "after" if query.startswith("after") else query.split("=")[0]
    for path in ("/api/v1/calls", "/api/v1/calls/count", "/api/v1/calls/search", "/api/v1/calls/export",
                 "/api/v1/calls/analytics", "/api/v1/calls/stats", "/api/v1/calls/sid/CA-twice",
                 "/api/v1/calls/sid/CA-twice/events", f"/api/v1/calls/{record['id']}/costs"):
        response = await api.get(f"{path}?{query}", headers=auth())
        assert response.status == 422, (path, query)
        body = await response.json()
        assert body == {"error": "invalid_parameter",
                        "detail": f"{name} is given more than once: every parameter takes one value"}, body
    # One value each is as before.
    assert (await api.get("/api/v1/calls?status=completed&limit=5", headers=auth())).status == 200


async def test_get_by_id_and_odd_ids(api: Any, store: Store, settings: Settings) -> None:
    await load(store, settings, call("CA-byid", BASE_US, cost=5))
    record = await get(api, "/api/v1/calls/sid/CA-byid")
    assert await get(api, f"/api/v1/calls/{record['id']}") == record
    for odd in ("0", "999", "abc", "1.0", "-1", "9" * 30, "%E2%98%8E", "1%2F2"):
        response = await api.get(f"/api/v1/calls/{odd}", headers=auth())
        assert response.status == 404, odd
        assert (await response.json())["error"] == "not_found"
    assert (await api.get(f"/api/v1/calls/{record['id']}")).status == 401


async def test_stats_over_the_tokens_calls(api: Any, store: Store, settings: Settings) -> None:
    events = call("CA-s1", BASE_US, duration=30) + call("CA-s2", BASE_US, status="failed", duration=None)
    events += call("CA-s3", BASE_US, status="ongoing", duration=None) + call("CA-s4", BASE_US, duration=91)
    await load(store, settings, events)
    stats = await get(api, "/api/v1/calls/stats")
    assert stats == {
        "total_calls": 4, "ongoing_calls": 1, "completed_calls": 2, "failed_calls": 1,
        "average_duration": 121 / 3, "total_duration": 121,  # the failed call's 0 counts: a duration
        "calls_by_status": {"initiated": 0, "ringing": 0, "ongoing": 1, "completed": 2, "busy": 0,
                            "no-answer": 0, "canceled": 0, "failed": 1},
    }


async def test_analytics_over_a_period(api: Any, store: Store, settings: Settings) -> None:
    now = int(time.time() * 1_000_000)
    today, yesterday = now - 1000, now - DAY_US
    events = call("CA-a1", today, assistant=5, name="Bot", cost=100_000_000)
    events += call("CA-a2", today, assistant=5, name="Bot", cost=200_000_000, status="busy", duration=None)
    events += call("CA-a3", yesterday, assistant=6, name="Other", duration=120)
    events += call("CA-a4", now - 40 * DAY_US, assistant=6)  # outside 30d, inside 90d
    await load(store, settings, events)
    body = await get(api, "/api/v1/calls/analytics", period="7d")
    assert (body["period"], body["total_calls"], body["completed_calls"], body["failed_calls"]) == ("7d", 3, 2, 1)
    assert (body["total_duration"], body["average_duration"], body["total_cost"]) == (180, 60.0, 0.3)
    assert [d["date"] for d in body["calls_by_day"]] == [format_us(yesterday)[:10], format_us(today)[:10]]
    assert body["calls_by_day"][1] == {"date": format_us(today)[:10], "total": 2, "completed": 1, "failed": 1,
                                       "duration": 60, "cost": 0.3}
    assert body["calls_by_assistant"] == [
        {"assistant_id": 5, "assistant_name": "Bot", "calls": 2, "duration": 60, "cost": 0.3},
        {"assistant_id": 6, "assistant_name": "Other", "calls": 1, "duration": 120, "cost": None}]
    assert body["calls_by_status"]["busy"] == 1
    assert (await get(api, "/api/v1/calls/analytics", period="90d"))["total_calls"] == 4
    assert (await get(api, "/api/v1/calls/analytics", period="1d"))["total_calls"] in (2, 3)  # midnight UTC
    assert (await get(api, "/api/v1/calls/analytics"))["period"] == "7d"


async def test_search_matches_sid_numbers_and_assistant_name(api: Any, store: Store, settings: Settings) -> None:
    events = call("CA-search-1", BASE_US, customer="+15557771234") + call("CA-other", BASE_US + 1, name="Helper")
    events += call("CA-search-2", BASE_US + 2)
    await load(store, settings, events)
    assert [r["call_sid"] for r in await get(api, "/api/v1/calls/search", q="SEARCH")] == ["CA-search-2",
                                                                                           "CA-search-1"]
    assert [r["call_sid"] for r in await get(api, "/api/v1/calls/search", q="7771234")] == ["CA-search-1"]
    assert [r["call_sid"] for r in await get(api, "/api/v1/calls/search", q="+1555000")] == ["CA-search-1"]
    assert [r["call_sid"] for r in await get(api, "/api/v1/calls/search", q="help")] == ["CA-other"]
    assert len(await get(api, "/api/v1/calls/search", q="ca-", limit=2)) == 2


async def test_export_csv_bytes_and_json(api: Any, store: Store, settings: Settings) -> None:
    events = call("CA-x1", BASE_US, cost=300_000_000, customer="+15551230000", assistant=4, name='Bot, "the" one')
    events.append(event("CA-x1", "meta2", BASE_US + 5, call_meta={"k": [1, "a,b"]}))
    events += call("CA-x2", BASE_US + 1_000_000, status="ongoing", duration=None)
    await load(store, settings, events)
    response = await api.get("/api/v1/calls/export", headers=auth(), params={"format": "csv"})
    assert response.status == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.content_type == "text/csv"
    x1 = await get(api, "/api/v1/calls/sid/CA-x1")
    x2 = await get(api, "/api/v1/calls/sid/CA-x2")
    text = (await response.read()).decode()
    assert text == (
        "call_sid,to_phone_number,customer_phone_number,id,assistant_id,status,call_meta,assistant_name,"
        "flow_name,duration,started_at,ended_at,total_cost,llm_cost,tts_cost,stt_cost,telephony_cost,"
        "cost_currency\r\n"
        f"CA-x2,,,{x2['id']},0,ongoing,{{}},,,,{x2['started_at']},,,,,,,\r\n"
        # Phone numbers are text: a leading '+' gets a "'" (SPEC §14), the numbers after them do not.
        f'CA-x1,\'+15550000000,\'+15551230000,{x1["id"]},4,completed,"{{""k"":[1,""a,b""]}}","Bot, ""the"" one",,'
        f"60,{x1['started_at']},{x1['ended_at']},0.3,0.3,,,,USD\r\n")
    assert list(csv.reader(io.StringIO(text)))[2][6] == '{"k":[1,"a,b"]}'
    as_json = await api.get("/api/v1/calls/export", headers=auth(), params={"format": "json", "status": "ongoing"})
    assert as_json.headers["Content-Disposition"].startswith("attachment")
    assert orjson.loads(await as_json.read()) == [x2]
    empty = await api.get("/api/v1/calls/export", headers=auth(), params={"format": "json", "status": "busy"})
    assert orjson.loads(await empty.read()) == []


async def test_costs_by_sid_and_by_id_add_up_per_service_type(aiohttp_client: Any, store: Store) -> None:
    settings = make_settings(api_tokens=TOKENS, telephony_rates="twilio:inbound=0.01", fx_rates="EUR=1.1")
    api = await aiohttp_client(create_app(settings, "api", store))
    sid = "CA0123456789abcdef0123456789abcdef"
    twilio = CallEvent(source="twilio", event_id=f"{sid}:1", call_sid=sid, type="status.completed",
                       occurred_at=format_us(BASE_US + 10**8), occurred_us=BASE_US + 10**8, status="completed",
                       duration=61)
    events = [twilio, event(sid, "u1", BASE_US, costs=(Cost(component="llm", amount_nano=100_000_000,
                                                            currency="USD"),)),
              event(sid, "u2", BASE_US + 1, costs=(Cost(component="llm", amount_nano=200_000_000, currency="EUR"),)),
              event(sid, "u3", BASE_US + 2, costs=(Cost(component="stt", amount_nano=1, currency="USD"),))]
    await load(store, settings, events)
    body = await get(api, f"/api/v1/calls/sid/{sid}/costs")
    record = await get(api, f"/api/v1/calls/sid/{sid}")
    assert body == await get(api, f"/api/v1/calls/{record['id']}/costs")
    summary = body["call_summary"]
    assert summary == {"call_id": record["id"], "call_sid": sid, "total_cost": 0.340000001, "llm_cost": 0.32,
                       "tts_cost": None, "stt_cost": 0.000000001, "telephony_cost": 0.02, "currency": "USD",
                       "duration_minutes": 2, "started_at": record["started_at"], "ended_at": record["ended_at"]}
    entries = body["detailed_entries"]
    assert [(e["service_type"], e["total_cost"]) for e in entries] == [
        ("llm", 0.1), ("llm", 0.22), ("stt", 0.000000001), ("telephony", 0.02)]
    assert entries[-1]["metadata"] == {"estimated": True} and entries[-1]["usage_amount"] == 2
    assert len({e["id"] for e in entries}) == 4
    raw = (await (await api.get(f"/api/v1/calls/sid/{sid}/costs", headers=auth())).read()).decode()
    assert '"total_cost":0.340000001' in raw  # exact decimals, not floats
    assert (await api.get("/api/v1/calls/sid/CAnope/costs", headers=auth())).status == 404


async def test_a_scoped_token_sees_only_its_organization_everywhere(api: Any, store: Store,
                                                                    settings: Settings) -> None:
    events = call("CA-org7", BASE_US, org=7, assistant=1, name="Seven", cost=10)
    events += call("CA-org8", BASE_US + 1, org=8, assistant=1, name="Eight", cost=20)
    events += call("CA-no-org", BASE_US + 2, assistant=1, name="Nobody")
    await load(store, settings, events)
    ids = {s: (await get(api, f"/api/v1/calls/sid/{s}"))["id"] for s in ("CA-org7", "CA-org8", "CA-no-org")}
    assert (await get(api, "/api/v1/calls"))["total"] == 3  # the unscoped token sees every call

    listed = await get(api, "/api/v1/calls", token=ORG7)
    assert [i["call_sid"] for i in listed["items"]] == ["CA-org7"] and listed["total"] == 1
    assert (await get(api, "/api/v1/calls", token=ORG7, assistant_id=1, status="completed"))["total"] == 1
    assert await get(api, "/api/v1/calls/count", token=ORG8) == {"count": 1}
    assert (await get(api, "/api/v1/calls/stats", token=ORG7))["total_calls"] == 1
    assert (await get(api, "/api/v1/calls/search", token=ORG7, q="CA-")) == [
        await get(api, "/api/v1/calls/sid/CA-org7")]
    export = await api.get("/api/v1/calls/export", headers=auth(ORG8), params={"format": "json"})
    assert [r["call_sid"] for r in orjson.loads(await export.read())] == ["CA-org8"]
    for sid in ("CA-org8", "CA-no-org"):  # another tenant's, and no organization yet: unknown
        for path in (f"/api/v1/calls/sid/{sid}", f"/api/v1/calls/sid/{sid}/events",
                     f"/api/v1/calls/sid/{sid}/costs", f"/api/v1/calls/{ids[sid]}",
                     f"/api/v1/calls/{ids[sid]}/costs"):
            response = await api.get(path, headers=auth(ORG7))
            assert response.status == 404, path
            assert (await response.json())["error"] == "not_found"
    for path in ("/api/v1/calls/sid/CA-org7", "/api/v1/calls/sid/CA-org7/events", f"/api/v1/calls/{ids['CA-org7']}",
                 "/api/v1/calls/sid/CA-org7/costs"):
        assert (await api.get(path, headers=auth(ORG7))).status == 200, path
    now_calls = call("CA-org7-now", int(time.time() * 1e6), org=7, assistant=1)
    await load(store, settings, now_calls)
    analytics = await get(api, "/api/v1/calls/analytics", token=ORG7)
    assert analytics["total_calls"] == 1 and analytics["calls_by_assistant"][0]["assistant_id"] == 1
    assert (await get(api, "/api/v1/calls/analytics", token=ORG8))["total_calls"] == 0


async def test_a_call_moving_to_another_organization_moves_in_the_indexes(api: Any, store: Store,
                                                                          settings: Settings) -> None:
    await load(store, settings, call("CA-move", BASE_US, org=7))
    await load(store, settings, [event("CA-move", "later", BASE_US + 10**6, organization_id=8)])
    assert (await get(api, "/api/v1/calls", token=ORG7))["total"] == 0
    assert (await get(api, "/api/v1/calls/stats", token=ORG7))["total_calls"] == 0
    assert [i["call_sid"] for i in (await get(api, "/api/v1/calls", token=ORG8))["items"]] == ["CA-move"]


async def test_every_route_needs_a_token(api: Any) -> None:
    for path in ("/api/v1/calls", "/api/v1/calls/1", "/api/v1/calls/count", "/api/v1/calls/stats",
                 "/api/v1/calls/analytics", "/api/v1/calls/search?q=abc", "/api/v1/calls/export",
                 "/api/v1/calls/1/costs", "/api/v1/calls/sid/x/costs"):
        assert (await api.get(path)).status == 401, path
        assert (await api.get(path, headers=auth("wrong"))).status == 401, path


def test_scoped_token_entries_are_parsed() -> None:
    import hashlib

    digest = hashlib.sha256(b"t2").hexdigest()
    tokens = make_settings(api_tokens=f"plain,12=t1,34=sha256:{digest},abc=def").api_tokens
    assert [t.organization_id for t in tokens] == [None, 12, 34, None]
    assert tokens[1].digest == hashlib.sha256(b"t1").digest()
    assert tokens[2].digest == hashlib.sha256(b"t2").digest()
    assert tokens[3].digest == hashlib.sha256(b"abc=def").digest()  # not digits before "=": a plain token
    with pytest.raises(ValueError, match="organization"):
        make_settings(api_tokens="0=t")


async def test_an_export_cut_short_by_redis_is_a_truncated_transfer(aiohttp_client: Any, store: Store,
                                                                   settings: Settings, monkeypatch: Any) -> None:
    from aiohttp import ClientPayloadError

    from call_ledger.api import listing
    from call_ledger.core.errors import StoreUnavailable

    events: list[CallEvent] = []
    for i in range(6):
        events += call(f"CA-cut-{i}", BASE_US + i)
    await load(store, settings, events)
    monkeypatch.setattr(listing, "EXPORT_BATCH", 2)
    flaky = FailingRead(store, StoreUnavailable("redis went away mid-export"))
    monkeypatch.setattr(store, "calls_fields", flaky)
    client = await aiohttp_client(create_app(settings, "api", store))
    for fmt in ("json", "csv"):
        flaky.calls = 0
        response = await client.get("/api/v1/calls/export", headers=auth(), params={"format": fmt})
        assert response.status == 200
        with pytest.raises(ClientPayloadError):  # never a complete-looking partial file
            await response.read()


async def test_costs_of_a_charge_whose_fx_rate_was_removed_show_the_rate_it_was_applied_at(
        aiohttp_client: Any, store: Store) -> None:
    applied_with = make_settings(api_tokens=TOKENS, fx_rates="EUR=1.1")
    await load(store, applied_with, [event("CA-fx", "u", BASE_US, costs=(
        Cost(component="tts", amount_nano=10**9, currency="EUR"),))])
    api = await aiohttp_client(create_app(make_settings(api_tokens=TOKENS), "api", store))
    [entry] = (await get(api, "/api/v1/calls/sid/CA-fx/costs"))["detailed_entries"]
    assert entry["total_cost"] == 1.1  # frozen when applied (SPEC §14); tests/api/test_costs.py has the rest
    assert (entry["metadata"]["original_currency"], entry["metadata"]["original_amount"]) == ("EUR", 1)


def test_a_period_reads_whole_weeks_and_the_days_around_them() -> None:
    from call_ledger.api.aggregates import period_days, period_plan

    days = period_days(90, time.mktime((2026, 12, 1, 12, 0, 0, 0, 0, 0)))  # a Tuesday
    weeks, edge = period_plan(days)
    assert (days[0], days[-1], len(days)) == ("2026-09-03", "2026-12-01", 90)
    assert weeks[0] == "2026-09-07" and weeks[-1] == "2026-11-23" and len(weeks) == 12
    assert sorted(edge) == ["2026-09-03", "2026-09-04", "2026-09-05", "2026-09-06", "2026-11-30", "2026-12-01"]


async def test_analytics_per_assistant_over_whole_weeks_and_edge_days(api: Any, store: Store,
                                                                      settings: Settings) -> None:
    now = int(time.time() * 1_000_000)
    events: list[CallEvent] = []
    for k in range(0, 89, 4):  # over the 90 days: whole weeks and the days at both ends
        events += call(f"CA-wk-{k}", now - k * DAY_US, assistant=9, name="Weekly", cost=10**9, duration=10)
    events += call("CA-wk-old", now - 120 * DAY_US, assistant=9, name="Weekly")  # outside the period
    await load(store, settings, events)
    from call_ledger.api.aggregates import period_days

    for period, days in (("90d", 90), ("30d", 30), ("7d", 7), ("1d", 1)):
        in_period = set(period_days(days, time.time()))
        expected = sum(format_us(now - k * DAY_US)[:10] in in_period for k in range(0, 89, 4))
        body = await get(api, "/api/v1/calls/analytics", period=period)
        assert body["total_calls"] == sum(d["total"] for d in body["calls_by_day"]) == expected, period
        [row] = body["calls_by_assistant"]
        assert (row["assistant_id"], row["assistant_name"], row["calls"]) == (9, "Weekly", expected), period
        assert (row["duration"], row["cost"]) == (10 * expected, expected), period


async def test_costs_show_each_priced_usage_line_with_its_unit_cost_and_price_entry(
        aiohttp_client: Any, store: Store, tmp_path: Any) -> None:
    from tests.support.prices import price, usage_payload, write_prices
    from tests.support.signing import post_platform

    settings = make_settings(api_tokens=TOKENS, pricing_file=write_prices(
        tmp_path / "p.yaml", price("0.15"), price("0.60", usage_type="output_tokens")))
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    payload = usage_payload(usage=[{"usage_type": "input_tokens", "usage_amount": 8200},
                                   {"usage_type": "output_tokens", "usage_amount": "150"}])
    assert (await post_platform(client, payload, "turn-1")).status == 200
    await Consumer(store, settings, Metrics()).run_burst()
    sid = payload["call_sid"]
    body = await get(client, f"/api/v1/calls/sid/{sid}/costs")
    lines = [(e["provider"], e["model"], e["usage_type"], e["usage_amount"], e["unit_cost"], e["total_cost"])
             for e in body["detailed_entries"]]
    assert lines == [("openai", "gpt-4o-mini", "input_tokens", 8200, 0.00015, 1.23),
                     ("openai", "gpt-4o-mini", "output_tokens", 150, 0.0006, 0.09)]
    assert body["detailed_entries"][0]["metadata"]["price_entry"]["usage_type"] == "input_tokens"
    assert body["call_summary"]["llm_cost"] == 1.32
