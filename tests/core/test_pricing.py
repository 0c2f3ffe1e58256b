"""Usage pricing (SPEC §11) as pure logic: the file, the lookup rule, pricing events, the
telephony rate card from the file, and order independence of priced records."""

import json
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import CallEvent, Cost, UsageLine
from call_ledger.core.indexes import RECORD_FIELDS
from call_ledger.core.instants import format_us, parse_iso
from call_ledger.core.money import NANO
from call_ledger.core.pricing import PriceTable, PricingError, format_table, parse_document, price_event
from call_ledger.core.rules import CallState, apply_event, render_record
from call_ledger.settings import load_pricing_file as load_file
from call_ledger.store import Entry, LoadedCall
from call_ledger.worker.apply import plan_call, wanted_meta
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
SID = "CA00000000000000000000000000000002"


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"component": "llm", "provider": "openai", "model": "gpt-4o-mini",
                            "usage_type": "input_tokens", "unit_price": "0.15", "unit_quantity": 1000000}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def table(*entries: dict[str, Any], currency: str = "USD", fx: frozenset[str] = frozenset()) -> PriceTable:
    return parse_document({"prices": list(entries)}, currency, fx)


def usage_event(at: str, *lines: tuple[str, str], event_id: str = "u1", component: str = "llm",
                provider: str = "openai", model: str | None = "gpt-4o-mini", **fields: Any) -> CallEvent:
    instant = parse_iso(at)
    return CallEvent(source="platform", event_id=event_id, call_sid=SID, type="call.usage",
                     occurred_at=instant.text, occurred_us=instant.us, **fields,
                     usage=tuple(UsageLine(component=component, provider=provider, model=model,
                                           usage_type=kind, usage_amount=amount) for kind, amount in lines))


def priced_nano(event: CallEvent, prices: PriceTable) -> list[int]:
    return [cost.amount_nano for cost in price_event(event, prices).costs]


# -- the file ----------------------------------------------------------------------------------


def test_example_file_loads_and_prices_exactly() -> None:
    prices = load_file(ROOT / "examples" / "pricing.yaml", "USD", {"EUR"})
    assert len(prices) == 9
    event = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "8200"), ("output_tokens", "130"))
    # 8200 x 0.15 / 10^6 = 0.00123; 130 x 0.60 / 10^6 = 0.000078
    assert priced_nano(event, prices) == [1_230_000, 78_000]


def test_yaml_numbers_are_read_from_their_text_never_through_a_float(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("prices:\n  - {component: tts, provider: p, usage_type: characters, unit_price: 0.1000000007,"
                    " effective_from: 2026-01-01T00:00:00.5Z}\n")
    [only] = load_file(path, "USD", set()).entries
    assert only.unit_price == Decimal("0.1000000007")
    assert only.effective_from == "2026-01-01T00:00:00.5Z"  # a YAML timestamp keeps its precision


def test_json_file_by_extension_and_by_content(tmp_path: Path) -> None:
    doc = json.dumps({"prices": [entry()]}).replace('"0.15"', "0.15")  # a JSON number: Decimal, not float
    for name in ("p.json", "prices.conf"):
        (tmp_path / name).write_text(doc)
        [only] = load_file(tmp_path / name, "USD", set()).entries
        assert only.unit_price == Decimal("0.15")


def test_defaults_model_any_quantity_one_ledger_currency_always() -> None:
    [only] = table({"component": "stt", "provider": "deepgram", "usage_type": "seconds",
                    "unit_price": "0.0043"}, currency="EUR").entries
    assert (only.model, only.unit_quantity, only.currency, only.effective_from) == ("*", 1, "EUR", None)


def test_a_date_alone_is_midnight_utc() -> None:
    [only] = table(entry(effective_from="2026-06-01")).entries
    assert only.effective_from == "2026-06-01T00:00:00Z"


@pytest.mark.parametrize(("bad", "expected"), [
    (entry(component="video"), "prices[0].component (video/openai/gpt-4o-mini/input_tokens): unknown component"),
    (entry(unit_price="0.1x"), "prices[0].unit_price (llm/openai/gpt-4o-mini/input_tokens): not a decimal"),
    (entry(unit_price="NaN"), "prices[0].unit_price (llm/openai/gpt-4o-mini/input_tokens): not a finite"),
    (entry(unit_price=True), "prices[0].unit_price (llm/openai/gpt-4o-mini/input_tokens): must be a decimal"),
    (entry(unit_price="-0.15"), "prices[0].unit_price (llm/openai/gpt-4o-mini/input_tokens): negative price -0.15"),
    (entry(unit_quantity=0), "prices[0].unit_quantity (llm/openai/gpt-4o-mini/input_tokens): must be a positive"),
    (entry(unit_quantity="-3"), "prices[0].unit_quantity (llm/openai/gpt-4o-mini/input_tokens): must be a positive"),
    (entry(unit_quantity="many"), "prices[0].unit_quantity (llm/openai/gpt-4o-mini/input_tokens): not a decimal"),
    (entry(effective_from="yesterday"), "prices[0].effective_from (llm/openai/gpt-4o-mini/input_tokens): must be an"),
    (entry(effective_from="2026-02-30T00:00:00Z"), "prices[0].effective_from"),
    (entry(currency="GBP"), "prices[0].currency (llm/openai/gpt-4o-mini/input_tokens): GBP has no LEDGER_FX_RATES"),
    (entry(currency="dollars"), "prices[0].currency (llm/openai/gpt-4o-mini/input_tokens): currency must be"),
    (entry(unit_prize="0.15"), "prices[0].unit_prize (llm/openai/gpt-4o-mini/input_tokens): unknown key"),
    (entry(provider=""), "prices[0].provider (llm//gpt-4o-mini/input_tokens): must be non-empty text"),
    (entry(usage_type=None), "prices[0].usage_type (llm/openai/gpt-4o-mini/?): is required"),
    (entry(unit_price=None), "prices[0].unit_price (llm/openai/gpt-4o-mini/input_tokens): is required"),
    ("not a mapping", "prices[0]: must be a mapping"),
])
def test_start_up_refuses_each_kind_of_bad_entry_with_one_line_naming_the_entry_and_key(
        tmp_path: Path, bad: Any, expected: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"prices": [entry(model="other"), bad]}))  # a good entry first: index 1
    with pytest.raises(ValidationError) as caught:
        make_settings(pricing_file=str(path))
    [error] = caught.value.errors()
    assert error["loc"] == ("pricing_file",)  # reported as LEDGER_PRICING_FILE by the CLI
    [line] = error["msg"].removeprefix("Value error, ").splitlines()
    assert line.startswith(expected.replace("prices[0]", "prices[1]")), line


