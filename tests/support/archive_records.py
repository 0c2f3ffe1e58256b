"""Call records for the archive's tests: records as GET serves them, from real states (a hypothesis
strategy over every provider's shape), and one fixed record to vary."""

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import strategies as st

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import TERMINAL_STATUSES, CallEvent, Cost
from call_ledger.core.instants import parse_iso, text_at
from call_ledger.core.money import MAX_AMOUNT_NANO, NANO
from call_ledger.core.phones import to_e164
from call_ledger.core.policy import Policy
from call_ledger.core.rules import META_FIELD, CallState, apply_event, fix_estimate, record_json, render_record
from call_ledger.core.served import StoredCall, stored_record

POLICY = Policy(telephony_rates={(provider, direction): Decimal("0.0085") for provider in
                                 ("twilio", "telnyx", "vonage", "plivo") for direction in ("inbound", "outbound")})
ARCHIVED_AT = 1_800_000_000_123_456

# -- records made by the real code: events normalised as each source makes them, applied by the rules ----

HEX = "0123456789abcdef"
# Each provider's call ids, numbers (as the sources pass them through to_e164) and time precision:
# Twilio and Plivo give whole seconds, Vonage milliseconds, Telnyx microseconds.
PROVIDERS: dict[str, dict[str, Any]] = {
    "twilio": {
        "sid": st.text(HEX, min_size=32, max_size=32).map(lambda h: "CA" + h),
        "number": st.one_of(st.sampled_from(["+15551234567", "+442071838750", "anonymous", "Anonymous"]),
                            st.from_regex(r"client:[a-z]{1,12}", fullmatch=True),
                            st.from_regex(r"sip:[a-z0-9]{1,8}@[a-z]{1,8}\.sip\.twilio\.com", fullmatch=True)),
        "digits": 0,
    },
    "telnyx": {
        "sid": st.text(HEX, min_size=22, max_size=22).map(lambda h: "v3:" + h),
        "number": st.one_of(st.sampled_from(["+447700900123", "+13125550100"]),
                            st.from_regex(r"sip:[a-z0-9]{1,8}@sip\.telnyx\.com", fullmatch=True)),
        "digits": 6,
    },
    "vonage": {
        "sid": st.uuids().map(str),
        "number": st.one_of(st.sampled_from(["447700900123", "14155550100", "unknown"]),
                            st.from_regex(r"sip:[a-z0-9]{1,8}@sip\.example\.com", fullmatch=True)),
        "digits": 3,
    },
    "plivo": {
        "sid": st.uuids().map(str),
        "number": st.one_of(st.sampled_from(["14155551234", "+4930901820"]),
                            st.from_regex(r"sip:[a-z0-9]{1,8}@phone\.plivo\.com", fullmatch=True)),
        "digits": 0,
    },
}
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=16)  # quotes, backslashes, controls, é😀
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
CALL_META = st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10), JSONISH,
                            max_size=5)
# Microseconds within a second, with the zeros that make a fraction's last digits: `.100`, `.250000`.
MICROS = st.one_of(st.integers(0, 999_999), st.integers(0, 999).map(lambda ms: ms * 1000),
                   st.integers(0, 9).map(lambda tenth: tenth * 100_000), st.just(0))
