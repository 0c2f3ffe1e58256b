"""An applied event's member in its call's order index and journal, long or short (core.members):
every member reads back to its key, whichever form it was written in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from call_ledger.core.archive import event_row
from call_ledger.core.events import CallEvent
from call_ledger.core.journal import compact, restore
from call_ledger.core.members import full_provenance, is_short, key_of, other_form, short_member, short_provenance

SOURCES = ("platform", "twilio", "telnyx", "vonage", "plivo")
TEXT = st.text(min_size=1, max_size=40)


def test_the_short_form_drops_the_call_id_and_names_the_source_by_one_digit() -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    assert short_member(f"twilio:{sid}:12", sid) == "1.:12"
    assert short_member(f"platform:{sid}-3", sid) == "0.-3"
    assert short_member("telnyx:v3:9e1d8c2a", sid) == "2:v3:9e1d8c2a"  # its own id, kept whole
    assert short_member(f"platform:{sid}", sid) == "0."  # the id is the call's
    assert short_member("other:x", sid) == "other:x"  # a source without a code keeps the long form
    assert key_of("1.:12", sid) == f"twilio:{sid}:12"
    assert key_of("2:v3:9e1d8c2a", sid) == "telnyx:v3:9e1d8c2a"
    assert other_form("other:x", sid) is None and other_form(f"plivo:{sid}:a", sid) == "4.:a"
    assert short_member(f"vonage:{sid}", sid) == "3."


@given(source=st.one_of(st.sampled_from(SOURCES), st.from_regex(r"[a-z][a-z_-]{0,11}", fullmatch=True)),
       event_id=TEXT, call_sid=TEXT, prefixed=st.booleans())
def test_every_member_reads_back_to_its_key_in_either_form(source: str, event_id: str, call_sid: str,
                                                           prefixed: bool) -> None:
    key = f"{source}:{call_sid + event_id if prefixed else event_id}"
    short = short_member(key, call_sid)
    assert key_of(short, call_sid) == key
    assert key_of(key, call_sid) == key  # the long form is its own key
    assert is_short(short) == (source in SOURCES) == (other_form(key, call_sid) is not None)
    assert not is_short(key)
    assert short == key if source not in SOURCES else len(short) <= len(key) - len(source) + 1


@given(event_id=TEXT, call_sid=TEXT, short=st.booleans(), type_text=st.sampled_from(["call.status", "x"]))
def test_a_journal_entry_restores_under_either_member(event_id: str, call_sid: str, short: bool,
                                                      type_text: str) -> None:
    event = CallEvent(source="twilio", event_id=call_sid + event_id, call_sid=call_sid, type=type_text,
                      occurred_at="2026-12-07T10:00:00Z", occurred_us=1_796_637_600_000_000, status="ringing")
    raw = event.model_dump_json(exclude_defaults=True).encode()
    stored = compact(raw, event.key, call_sid, event.occurred_us)
    written = short_member(event.key, call_sid) if short else event.key
    assert restore(stored, written.encode(), call_sid, event.occurred_us) == raw
    row = event_row(call_sid, written.encode(), event.occurred_us, raw, 0)
    assert (row["source"], row["event_id"]) == ("twilio", event.event_id)


@given(source=st.one_of(st.sampled_from(SOURCES), st.from_regex(r"[a-z][a-z_-]{0,11}", fullmatch=True)),
       event_id=TEXT, call_sid=TEXT, prefixed=st.booleans(),
       value=st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)))
def test_a_registers_provenance_reads_back_in_either_form(source: str, event_id: str, call_sid: str,
                                                         prefixed: bool, value: object) -> None:
    register = [1_796_637_600_000_000, call_sid + event_id if prefixed else event_id, source, value]
    stored = short_provenance(register, call_sid)
    assert full_provenance(stored, call_sid) == register
    assert full_provenance(register, call_sid) == register  # the long form is read as it is
    assert stored[3] == value and len(stored) == 4  # the value where the Lua that reads it looks
    if source in SOURCES:
        assert stored[2] == str(SOURCES.index(source))


def test_a_short_register_needs_its_call() -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    stored = short_provenance([5, f"{sid}:3", "twilio", "outbound"], sid)
    assert stored == [5, ".:3", "1", "outbound"]
    with pytest.raises(ValueError, match="SID"):
        full_provenance(stored, None)