def test_a_duplicate_entry_names_both() -> None:
    same_instant = "2026-01-01T00:00:00.000Z"
    with pytest.raises(PricingError) as caught:
        table(entry(effective_from="2026-01-01"), entry(unit_price="0.2", effective_from=same_instant))
    [line] = caught.value.problems
    assert line.startswith("prices[1] (llm/openai/gpt-4o-mini/input_tokens): duplicate of prices[0]")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    with pytest.raises(PricingError) as caught:
        parse_document({"prices": [entry(), entry(component="vid", unit_price="-1"), entry(unit_quantity=0)],
                        "extra": 1}, "USD", set())
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("unknown top-level key 'extra'")
    assert [p.split(" ")[0] for p in problems[1:]] == [
        "prices[1].component", "prices[1].unit_price", "prices[2].unit_quantity"]


@pytest.mark.parametrize(("text", "expected"), [
    ("prices: [", "not valid YAML"),
    ("{\"prices\": [}", "not valid JSON"),
    ("- a\n- b\n", "the file must be a mapping"),
    ("prices: 3\n", "`prices` must be a list"),
    ("prices:\n  - component: llm\n    component: tts\n", "given twice"),
])
def test_files_that_do_not_parse(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "prices.txt"  # no telling extension: JSON when it starts with "{", else YAML
    path.write_text(text)
    with pytest.raises(PricingError, match=expected):
        load_file(path, "USD", set())


def test_settings_refuse_a_bad_file_with_one_line_per_problem_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"prices": [entry(unit_price="-1"), entry(currency="GBP", model="x")]}))
    with pytest.raises(ValidationError) as caught:
        make_settings(pricing_file=str(path))
    [error] = caught.value.errors()
    assert error["loc"] == ("pricing_file",)
    lines = error["msg"].removeprefix("Value error, ").splitlines()
    assert [line.split(" ")[0] for line in lines] == ["prices[0].unit_price", "prices[1].currency"]
    # ... and accept it once LEDGER_FX_RATES converts GBP and the price is fixed.
    path.write_text(yaml.safe_dump({"prices": [entry(), entry(currency="GBP", model="x")]}))
    assert len(make_settings(pricing_file=str(path), fx_rates="GBP=1.27").pricing) == 2


def test_settings_without_a_file_have_an_empty_table_and_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert len(make_settings().pricing) == 0
    with pytest.raises(ValidationError, match="cannot be read"):
        make_settings(pricing_file=str(tmp_path / "missing.yaml"))


