"""The ledger's rules (SPEC §5) as pure functions: no Redis, no HTTP."""

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.indexes import RECORD_FIELDS
from call_ledger.core.instants import parse_iso
from call_ledger.core.money import NANO, parse_amount
from call_ledger.core.rules import CallState, apply_event, record_json, render_record
from call_ledger.store import Entry, LoadedCall
from call_ledger.worker.apply import plan_call, wanted_meta
from tests.support.settings import make_settings

SID = "CA00000000000000000000000000000001"
SETTINGS = make_settings()


def event(event_id: str, at: str, source: str = "platform", **fields: Any) -> CallEvent:
    instant = parse_iso(at)
    return CallEvent(source=source, event_id=event_id, call_sid=SID, type="test",
                     occurred_at=instant.text, occurred_us=instant.us, **fields)


def cost(component: str, amount: str, currency: str = "USD") -> Cost:
    return Cost(component=component, amount_nano=parse_amount(amount), currency=currency)


def record_of(events: list[CallEvent], settings: Any = SETTINGS) -> dict[str, Any]:
    state = CallState()
    for e in events:
        apply_event(state, e, settings.policy)
    return render_record(SID, 7, state, settings.policy)


def test_record_has_exactly_the_eighteen_keys_of_the_schema() -> None:
    assert list(record_of([])) == [
        "call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status", "call_meta",
        "assistant_name", "flow_name", "duration", "started_at", "ended_at", "total_cost", "llm_cost",
        "tts_cost", "stt_cost", "telephony_cost", "cost_currency",
    ]


def test_record_without_status_events_is_initiated_with_defaults() -> None:
    record = record_of([event("m1", "2026-11-24T10:00:00Z", assistant_name="Bot")])
    assert record["status"] == "initiated"
    assert record["assistant_id"] == 0
    assert record["to_phone_number"] == record["customer_phone_number"] == ""
    assert record["call_meta"] == {}
    assert record["started_at"] is None and record["duration"] is None
    assert record["total_cost"] is None and record["cost_currency"] is None


def test_status_never_goes_backwards() -> None:
    record = record_of([
        event("a", "2026-11-24T10:00:05Z", status="ongoing"),
        event("b", "2026-11-24T10:00:09Z", status="ringing"),
    ])
    assert record["status"] == "ongoing"


def test_terminal_status_is_final_against_later_non_terminal_events() -> None:
    record = record_of([
        event("a", "2026-11-24T10:00:00Z", status="busy"),
        event("b", "2026-11-24T10:01:00Z", status="ongoing"),
    ])
    assert record["status"] == "busy"
    assert record["ended_at"] == "2026-11-24T10:00:00Z"


@pytest.mark.parametrize(("first", "second", "winner"), [
    ("failed", "completed", "completed"),
    ("busy", "failed", "failed"),
    ("no-answer", "busy", "busy"),
    ("canceled", "no-answer", "no-answer"),
])
def test_two_terminal_statuses_resolve_the_same_in_either_order(first: str, second: str, winner: str) -> None:
    a = event("a", "2026-11-24T10:00:00Z", status=first)
    b = event("b", "2026-11-24T10:00:30Z", status=second)
    assert record_of([a, b])["status"] == record_of([b, a])["status"] == winner


def test_times_and_duration_from_answer_and_hangup() -> None:
    record = record_of([
        event("c", "2026-11-24T10:05:00.250Z", status="completed"),
        event("a", "2026-11-24T10:00:00.123Z", status="ringing"),
        event("b", "2026-11-24T10:00:10.250Z", status="ongoing"),
    ])
    assert record["started_at"] == "2026-11-24T10:00:00.123Z"
    assert record["ended_at"] == "2026-11-24T10:05:00.250Z"
    assert record["duration"] == 290


