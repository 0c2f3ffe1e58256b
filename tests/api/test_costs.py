"""`/costs` (api/costs.py, SPEC §9, §14): paged like /events, with work bounded by the page, a
summary of every charge on every page, and charges in another currency shown at the rate frozen
when they were applied (worker/apply.py `frozen_fx`), so entries always add up to the summary;
entries journaled before rates were frozen still render, converted as they always were."""

import json
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from call_ledger.app import create_app
from call_ledger.core.events import CallEvent, Cost, UsageLine
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker import apply as apply_module
from call_ledger.worker.consumer import Consumer
from tests.support.settings import AUTH, make_settings
from tests.support.workers import make_event, usage

SID = "CA-long-call"
SERVICES = ("llm", "tts", "stt", "telephony")


async def apply(store: Store, settings: Settings, events: list[CallEvent]) -> None:
    """Through the worker's real path: the stream, then a burst of the apply loop."""
    for event in events:
        await store.append(event.model_dump_json(exclude_defaults=True).encode(), event.call_sid)
    assert await Consumer(store, settings, Metrics()).run_burst() == len(events)


async def api_for(aiohttp_client: Any, store: Store, settings: Settings) -> Any:
    return await aiohttp_client(create_app(settings, "api", store))


async def get_json(client: Any, path: str, **params: str) -> Any:
    response = await client.get(path, headers=AUTH, params=params)
    assert response.status == 200, await response.text()
    return json.loads(await response.read(), parse_float=Decimal)  # money exactly as written


async def all_pages(client: Any, path: str, limit: int | None = None) -> list[Any]:
    pages, after = [], None
    while True:
        params = {**({"limit": str(limit)} if limit else {}), **({"after": after} if after else {})}
        pages.append(await get_json(client, path, **params))
        after = pages[-1]["next"]
        if after is None:
            return pages


def nano(value: Decimal | None) -> int | None:
    return None if value is None else int(value * 10**9)