def test_table_prints_readable_columns() -> None:
    text = format_table(table(entry(), entry(model="*", unit_price="1", unit_quantity=3)))
    header, *rows = text.splitlines()
    assert header.split() == ["component", "provider", "model", "usage_type", "unit_price", "currency",
                              "unit_quantity", "effective_from", "unit_cost"]
    assert rows[0].split() == ["llm", "openai", "*", "input_tokens", "1", "USD", "3", "always",
                               "0.3333333333333333333333333333"]
    assert rows[1].split() == ["llm", "openai", "gpt-4o-mini", "input_tokens", "0.15", "USD", "1000000", "always",
                               "0.00000015"]


# -- the lookup rule ---------------------------------------------------------------------------

CHANGE = "2026-06-01T00:00:00Z"
PRICES = table(
    entry(unit_price="1", unit_quantity=1),                                # exact model, always
    entry(unit_price="2", unit_quantity=1, effective_from=CHANGE),         # exact model, from June
    entry(model="*", unit_price="10", unit_quantity=1),                    # any model, always
    entry(model="o9", unit_price="7", unit_quantity=1, effective_from="2027-01-01T00:00:00Z"),  # not yet
)


@pytest.mark.parametrize(("at", "model", "unit"), [
    ("2026-05-31T23:59:59.999999Z", "gpt-4o-mini", 1),  # 1 µs before the change: the older price
    (CHANGE, "gpt-4o-mini", 2),                          # exactly at effective_from: the new one
    ("2026-12-31T00:00:00Z", "gpt-4o-mini", 2),
    ("2026-12-31T00:00:00Z", "gpt-4o", 10),              # no exact entry: the provider's "*"
    ("2026-12-31T00:00:00Z", None, 10),                  # no model given: "*"
    ("2026-12-31T23:59:59.999999Z", "o9", 10),           # exact entry not yet in effect: falls back to "*"
    ("2027-01-01T00:00:00Z", "o9", 7),
])
def test_the_entry_in_effect_at_occurred_at_prices_the_line(at: str, model: str | None, unit: int) -> None:
    assert priced_nano(usage_event(at, ("input_tokens", "3"), model=model), PRICES) == [3 * unit * NANO]


def test_an_exact_entry_takes_over_from_any_model_only_once_in_effect() -> None:
    prices = table(entry(model="*", unit_price="10", unit_quantity=1),
                   entry(unit_price="1", unit_quantity=1, effective_from=CHANGE))
    assert priced_nano(usage_event("2026-05-01T00:00:00Z", ("input_tokens", "1")), prices) == [10 * NANO]
    assert priced_nano(usage_event(CHANGE, ("input_tokens", "1")), prices) == [NANO]


def test_several_usage_lines_become_one_cost_each_with_their_detail() -> None:
    prices = table(entry(), entry(usage_type="output_tokens", unit_price="0.6"))
    event = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1234"), ("output_tokens", "56.5"))
    priced = price_event(event, prices)
    assert priced.usage == ()
    first, second = priced.costs
    assert (first.amount_nano, second.amount_nano) == (185_100, 33_900)  # 1234 x 0.15e-6; 56.5 x 0.6e-6
    assert first.model_dump() == {
        "component": "llm", "amount_nano": 185_100, "currency": "USD", "provider": "openai",
        "model": "gpt-4o-mini", "usage_type": "input_tokens", "usage_amount": "1234", "unit_cost": "0.00000015",
        "price_entry": {"component": "llm", "provider": "openai", "model": "gpt-4o-mini",
                        "usage_type": "input_tokens", "effective_from": None, "unit_price": "0.15",
                        "unit_quantity": "1000000", "currency": "USD"}}
    # Priced events round-trip through their JSON (the journal) unchanged.
    assert CallEvent.model_validate_json(priced.model_dump_json()) == priced


def test_amounts_round_half_even_per_line_and_exactly_for_non_terminating_prices() -> None:
    prices = table(entry(unit_price="1", unit_quantity=3), entry(usage_type="half", unit_price="0.0000000005",
                                                                   unit_quantity=1))
    # 1/3 of a unit = 333333333.33 nano -> 333333333; 2 units = 666666666.67 -> 666666667
    assert priced_nano(usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1"), ("input_tokens", "2")),
                       prices) == [333_333_333, 666_666_667]
    # exact halves: 0.5 nano -> 0, 1.5 -> 2, 2.5 -> 2 (half-even)
    assert priced_nano(usage_event("2026-11-24T10:00:00Z", ("half", "1"), ("half", "3"), ("half", "5")),
                       prices) == [0, 2, 2]


