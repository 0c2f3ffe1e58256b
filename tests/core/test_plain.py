"""A call's core state as plain hash fields (layout 4, core.plain): every state reads back whole, a
worker folding from plain fields makes the same record as one folding from the core JSON, and a
call hash of layout 4 is served (and exported) byte for byte as its layout-3 twin."""

import hashlib
from typing import Any

import orjson
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.api.export import csv_rows, csv_rows_of_calls
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.indexes import RECORD_FIELDS
from call_ledger.core.members import full_id, short_id
from call_ledger.core.plain import HASH_FIELDS, core_of_plain, plain_fields
from call_ledger.core.rules import CallState, apply_event, fix_estimate, has_record, render_record
from call_ledger.core.served import StoredCall, record_digest, stored_record
from call_ledger.store.records import LoadedCall
from call_ledger.store.streams import Entry
from call_ledger.worker.apply import plan_call, wanted_meta
from tests.core.test_rules import SID, call_events
from tests.support.settings import make_settings
from tests.support.workers import platform_event

SETTINGS = make_settings(fx_rates="EUR=1.08", telephony_rates="twilio:inbound=0.01,twilio:outbound=0.02")


def folded(events: list[CallEvent]) -> CallState:
    state = CallState()
    seen: set[str] = set()
    for event in events:
        if event.key not in seen:
            seen.add(event.key)
            apply_event(state, event, SETTINGS.policy)
    fix_estimate(state, SETTINGS.policy)
    return state


def registers(state: CallState, short: bool, sid: str = SID) -> dict[str, bytes]:
    state.changed = {f"r:{name}" for name in state.registers} | {f"m:{key}" for key in state.meta}
    return dict(state.changed_fields(sid if short else None))


def layout_3_hash(state: CallState, version: int = 7) -> dict[bytes, bytes]:
    record = render_record(SID, 1, state, SETTINGS.policy)
    return {b"id": b"1", b"v": str(version).encode(), b"s": state.core_json(),
            b"j": stored_record(record, version), **{k.encode(): v for k, v in registers(state, True).items()}}


def layout_4_hash(state: CallState, version: int = 7, sid: str = SID) -> dict[bytes, bytes]:
    return {b"id": b"1", b"v": str(version).encode(),
            **{k.encode(): v for k, v in [*state.plain_fields(sid), *registers(state, True, sid).items()]}}


@hsettings(max_examples=200, deadline=None)
@given(events=call_events())
def test_every_state_reads_back_whole_from_its_plain_fields(events: list[CallEvent]) -> None:
    state = folded(events)
    plain = dict(state.plain_fields(SID))
    assert set(plain) <= set(HASH_FIELDS)
    again = CallState.from_fields(None, {**plain, **registers(state, True)}, SID)
    assert again.parts() == state.parts()
    # With every field a worker asks for (HMGET answers None for those the call lacks).
    asked = {name: plain.get(name) for name in HASH_FIELDS}
    assert CallState.from_fields(None, asked, SID).parts()[:9] == state.parts()[:9]


@hsettings(max_examples=200, deadline=None)
@given(events=call_events())
def test_a_layout_4_hash_is_served_as_its_layout_3_twin_byte_for_byte(events: list[CallEvent]) -> None:
    state = folded(events)
    three, four = layout_3_hash(state), layout_4_hash(state)
    assert has_record(three) and has_record(four) and b"j" not in four and b"s" not in four
    served = StoredCall(SID, three).served(SETTINGS.policy)
    assert StoredCall(SID, four).served(SETTINGS.policy) == served
    # An export row too: the CSV the reference writer makes of the record, from either layout.
    row = csv_rows([render_record(SID, 1, state, SETTINGS.policy)])
    assert csv_rows_of_calls([StoredCall(SID, four)], SETTINGS.policy) == row
    assert csv_rows_of_calls([StoredCall(SID, three)], SETTINGS.policy) == row
    # The same state; layout 3's core leaves the currency to the copy `j` it is served from.
    assert StoredCall(SID, four).state().parts() == state.parts()
    assert StoredCall(SID, three).state().parts()[:-1] == state.parts()[:-1]
    # The digest that stands for `j` in layout 4 is of the JSON after `j`'s version line.
    record = render_record(SID, 1, state, SETTINGS.policy)
    assert record_digest(record) == hashlib.sha1(three[b"j"].partition(b"\n")[2]).hexdigest()[:16].encode()