def test_reported_duration_wins_over_timestamps_and_the_largest_is_kept() -> None:
    record = record_of([
        event("b", "2026-11-24T10:00:10Z", status="ongoing"),
        event("c", "2026-11-24T10:05:00Z", status="completed", duration=288),
        event("d", "2026-11-24T10:05:01Z", status="completed", duration=289),
    ])
    assert record["duration"] == 289
    assert record["ended_at"] == "2026-11-24T10:05:01Z"  # the latest of the deciding status


def test_terminal_call_never_answered_lasts_zero_seconds_and_ongoing_call_has_no_duration() -> None:
    assert record_of([event("a", "2026-11-24T10:00:00Z", status="no-answer")])["duration"] == 0
    assert record_of([event("a", "2026-11-24T10:00:00Z", status="ongoing")])["duration"] is None


def test_microsecond_precision_is_kept() -> None:
    record = record_of([event("a", "2018-02-02T22:25:27.521992Z", status="initiated")])
    assert record["started_at"] == "2018-02-02T22:25:27.521992Z"


def test_money_is_exact() -> None:
    record = record_of([
        event("a", "2026-11-24T10:00:00Z", costs=(cost("llm", "0.1"),)),
        event("b", "2026-11-24T10:00:01Z", costs=(cost("llm", "0.2"),)),
        event("c", "2026-11-24T10:00:02Z", costs=(cost("tts", "0.000000001"),)),
    ])
    assert record["llm_cost"] == 300_000_000
    assert record["total_cost"] == 300_000_001
    body = record_json(record)
    assert b'"llm_cost":0.3' in body and b'"total_cost":0.300000001' in body
    assert b'"tts_cost":0.000000001' in body and b'"stt_cost":null' in body


def test_negative_provider_price_is_a_cost() -> None:
    assert parse_amount("-0.01300") == 13_000_000


def test_foreign_currency_is_converted_half_even_to_nano_units() -> None:
    settings = make_settings(fx_rates="EUR=1.08")
    record = record_of([event("a", "2026-11-24T10:00:00Z", costs=(Cost(
        component="telephony", amount_nano=5, currency="EUR"),))], settings)
    assert record["telephony_cost"] == 5  # 5.4 → 5
    record = record_of([event("a", "2026-11-24T10:00:00Z", costs=(cost("telephony", "0.00015", "EUR"),))],
                       settings)
    assert record["telephony_cost"] == 162_000  # 0.000162
    assert record["cost_currency"] == "USD"


def test_cost_without_fx_rate_is_unapplicable_and_leaves_state_untouched() -> None:
    state = CallState()
    with pytest.raises(Unapplicable, match="EUR"):
        apply_event(state, event("a", "2026-11-24T10:00:00Z", status="ongoing",
                                 costs=(cost("llm", "1", "EUR"),)), SETTINGS.policy)
    assert state == CallState()


def test_rate_card_estimate_bills_started_minutes_once_terminal() -> None:
    settings = make_settings(telephony_rates="twilio:inbound=0.0085,twilio:outbound=0.014")
    calls = [
        event("a", "2026-11-24T10:00:00Z", source="twilio", status="ongoing", direction="outbound"),
    ]
    assert record_of(calls, settings)["telephony_cost"] is None  # not terminal yet
    calls.append(event("b", "2026-11-24T10:01:01Z", source="twilio", status="completed", duration=61))
    record = record_of(calls, settings)
    assert record["telephony_cost"] == 28_000_000  # 2 minutes x 0.014
    assert record["total_cost"] == 28_000_000


def test_reported_charge_replaces_the_estimate_whichever_arrived_first() -> None:
    settings = make_settings(telephony_rates="twilio:inbound=0.0085")
    charge = event("p", "2026-11-24T10:10:00Z", costs=(cost("telephony", "0.0042"),))
    end = event("b", "2026-11-24T10:01:01Z", source="twilio", status="completed", duration=61)
    assert record_of([charge, end], settings)["telephony_cost"] == 4_200_000
    assert record_of([end, charge], settings)["telephony_cost"] == 4_200_000


