"""Validly signed, hostile bodies at every intake route (schema-driven mutations of real payloads, JSON
and forms): never a 5xx, and what is stored is sound.
The service and the signers: tests/support/hostile.py."""

import json
from typing import Any

import pytest
from hypothesis import assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from call_ledger.core.events import COMPONENTS, STATUSES, CallEvent
from call_ledger.store import Store
from call_ledger.web.base import MAX_BODY
from call_ledger.worker.consumer import Consumer
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.hostile import (
    FUZZ,
    FX_REASON,
    RECORD_KEYS,
    Req,
    platform_req,
    plivo_req,
    sample,
    sid_path,
    stream_length,
    telnyx_req,
    twilio_req,
    vonage_get_req,
    vonage_req,
)
from tests.support.settings import AUTH

# -- 2. validly signed, hostile bodies -------------------------------------------------------------------------

ODD_STRINGS = ["", " ", "\t", "\x00", "CA\x00\r\n\x1b[31m\x7f", "\u202eRTL", "☎️💥", "Ω≈ç√", "a" * 512, "../..", "%2F",
               "%00", "{}", "[]", "null", "true", "NaN", "-Infinity", "1e400", "-1e400", "-0", "0x1F", "1_000", "١٢٣",
               "\uff19", "   42  ", "9" * 30, "-0.013", "1,5", "0.1", "1000000000", "1000000001", "\ufeff", "\u2028"]
TIMES = ["2026-11-24T10:00:00Z", "2026-11-24T10:00:00.123456789Z", "2026-11-24 10:00:00", "2026-11-24T10:00:00+05:30",
         "2026-11-24T10:00:00-0800", "2026-02-30T10:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:00:60Z",
         "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-11-24T10:00:00+99:99", "2026-11-24T10:00:00 GMT",
         "Tue, 24 Nov 2026 10:00:00 +0000", "Tue, 31 Feb 2026 10:00:00 +0000", "Tue, 24 Nov 2026 10:00:00", "yesterday",
         "\uff11\uff19\uff17\uff10-01-01T00:00:00Z", "2026-11-24T10:00:00,5Z"]
EDGE_TIMES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31 23:59:59-2359",
              "Fri, 31 Dec 9999 23:59:59 -2359", "Mon, 01 Jan 0001 00:00:00 +2359"]
SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800"]

texts = st.one_of(st.text(max_size=24), sample(ODD_STRINGS),
                  st.sampled_from(SURROGATES))
form_texts = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=24), sample(ODD_STRINGS))
times = st.one_of(st.sampled_from(TIMES), st.datetimes().map(lambda dt: dt.isoformat() + "Z"),
                  st.sampled_from(EDGE_TIMES))
sids = st.one_of(st.text(min_size=1, max_size=40),
                 st.sampled_from(["CA1", "a/b", "..", "%2F", "CA\x00\n", "☎", "a" * 512]),
                 st.integers(513, 4000).map(lambda n: "S" * n),
                 st.sampled_from(SURROGATES))
amounts = st.one_of(st.sampled_from(["0.1", "-0.013", "1e400", "1e-400", "1000000000", "1000000000.000000001",
                                     "0.0000000005", "  1 ", "1,5", "", "0x10", "Infinity", "NaN"]),
                    st.decimals(allow_nan=True, allow_infinity=True).map(str), st.integers(-(10**12), 10**12),
                    st.sampled_from(["1e1000000", "-1E+999999999", "9e9999999"]))
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson (the worker's state) can carry
numbers = st.one_of(INT64, st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64 - 1]), st.floats(),
                    st.sampled_from([2**64, -(2**63) - 1, 10**30, 10**4000]))


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