def fold_deliveries_plain(deliveries: list[CallEvent]) -> dict[str, Any]:
    """Fold as the worker does in layout 4, one delivery per batch: load the plain core fields and the
    fields the event touches, plan, and keep what the commit would write: the core's fields its events
    changed (each differing field of the whole core, and none it lacks)."""
    fields: dict[str, bytes] = {}
    applied: set[str] = set()
    for i, e in enumerate(deliveries):
        entry = Entry(f"{i}-0", e.model_dump_json().encode())
        keys, meta = wanted_meta([(entry, e)])
        names = [*HASH_FIELDS, *RECORD_FIELDS, *meta]
        loaded = LoadedCall(len(applied), None, {n: fields.get(n) for n in names}, 1, frozenset(applied & set(keys)))
        plan = plan_call(loaded, [(entry, e)], SETTINGS)
        fix_estimate(plan.state, SETTINGS.policy)
        fields.update(plan.state.changed_fields(SID))
        whole, written = dict(plan.state.plain_fields(SID)), dict(plan.state.plain_fields(SID, plan.plain_since))
        assert {n: v for n, v in whole.items() if fields.get(n) != v}.items() <= written.items() <= whole.items()
        fields.update(written)
        applied |= {key for key, _, _ in plan.new_events}
    return render_record(SID, 1, CallState.from_fields(None, fields, SID), SETTINGS.policy)


@hsettings(max_examples=200, deadline=None)
@given(events=call_events(), data=st.data())
def test_a_worker_folding_from_plain_fields_makes_the_reference_record(events: list[CallEvent], data: Any) -> None:
    expected = render_record(SID, 1, folded(events), SETTINGS.policy)
    deliveries = events + data.draw(st.lists(st.sampled_from(events), max_size=10))
    assert fold_deliveries_plain(data.draw(st.permutations(deliveries))) == expected


def test_the_status_names_its_event_relative_to_the_call() -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    assert short_id(f"{sid}-9", sid) == ".-9" and full_id(".-9", sid) == f"{sid}-9"
    assert short_id("v3:9e1d", sid) == ":v3:9e1d" and full_id(":v3:9e1d", sid) == "v3:9e1d"
    assert short_id(".x", sid) == ":.x" and full_id(":.x", sid) == ".x"  # an id that looks short stays whole
    core = {"status": [7, 1, f"{sid}-9", "2026-11-24T10:00:00Z"], "started": None, "answered": None,
            "duration": None, "first_seen": 1, "costs": {}, "provider": None, "meta_keys": 0, "meta_bytes": 0,
            "estimate": None, "currency": None}
    fields = dict(plain_fields(CallState(**core), sid))
    assert fields == {"st": b'[7,1,".-9","2026-11-24T10:00:00Z"]', "fs": b"1"}  # nothing for what it lacks
    assert core_of_plain(fields, sid) == core


def test_a_usual_completed_call_has_no_field_over_the_listpack_bound() -> None:
    """What layout 4 is for: every field of a usual call's hash within Redis's default
    hash-max-listpack-value (64 bytes), so the hash is a listpack (docs/performance.md)."""
    sid = "CA" + "0" * 32
    us = 1_795_500_000_000_000
    events = [
        platform_event(sid, f"{sid}-0", us, status="ringing", direction="outbound", from_number="+15551234567",
                       to_number="+15559876543"),
        platform_event(sid, f"{sid}-1", us + 5_000_000, status="ongoing"),
        platform_event(sid, f"{sid}-2", us + 6_000_000, assistant_id=12, assistant_name="ServiceBot",
                       flow_name="Support", call_meta={"customer_id": "cust_0"}),
        *[platform_event(sid, f"{sid}-{3 + n}", us + (7 + n) * 1_000_000,
                         costs=(Cost(component=c, amount_nano=1_230_006 * (n + 1), currency="USD"),))
          for n, c in enumerate(["llm", "tts", "stt"])],
        platform_event(sid, f"{sid}-9", us + 59_000_000, status="completed", duration=54),
    ]
    state = folded(events)
    fields = layout_4_hash(state, sid=sid)
    assert max(len(value) for value in fields.values()) <= 64, {k: len(v) for k, v in fields.items() if len(v) > 64}
    assert orjson.loads(fields[b"st"])[2] == ".-9"


@hsettings(max_examples=50, deadline=None)
@given(events=call_events())
def test_a_record_shows_the_currency_its_worker_applied_whoever_reads_it(events: list[CallEvent]) -> None:
    """Layout 4 renders when read: a `deliver` or an archive job with another LEDGER_CURRENCY than the
    worker's shows the currency the costs are in, as layout 3's stored copy did."""
    eur = make_settings(currency="EUR", fx_rates="USD=0.9", telephony_rates="twilio:inbound=0.01")
    state = CallState()
    for n, event in enumerate(events):
        if event.key not in {e.key for e in events[:n]}:
            apply_event(state, event, eur.policy)
    fix_estimate(state, eur.policy)
    four = layout_4_hash(state)
    record = orjson.loads(StoredCall(SID, four).served(SETTINGS.policy))  # read by a USD process
    assert record["cost_currency"] == ("EUR" if record["total_cost"] is not None else None)
    assert four.get(b"cu") == b"EUR"