def sums_by_service(entries: list[dict[str, Any]]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for entry in entries:
        amount = nano(entry["total_cost"])
        assert amount is not None, entry
        sums[entry["service_type"]] = sums.get(entry["service_type"], 0) + amount
    return sums


def assert_entries_add_up_to_the_summary(entries: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    sums = sums_by_service(entries)
    for service in SERVICES:
        assert sums.get(service) == nano(summary[f"{service}_cost"]), service
    assert sum(sums.values()) == nano(summary["total_cost"])


def long_call(n: int) -> list[CallEvent]:
    """`n` platform events, two to an instant (so ties are ordered by key): metadata without a
    cost, USD and EUR charges, events with two charges; then a Twilio hang-up, priced by the
    rate card (the estimate entry)."""
    events = []
    for i in range(n):
        offset, eid = (i // 2) * 1000, f"e{i:05d}"
        kind = i % 5
        if kind == 0:
            events.append(make_event(SID, eid, offset, flow_name=f"step-{i}"))
        elif kind == 1:
            events.append(usage(SID, eid, offset, "llm", 1_000 + i))
        elif kind == 2:
            events.append(usage(SID, eid, offset, "tts", 3_333 + i, currency="EUR"))
        else:
            events.append(make_event(SID, eid, offset, costs=(
                Cost(component="stt", amount_nano=7 + i, currency="USD"),
                Cost(component="llm", amount_nano=10_001 + i, currency="EUR", provider="openai", model="gpt"))))
    hang_up_us = events[-1].occurred_us + 10**6
    events.append(CallEvent(source="twilio", event_id="hangup", call_sid=SID, type="status.completed",
                            occurred_at=make_event(SID, "x", hang_up_us - events[0].occurred_us).occurred_at,
                            occurred_us=hang_up_us, status="completed", duration=125))
    return events


def expected_entries(events: list[CallEvent], rate: Decimal) -> list[tuple[str, str, int]]:
    """(id, service_type, nano-units) of every charge, oldest first (ties: by source:event_id),
    worked out here: EUR at `rate`, half-even to nano-units."""
    out = []
    for event in sorted(events, key=lambda e: (e.occurred_us, e.key)):
        for n, cost in enumerate(event.costs):
            amount = cost.amount_nano if cost.currency == "USD" else int(
                (cost.amount_nano * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
            out.append((f"{event.key}#{n}", cost.component, amount))
    return out


def shape(entries: list[dict[str, Any]]) -> list[tuple[str, str, int | None]]:
    return [(e["id"], e["service_type"], nano(e["total_cost"])) for e in entries]


async def test_costs_of_a_2500_event_call_come_in_pages_that_add_up_to_the_summary(
        aiohttp_client: Any, real_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(redis_url="redis://unused", fx_rates="EUR=1.08", telephony_rates="twilio:inbound=0.01")
    events = long_call(2_500)
    await apply(real_store, settings, events)
    client = await api_for(aiohttp_client, real_store, settings)

    # Each request reads one page of the journal, never the whole call.
    fetched: list[tuple[int, int]] = []  # (limit asked, events returned), per read
    real_page = real_store.events_page

    async def counted_page(call_sid: str, after: str, limit: int) -> Any:
        page = await real_page(call_sid, after, limit)
        fetched.append((limit, 0 if page is None else len(page[0])))
        return page

    async def unbounded(*_: Any) -> Any:
        raise AssertionError("a request read every event of the call")

    monkeypatch.setattr(real_store, "events_page", counted_page)
    monkeypatch.setattr(real_store, "all_events", unbounded)

    expected = [*expected_entries(events, Decimal("1.08")), ("estimate:telephony", "telephony", 30_000_000)]
    record = await get_json(client, f"/api/v1/calls/sid/{SID}")
    for limit in (None, 7, 1000):
        fetched.clear()
        pages = await all_pages(client, f"/api/v1/calls/sid/{SID}/costs", limit)
        per_page = limit or 100
        assert len(pages) == -(-len(events) // per_page)  # as many pages as the events fill
        assert len(fetched) == len(pages) and all(asked == per_page and got <= per_page for asked, got in fetched)
        entries = [entry for page in pages for entry in page["detailed_entries"]]
        assert shape(entries) == expected, limit  # the pages, concatenated: every charge once, in order
        assert all(page["call_summary"] == pages[0]["call_summary"] for page in pages)
        summary = pages[0]["call_summary"]
        assert nano(summary["total_cost"]) == nano(record["total_cost"]) == sum(amount for *_, amount in expected)
        assert_entries_add_up_to_the_summary(entries, summary)
        assert [e["id"] for e in pages[-1]["detailed_entries"]][-1] == "estimate:telephony"
        assert all(e["id"] != "estimate:telephony" for page in pages[:-1] for e in page["detailed_entries"])

    # By id: the same pages.
    by_id = await all_pages(client, f"/api/v1/calls/{record['id']}/costs", 250)
    by_sid = await all_pages(client, f"/api/v1/calls/sid/{SID}/costs", 250)
    assert by_id == by_sid and len(by_id) == 11


async def test_a_page_of_events_without_charges_is_empty_and_still_has_a_next(
        aiohttp_client: Any, store: Store) -> None:
    settings = make_settings()
    events = [make_event("CA-quiet", f"m{i}", i, flow_name=f"f{i}") for i in range(5)]
    events.append(usage("CA-quiet", "u", 10, "llm", 5))
    await apply(store, settings, events)
    client = await api_for(aiohttp_client, store, settings)
    pages = await all_pages(client, "/api/v1/calls/sid/CA-quiet/costs", 2)
    assert [len(page["detailed_entries"]) for page in pages] == [0, 0, 1]
    assert pages[0]["next"] is not None and pages[-1]["next"] is None
    assert pages[0]["call_summary"]["llm_cost"] == Decimal("0.000000005")


async def test_entries_keep_the_rate_they_were_applied_at_after_the_rates_change(
        aiohttp_client: Any, store: Store) -> None:
    """Applied at 1.1, then another event at 1.2: served by processes configured with 1.5 and
    with no EUR rate at all, every entry shows the rate of its own application, and they add
    up to the summary (1.1 + 0.24 + 0.1, not re-converted)."""
    await apply(store, make_settings(fx_rates="EUR=1.1"), [
        usage("CA-fx", "a", 0, "tts", 10**9, currency="EUR"), usage("CA-fx", "usd", 1, "tts", 10**8)])
    await apply(store, make_settings(fx_rates="EUR=1.2"), [usage("CA-fx", "b", 2, "tts", 2 * 10**8, currency="EUR")])

    bodies = []
    for rates in ("EUR=1.1", "EUR=1.5", ""):
        client = await api_for(aiohttp_client, store, make_settings(fx_rates=rates))
        [page] = await all_pages(client, "/api/v1/calls/sid/CA-fx/costs")
        bodies.append(page)
    assert bodies[0] == bodies[1] == bodies[2]
    entries, summary = bodies[0]["detailed_entries"], bodies[0]["call_summary"]
    assert [(e["total_cost"], e["metadata"].get("fx_rate"), e["metadata"].get("original_amount"))
            for e in entries] == [(Decimal("1.1"), Decimal("1.1"), 1), (Decimal("0.1"), None, None),
                                  (Decimal("0.24"), Decimal("1.2"), Decimal("0.2"))]
    assert summary["tts_cost"] == summary["total_cost"] == Decimal("1.44")
    assert_entries_add_up_to_the_summary(entries, summary)

    # The journaled event carries them too (what /events shows): the intake event plus the frozen pair.
    events = (await get_json(client, "/api/v1/calls/sid/CA-fx/events"))["events"]
    assert [e["costs"][0].get("fx_rate") for e in events] == ["1.1", None, "1.2"]
    assert [e["costs"][0].get("ledger_amount_nano") for e in events] == [1_100_000_000, None, 240_000_000]


async def test_priced_usage_in_another_currency_is_frozen_with_its_price(
        aiohttp_client: Any, store: Store, tmp_path: Any) -> None:
    from tests.support.prices import price, write_prices

    def settings(rate: str) -> Settings:
        return make_settings(fx_rates=f"EUR={rate}", pricing_file=write_prices(
            tmp_path / "p.yaml", price("0.50", currency="EUR", unit_quantity=1)))

    line = UsageLine(component="llm", provider="openai", model="gpt-4o-mini", usage_type="input_tokens",
                     usage_amount="3")
    await apply(store, settings("2"), [make_event("CA-priced", "p1", 0, usage=(line,))])
    client = await api_for(aiohttp_client, store, settings("9"))
    [page] = await all_pages(client, "/api/v1/calls/sid/CA-priced/costs")
    [entry] = page["detailed_entries"]
    # 3 x 0.50 EUR, counted at 2 when applied; the serving process's 9 changes nothing.
    assert (entry["total_cost"], entry["metadata"]["fx_rate"], entry["unit_cost"]) == (
        Decimal("3"), Decimal("2"), Decimal("0.5"))
    assert entry["metadata"]["price_entry"]["currency"] == "EUR"
    assert page["call_summary"]["llm_cost"] == Decimal("3")


async def test_entries_journaled_before_rates_were_frozen_still_render(
        aiohttp_client: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolling upgrade: EUR charges journaled as the previous version journaled them (the
    intake event, no rate) are converted with the serving process's rate, as before; null
    without one. A charge journaled since, in the same call, keeps its frozen rate."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(apply_module, "frozen_fx", lambda event, _settings: event)  # the previous version
        await apply(store, make_settings(fx_rates="EUR=1.1"), [
            usage("CA-old", "old", 0, "stt", 10**9, currency="EUR"), usage("CA-old", "usd", 1, "stt", 5)])
    journal = await store.all_events("CA-old")
    assert all(b"fx_rate" not in raw for raw in journal)
    await apply(store, make_settings(fx_rates="EUR=1.1"), [usage("CA-old", "new", 2, "stt", 10**9, currency="EUR")])

    same_rate = await api_for(aiohttp_client, store, make_settings(fx_rates="EUR=1.1"))
    [page] = await all_pages(same_rate, "/api/v1/calls/sid/CA-old/costs")
    assert [(e["id"], e["total_cost"], e["metadata"].get("fx_rate")) for e in page["detailed_entries"]] == [
        ("platform:old#0", Decimal("1.1"), None), ("platform:usd#0", Decimal("5E-9"), None),
        ("platform:new#0", Decimal("1.1"), Decimal("1.1"))]
    assert_entries_add_up_to_the_summary(page["detailed_entries"], page["call_summary"])

    no_rate = await api_for(aiohttp_client, store, make_settings())
    [page] = await all_pages(no_rate, "/api/v1/calls/sid/CA-old/costs")
    old, usd, new = page["detailed_entries"]
    assert old["total_cost"] is None and old["metadata"]["original_currency"] == "EUR"
    assert old["metadata"]["original_amount"] == 1
    assert usd["total_cost"] == Decimal("5E-9")  # its event's other charges are not held up by it
    assert new["total_cost"] == Decimal("1.1")


async def test_with_the_journal_off_costs_is_one_page_of_summary_and_estimate(
        aiohttp_client: Any, store: Store) -> None:
    settings = make_settings(journal="off", telephony_rates="twilio:inbound=0.01")
    events = [usage("CA-off", f"u{i}", i, "llm", 10) for i in range(3)]
    events.append(CallEvent(source="twilio", event_id="h", call_sid="CA-off", type="status.completed",
                            occurred_at=events[-1].occurred_at, occurred_us=events[-1].occurred_us + 1,
                            status="completed", duration=30))
    await apply(store, settings, events)
    client = await api_for(aiohttp_client, store, settings)
    body = await get_json(client, "/api/v1/calls/sid/CA-off/costs", limit="1")
    assert [e["id"] for e in body["detailed_entries"]] == ["estimate:telephony"] and body["next"] is None
    assert body["call_summary"]["llm_cost"] == Decimal("3E-8")
    bad = await client.get("/api/v1/calls/sid/CA-off/costs", headers=AUTH, params={"after": "1_0"})
    assert bad.status == 422


@pytest.mark.parametrize("query", [
    {"limit": "0"}, {"limit": "1001"}, {"limit": "-1"}, {"limit": "abc"}, {"limit": "1_0"},
    {"limit": "\u0661\u0660"}, {"limit": "9" * 5000}, {"limit": " 10"},
    {"after": "cGxhdGZvcm06bm9uZQ"},  # platform:none, not one of this call's events
    {"after": "cGxhdGZvcm06dTA"},  # platform:u0, an event of another call
])
async def test_bad_paging_parameters_are_422_on_both_costs_routes(
        aiohttp_client: Any, store: Store, query: dict[str, str]) -> None:
    settings = make_settings()
    await apply(store, settings, [usage("CA-a", "a0", 0, "llm", 1), usage("CA-b", "u0", 0, "llm", 1)])
    client = await api_for(aiohttp_client, store, settings)
    record = await get_json(client, "/api/v1/calls/sid/CA-a")
    for path in ("/api/v1/calls/sid/CA-a/costs", f"/api/v1/calls/{record['id']}/costs"):
        response = await client.get(path, headers=AUTH, params=query)
        assert response.status == 422, (path, query, await response.text())
        assert (await response.json())["error"] == "invalid_parameter"
    unknown = await client.get("/api/v1/calls/sid/CA-none/costs", headers=AUTH, params={"limit": "5"})
    assert unknown.status == 404


async def test_an_id_of_thousands_of_digits_is_an_unknown_call_not_a_500(aiohttp_client: Any, store: Store) -> None:
    client = await api_for(aiohttp_client, store, make_settings())
    for path in ("/api/v1/calls/" + "9" * 5000 + "/costs", "/api/v1/calls/" + "9" * 17 + "/costs",
                 "/api/v1/calls/" + "9" * 5000):
        response = await client.get(path, headers=AUTH)
        assert response.status == 404, path