scalars = st.one_of(st.none(), st.booleans(), numbers, texts, times)
hostile = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                       | st.dictionaries(texts, children, max_size=3), max_leaves=8)
deep = st.integers(1, 400).map(nested)
call_metas = st.one_of(st.dictionaries(texts, hostile, max_size=4),
                       st.dictionaries(texts, deep, min_size=1, max_size=1))


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the field should hold, sometimes anything at all."""
    return st.one_of(valid, valid, hostile)


platform_data = st.fixed_dictionaries({}, optional={
    "status": either(st.sampled_from(STATUSES)),
    "duration": either(st.integers(0, 10**6)),
    "component": either(st.sampled_from(COMPONENTS)),
    "cost": either(amounts),
    "currency": either(st.sampled_from(["USD", "EUR", "usd", " GBP ", "XYZ", "US", "€", ""])),
    "assistant_id": either(st.integers(0, 2**31)),
    "assistant_name": either(texts),
    "flow_name": either(texts),
    "to_phone_number": either(texts),
    "customer_phone_number": either(texts),
    "direction": either(st.sampled_from(["inbound", "outbound"])),
    "call_meta": either(call_metas),
})
platform_docs = st.fixed_dictionaries(
    {"type": either(st.sampled_from(["call.metadata", "call.usage", "call.status", "call.transcript"])),
     "call_sid": either(sids)},
    optional={"occurred_at": either(times), "data": either(platform_data), "extra": hostile},
)
telnyx_payload = st.fixed_dictionaries({"call_control_id": either(sids)}, optional={
    "direction": either(st.sampled_from(["incoming", "outgoing"])),
    "from": either(texts), "to": either(texts),
    "hangup_cause": either(st.sampled_from(["normal_clearing", "user_busy", "timeout", "call_rejected"])),
    "status": either(st.sampled_from(["success", "error"])),
    "total_cost": either(amounts),
    "cost_parts": either(st.lists(st.fixed_dictionaries({}, optional={
        "cost": either(amounts), "currency": either(st.sampled_from(["USD", "EUR", "XYZ", "", "usd"]))}),
        max_size=3)),
})
telnyx_docs = st.fixed_dictionaries({"data": either(st.fixed_dictionaries({
    "event_type": either(st.sampled_from(["call.initiated", "call.answered", "call.hangup", "call.cost",
                                          "call.speak.ended"])),
    "id": either(texts), "occurred_at": either(times), "payload": either(telnyx_payload)}))},
    optional={"meta": hostile})
VONAGE_STATUSES = ["started", "ringing", "answered", "completed", "busy", "cancelled", "unanswered", "timeout",
                   "rejected", "failed", "human", "record", "COMPLETED", "unknown"]
vonage_docs = st.fixed_dictionaries(
    {"uuid": either(sids), "status": either(st.sampled_from(VONAGE_STATUSES)), "timestamp": either(times)},
    optional={"direction": either(st.sampled_from(["inbound", "outbound"])), "from": either(texts),
              "to": either(texts), "price": either(amounts), "recording_url": texts, "type": texts,
              "duration": either(st.one_of(st.integers(-5, 10**6), st.integers(0, 10**6).map(str)))})


# Mutations: a realistic event with one to three of its fields made hostile (or dropped, or repeated), so most
# examples get past the first check and reach the parser's, the store's and the worker's deeper paths.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(["call_sid", "call_control_id", "uuid"], sids),
    **dict.fromkeys(["occurred_at", "timestamp", "start_time", "end_time"], times),
    **dict.fromkeys(["cost", "total_cost", "price"], amounts),
    **dict.fromkeys(["duration", "assistant_id", "billed_duration_secs"], st.one_of(numbers, texts)),
    "call_meta": call_metas,
    "cost_parts": st.lists(st.fixed_dictionaries({}, optional={"cost": amounts, "currency": texts}), max_size=3),
}


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a document's objects (lists are left whole)."""
    paths = []
    for key, value in doc.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _paths(value, (*prefix, key))
    return paths


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]], keep: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """One of `bases` with one to three fields changed or dropped. Paths in `keep` stay: a hostile `type` or
    `call_sid` stops the parser at once, and the free-form strategies cover those already."""
    doc = json.loads(json.dumps(draw(st.sampled_from(bases))))  # a deep copy
    paths = [path for path in _paths(doc) if path not in keep]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        parent: Any = doc
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier mutation replaced an ancestor
        if draw(st.integers(0, 5)) == 0:
            parent.pop(path[-1], None)
        else:
            specific = FIELD_VALUES.get(path[-1], st.nothing())
            parent[path[-1]] = draw(st.one_of(specific, specific, hostile))
    return doc


def _platform_bases() -> list[dict[str, Any]]:
    common = {"call_sid": "CA_fuzz", "occurred_at": "2026-11-24T10:00:00Z"}
    return [
        common | {"type": "call.metadata", "data": {
            "assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support", "direction": "inbound",
            "to_phone_number": "+15551234567", "customer_phone_number": "+15559876543",
            "call_meta": {"customer_id": "cust_abc123"}}},
        common | {"type": "call.usage", "data": {"component": "llm", "cost": "0.0123", "currency": "USD",
                                                 "provider": "openai", "usage_amount": 8200}},
        common | {"type": "call.status", "data": {"status": "completed", "duration": 300}},
    ]