def test_a_missing_price_is_unapplicable_naming_the_key_and_time() -> None:
    event = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1"), ("cached_tokens", "5"))
    with pytest.raises(Unapplicable) as caught:
        price_event(event, table(entry()))
    assert str(caught.value) == ("no price for llm/openai/gpt-4o-mini/cached_tokens at 2026-11-24T10:00:00Z "
                                 "in LEDGER_PRICING_FILE")
    with pytest.raises(Unapplicable, match=r"input_tokens at .* \(LEDGER_PRICING_FILE is not set\); no price"):
        price_event(event, PriceTable())


def test_a_line_priced_above_the_bound_is_refused_not_retried() -> None:
    """Deterministic: no redelivery changes the price frozen at occurred_at, so the event is
    dead-lettered at once (Refused), like every other bound, not after LEDGER_MAX_DELIVERIES."""
    pricey = table(entry(unit_price="1000000", unit_quantity=1))
    event = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1001"))
    with pytest.raises(Refused, match=r"1001 units priced .* is above 1000000000 USD"):
        price_event(event, pricey)
    missing_and_over = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1001"), ("cached_tokens", "1"))
    with pytest.raises(Refused, match=r"no price for .*cached_tokens"):
        price_event(missing_and_over, pricey)


def test_an_event_that_reports_a_cost_is_not_priced() -> None:
    cost = Cost(component="llm", amount_nano=5, currency="USD", provider="openai")
    event = usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1000000"), costs=(cost,))
    assert price_event(event, table(entry())) is event
    assert price_event(event, PriceTable()) is event  # no price needed either


def test_priced_costs_in_another_currency_are_converted_where_every_cost_is() -> None:
    settings = make_settings(fx_rates="EUR=1.08")
    prices = table(entry(currency="EUR", unit_price="1", unit_quantity=3), fx=frozenset({"EUR"}))
    state = CallState()
    apply_event(state, price_event(usage_event("2026-11-24T10:00:00Z", ("input_tokens", "1")), prices), settings.policy)
    # 333333333 nano EUR x 1.08 = 359999999.64 -> 360000000 nano USD
    assert render_record(SID, 1, state, settings.policy)["llm_cost"] == 360_000_000


# -- telephony rate card in the file -----------------------------------------------------------


def telephony_record(settings: Any, started: str = "2026-03-01T10:00:00Z", direction: str = "outbound") -> Any:
    start, end = parse_iso(started), parse_iso(started.replace("10:00:00", "10:02:30"))
    state = CallState()
    for event_id, instant, status in (("t1", start, "ongoing"), ("t2", end, "completed")):
        apply_event(state, CallEvent(source="twilio", event_id=event_id, call_sid=SID, type="test",
                                     occurred_at=instant.text, occurred_us=instant.us, status=status,
                                     direction=direction, duration=150 if status == "completed" else None),
                    settings.policy)
    return render_record(SID, 1, state, settings.policy)["telephony_cost"]


def test_telephony_entries_price_the_estimate_by_the_calls_start_and_win_over_the_variable(
        tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"prices": [
        {"component": "telephony", "provider": "twilio", "usage_type": "outbound_minutes", "unit_price": "0.014"},
        {"component": "telephony", "provider": "twilio", "usage_type": "outbound_minutes", "unit_price": "0.02",
         "effective_from": "2026-06-01T00:00:00Z"},
        {"component": "telephony", "provider": "twilio", "usage_type": "inbound_minutes", "unit_price": "0.01",
         "currency": "EUR"},
    ]}))
    settings = make_settings(pricing_file=str(path), fx_rates="EUR=1.5",
                             telephony_rates="twilio:outbound=0.5,twilio:inbound=0.5,telnyx:outbound=0.1")
    assert telephony_record(settings) == 3 * 14_000_000                      # 3 started minutes x 0.014
    assert telephony_record(settings, "2026-07-01T10:00:00Z") == 3 * 20_000_000  # the later entry
    assert telephony_record(settings, direction="inbound") == 45_000_000       # 3 x 0.01 EUR x 1.5
    # The variable still applies where the file has no entry (no telnyx entries here).
    without_file = make_settings(telephony_rates="twilio:outbound=0.5")
    assert telephony_record(without_file) == 1_500_000_000


# -- any order, any duplication: priced records are exact and order-independent ------------------

