"""The journal's compact entries: every event restored byte for byte, old (whole JSON) entries
still read, and /events and /costs answering exactly what they answered when the journal kept
each event's JSON whole."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import call_ledger.core.journal as journal
import call_ledger.store.records as store_module
from call_ledger.api.views import encode_cursor
from call_ledger.core.events import COMPONENTS, STATUSES, CallEvent, Cost, PriceRef
from call_ledger.core.instants import text_at
from call_ledger.core.journal import compact, restore
from call_ledger.core.members import key_of, short_member
from call_ledger.store import CommitWrite
from call_ledger.store.client import text
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support import journal_reference as reference
from tests.support.provider_calls import (
    Ledger,
    StartLedger,
    WholeCall,
    attributed_twilio_call,
    plivo_call,
    redelivered_and_shuffled,
    telnyx_call,
    twilio_call,
    vonage_call,
)
from tests.support.settings import AUTH, make_settings

# -- the codec alone ---------------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # quotes, backslashes, controls, é😀
KEYISH = st.one_of(TEXT, st.sampled_from(["twilio", "platform", "telnyx", "CA" + "0" * 32 + ":3"]))
US = st.one_of(st.integers(1_700_000_000_000_000, 1_900_000_000_000_000),  # now-ish
               st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999))  # year 1 to 9999
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                                          allow_infinity=False) | TEXT,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                       max_leaves=6)
PRICE = st.builds(PriceRef, component=st.sampled_from(COMPONENTS), provider=TEXT, model=TEXT, usage_type=TEXT,
                  effective_from=st.none() | TEXT, unit_price=TEXT, unit_quantity=TEXT, currency=TEXT)
COST = st.builds(Cost, component=st.sampled_from(COMPONENTS), amount_nano=st.integers(0, 2**63),
                 currency=st.sampled_from(["USD", "EUR", "GBP"]), provider=st.none() | TEXT,
                 model=st.none() | TEXT, usage_type=st.none() | TEXT, usage_amount=st.none() | TEXT,
                 unit_cost=st.none() | TEXT, price_entry=st.none() | PRICE)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def events(draw: st.DrawFn) -> CallEvent:
    """Any event the model allows, its instant written at any precision, or (as no intake writes it)
    text that is not its occurred_us at all."""
    us = draw(US)
    digits = draw(st.integers(0, 6))
    occurred_at = draw(st.one_of(st.just(text_at(us, digits)), TEXT))
    return CallEvent(
        # No source intake names begins with a digit (core.members: a member's first byte tells its form).
        source=draw(KEYISH.filter(lambda source: source[:1] not in tuple("0123456789"))),
        event_id=draw(KEYISH.filter(bool)), call_sid=draw(KEYISH.filter(bool)),
        type=draw(st.one_of(TEXT, st.sampled_from(["call.hangup", "status.completed", "call.usage"]))),
        occurred_at=occurred_at, occurred_us=us,
        status=draw(optional(st.sampled_from(STATUSES))),
        direction=draw(optional(st.sampled_from(["inbound", "outbound"]))),
        from_number=draw(optional(TEXT)), to_number=draw(optional(TEXT)),
        duration=draw(optional(st.integers(0, 10**9))),
        started_at=draw(optional(TEXT)), started_us=draw(optional(US)),
        answered_at=draw(optional(TEXT)), answered_us=draw(optional(US)),
        costs=tuple(draw(st.lists(COST, max_size=3))),
        assistant_id=draw(optional(st.integers(0, 2**63 - 1))),
        organization_id=draw(optional(st.integers(1, 2**63 - 1))),
        assistant_name=draw(optional(TEXT)), flow_name=draw(optional(TEXT)),
        to_phone_number=draw(optional(TEXT)), customer_phone_number=draw(optional(TEXT)),
        call_meta=draw(optional(st.dictionaries(TEXT, JSONISH, max_size=4))),
    )


def stored_and_back(event: CallEvent, raw: bytes | None = None) -> tuple[bytes, bytes]:
    raw = raw if raw is not None else event.model_dump_json(exclude_defaults=True).encode()
    stored = compact(raw, event.key, event.call_sid, event.occurred_us)
    return stored, restore(stored, event.key.encode(), event.call_sid, event.occurred_us)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events())
def test_any_event_is_restored_byte_for_byte_and_compacted_when_its_parts_are_as_intake_writes_them(
        event: CallEvent) -> None:
    raw = event.model_dump_json(exclude_defaults=True).encode()
    stored, restored = stored_and_back(event, raw)
    assert restored == raw
    usual = (":" not in event.source and orjson.dumps(event.type)[1:-1] == event.type.encode()
             and event.occurred_at in {text_at(event.occurred_us, d) for d in range(7)}
             and abs(event.occurred_us) < 2**53)
    assert (stored[:1] != b"{") == usual, stored
    if usual:
        assert len(stored) < len(raw) - len(event.key) - len(event.call_sid)


@given(event=events(), junk=st.binary(max_size=40))
def test_json_not_of_this_shape_is_kept_whole(event: CallEvent, junk: bytes) -> None:
    """Whatever a stream entry holds (another version's JSON, a hand-made replay), what is kept
    reads back as it was."""
    for raw in (junk, b"{" + junk, event.model_dump_json().encode(),  # defaults written out
                event.model_dump_json(exclude_defaults=True).encode() + junk, json.dumps(event.model_dump()).encode()):
        assert stored_and_back(event, raw)[1] == raw


def test_an_entry_written_whole_by_the_previous_version_reads_as_it_is() -> None:
    raw = (b'{"source":"twilio","event_id":"CA1:0","call_sid":"CA1","type":"status.initiated",'
           b'"occurred_at":"2026-11-24T10:00:00Z","occurred_us":1795514400000000,"status":"initiated"}')
    assert restore(raw, b"twilio:CA1:0", "CA1", 1795514400000000) == raw
    assert compact(raw, "twilio:CA1:0", "CA1", 1795514400000000) == b'0status.initiated"\x01initiated"}'


def test_a_priced_usage_event_keeps_its_price_entry_exactly() -> None:
    price = PriceRef(component="llm", provider="openai", model="*", usage_type="input_tokens",
                     effective_from="2026-01-01T00:00:00Z", unit_price="0.15", unit_quantity="1000000",
                     currency="USD")
    event = CallEvent(source="platform", event_id="msg_u1", call_sid="CA1", type="call.usage",
                      occurred_at="2026-11-24T10:02:00.250Z", occurred_us=1795514520250000,
                      costs=(Cost(component="llm", amount_nano=1_230_000, currency="USD", provider="openai",
                                  model="gpt-4o-mini", usage_type="input_tokens", usage_amount="8200",
                                  unit_cost="0.00000015", price_entry=price),
                             Cost(component="tts", amount_nano=0, currency="EUR", price_entry=price.model_copy(
                                 update={"effective_from": None}))))
    stored, restored = stored_and_back(event)
    assert restored == event.model_dump_json(exclude_defaults=True).encode()
    assert stored.startswith(b'3call.usage"') and b"price_entry" not in stored


# -- the codec against the version it replaced ------------------------------------------------------------
# compact's shortcuts (call_ledger.core.journal) must write exactly the bytes the previous codec wrote, kept verbatim
# in tests/support/journal_reference.py, for any input: what is stored reads back the same across versions.

SURROGATE = st.sampled_from(["\ud800", "\udfff", "\udc80"])
ODD_TEXT = st.lists(st.one_of(TEXT, SURROGATE, st.sampled_from([":", '"', "\\", "\x00", "\x1f", "é"])),
                    max_size=4).map("".join)
ODD_US = st.one_of(US, st.integers(), st.integers(-(2**70), 2**70), st.booleans(),  # an int, str() says True
                   st.sampled_from([0, -1, 1, 2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 10**6 - 1, -(10**6)]))
# The pieces compact matches, and bytes that break them: the names, as they overlap (a name ending in a
# quote, then `","amount_nano":` starting with it), halves of names, escapes, control bytes, other JSON.
OVERLAPS = [t + b',"amount_nano":' for t in reference._TOKENS if t.endswith(b'"')]
PIECES = st.one_of(
    st.sampled_from(reference._TOKENS), st.sampled_from(OVERLAPS),
    st.sampled_from([t[:k] for t in reference._TOKENS for k in (1, 2, 5)] + [t[k:] for t in reference._TOKENS
                                                                               for k in (1, 2)]),
    st.sampled_from([b'"', b",", b'","', b"}", b"]", b"{", b",{", b"},{", b'":', b":", b"\\", b'\\"', b"\\u0001",
                     b"\x00", b"\x01", b"\x1e", b"\x1f", b"\x7f", b"\xff", b"\xc3\xa9", b"0123", b"null", b"true",
                     b'"inbound"', b'"x"', b',"call_meta":{"a":1,"b":[{}]}', b',"status":1', b',"zzz":"']),
    st.binary(max_size=6))
SOUP = st.lists(PIECES, max_size=12).map(b"".join)


@st.composite
def realistic_json(draw: st.DrawFn) -> tuple[bytes, str, str, int]:
    """An event of the shapes the sources write (bench/run.py's kinds, priced usage, a Plivo hang-up), with
    its key, call and instant: what compact sees on almost every call."""
    c = draw(st.integers(0, 2**64))
    sid = draw(st.one_of(st.just(f"CA{c:032x}"), KEYISH.filter(bool)))
    us = draw(US)
    text = st.sampled_from(["", "+15551234567", "ServiceBot", "é😀", 'a"b', "a\\b", "x\x01y", ",", '","amount_nano":'])
    kind = draw(st.sampled_from(["status", "initiated", "completed", "hangup", "metadata", "cost", "priced"]))
    fields: dict[str, Any] = {}
    if kind in ("status", "initiated", "completed", "hangup"):
        fields["status"] = draw(st.sampled_from(STATUSES))
    if kind in ("initiated", "hangup"):
        fields.update(direction=draw(st.sampled_from(["inbound", "outbound"])), from_number=draw(text),
                      to_number=draw(text))
    if kind in ("completed", "hangup"):
        fields["duration"] = draw(st.integers(0, 10**9))
    if kind == "hangup":
        fields.update(started_at=text_at(us, 0), started_us=us, answered_at=text_at(us, 3), answered_us=us)
    if kind in ("hangup", "cost", "priced"):
        fields["costs"] = tuple(draw(st.lists(COST if kind == "priced" else st.builds(
            Cost, component=st.sampled_from(COMPONENTS), amount_nano=st.integers(0, 2**63),
            currency=st.sampled_from(["USD", "EUR"])), min_size=1, max_size=3)))
    if kind == "metadata":
        fields.update(assistant_id=draw(st.integers(0, 2**63 - 1)), organization_id=draw(optional(st.integers(1, 9))),
                      assistant_name=draw(text), flow_name=draw(text), to_phone_number=draw(optional(text)),
                      customer_phone_number=draw(optional(text)),
                      call_meta=draw(optional(st.dictionaries(TEXT, JSONISH, max_size=3))))
    kind_name = st.sampled_from(["bench", "call.usage", "call.metadata", "hangup.completed"])
    event = CallEvent(source=draw(st.sampled_from(["platform", "twilio", "plivo"])), event_id=f"{sid}-{c % 50}",
                      call_sid=sid, type=draw(kind_name), occurred_at=text_at(us, draw(st.integers(0, 6))),
                      occurred_us=us, **fields)
    return event.model_dump_json(exclude_defaults=True).encode(), event.key, event.call_sid, event.occurred_us


@st.composite
def hostile_json(draw: st.DrawFn) -> tuple[bytes, str, str, int]:
    """Bytes compact may be given by no intake: a real event's JSON with its fields replaced by a soup of
    names and their fragments, or edited anywhere (head, type, instant), or told another key, call or
    instant (keys and calls with quotes, controls and lone surrogates)."""
    raw, key, call_sid, us = draw(st.one_of(realistic_json(), realistic_json(), events().map(
        lambda e: (e.model_dump_json(exclude_defaults=True).encode(), e.key, e.call_sid, e.occurred_us))))
    rest = raw.find(b',"', raw.find(b'"occurred_us":'))
    rest = len(raw) - 1 if rest < 0 else rest
    change = draw(st.sampled_from(["fields", "fields", "fields", "anywhere", "key", "call", "instant"]))
    if change == "fields":  # the head, type and instant kept: the names are recoded
        raw = raw[:rest] + draw(SOUP) + draw(st.sampled_from([b"}", b"", b"]}"]))
    for _ in range(draw(st.integers(1, 3)) if change == "anywhere" else 0):
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(PIECES) + raw[i + draw(st.integers(0, 3)):]
    if change == "key":
        key = draw(st.one_of(ODD_TEXT, st.builds(lambda s, e: f"{s}:{e}", ODD_TEXT, ODD_TEXT),
                             st.just(key).map(lambda k: k + "\ud800")))
    if change == "call":
        call_sid = draw(st.one_of(ODD_TEXT, st.just(call_sid).map(lambda c: c + "\udfff")))
    if change == "instant":
        us = draw(st.one_of(ODD_US, st.sampled_from([us + 1, us - 1, us + 10**6, -us, us + 2**53])))
    return raw, key, call_sid, us


def assert_as_the_reference_compacts(raw: bytes, key: str, call_sid: str, us: int) -> bytes:
    stored = compact(raw, key, call_sid, us)
    assert stored == reference.compact(raw, key, call_sid, us), (raw, key, call_sid, us)
    return stored


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=realistic_json())
def test_events_as_intake_writes_them_compact_to_the_reference_bytes_and_restore(
        case: tuple[bytes, str, str, int]) -> None:
    raw, key, call_sid, us = case
    stored = assert_as_the_reference_compacts(raw, key, call_sid, us)
    assert restore(stored, key.encode(), call_sid, us) == raw
    assert restore(stored, key.encode(), call_sid, us) == reference.restore(stored, key.encode(), call_sid, us)


@hsettings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events())
def test_any_event_compacts_to_the_reference_bytes(event: CallEvent) -> None:
    for raw in (event.model_dump_json(exclude_defaults=True).encode(), event.model_dump_json().encode()):
        stored = assert_as_the_reference_compacts(raw, event.key, event.call_sid, event.occurred_us)
        assert restore(stored, event.key.encode(), event.call_sid, event.occurred_us) == raw


def reference_round_trips(raw: bytes, key: str, call_sid: str, us: int) -> bool:
    """Whether the reference restores its own entry of these bytes: not when the type holds a raw quote,
    or ends without one (no JSON does; the worker journals only JSON the model read)."""
    stored = reference.compact(raw, key, call_sid, us)
    try:
        return reference.restore(stored, key.encode(), call_sid, us) == raw
    except (UnicodeError, ValueError):  # ValueError: orjson.JSONEncodeError too
        return False


@hsettings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_json())
def test_hostile_bytes_compact_to_the_reference_bytes(case: tuple[bytes, str, str, int]) -> None:
    raw, key, call_sid, us = case
    stored = assert_as_the_reference_compacts(raw, key, call_sid, us)
    # A member names its key in either form (core.members): a key whose source begins with a
    # source's code (no source intake names does) would read as a short member.
    if reference_round_trips(raw, key, call_sid, us) and key_of(key, call_sid) == key:
        assert restore(stored, key.encode(), call_sid, us) == raw


def test_the_names_are_such_that_replacing_them_is_splitting_on_them() -> None:
    """call_ledger.core.journal replaces names where it splits on them only when no `,"` or `,{` is left: exact as
    long as no name holds another, two share at most a byte at an end, and each holds one of the two
    apart from the bytes it can share (a name added to the journal's must keep this)."""
    tokens = journal._TOKENS
    assert len(set(tokens)) == len(tokens) and not any(b < 0x20 for t in tokens for b in t)
    for t in tokens:
        assert not any(u != t and u in t for u in tokens), t
        shared_before = max((k for u in tokens for k in range(1, min(len(t), len(u))) if u[-k:] == t[:k]), default=0)
        shared_after = max((k for u in tokens for k in range(1, min(len(t), len(u))) if t[-k:] == u[:k]), default=0)
        assert shared_before <= 1 and shared_after <= 1, t
        own = t[shared_before:len(t) - shared_after]
        assert b',"' in own or b",{" in own, t


@pytest.mark.parametrize("case", [
    {"status": "ringing"}, {"status": "completed", "duration": 54},
    {"status": "initiated", "direction": "outbound", "from_number": "+15551234567", "to_number": "+15559876543"},
    {"status": "completed", "direction": "inbound", "from_number": "+1", "to_number": "+2", "duration": 3,
     "started_at": "2026-11-24T10:00:00Z", "started_us": 1795514400000000, "answered_at": "2026-11-24T10:00:01Z",
     "answered_us": 1795514401000000, "costs": (Cost(component="telephony", amount_nano=5, currency="USD"),)},
    {"costs": (Cost(component="llm", amount_nano=1230006, currency="USD"),)},
    {"costs": (Cost(component="llm", amount_nano=1, currency="USD"), Cost(component="tts", amount_nano=2,
                                                                              currency="USD"))},
    {"costs": (Cost(component="llm", amount_nano=1, currency="USD", provider="openai", model="gpt-4o-mini",
                    usage_type="input_tokens", usage_amount="8200", unit_cost="0.00000015",
                    price_entry=PriceRef(component="llm", provider="openai", model="*", usage_type="input_tokens",
                                         effective_from=None, unit_price="0.15", unit_quantity="1000000",
                                         currency="USD")),)},
    {"assistant_id": 12, "organization_id": 3, "assistant_name": "ServiceBot", "flow_name": "Support",
     "to_phone_number": "+1", "customer_phone_number": "+2", "call_meta": {"customer_id": "cust_1"}},
], ids=["ringing", "completed", "initiated", "hangup", "cost", "costs", "priced", "metadata"])
def test_the_usual_fields_are_recoded_without_the_split(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sources write is compacted by replacing its names only (the split is the slow way)."""
    event = CallEvent(source="platform", event_id="CA1-1", call_sid="CA1", type="bench",
                      occurred_at="2026-11-24T10:00:00.250Z", occurred_us=1795514400250000, **case)
    raw = event.model_dump_json(exclude_defaults=True).encode()
    expected = reference.compact(raw, event.key, event.call_sid, event.occurred_us)
    monkeypatch.setattr(journal, "_split_coded", lambda fields: pytest.fail(f"split: {fields!r}"))
    assert compact(raw, event.key, event.call_sid, event.occurred_us) == expected and expected[:1] == b"3"


class Micros(int):
    """An int that str() writes otherwise (as bool does)."""

    def __str__(self) -> str:
        return f"{int(self)}.0"


@pytest.mark.parametrize("order", [(1, True, Micros(1)), (True, Micros(1), 1), (Micros(1), 1, True)])
def test_instants_equal_as_ints_but_written_apart_are_not_taken_for_one_another(order: tuple[int, ...]) -> None:
    """1, True and Micros(1) are equal (as cache keys too) and str() writes them apart, as the previous
    codec wrote occurred_us: each compacts and restores as the reference does, whichever came first."""
    for us in order:
        raw = (b'{"source":"p","event_id":"e","call_sid":"c","type":"t","occurred_at":"1970-01-01T00:00:00Z",'
               b'"occurred_us":%b,"status":"ringing"}' % str(us).encode())
        stored = assert_as_the_reference_compacts(raw, "p:e", "c", us)
        assert stored[:1] == b"0" and restore(stored, b"p:e", "c", us) == raw


def outcome(function: Any, *args: Any) -> tuple[str, bytes | None]:
    try:
        return "", function(*args)
    except Exception as error:  # the same kind of failure, for entries no version wrote
        return type(error).__name__, None


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.one_of(st.tuples(st.sampled_from(b"0123456~{x"), SOUP).map(lambda p: bytes([p[0]]) + p[1]),
                        st.builds(lambda d, t, rest: b"%d%b\"%b" % (d, t, rest), st.integers(0, 6),
                                  st.sampled_from([b"", b"bench", b"call.usage"]),
                                  st.binary(max_size=30) | st.lists(st.sampled_from(
                                      [bytes([c]) for c in range(32)] + [b"a", b'"', b"}"])).map(b"".join))),
       key=st.one_of(KEYISH.map(str.encode), st.binary(max_size=12)), call_sid=st.one_of(KEYISH, ODD_TEXT),
       us=st.one_of(ODD_US, st.integers(-(10**18), 10**18)))
def test_any_entry_restores_as_the_reference_restores_it(stored: bytes, key: bytes, call_sid: str, us: int) -> None:
    """Entries, keys and scores of any kind (non-UTF-8 keys, instants beyond the year 9999): the same
    bytes, or the same error, as the codec the entries were written by."""
    assert outcome(restore, stored, key, call_sid, us) == outcome(reference.restore, stored, key, call_sid, us)


# -- through the service: /events and /costs as they were -------------------------------------------------

def page_body(call_sid: str, events: list[bytes], cursor: str | None) -> bytes:
    """/events as the route writes it, from the events' JSON."""
    return (b'{"call_sid":' + orjson.dumps(call_sid) + b',"events":[' + b",".join(events) + b'],"next":'
            + (orjson.dumps(cursor) if cursor else b"null") + b"}")


async def events_bodies(service: Ledger, call_sid: str, limit: int = 100) -> list[bytes]:
    """Every /events page of the call, as answered."""
    bodies, after = [], None
    while True:
        query = {"limit": str(limit), **({"after": after} if after else {})}
        response = await service.client.get(f"/api/v1/calls/sid/{call_sid}/events", headers=AUTH, params=query)
        assert response.status == 200, await response.text()
        bodies.append(await response.read())
        after = json.loads(bodies[-1])["next"]
        if after is None:
            return bodies


async def intake_json(service: Ledger) -> dict[str, set[bytes]]:
    """Journal key -> the JSON intake wrote to the stream for it (a redelivery may differ, in its
    time of arrival: any of them is the one applied first)."""
    store = service.consumer.store
    written: dict[str, set[bytes]] = {}
    for _, fields in await store.redis.xrange(store.stream):
        event = CallEvent.model_validate_json(fields[b"e"])
        written.setdefault(event.key, set()).add(fields[b"e"])
    return written


FROZEN_FX = ("fx_rate", "ledger_amount_nano")


def as_written(written: dict[str, set[bytes]], event: dict[str, Any]) -> bytes:
    """The JSON intake wrote for this listed event (the one of its deliveries it equals); for a
    cost in another currency, with the rate and amount the worker froze on it added where the
    model puts them (worker/apply.py frozen_fx: the only change from intake's bytes)."""
    costs = event.get("costs", [])
    frozen = [{name: cost[name] for name in FROZEN_FX if name in cost} for cost in costs]
    plain = {**event, "costs": [{k: v for k, v in cost.items() if k not in FROZEN_FX} for cost in costs]} \
        if costs else event
    [raw] = [raw for raw in written[f"{event['source']}:{event['event_id']}"] if orjson.loads(raw) == plain]
    if not any(frozen):
        return raw
    parsed = CallEvent.model_validate_json(raw)
    assert all(bool(f) == (c.currency != "USD") for f, c in zip(frozen, parsed.costs, strict=True)), frozen
    costs_frozen = tuple(cost.model_copy(update=f) for cost, f in zip(parsed.costs, frozen, strict=True))
    return parsed.model_copy(update={"costs": costs_frozen}).model_dump_json(exclude_defaults=True).encode()


WHOLE_CALLS = {"twilio": twilio_call, "telnyx": telnyx_call, "vonage": vonage_call, "plivo": plivo_call,
               "twilio+platform": attributed_twilio_call}


@pytest.mark.parametrize("whole_call", WHOLE_CALLS.values(), ids=WHOLE_CALLS.keys())
async def test_events_route_answers_each_event_as_intake_wrote_it_and_the_journal_keeps_it_compact(
        start_ledger: StartLedger, whole_call: Any) -> None:
    call: WholeCall = whole_call()
    service = await start_ledger(**call.settings)
    await service.deliver(redelivered_and_shuffled(call.sends, seed=21))
    store = service.consumer.store

    [body] = await events_bodies(service, call.call_sid)
    written = await intake_json(service)
    listed = json.loads(body)["events"]
    # Byte for byte: the body is the JSON intake wrote for each event, joined.
    assert len(listed) == len(written)
    assert body == page_body(call.call_sid, [as_written(written, e) for e in listed], None)
    entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert entries and all(value[:1] != b"{" for value in entries.values()), entries


def written_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, journal entries are written as the previous version wrote them: whole JSON."""
    monkeypatch.setattr(store_module, "compact", lambda event_json, *_: event_json)


async def test_entries_the_previous_version_wrote_whole_still_serve_events_costs_and_dedupe(
        start_ledger: StartLedger) -> None:
    """A rolling upgrade: a call journaled by the previous version (whole JSON) gets more events
    from this one; /events and /costs read both kinds, and the old events are still duplicates."""
    call = attributed_twilio_call()
    service = await start_ledger(**call.settings)
    store = service.consumer.store
    first, rest = call.sends[:5], call.sends[5:]
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await service.deliver(first)
    old_entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert old_entries and all(v[:1] == b"{" for v in old_entries.values())
    await service.deliver(rest + first)  # the first ones again: duplicates, whichever form they are in
    entries = await store.redis.hgetall(store.journal_key(call.call_sid))
    assert {k: v for k, v in entries.items() if k in old_entries} == old_entries
    assert any(v[:1] != b"{" for v in entries.values())
    written = await intake_json(service)
    assert await store.event_count(call.call_sid) == len(written)

    [body] = await events_bodies(service, call.call_sid)
    listed = json.loads(body)["events"]
    assert len(listed) == len(written)
    assert body == page_body(call.call_sid, [as_written(written, e) for e in listed], None)
    response = await service.client.get(f"/api/v1/calls/sid/{call.call_sid}/costs", headers=AUTH)
    assert response.status == 200, await response.text()
    costs = json.loads(await response.read())
    assert {e["service_type"] for e in costs["detailed_entries"]} >= {"llm", "tts", "stt", "telephony"}


def old_pages(events: list[tuple[str, bytes]], limit: int, budget: int) -> list[tuple[list[bytes], str | None]]:
    """How the previous version paged (call_ledger/store/lua/events_page.lua on whole JSON): at most `limit`, and
    ending after the event whose JSON reaches `budget` bytes when another follows."""
    pages, start = [], 0
    while True:
        page, size, more = [], 0, False
        for i, (_, raw) in enumerate(events[start:start + limit + 1]):
            if i == limit:
                more = True
                break
            page.append(raw)
            size += len(raw)
            if size >= budget and start + i + 1 < len(events):
                more = True
                break
        start += len(page)
        pages.append((page, events[start - 1][0] if more else None))
        if not more:
            return pages


@pytest.mark.parametrize(("limit", "budget"), [(100, 600), (3, 10**6), (4, 900), (1000, 1), (2, 250)])
async def test_pages_end_where_the_events_json_reaches_the_byte_budget_as_before(
        start_ledger: StartLedger, monkeypatch: pytest.MonkeyPatch, limit: int, budget: int) -> None:
    call = attributed_twilio_call()
    service = await start_ledger(**call.settings)
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await service.deliver(call.sends[:3])  # some entries whole, the rest compact
    await service.deliver(call.sends[3:])
    monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", budget)

    bodies = await events_bodies(service, call.call_sid, limit)
    written = await intake_json(service)
    listed = [e for body in bodies for e in json.loads(body)["events"]]
    # Cursors name each event's member: short, as a fresh store (layout 3) writes them (core.members).
    in_order = [(short_member(f"{e['source']}:{e['event_id']}", call.call_sid), as_written(written, e))
                for e in listed]
    assert len(in_order) == len(written)
    assert bodies == [page_body(call.call_sid, page, encode_cursor(cursor) if cursor else None)
                      for page, cursor in old_pages(in_order, limit, budget)]


async def test_instants_far_from_now_restore_exactly_through_a_real_redis_score(redis_server: Any) -> None:
    """The score is a double: occurred_us comes back from a real server's reply text exactly."""
    from call_ledger.store import Store, open_redis

    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        instants = [(-2_208_988_800_000_000, 0), (0, 1), (1795514400123456, 6), (2**53 - 1, 2),
                    (7_258_118_399_999_999, 3), (-(2**53) + 1, 5)]
        raws = []
        for i, (us, digits) in enumerate(instants):
            event = CallEvent(source="platform", event_id=f"e{i}", call_sid="CA-far", type="call.metadata",
                              occurred_at=text_at(us, digits), occurred_us=us, flow_name=f"f{i}")
            raws.append(event.model_dump_json(exclude_defaults=True).encode())
            await store.append(raws[-1], "CA-far")
        consumer = Consumer(store, settings, Metrics())
        assert await consumer.run_burst() == len(instants)
        entries = await store.redis.hvals(store.journal_key("CA-far"))
        assert all(value[:1] != b"{" for value in entries)
        assert await store.all_events("CA-far") == sorted(raws, key=lambda raw: orjson.loads(raw)["occurred_us"])
        page = await store.events_page("CA-far", "", 2)
        assert page is not None and text(page[1] or "") == "platform:e0"
    finally:
        await store.close()


async def test_a_page_that_reaches_the_budget_before_events_kept_without_a_copy_says_there_is_more(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events applied with LEDGER_JOURNAL=off have no entry: the page still ends, with a cursor,
    after the event whose JSON reaches the budget, as when the budget counted whole JSON."""
    raws = [CallEvent(source="platform", event_id=f"e{i}", call_sid="CA1", type="call.metadata",
                      occurred_at=text_at(1795514400000000 + i, 6), occurred_us=1795514400000000 + i,
                      flow_name="x" * 20).model_dump_json(exclude_defaults=True).encode() for i in range(6)]
    events = [(f"platform:e{i}", 1795514400000000 + i, raw if i < 4 else b"") for i, raw in enumerate(raws)]
    assert [reply.ok for reply in await store.commit([CommitWrite("CA1", 0, 6, b"{}", 1, events, [])])] == [True]
    monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", sum(map(len, raws[:4])))
    entries = await store.redis.hgetall(store.journal_key("CA1"))
    assert sum(map(len, entries.values())) < store_module.EVENTS_PAGE_BYTES  # only the JSON reaches it

    assert await store.events_page("CA1", "", 100) == (raws[:4], "platform:e3")
    assert await store.events_page("CA1", "platform:e3", 100) == ([], None)


@pytest.mark.parametrize("whole_call", WHOLE_CALLS.values(), ids=WHOLE_CALLS.keys())
async def test_events_and_costs_bodies_are_the_bytes_served_when_entries_were_whole_json(
        start_ledger: StartLedger, whole_call: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stream into a service that journals whole JSON (as the previous version did) and
    into this one: every /events page (small byte budgets included) and /costs, byte for byte."""
    call: WholeCall = whole_call()
    before, after = await start_ledger(**call.settings), await start_ledger(**call.settings)
    with pytest.MonkeyPatch.context() as mp:
        written_whole(mp)
        await before.deliver(redelivered_and_shuffled(call.sends, seed=22))
    store = after.consumer.store
    # The very entries (some sources stamp an event with its time of arrival), in their order.
    for _, fields in await before.consumer.store.redis.xrange(before.consumer.store.stream):
        await store.append(fields[b"e"])
    assert await after.consumer.run_burst() > 0
    assert all(v[:1] != b"{" for v in (await store.redis.hgetall(store.journal_key(call.call_sid))).values())

    for budget in (store_module.EVENTS_PAGE_BYTES, 700, 1):
        monkeypatch.setattr(store_module, "EVENTS_PAGE_BYTES", budget)
        for limit in (100, 2):
            assert await events_bodies(after, call.call_sid, limit) == await events_bodies(before, call.call_sid, limit)
    costs = [await (await service.client.get(f"/api/v1/calls/sid/{call.call_sid}/costs", headers=AUTH)).read()
             for service in (before, after)]
    assert costs[0] == costs[1] and b"detailed_entries" in costs[0]