def test_unanswered_call_estimate_is_zero() -> None:
    settings = make_settings(telephony_rates="twilio:inbound=0.0085")
    record = record_of([event("a", "2026-11-24T10:00:00Z", source="twilio", status="busy")], settings)
    assert record["telephony_cost"] == 0 and record["cost_currency"] == "USD"


def test_latest_metadata_wins_and_call_meta_merges_key_by_key() -> None:
    old = event("m1", "2026-11-24T10:00:00Z", assistant_name="Old", call_meta={"a": 1, "b": 1})
    new = event("m2", "2026-11-24T10:00:05Z", assistant_name="New", call_meta={"b": 2, "c": 3})
    for order in ([old, new], [new, old]):
        record = record_of(order)
        assert record["assistant_name"] == "New"
        assert record["call_meta"] == {"a": 1, "b": 2, "c": 3}


def test_equal_timestamps_are_broken_by_the_larger_event_id() -> None:
    a = event("evt-a", "2026-11-24T10:00:00Z", flow_name="A")
    b = event("evt-b", "2026-11-24T10:00:00Z", flow_name="B")
    assert record_of([a, b])["flow_name"] == record_of([b, a])["flow_name"] == "B"


@pytest.mark.parametrize(("direction", "ours", "theirs"), [
    ("inbound", "+15551234567", "+15559876543"),
    ("outbound", "+15559876543", "+15551234567"),
    (None, "+15551234567", "+15559876543"),  # unknown direction reads as inbound
])
def test_numbers_are_derived_from_raw_from_to_and_direction(direction: str | None, ours: str, theirs: str) -> None:
    events = [event("a", "2026-11-24T10:00:00Z", source="telnyx", status="ongoing",
                    from_number="+15559876543", to_number="+15551234567")]
    if direction:  # direction arrives on another event, later or earlier
        events.append(event("b", "2026-11-24T09:59:59Z", source="telnyx", status="initiated", direction=direction))
    record = record_of(events)
    assert (record["to_phone_number"], record["customer_phone_number"]) == (ours, theirs)


def test_platform_view_of_numbers_is_taken_as_given() -> None:
    record = record_of([
        event("a", "2026-11-24T10:00:00Z", source="twilio", from_number="+1000", to_number="+2000"),
        event("m", "2026-11-24T09:00:00Z", to_phone_number="+15551234567", customer_phone_number="+15559876543"),
    ])
    assert record["to_phone_number"] == "+15551234567"
    assert record["customer_phone_number"] == "+15559876543"


# -- any order, any number of deliveries ---------------------------------------------------------

STATUS = st.sampled_from(["initiated", "ringing", "ongoing", "completed", "busy", "no-answer", "canceled", "failed"])
AMOUNT = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False)


@st.composite
def call_events(draw: Any) -> list[CallEvent]:
    count = draw(st.integers(min_value=1, max_value=12))
    events = []
    for i in range(count):
        at = f"2026-11-24T10:{draw(st.integers(0, 59)):02d}:{draw(st.integers(0, 3)):02d}Z"
        kind = draw(st.sampled_from(["status", "usage", "metadata", "provider"]))
        fields: dict[str, Any] = {}
        if kind == "status":
            fields["status"] = draw(STATUS)
            fields["duration"] = draw(st.none() | st.integers(0, 3600))
        elif kind == "usage":
            fields["costs"] = tuple(
                Cost(component=c, amount_nano=parse_amount(a), currency=cur)
                for c, a, cur in draw(st.lists(st.tuples(
                    st.sampled_from(["llm", "tts", "stt", "telephony"]), AMOUNT, st.sampled_from(["USD", "EUR"])),
                    min_size=1, max_size=2))
            )
        elif kind == "metadata":
            fields["assistant_name"] = draw(st.sampled_from(["A", "B", "C"]))
            fields["call_meta"] = draw(st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2))
        else:
            fields["direction"] = draw(st.sampled_from(["inbound", "outbound"]))
            fields["from_number"] = draw(st.sampled_from(["+1001", "+1002"]))
            fields["to_number"] = "+2002"
        source = "twilio" if kind in ("status", "provider") else "platform"
        events.append(event(f"e{i:02d}", at, source=source, **fields))
    return events


