"""The archive's rows (SPEC §16): every record as GET serves it comes back byte for byte from its
row, and the rows of ordinary records need no copy of the JSON (record_json NULL)."""

import json
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.core.archive import (
    CALL_COLUMNS,
    EVENT_COLUMNS,
    MONEY_COLUMNS,
    call_row,
    calls_path,
    event_row,
    events_path,
    parse_time,
    partition,
    served_of,
    time_text,
)
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


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls(), revision=st.integers(1, 2**31))
def test_every_served_record_comes_back_from_its_row_byte_for_byte(call: tuple[str, int, CallState],
                                                                    revision: int) -> None:
    body = served(*call)
    record = orjson.loads(body)
    row = call_row(body, revision, ARCHIVED_AT)
    assert served_of(row) == body
    assert list(row) == [column.name for column in CALL_COLUMNS]
    # The columns hold the record's values, whatever record_json holds.
    exact = json.loads(body, parse_float=Decimal)
    for name in MONEY_COLUMNS:
        assert row[name] == (None if exact[name] is None else int(exact[name] * NANO))
    for name in ("call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status",
                 "assistant_name", "flow_name", "duration", "cost_currency"):
        assert row[name] == record[name]
    for name in ("started_at", "ended_at"):
        assert row[name] == (None if record[name] is None else parse_iso(record[name]).us)
    assert orjson.loads(row["call_meta"]) == record["call_meta"]
    assert (row["revision"], row["archived_at"]) == (revision, ARCHIVED_AT)
    # record_json only for a time its µs do not give back (its digits are not the usual ones).
    times = [record[name] for name in ("started_at", "ended_at") if record[name] is not None]
    assert (row["record_json"] is None) == all(text == time_text(parse_iso(text).us) for text in times)
    if row["record_json"] is None:
        assert row["call_meta"].encode() in body


@pytest.mark.parametrize(("provider", "started_at", "ended_at"), [
    ("twilio", "2026-11-24T10:00:00Z", "2026-11-24T10:05:06Z"),
    ("plivo", "2026-11-24T10:00:00Z", "2026-11-24T10:05:06Z"),
    ("vonage", "2026-11-24T10:00:01.456Z", "2026-11-24T10:05:06.012Z"),
    ("vonage", "2026-11-24T10:00:01.100Z", "2026-11-24T10:05:06.010Z"),  # 3 digits with trailing zeros
    ("telnyx", "2026-11-24T10:00:00.521992Z", "2026-11-24T10:05:03.998877Z"),
    ("telnyx", "2026-11-24T10:00:00.521990Z", "2026-11-24T10:05:03.000001Z"),
])
def test_the_providers_times_need_no_copy_of_the_record(provider: str, started_at: str, ended_at: str) -> None:
    body = record_json(_record(started_at=started_at, ended_at=ended_at))
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["record_json"] is None, provider
    assert served_of(row) == body
    assert row["started_at"] == parse_iso(started_at).us and row["ended_at"] == parse_iso(ended_at).us


@pytest.mark.parametrize("ended_at", [
    "2026-11-24T10:05:06.000Z",  # Vonage at a whole second: 3 digits a timestamp cannot tell from none
    "2026-11-24T10:05:03.250000Z",  # Telnyx at a whole millisecond
    "2026-11-24T10:05:06.1Z",  # a platform's one digit
    "2026-11-24T10:05:06.12345Z",
])
def test_a_time_whose_digits_its_instant_does_not_say_keeps_the_record_whole(ended_at: str) -> None:
    body = record_json(_record(ended_at=ended_at))
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["record_json"] == body.decode()
    assert served_of(row) == body
    assert row["ended_at"] == parse_iso(ended_at).us  # the column still holds the instant, for queries


def _record(**overrides: Any) -> dict[str, Any]:
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


@pytest.mark.parametrize("nano", [0, 1, 300_000_000, 123_456_789_012_123_456_789, 10**38 - 1, -5, None])
def test_money_is_read_from_its_decimal_text_exactly(nano: int | None) -> None:
    body = record_json(_record(total_cost=nano))
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["total_cost"] == nano and row["record_json"] is None
    assert served_of(row) == body


@pytest.mark.parametrize("body", [
    # Another form of the same record: spaces, another key order, a money literal not as format_nano writes it,
    # an escape orjson would not write, a key more, a number past int64.
    json.dumps(_record(total_cost=1.5)).encode(),
    record_json(_record()).replace(b'"total_cost":1.262567891', b'"total_cost":1.2625678910'),
    record_json(_record()).replace(b'"flow_name":"main"', b'"flow_name":"m\\u0061in"'),
    record_json(_record()).replace(b'"call_sid":', b'"extra":1,"call_sid":'),
    orjson.dumps({"to_phone_number": "+15551234567", **_record()}),  # another key order
    record_json({key: value for key, value in _record().items() if key != "flow_name"}),
    orjson.dumps({**_record(), "total_cost": orjson.Fragment(b"1e3")}),
    record_json(_record(duration=2**63)),
    record_json(_record(total_cost=10**38)),
    record_json(_record(started_at="2026-02-30T10:00:00Z")),
    record_json(_record(started_at="2026-11-24 10:00:00Z")),
    orjson.dumps({**_record(call_meta=[1, 2])}),
])
def test_a_record_in_any_other_form_is_kept_whole_and_served_as_it_was(body: bytes) -> None:
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["record_json"] == body.decode()
    assert served_of(row) == body