PROVIDERS = ("openai", "anthropic")
MODELS = ("m1", "m2")
KINDS = ("input_tokens", "output_tokens")
BASE_US = parse_iso("2026-11-24T10:00:00Z").us
PRICE = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def rate_tables(draw: Any) -> list[dict[str, Any]]:
    """Entries for random keys; every key has an "always" "*" entry so that every line has a
    price, plus dated and exact-model entries that may or may not be in effect."""
    entries: dict[tuple[Any, ...], dict[str, Any]] = {}
    for provider in PROVIDERS:
        for kind in KINDS:
            entries[(provider, "*", kind, None)] = entry(provider=provider, model="*", usage_type=kind,
                                                         unit_price=str(draw(PRICE)), unit_quantity=1000)
    for _ in range(draw(st.integers(0, 12))):
        provider, model, kind = draw(st.sampled_from(PROVIDERS)), draw(st.sampled_from(("*", *MODELS))), \
            draw(st.sampled_from(KINDS))
        offset = draw(st.none() | st.integers(-3600, 3600).map(lambda s: s * 1_000_000))
        when = None if offset is None else format_us(BASE_US + offset)
        entries[(provider, model, kind, when)] = entry(
            provider=provider, model=model, usage_type=kind, unit_price=str(draw(PRICE)),
            unit_quantity=draw(st.sampled_from([1, 3, 1000, 1_000_000, 7])), effective_from=when)
    return list(entries.values())


def model_price(raw: list[dict[str, Any]], provider: str, model: str, kind: str, at_us: int) -> dict[str, Any]:
    """Independent model of the rule, by brute force, in Decimal."""
    def in_effect(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
        dated = [(parse_iso(e["effective_from"]).us if "effective_from" in e else -1, e) for e in candidates]
        dated = [(us, e) for us, e in dated if us <= at_us]
        return max(dated, key=lambda d: d[0])[1] if dated else None
    same = [e for e in raw if (e["provider"], e["usage_type"]) == (provider, kind)]
    chosen = in_effect([e for e in same if e["model"] == model]) or in_effect([e for e in same if e["model"] == "*"])
    assert chosen is not None
    return chosen


def model_amount(chosen: dict[str, Any], amount: str) -> int:
    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(amount) * Decimal(chosen["unit_price"]) * NANO / Decimal(chosen["unit_quantity"])
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@st.composite
def usage_events(draw: Any) -> list[CallEvent]:
    events = []
    for i in range(draw(st.integers(1, 8))):
        at = format_us(BASE_US + draw(st.integers(-3600, 3600)) * 1_000_000 + draw(st.sampled_from([-1, 0, 1])))
        lines = draw(st.lists(st.tuples(st.sampled_from(KINDS), st.decimals(
            min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False).map(str)),
            min_size=1, max_size=3))
        events.append(usage_event(at, *lines, event_id=f"u{i:02d}", provider=draw(st.sampled_from(PROVIDERS)),
                                  model=draw(st.sampled_from(MODELS))))
    return events


def fold(deliveries: list[CallEvent], settings: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Fold as the worker does (load the touched fields, plan_call, keep what the commit
    writes, deduplicated by journal key); the record and the journal."""
    core: bytes | None = None
    fields: dict[str, bytes] = {}
    journal: dict[str, bytes] = {}
    for i, e in enumerate(deliveries):
        entry = Entry(f"{i}-0", e.model_dump_json().encode())
        keys, meta = wanted_meta([(entry, e)])  # and every register, as the worker loads them
        names = [*RECORD_FIELDS, *meta]
        loaded = LoadedCall(len(journal), core, {n: fields.get(n) for n in names}, 1,
                            frozenset(set(journal) & set(keys)))
        plan = plan_call(loaded, [(entry, e)], settings)
        assert not plan.failed, plan.failed
        core = plan.state.core_json()
        fields.update(plan.state.changed_fields())
        journal.update((key, raw) for key, _, raw in plan.new_events)
    return render_record(SID, 1, CallState.from_fields(core, fields), settings.policy), journal  # type: ignore[arg-type]


@hsettings(max_examples=150, deadline=None)
@given(raw=rate_tables(), events=usage_events(), data=st.data())
def test_priced_records_equal_an_independent_model_in_any_order(
        raw: list[dict[str, Any]], events: list[CallEvent], data: Any) -> None:
    settings = make_settings(pricing_file=parse_document({"prices": raw}, "USD", set()))
    expected, journal = fold(events, settings)
    model_total = sum(model_amount(model_price(raw, e.usage[0].provider or "", line.model or "", line.usage_type,
                                               e.occurred_us), line.usage_amount)
                      for e in events for line in e.usage)
    assert expected["llm_cost"] == model_total
    deliveries = events + data.draw(st.lists(st.sampled_from(events), max_size=6))
    shuffled = data.draw(st.permutations(deliveries))
    assert fold(shuffled, settings) == (expected, journal)