def fold_deliveries(deliveries: list[CallEvent], settings: Any) -> dict[str, Any]:
    """Fold in the worker's way, one delivery per batch: load only the fields the event
    touches (as `load_calls` does), plan, and keep what the commit would write."""
    core: bytes | None = None
    fields: dict[str, bytes] = {}
    applied: set[str] = set()
    for i, e in enumerate(deliveries):
        entry = Entry(f"{i}-0", e.model_dump_json().encode())
        keys, meta = wanted_meta([(entry, e)])  # and every register, as the worker loads them
        names = [*RECORD_FIELDS, *meta]
        loaded = LoadedCall(len(applied), core, {n: fields.get(n) for n in names}, 1, frozenset(applied & set(keys)))
        plan = plan_call(loaded, [(entry, e)], settings)
        core = plan.state.core_json()
        fields.update(plan.state.changed_fields())
        applied |= {key for key, _, _ in plan.new_events}
    return render_record(SID, 1, CallState.from_fields(core, fields), settings.policy)  # type: ignore[arg-type]


@hsettings(max_examples=200, deadline=None)
@given(events=call_events(), data=st.data())
def test_any_order_and_any_duplication_gives_the_same_record(events: list[CallEvent], data: Any) -> None:
    settings = make_settings(fx_rates="EUR=1.08", telephony_rates="twilio:inbound=0.01,twilio:outbound=0.02")
    expected = fold_deliveries(events, settings)
    deliveries = events + data.draw(st.lists(st.sampled_from(events), max_size=10))
    shuffled = data.draw(st.permutations(deliveries))
    assert fold_deliveries(shuffled, settings) == expected

    # Money is exact: each component equals the Decimal sum of its converted costs.
    for component in ("llm", "tts", "stt"):
        amounts = [Decimal(c.amount_nano) * (Decimal("1.08") if c.currency == "EUR" else 1)
                   for e in events for c in e.costs if c.component == component]
        rounded = [int(a.quantize(Decimal(1), rounding="ROUND_HALF_EVEN")) for a in amounts]
        assert expected[f"{component}_cost"] == (sum(rounded) if rounded else None)
    assert isinstance(expected["total_cost"], int | None)
    assert NANO == 10**9


def test_start_and_answer_times_reported_on_a_late_hangup_date_the_call() -> None:
    """Plivo with only hangup_url: ring/answer callbacks timed on arrival come after the hang-up."""
    start, answer = parse_iso("2026-11-24T10:00:00Z"), parse_iso("2026-11-24T10:00:05Z")
    record = record_of([
        event("h", "2026-11-24T10:04:52Z", source="plivo", status="completed", started_at=start.text,
              started_us=start.us, answered_at=answer.text, answered_us=answer.us),
        event("r", "2026-11-24T11:00:00Z", source="plivo", status="ringing"),
    ])
    assert record["started_at"] == "2026-11-24T10:00:00Z"
    assert record["duration"] == 287  # hang-up minus the reported answer


# -- SPEC §14: sums are bounded, not just amounts -------------------------------------------------

MAX = "1000000000"  # 10^9 currency units: MAX_AMOUNT_NANO


def test_a_component_may_reach_the_bound_but_not_pass_it() -> None:
    state = CallState()
    apply_event(state, event("a", "2026-11-24T10:00:00Z", costs=(cost("llm", "999999999.5"),)), SETTINGS.policy)
    apply_event(state, event("b", "2026-11-24T10:00:01Z", costs=(cost("llm", "0.5"),)), SETTINGS.policy)
    assert state.costs == {"llm": 10**18}
    before = repr(state)
    with pytest.raises(Refused, match="the call's llm cost would pass 1000000000 USD"):
        apply_event(state, event("c", "2026-11-24T10:00:02Z", costs=(cost("llm", "0.000000001"),)), SETTINGS.policy)
    assert repr(state) == before  # refused before any change


