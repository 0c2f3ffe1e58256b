"""Usage pricing through intake, the worker and the CLI: usage-only call.usage at intake,
pricing at apply time (frozen in the journal), a missing price dead-lettered then replayed,
and `call-ledger pricing check` / start-up with a bad file as real processes."""

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from call_ledger.core.errors import InvalidEvent
from call_ledger.core.events import CallEvent, UsageLine
from call_ledger.core.rules import render_record
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.cli import run_cli
from tests.support.platform_requests import SOURCE, request
from tests.support.prices import SID, price, usage_payload, write_prices
from tests.support.redis_server import RedisServer
from tests.support.settings import AUTH, make_settings
from tests.support.signing import post_platform

ROOT = Path(__file__).resolve().parents[2]


# -- intake --------------------------------------------------------------------------------------


def parsed(data: dict[str, Any], raw: bytes | None = None) -> CallEvent:
    event = SOURCE.parse(request(usage_payload(**data), raw=raw))
    assert event is not None
    return event


def test_usage_only_event_carries_its_line_and_no_cost() -> None:
    event = parsed({"usage_type": "input_tokens", "usage_amount": "8200"})
    assert event.costs == ()
    assert event.usage == (UsageLine(component="llm", provider="openai", model="gpt-4o-mini",
                                     usage_type="input_tokens", usage_amount="8200"),)


def test_usage_list_and_json_numbers_are_exact_decimals() -> None:
    raw = (b'{"type":"call.usage","call_sid":"CA1","occurred_at":"2026-11-24T10:00:00Z","data":{"component":"stt",'
           b'"provider":"deepgram","usage":[{"usage_type":"seconds","usage_amount":12.100000001},'
           b'{"usage_type":"minutes","usage_amount":3}]}}')
    event = parsed({}, raw=raw)
    assert [(u.usage_type, u.usage_amount, u.model) for u in event.usage] == [
        ("seconds", "12.100000001", None), ("minutes", "3", None)]


def test_a_cost_beside_usage_counts_and_the_usage_is_detail() -> None:
    event = parsed({"cost": "0.01", "usage_type": "input_tokens", "usage_amount": 100})
    [cost] = event.costs
    assert (cost.amount_nano, cost.provider, cost.model, cost.usage_type, cost.usage_amount) == (
        10_000_000, "openai", "gpt-4o-mini", "input_tokens", "100")
    assert event.usage == ()
    listed = parsed({"cost": "0.01", "usage": [{"usage_type": "a", "usage_amount": "1"},
                                               {"usage_type": "b", "usage_amount": "2"}]})
    assert listed.costs[0].usage_type is None and [u.usage_type for u in listed.usage] == ["a", "b"]