platform_docs = st.one_of(*[mutated(_platform_bases(), keep=(("type",), ("data",), ("call_sid",)))] * 3,
                          mutated(_platform_bases()), platform_docs)
telnyx_docs = st.one_of(telnyx_docs, mutated([tx.initiated(), tx.answered(), tx.hangup(), tx.cost(),
                                               tx.cost(total_cost=None), tx.speak_ended()]),
                        mutated([tx.initiated(), tx.hangup(), tx.cost()]))
vonage_docs = st.one_of(vonage_docs, mutated([vn.started(), vn.ringing(), vn.answered(), vn.completed(),
                                              vn.unsuccessful("busy", "busy"), vn.human(), vn.record()]),
                        mutated([vn.started(), vn.completed()]))


@st.composite
def json_body(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """A document as JSON (escaped or raw UTF-8), or a hand-written hostile literal."""
    raw = draw(sample([
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing","duration":NaN}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":Infinity}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":1e400}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":-1e-400}}',
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing","duration":1' + b"0" * 5000 + b"}}",
        b'{"type":"call.status","call_sid":"A","call_sid":"B","data":{"status":"ringing"}}',
        b'\xef\xbb\xbf{"type":"call.status","call_sid":"CA1","data":{"status":"ringing"}}',
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing"}} trailing',
        '{"type":"call.status","call_sid":"CA1"}'.encode("utf-16"),
        b"[" * 5000 + b"]" * 5000,
        b'{"data":' * 3000 + b"{}" + b"}" * 3000,
        b"", b"null", b"[]", b'"x"', b"\xff\xfe", b'{"a":"\xc3"}',
    ]))
    doc = draw(docs)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: send it escaped
        body = json.dumps(doc, allow_nan=True).encode("utf-8")
    return draw(st.sampled_from([body, body, body, raw]))


def form_fields(names: dict[str, st.SearchStrategy[str]], junk_names: list[str]) -> st.SearchStrategy[Any]:
    """(name, value) pairs: the fields a source reads, hostile values, extra and repeated names."""
    required = {name: s for name, s in names.items() if name in ("CallSid", "CallUUID", "CallStatus")}
    optional = {name: s for name, s in names.items() if name not in required}
    fields = st.fixed_dictionaries(required, optional=optional).map(lambda d: list(d.items()))
    extra = st.lists(st.tuples(st.one_of(st.sampled_from(list(names) + junk_names), form_texts), form_texts),
                     max_size=3)
    return st.tuples(fields, extra).map(lambda pair: pair[0] + pair[1])


def form_either(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    hostile_text = st.one_of(form_texts, st.sampled_from(TIMES), numbers.map(str),
                             st.integers(1000, 4000).map(lambda n: "9" * n))
    return st.one_of(valid, valid, hostile_text)


form_sids = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
                      st.sampled_from(["CA1", " CA1 ", "CA\x00\n", "☎", "a" * 512]),
                      st.integers(513, 4000).map(lambda n: "S" * n))
twilio_params = form_fields({
    "CallSid": form_either(form_sids),
    "CallStatus": form_either(st.sampled_from(["queued", "ringing", "in-progress", "completed", "busy", "failed",
                                               "Completed", "answered"])),
    "SequenceNumber": form_either(st.integers(0, 5).map(str)),
    "Timestamp": form_either(st.sampled_from(TIMES)),
    "Direction": form_either(st.sampled_from(["inbound", "outbound-api", "outbound-dial"])),
    "From": form_texts, "To": form_texts,
    "CallDuration": form_either(st.integers(0, 10**6).map(str)),
    "RecordingSid": form_texts,
}, ["AnsweredBy", "TranscriptionSid", "AccountSid"])
plivo_params = form_fields({
    "CallUUID": form_either(form_sids),
    "CallStatus": form_either(st.sampled_from(["ringing", "in-progress", "completed", "busy", "timeout", "cancel",
                                               "Completed", "queued"])),
    "Event": form_either(st.sampled_from(["Hangup", "StartApp", "MachineDetection", ""])),
    "Direction": form_either(st.sampled_from(["inbound", "outbound"])),
    "From": form_texts, "To": form_texts,
    "Duration": form_either(st.integers(0, 10**6).map(str)),
    "TotalCost": form_either(amounts.map(str)),
    "StartTime": form_either(st.sampled_from(TIMES)),
    "AnswerTime": form_either(st.sampled_from(TIMES)),
    "EndTime": form_either(st.sampled_from(TIMES)),
}, ["RecordUrl", "RecordingID", "BillDuration"])
# The form sources' own time fields at the edge of datetime's range.
twilio_params = st.one_of(twilio_params, twilio_params.map(lambda p: [*p, ("Timestamp", EDGE_TIMES[3])]))
plivo_params = st.one_of(plivo_params, plivo_params.map(lambda p: [*p, ("EndTime", EDGE_TIMES[2])]))