def test_the_total_of_the_components_is_bounded() -> None:
    state = CallState()
    apply_event(state, event("a", "2026-11-24T10:00:00Z", costs=(cost("llm", "600000000"),)), SETTINGS.policy)
    with pytest.raises(Refused, match="the call's total cost would pass 1000000000 USD"):
        apply_event(state, event("b", "2026-11-24T10:00:01Z", costs=(cost("tts", "400000000.000000001"),)),
                    SETTINGS.policy)
    assert state.costs == {"llm": 600 * 10**15}


def test_an_events_own_parts_are_bounded_whatever_the_call_holds() -> None:
    parts = tuple(cost("telephony", MAX) for _ in range(20))  # a Telnyx cost with 20 parts, or 20 usage lines
    with pytest.raises(Refused, match="the event's costs sum past 1000000000 USD"):
        apply_event(CallState(), event("a", "2026-11-24T10:00:00Z", costs=parts), SETTINGS.policy)


def test_the_bound_is_in_the_ledger_currency_after_conversion() -> None:
    settings = make_settings(fx_rates="EUR=2")
    state = CallState()
    with pytest.raises(Refused, match="the event's costs sum past 1000000000 USD"):  # 1.2e9 USD
        apply_event(state, event("a", "2026-11-24T10:00:00Z", costs=(cost("llm", "600000000", "EUR"),)),
                    settings.policy)


@given(st.lists(st.integers(min_value=0, max_value=10**18), min_size=1, max_size=40))
def test_no_sequence_of_bounded_amounts_takes_the_state_past_64_bits(amounts: list[int]) -> None:
    state = CallState()
    for i, amount in enumerate(amounts):
        component = ("llm", "tts", "stt", "telephony")[i % 4]
        try:
            apply_event(state, event(f"e{i}", "2026-11-24T10:00:00Z",
                                     costs=(Cost(component=component, amount_nano=amount, currency="USD"),)),
                        SETTINGS.policy)
        except Refused:
            pass
    assert sum(state.costs.values()) <= 10**18
    assert record_json(render_record(SID, 1, state, SETTINGS.policy))  # renders: no encoder overflows
    assert state.core_json()


def test_a_hang_up_whose_telephony_estimate_would_take_the_total_past_the_bound_is_refused() -> None:
    """The rate-card estimate counts in the call's total: a hang-up that makes it appear on a call
    already at the bound is refused like a cost would be."""
    settings = make_settings(telephony_rates="twilio:outbound=0.014")
    state = CallState()
    apply_event(state, event("u", "2026-11-24T10:00:00Z", costs=(cost("llm", MAX),)), settings.policy)
    apply_event(state, event("r", "2026-11-24T10:00:01Z", source="twilio", status="ringing",
                             direction="outbound"), settings.policy)
    with pytest.raises(Refused, match="with its telephony estimate would pass 1000000000 USD"):
        apply_event(state, event("h", "2026-11-24T10:05:00Z", source="twilio", status="completed",
                                 duration=290), settings.policy)
    assert state.status is not None and state.status[0] < 3  # still ringing: untouched
    # Without a rate there is no estimate, and nothing to refuse.
    free = CallState()
    apply_event(free, event("u", "2026-11-24T10:00:00Z", costs=(cost("llm", MAX),)), SETTINGS.policy)
    apply_event(free, event("h", "2026-11-24T10:05:00Z", source="twilio", status="completed", duration=290),
                SETTINGS.policy)
    assert render_record(SID, 1, free, SETTINGS.policy)["total_cost"] == 10**18