@pytest.mark.parametrize(("data", "message"), [
    ({"usage_type": "input_tokens", "usage_amount": "-1"}, "usage_amount must be non-negative"),
    ({"usage_type": "input_tokens", "usage_amount": "12,5"}, "usage_amount is not a decimal"),
    ({"usage_type": "input_tokens", "usage_amount": "NaN"}, "usage_amount is not a decimal number"),
    ({"usage_type": "input_tokens", "usage_amount": True}, "usage_amount must be a decimal"),
    ({"usage_type": "input_tokens", "usage_amount": "1e400"}, "implausibly large"),
    ({"usage_type": "input_tokens", "usage_amount": "0.0000000001"}, "more than 9 decimals"),
    ({"usage_type": "input_tokens"}, "go together"),
    ({"usage_amount": "3"}, "go together"),
    ({"usage": []}, "non-empty list"),
    ({"usage": {"usage_type": "x", "usage_amount": 1}}, "non-empty list"),
    ({"usage": [{"usage_type": "x"}]}, r"data.usage\[0\] must be an object with exactly"),
    ({"usage": [{"usage_type": "x", "usage_amount": 1, "extra": 2}]}, "exactly usage_type and usage_amount"),
    ({"usage": [{"usage_type": "", "usage_amount": 1}]}, r"data.usage\[0\].usage_type"),
    ({"usage": [{"usage_type": "x", "usage_amount": "-2"}]}, r"data.usage\[0\].usage_amount must be non-negative"),
    ({"usage_type": "a", "usage_amount": 1, "usage": [{"usage_type": "b", "usage_amount": 1}]}, "not both"),
    ({"usage_type": "a", "usage_amount": 1, "provider": None}, "data.provider is required"),
    ({"usage_type": "a", "usage_amount": 1, "model": 4}, "data.model must be a non-empty string"),
    ({}, "data.cost must be a decimal string"),
])
def test_malformed_usage_is_invalid(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parsed(data)


async def test_http_422_for_bad_usage_and_nothing_stored(client: Any, store: Store) -> None:
    response = await post_platform(client, usage_payload(usage=[]), "msg_bad")
    assert response.status == 422
    assert "data.usage" in (await response.json())["detail"]
    assert await store.redis.xlen(store.stream) == 0


# -- the worker ----------------------------------------------------------------------------------


async def test_usage_is_priced_at_apply_time_and_shown_in_events(
        aiohttp_client: Any, store: Store, tmp_path: Path) -> None:
    from call_ledger.app import create_app

    settings = make_settings(pricing_file=write_prices(tmp_path / "p.yaml", price("0.15"),
                                                       price("0.6", "output_tokens")))
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    usage = [{"usage_type": "input_tokens", "usage_amount": 8200}, {"usage_type": "output_tokens",
                                                                     "usage_amount": "130"}]
    assert (await post_platform(client, usage_payload(usage=usage), "msg_u1")).status == 200
    assert (await post_platform(client, usage_payload(cost="0.1"), "msg_c1")).status == 200
    assert await Consumer(store, settings, Metrics()).run_burst() == 2

    record = await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json()
    assert record["llm_cost"] == 1.408  # 8200 x 0.15/1000 + 130 x 0.6/1000 + 0.1 reported
    events = (await (await client.get(f"/api/v1/calls/sid/{SID}/events", headers=AUTH)).json())["events"]
    priced = next(e for e in events if e["event_id"] == "msg_u1")
    assert "usage" not in priced
    assert [(c["amount_nano"], c["usage_amount"], c["unit_cost"], c["price_entry"]["unit_price"])
            for c in priced["costs"]] == [(1_230_000_000, "8200", "0.00015", "0.15"),
                                          (78_000_000, "130", "0.0006", "0.6")]
    reported = next(e for e in events if e["event_id"] == "msg_c1")
    assert reported["costs"][0]["provider"] == "openai" and "price_entry" not in reported["costs"][0]


async def test_a_file_edited_between_two_events_changes_no_applied_cost(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    before = make_settings(pricing_file=write_prices(path, price("1")))
    first = parsed({"usage_type": "input_tokens", "usage_amount": "1000"}).model_copy(update={"event_id": "u1"})
    await store.append(first.model_dump_json().encode())
    assert await Consumer(store, before, Metrics()).run_burst() == 1

    after = make_settings(pricing_file=write_prices(path, price("3")))  # the same entry, edited in place
    second = first.model_copy(update={"event_id": "u2"})
    for event in (second, first):  # the first one again: a redelivery, a duplicate
        await store.append(event.model_dump_json().encode())
    assert await Consumer(store, after, Metrics()).run_burst() == 2

    found = await store.get_call(SID)
    assert found is not None
    assert render_record(SID, found[0], found[1], after.policy)["llm_cost"] == 4 * 10**9
    journal = {e["event_id"]: e for e in map(orjson.loads, await store.all_events(SID))}
    assert journal["u1"]["costs"][0]["price_entry"]["unit_price"] == "1"
    assert journal["u1"]["costs"][0]["unit_cost"] == "0.001"
    assert journal["u2"]["costs"][0]["price_entry"]["unit_price"] == "3"


@pytest.mark.real_redis
async def test_a_missing_price_is_dead_lettered_then_replayed_and_applied_once(
        real_store: Store, redis_server: RedisServer, tmp_path: Path) -> None:
    store, path = real_store, tmp_path / "p.yaml"
    missing = make_settings(redis_url=redis_server.url, consumer_name="w1", max_deliveries=2,
                            pricing_file=write_prices(path, price("0.15")))
    event = parsed({"usage": [{"usage_type": "input_tokens", "usage_amount": "2000"},
                              {"usage_type": "cached_tokens", "usage_amount": "500"}]})
    await store.append(event.model_dump_json().encode())
    consumer = Consumer(store, missing, Metrics())
    await consumer.run_burst()  # delivery 1: fails, stays pending
    assert await consumer.run_burst(claim_idle_ms=0) == 1  # delivery 2 = max: dead-lettered
    [dead] = await store.dead_letters()
    assert dead["reason"] == ("no price for llm/openai/gpt-4o-mini/cached_tokens at 2026-11-24T10:02:00Z "
                              "in LEDGER_PRICING_FILE")
    assert await store.group_stats() == (0, 0)
    assert await store.get_call(SID) is None  # nothing half-applied: not even the priced line

    fixed = make_settings(redis_url=redis_server.url, consumer_name="w2",
                          pricing_file=write_prices(path, price("0.15"), price("0.075", "cached_tokens")))
    await store.replay_dead()
    await store.append(event.model_dump_json().encode())  # and a late redelivery of the same event
    assert await Consumer(store, fixed, Metrics()).run_burst() == 2
    found = await store.get_call(SID)
    assert found is not None
    record = render_record(SID, found[0], found[1], fixed.policy)
    assert record["llm_cost"] == 337_500_000  # 2000 x 0.15/1000 + 500 x 0.075/1000, once
    assert len(await store.all_events(SID)) == 1
    assert await store.dead_letters() == [] and await store.group_stats() == (0, 0)


# -- the CLI -------------------------------------------------------------------------------------


def test_pricing_check_prints_the_table_of_a_good_file() -> None:
    result = run_cli("pricing", "check", str(ROOT / "examples" / "pricing.yaml"), LEDGER_FX_RATES="EUR=1.08")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["component", "provider", "model", "usage_type"]
    assert len(rows) == 9
    assert ["llm", "openai", "gpt-4o-mini", "input_tokens", "0.15", "USD", "1000000", "2026-01-01T00:00:00Z",
            "0.00000015"] in [row.split() for row in rows]


def test_pricing_check_exits_2_listing_every_problem(tmp_path: Path) -> None:
    path = write_prices(tmp_path / "bad.yaml", price("-1"), price("x", model="m2"), price("1", currency="GBP"))
    result = run_cli("pricing", "check", path)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 2)[2].split(" ")[0] for line in lines] == [
        "prices[0].unit_price", "prices[1].unit_price", "prices[2].currency"]


def test_service_start_up_refuses_a_bad_file_one_line_per_problem(tmp_path: Path) -> None:
    path = write_prices(tmp_path / "bad.json", price("1"), price("1"), {**price("1"), "component": "video"})
    Path(path).write_text(json.dumps(yaml.safe_load(Path(path).read_text())))
    result = run_cli("api", LEDGER_PRICING_FILE=path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "call-ledger: invalid LEDGER_PRICING_FILE: prices[1] (llm/openai/gpt-4o-mini/input_tokens): duplicate of "
        "prices[0] (same component, provider, model, usage_type and effective_from)",
        "call-ledger: invalid LEDGER_PRICING_FILE: prices[2].component (video/openai/gpt-4o-mini/input_tokens): "
        "unknown component 'video' (one of llm, tts, stt, telephony)",
    ]