FORM_VALUES: dict[str, st.SearchStrategy[str]] = {
    **dict.fromkeys(["CallSid", "CallUUID"], form_sids),
    "Timestamp": st.sampled_from(TIMES + EDGE_TIMES[3:]),
    **dict.fromkeys(["StartTime", "AnswerTime", "EndTime", "SessionStart"], st.sampled_from(TIMES + EDGE_TIMES)),
    **dict.fromkeys(["CallDuration", "Duration", "BillDuration", "SequenceNumber"], numbers.map(str)),
    "TotalCost": amounts.map(str),
}


@st.composite
def mutated_form(draw: st.DrawFn, bases: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """A realistic callback with one to three parameters changed, dropped or repeated with another value."""
    params = list(draw(st.sampled_from(bases)))
    names = sorted({n for n, _ in params})
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        value = draw(st.one_of(FORM_VALUES.get(name, st.nothing()), form_either(form_texts)))
        action = draw(st.sampled_from(["replace", "replace", "drop", "repeat"]))
        if action == "repeat":
            params.append((name, value))
        else:
            params = [(n, value if n == name else v) for n, v in params if not (action == "drop" and n == name)]
    return params


twilio_params = st.one_of(twilio_params, mutated_form(
    [tw.lifecycle("initiated"), tw.lifecycle("ringing", direction="inbound"), tw.completed(),
     tw.ended("busy"), tw.recording_status()]))
plivo_params = st.one_of(plivo_params, mutated_form([pl.ringing(), pl.answered(), pl.hangup(), pl.busy(),
                                                     pl.machine_detection(direction="inbound")]))

ascii_only = st.lists(st.tuples(st.text(st.characters(max_codepoint=127), max_size=12),
                                st.text(st.characters(max_codepoint=127), max_size=24)), max_size=4)


def _no_surrogates(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def clean(text: str) -> str:
        return text.encode("utf-8", "replace").decode("utf-8")

    return [(clean(name), clean(value)) for name, value in pairs]


def _ascii_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in pairs if name.isascii() and value.isascii()]


vonage_query = st.one_of(
    vonage_docs.map(lambda doc: [(k, v if isinstance(v, str) else json.dumps(v, allow_nan=True))
                                 for k, v in doc.items() if v is not None]),
    mutated_form([vn.query_params(doc) for doc in (vn.started(), vn.answered(), vn.completed(), vn.human())]))


def signed_hostile(source: str, method: str) -> st.SearchStrategy[Req]:
    """Hostile requests of `source`, each signed as the provider would sign it."""
    if source == "platform":
        return json_body(platform_docs).map(platform_req)
    if source == "telnyx":
        return json_body(telnyx_docs).map(telnyx_req)
    if source == "vonage" and method == "POST":
        return json_body(vonage_docs).map(vonage_req)
    if source == "vonage":
        return vonage_query.map(_no_surrogates).map(vonage_get_req)  # a URL cannot carry a lone surrogate
    if source == "twilio":
        return twilio_params.map(lambda params: twilio_req(method, params))
    if method == "GET":  # Plivo's SDK cannot sign a GET whose query holds non-ASCII text
        return st.one_of(plivo_params.map(_ascii_pairs), ascii_only).map(lambda params: plivo_req("GET", params))
    return plivo_params.map(lambda params: plivo_req("POST", params))


async def assert_stored_event_is_sound(client: Any, store: Store, consumer: Consumer, answer: dict[str, Any]) -> None:
    """The last stream entry decodes as a CallEvent, applies in a burst, and its call can be read back."""
    [(entry_id, fields)] = await store.redis.xrevrange(store.stream, count=1)
    stored = CallEvent.model_validate_json(fields[b"e"])
    assert (stored.call_sid, stored.event_id) == (answer["call_sid"], answer["event_id"])
    await consumer.run_burst()  # raises on a bug the batch could not contain
    assert await store.dead_letters() == []
    reason = await store.redis.hget(store.failures, entry_id)
    if reason is not None:  # waiting for an FX rate: by design, and nothing to read back yet
        assert FX_REASON in reason.decode()
        return
    record = await client.get(sid_path(stored.call_sid), headers=AUTH)
    assert record.status == 200, await record.text()
    body = await record.json()
    assert set(body) == RECORD_KEYS and body["call_sid"] == stored.call_sid
    events = await client.get(sid_path(stored.call_sid, "/events"), headers=AUTH)
    assert events.status == 200, await events.text()
    assert stored.event_id in [e["event_id"] for e in (await events.json())["events"]]


def _fuzz_signed(source: str, method: str, examples: int = 60) -> Any:
    @hsettings(max_examples=examples, **FUZZ)
    @given(req=signed_hostile(source, method))
    async def run(client: Any, store: Store, consumer: Consumer, req: Req) -> None:
        assume(len(req.body) <= MAX_BODY and len(str(req.url)) < 8000)
        before = await stream_length(store)
        with capture_logs():
            response = await req.send(client)
            answer = await response.json()
            # Examples share one store, and Twilio/Plivo sign names and values concatenated: two
            # examples can carry one signature over other parameters (a repeated pair, a moved
            # boundary). The signature ledger refuses the later one, rightly (test_replay_resplit.py).
            replay = response.status == 401 and answer.get("detail") == "signature already used with other parameters"
            assert response.status in (200, 400, 422) or (replay and source in ("twilio", "plivo")), (
                response.status, await response.text(), req.method, str(req.url)[:500], req.body[:1000])
            event(f"answered {response.status} {answer.get('outcome') or answer.get('detail', '')[:40]}")
            if response.status != 200:
                assert answer["error"] in ("malformed_body", "invalid_event", "invalid_signature") and answer["detail"]
                assert await stream_length(store) == before
                return
            assert answer["outcome"] in ("stored", "ignored")
            assert await stream_length(store) == before + (answer["outcome"] == "stored")
            if answer["outcome"] == "stored":
                await assert_stored_event_is_sound(client, store, consumer, answer)

    return run


test_signed_hostile_platform = _fuzz_signed("platform", "POST", examples=120)
test_signed_hostile_twilio_post = _fuzz_signed("twilio", "POST")
test_signed_hostile_twilio_get = _fuzz_signed("twilio", "GET", examples=30)
test_signed_hostile_telnyx = _fuzz_signed("telnyx", "POST", examples=80)
test_signed_hostile_vonage_post = _fuzz_signed("vonage", "POST", examples=80)
test_signed_hostile_vonage_get = _fuzz_signed("vonage", "GET", examples=30)
test_signed_hostile_plivo_post = _fuzz_signed("plivo", "POST")
test_signed_hostile_plivo_get = _fuzz_signed("plivo", "GET", examples=30)


@pytest.mark.parametrize("body", [
    json.dumps({"type": "call.status", "call_sid": "CA\x00\x01\x1f\x7f\u2028", "data": {"status": "ringing"}}),
    json.dumps({"type": "call.metadata", "call_sid": "CA_types", "data": {
        "assistant_id": "12", "assistant_name": 12, "call_meta": {"n": [1, {"x": None}], "ü": "ß"}}}),
    json.dumps({"type": "call.status", "call_sid": "CA_dur", "data": {"status": "completed", "duration": "300"}}),
    json.dumps({"type": "call.usage", "call_sid": "CA_cost", "data": {"component": "llm", "cost": [0.1]}}),
    json.dumps({"type": "call.metadata", "call_sid": "CA_meta", "data": {"call_meta": {"x": nested(150)}}}),
    '{"type":"call.usage","call_sid":"CA_e","data":{"component":"llm","cost":1E+999999}}',
    '{"type":"call.metadata","call_sid":"CA_f","data":{"call_meta":{"big":1e999999999,"tiny":1e-999999999}}}',
], ids=["control-chars-sid", "wrong-types", "string-duration", "list-cost", "nested-150", "huge-exponent-cost",
        "huge-exponent-meta"])
async def test_signed_platform_examples(client: Any, store: Store, consumer: Consumer, body: str) -> None:
    """Named cases of the fuzz above, always run: never a 5xx, and what is stored applies."""
    response = await platform_req(body.encode()).send(client)
    assert response.status in (200, 400, 422), await response.text()
    if response.status == 200 and (answer := await response.json())["outcome"] == "stored":
        await assert_stored_event_is_sound(client, store, consumer, answer)