SECONDS = st.integers(946_684_800, 4_102_444_800)  # 2000 to 2100
AMOUNT = st.one_of(st.just(0), st.integers(1, 10 * NANO), st.integers(0, MAX_AMOUNT_NANO // 3),
                   st.just(MAX_AMOUNT_NANO // 3))


@st.composite
def instants(draw: st.DrawFn, base: int, digits: int) -> tuple[str, int]:
    """An instant after `base` (seconds) as a source writes it at `digits` fraction digits."""
    us = (base + draw(st.integers(0, 3600))) * 1_000_000 + draw(MICROS)
    instant = parse_iso(text_at(us, digits))
    return instant.text, instant.us


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, int, CallState]:
    """One call of one provider (and the platform), its events applied by the rules."""
    provider = draw(st.sampled_from(sorted(PROVIDERS)))
    shape = PROVIDERS[provider]
    sid = draw(st.one_of(shape["sid"], st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)))
    base = draw(SECONDS)
    events: list[CallEvent] = []
    direction = draw(st.sampled_from(["inbound", "outbound"]))
    ours, theirs = draw(shape["number"]), draw(shape["number"])
    statuses = draw(st.lists(st.sampled_from(["initiated", "ringing", "ongoing", *sorted(TERMINAL_STATUSES)]),
                             max_size=4))
    for n, status in enumerate(statuses):
        text, us = draw(instants(base, shape["digits"]))
        costs = ()
        if status in TERMINAL_STATUSES and draw(st.booleans()):
            costs = (Cost(component="telephony", amount_nano=draw(AMOUNT), currency="USD"),)
        events.append(CallEvent(
            source=provider, event_id=f"{provider}-{n}", call_sid=sid, type=f"call.{status}", occurred_at=text,
            occurred_us=us, status=status, direction=direction,
            from_number=to_e164(theirs if direction == "inbound" else ours),
            to_number=to_e164(ours if direction == "inbound" else theirs),
            duration=draw(st.none() | st.integers(0, 10**9)) if status == "completed" else None, costs=costs))
    for n in range(draw(st.integers(0, 3))):  # the platform: metadata, usage, at any precision
        text, us = draw(instants(base, draw(st.integers(0, 6))))
        events.append(CallEvent(
            source="platform", event_id=f"platform-{n}", call_sid=sid, type="call.metadata", occurred_at=text,
            occurred_us=us, call_meta=draw(st.none() | CALL_META),
            assistant_id=draw(st.none() | st.integers(0, 2**63 - 1)),
            organization_id=draw(st.none() | st.integers(1, 2**63 - 1)),
            assistant_name=draw(st.none() | TEXT), flow_name=draw(st.none() | TEXT),
            to_phone_number=draw(st.none() | shape["number"].map(to_e164)),
            costs=tuple(Cost(component=component, amount_nano=draw(AMOUNT), currency="USD")
                        for component in draw(st.lists(st.sampled_from(["llm", "tts", "stt"]), max_size=3)))))
    state = CallState()
    for event in draw(st.permutations(events)):
        try:
            apply_event(state, event, POLICY)
        except (Refused, Unapplicable):  # past a bound: the ledger refuses it, and so do we
            continue
    fix_estimate(state, POLICY)
    return sid, draw(st.integers(2**52, 2**53 - 1) | st.integers(1, 1000)), state


def served(sid: str, record_id: int, state: CallState) -> bytes:
    """The record exactly as GET serves it: the stored `j` with the call's call_meta spliced in."""
    record = render_record(sid, record_id, state, POLICY)
    fields = {b"id": str(record_id).encode(), b"v": b"3", b"j": stored_record(record, 3)}
    fields.update(((META_FIELD + key).encode(), orjson.dumps(register)) for key, register in state.meta.items())
    body = StoredCall(sid, fields).served(POLICY)
    assert body == record_json(record)  # the stored path and the rendered one agree
    return body


def a_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "call_sid": "CA5b2f0e6a9c1d4e8f7a3b2c1d0e9f8a7b", "to_phone_number": "+15551234567",
        "customer_phone_number": "+15559876543", "id": 4503599627382842, "assistant_id": 7, "status": "completed",
        "call_meta": {"campaign": "spring", "émoji": "☎", "nested": [1, {"b": None}], "quote\"": "\\"},
        "assistant_name": 'Bot "1"', "flow_name": "main", "duration": 61, "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:05:06.012Z", "total_cost": 1_262_567_891, "llm_cost": 1_234_567_891,
        "tts_cost": None, "stt_cost": 0, "telephony_cost": 28_000_000, "cost_currency": "USD",
    }
    record.update(overrides)
    return record