def test_money_of_a_record_kept_whole_is_still_exact_in_its_columns() -> None:
    body = orjson.dumps({**_record(), "total_cost": orjson.Fragment(b"123456789012.1234567890")})  # a zero more
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["record_json"] is not None and row["total_cost"] == 123_456_789_012_123_456_789


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}", orjson.dumps({**_record(), "id": "7"}),
                                  record_json({key: value for key, value in _record().items() if key != "status"})])
def test_what_is_not_a_call_record_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="record"):
        call_row(body, 1, ARCHIVED_AT)


@hsettings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(_record())), JSONISH | st.sampled_from(
    ["2026-11-24T10:00:00.5Z", "2026-11-24T10:00:00Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"])),
    encoder=st.sampled_from([orjson.dumps, lambda value: json.dumps(value).encode()]))
@example(changes={"call_meta": {"a": '},"assistant_name":null'}}, encoder=orjson.dumps)
def test_any_json_object_is_refused_or_served_back_exactly(changes: dict[str, Any], encoder: Any) -> None:
    try:
        body = encoder({**_record(), **changes})
    except (TypeError, ValueError, OverflowError):  # not JSON (a float json.dumps writes as NaN, an int past 64 bits)
        assume(False)
        raise
    try:
        row = call_row(body, 1, ARCHIVED_AT)
    except ValueError:
        return
    assert served_of(row) == body


def test_parse_time_takes_canonical_times_only() -> None:
    assert parse_time("2026-11-24T10:00:00.100Z") == parse_iso("2026-11-24T10:00:00.100Z").us
    assert parse_time("1969-12-31T23:59:59.999999Z") == -1
    for text in ["2026-11-24T24:00:00Z", "2026-11-24T10:00:60Z", "2026-11-24T10:00:00.1234567Z",
                 "2026-11-24T10:00:00+00:00", "2026-11-24t10:00:00Z", "2026-11-24T10:00:0٣Z", "0000-01-01T00:00:00Z"]:
        assert parse_time(text) is None, text


@given(us=st.integers(parse_iso("0001-01-01T00:00:00Z").us, parse_iso("9999-12-31T23:59:59.999999Z").us))
def test_time_text_is_read_back_by_parse_time(us: int) -> None:
    assert parse_time(time_text(us)) == us


def test_partition_is_the_organization_and_the_utc_day_the_call_ended() -> None:
    ended = parse_iso("2026-11-24T23:59:59.999999Z").us
    assert partition(7, ended) == "organization_id=7/date=2026-11-24"
    assert partition(None, ended + 1) == "organization_id=_none/date=2026-11-25"
    assert partition(None, -1) == "organization_id=_none/date=1969-12-31"
    with pytest.raises(ValueError):
        partition("7", ended)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        partition(True, ended)


def test_paths_put_each_pass_in_its_own_file_of_its_partition() -> None:
    assert calls_path("organization_id=7/date=2026-11-24", "p20261124T100000-abc") == \
        "calls/organization_id=7/date=2026-11-24/p20261124T100000-abc.parquet"
    assert events_path("organization_id=_none/date=2026-11-24", "p1") == \
        "events/organization_id=_none/date=2026-11-24/p1.parquet"
    for bad in ["", ".hidden", "_hidden", "a/b", "../x", "a b", "x" * 129]:
        with pytest.raises(ValueError):
            calls_path("organization_id=7/date=2026-11-24", bad)


def test_an_event_row_splits_its_journal_key_and_keeps_its_json() -> None:
    event = b'{"source":"twilio","event_id":"CA1:ringing:1","call_sid":"CA1"}'
    row = event_row("CA1", b"twilio:CA1:ringing:1", 1_795_514_400_000_000, event, ARCHIVED_AT)
    assert row == {"call_sid": "CA1", "source": "twilio", "event_id": "CA1:ringing:1",
                   "occurred_at": 1_795_514_400_000_000, "event": event.decode(), "archived_at": ARCHIVED_AT}
    assert list(row) == [column.name for column in EVENT_COLUMNS]
    with pytest.raises(ValueError):
        event_row("CA1", "no-colon", 0, b"{}", 0)


def test_call_row_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: the archive pass aims at 20,000 calls/s end to end on 2 cores."""
    bodies = [record_json(_record(id=4503599627370497 + i, total_cost=1_262_567_891 + i,
                                  ended_at=time_text(1_795_514_706_012_000 + i * 1000))) for i in range(20_000)]
    start = time.perf_counter()
    rows = [call_row(body, 1, ARCHIVED_AT) for body in bodies]
    made = time.perf_counter() - start
    start = time.perf_counter()
    for row in rows[:5000]:
        served_of(row)
    back = time.perf_counter() - start
    assert all(row["record_json"] is None for row in rows)
    with capsys.disabled():
        print(f"\ncall_row: {made / len(bodies) * 1e6:.1f} µs a call; served_of: {back / 5000 * 1e6:.1f} µs")
