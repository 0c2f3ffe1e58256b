"""Plivo source: Signature V3 verification and callback normalisation.

Every signature here is computed by the official SDK's `plivo.utils.signature_v3`
helpers, so a misreading of the recipe in our code cannot be mirrored by the tests
that check it.
"""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import CIMultiDict
from plivo.utils.signature_v3 import validate_v3_signature

from call_ledger.core.errors import InvalidEvent, MalformedBody, SignatureInvalid
from call_ledger.core.events import CallEvent, Cost
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.plivo import PlivoSource
from tests.support import payloads_plivo as pl

NOW = 1_795_000_000.5  # when intake received the request (unix seconds)
URL = pl.PUBLIC_URL + pl.PATH
SIGNER = pl.PlivoSigner()
OURS, CUSTOMER = "+" + pl.OUR_NUMBER, "+" + pl.CUSTOMER
SIGNATURE, NONCE = "X-Plivo-Signature-V3", "X-Plivo-Signature-V3-Nonce"


def make_source(token: str = pl.AUTH_TOKEN, currency: str = "USD") -> PlivoSource:
    source = PlivoSource.from_settings(Settings(plivo_auth_token=token, plivo_currency=currency,
                                                public_url=pl.PUBLIC_URL))
    assert source is not None
    return source


def as_received(signed: pl.SignedRequest, *, url: str | None = None, body: bytes | None = None,
                drop: str | None = None, **headers: str) -> WebhookRequest:
    """The `WebhookRequest` intake builds from what Plivo sent (optionally altered on the way)."""
    url = url or signed.url
    all_headers = CIMultiDict(signed.headers)
    if drop:
        del all_headers[drop]
    for name, value in headers.items():
        all_headers[name.replace("_", "-")] = value
    query = tuple(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return WebhookRequest(method=signed.method, url=url, headers=all_headers,
                          body=signed.body if body is None else body, received_at=NOW, query=query)


def signed_request(params: pl.Params, method: str = "POST", url: str = URL, **kw: str) -> WebhookRequest:
    return as_received(SIGNER.sign(method, url, params), **kw)


def accept(request: WebhookRequest, source: PlivoSource | None = None) -> CallEvent | None:
    """What intake does: verify, then parse."""
    source = source or make_source()
    source.verify(request)
    return source.parse(request)


def rejected(request: WebhookRequest, source: PlivoSource | None = None) -> str:
    with pytest.raises(SignatureInvalid) as info:
        (source or make_source()).verify(request)
    return str(info.value)


def _instant(iso: str) -> tuple[str, int]:
    """(canonical text, microseconds since the epoch), computed independently of call_ledger.core.instants."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return iso, (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def telephony(nano: int, currency: str = "USD") -> Cost:
    return Cost(component="telephony", amount_nano=nano, currency=currency)


RECEIVED = datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(event_name: str, raw_status: str, status: str, at: str, *, direction: str = "outbound",
          duration: int | None = None, cost_nano: int | None = None, currency: str = "USD",
          answered: bool | None = None) -> CallEvent:
    """The expected event; a hang-up also reports the call's StartTime (and AnswerTime if it connected)."""
    text, us = _instant(at)
    times: dict[str, object] = {}
    if event_name == "Hangup":
        times["started_at"], times["started_us"] = _instant(pl.START.replace(" ", "T") + "Z")
        if answered if answered is not None else bool(duration):
            times["answered_at"], times["answered_us"] = _instant(pl.ANSWER.replace(" ", "T") + "Z")
    caller, callee = (CUSTOMER, OURS) if direction == "inbound" else (OURS, CUSTOMER)
    costs = () if cost_nano is None else (telephony(cost_nano, currency),)
    return CallEvent(source="plivo", event_id=f"{pl.CALL_UUID}:{event_name}:{raw_status}",
                     call_sid=pl.CALL_UUID,
                     type=f"{event_name or 'callback'}.{raw_status}", occurred_at=text, occurred_us=us,
                     status=status, direction=direction, from_number=caller, to_number=callee,
                     duration=duration, costs=costs, **times)


# --- configuration ---------------------------------------------------------------------------------------


def test_source_is_absent_when_auth_token_is_not_configured():
    assert PlivoSource.from_settings(Settings(plivo_auth_token=None)) is None
    assert PlivoSource.from_settings(Settings(plivo_auth_token=" ")) is None


def test_source_declares_its_route_contract():
    assert PlivoSource.name == "plivo"
    assert PlivoSource.secret_variable == "LEDGER_PLIVO_AUTH_TOKEN"
    assert PlivoSource.methods == frozenset({"POST", "GET"})


# --- lifecycle: every callback, verified then parsed --------------------------------------------------------

LIFECYCLE = {
    # ring_url and answer_url requests carry no time of their own: the time of receipt stands in.
    "ringing": (pl.ringing(), event("", "ringing", "ringing", RECEIVED)),
    "answered": (pl.answered(), event("StartApp", "in-progress", "ongoing", RECEIVED)),
    "completed": (pl.hangup(), event("Hangup", "completed", "completed", "2026-11-24T10:04:52Z",
                                     duration=287, cost_nano=42_500_000)),
    "busy": (pl.busy(), event("Hangup", "busy", "busy", "2026-11-24T10:00:09Z", duration=0, cost_nano=0)),
    "timeout": (pl.timeout(), event("Hangup", "timeout", "no-answer", "2026-11-24T10:00:45Z", duration=0,
                                    cost_nano=0)),
    "no-answer": (pl.no_answer(), event("Hangup", "no-answer", "no-answer", "2026-11-24T10:00:31Z",
                                        duration=0, cost_nano=0)),
    "failed": (pl.failed(), event("Hangup", "failed", "failed", "2026-11-24T10:00:02Z", duration=0,
                                  cost_nano=0)),
    "cancel": (pl.canceled(), event("Hangup", "cancel", "canceled", "2026-11-24T10:00:12Z",
                                    direction="inbound", duration=0, cost_nano=0)),
    "inbound-ringing": (pl.ringing(direction="inbound"),
                        event("", "ringing", "ringing", RECEIVED, direction="inbound")),
}


@pytest.mark.parametrize("params, expected", LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_signed_callback_becomes_the_whole_call_event(params, expected):
    assert accept(signed_request(params)) == expected


@pytest.mark.parametrize("params, expected", LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_signed_get_callback_is_parsed_from_its_query_string(params, expected):
    request = signed_request(params, method="GET")
    assert request.body == b"" and "CallUUID=" in request.url
    assert accept(request) == expected


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_whole_call_fixture_yields_its_events_in_order_and_drops_machine_detection(method):
    call = pl.whole_call(method=method)
    events = [accept(as_received(call.signer.sign(method, pl.PUBLIC_URL + path, params)))
              for method, path, params in call.requests]
    assert [e and e.status for e in events] == ["ringing", "ongoing", None, "completed"]


def test_machine_detection_callback_is_acknowledged_and_dropped():
    assert accept(signed_request(pl.machine_detection())) is None


def test_total_cost_is_in_the_configured_plivo_currency():
    parsed = accept(signed_request(pl.hangup()), make_source(currency="EUR"))
    assert parsed is not None
    assert parsed.costs == (telephony(42_500_000, "EUR"),)


def test_hangup_without_total_cost_carries_no_cost():
    parsed = accept(signed_request(pl.hangup(total_cost=None)))
    assert parsed == LIFECYCLE["completed"][1].model_copy(update={"costs": ()})


def test_answer_time_dates_the_answered_event_when_given():
    params = pl.answered(extra=[("StartTime", pl.START), ("AnswerTime", pl.ANSWER)])
    parsed = accept(signed_request(params))
    start, answer = _instant("2026-11-24T10:00:00Z"), _instant("2026-11-24T10:00:05Z")
    assert parsed == event("StartApp", "in-progress", "ongoing", "2026-11-24T10:00:05Z").model_copy(update={
        "started_at": start[0], "started_us": start[1], "answered_at": answer[0], "answered_us": answer[1]})


def test_start_time_dates_the_ringing_event_when_given():
    parsed = accept(signed_request(pl.ringing(extra=[("StartTime", pl.START)])))
    start = _instant("2026-11-24T10:00:00Z")
    assert parsed == event("", "ringing", "ringing", "2026-11-24T10:00:00Z").model_copy(
        update={"started_at": start[0], "started_us": start[1]})


def test_end_time_with_an_offset_is_converted_to_utc():
    parsed = accept(signed_request(pl.hangup(end="2026-11-24 15:34:52+05:30")))
    assert parsed is not None and parsed.occurred_at == "2026-11-24T10:04:52Z"


@pytest.mark.parametrize("end", ["24/11/2026 10:04", "2026-11-24 10:04:52 trailing", "2026-11-24T10:04:52Z",
                                 "2026-13-24 10:04:52"])
def test_unreadable_end_time_is_invalid_not_skipped(end):
    # Skipping it would date the hang-up at its arrival: what a replay with a moved boundary aims for.
    request = signed_request(pl.hangup(end=end))
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match="EndTime"):
        make_source().parse(request)


def test_blank_end_time_falls_back_to_the_time_of_receipt():
    parsed = accept(signed_request(pl.hangup(end="")))
    assert parsed is not None and parsed.occurred_at == RECEIVED


def test_sip_addresses_are_kept_as_given():
    params = [(k, "sip:agent@phone.plivo.com" if k == "To" else v) for k, v in pl.hangup()]
    parsed = accept(signed_request(params))
    assert parsed is not None and parsed.to_number == "sip:agent@phone.plivo.com"


# --- signature ---------------------------------------------------------------------------------------------


def test_sdk_validator_agrees_with_the_test_signer():
    # Guards the fixtures: the SDK's own validator accepts what the tests send.
    signed = SIGNER.sign("POST", URL, pl.hangup())
    assert validate_v3_signature("POST", URL, pl.NONCE, pl.AUTH_TOKEN, signed.headers[SIGNATURE],
                                 dict(pl.hangup()))


def test_post_to_a_url_with_a_query_string_is_accepted():
    # Base: URL + "?" + sorted query + "." + sorted params.
    make_source().verify(signed_request(pl.hangup(), url=URL + "?tenant=acme&env=prod"))


def test_get_to_a_url_with_its_own_query_merges_both_into_the_signature():
    make_source().verify(signed_request(pl.ringing(), method="GET", url=URL + "?tenant=acme"))


def test_non_ascii_parameter_values_are_signed_as_utf8():
    # POST only: the SDK's GET helper cannot itself handle non-ASCII query values (py3 bytes/str mix).
    params = _with(pl.canceled(), "CallerName", "José Núñez")
    assert accept(signed_request(params)) == LIFECYCLE["cancel"][1]


def test_repeated_parameters_are_signed_as_the_sdk_signs_them():
    params = [*pl.hangup(), ("Tag", "b"), ("Tag", "a")]
    assert accept(signed_request(params)) == LIFECYCLE["completed"][1]


def test_several_signatures_with_one_valid_are_accepted():
    valid = SIGNER.signature("POST", URL, pl.hangup())
    stale = pl.PlivoSigner(token="T" * 40).signature("POST", URL, pl.hangup())
    make_source().verify(signed_request(pl.hangup(), X_Plivo_Signature_V3=f"{stale},{valid}"))
    make_source().verify(signed_request(pl.hangup(), X_Plivo_Signature_V3=f"{valid}, {stale}"))


def test_several_signatures_none_valid_are_rejected():
    stale = pl.PlivoSigner(token="T" * 40).signature("POST", URL, pl.hangup())
    rejected(signed_request(pl.hangup(), X_Plivo_Signature_V3=f"{stale},{stale[::-1]}"))


def test_tampered_body_is_rejected():
    signed = SIGNER.sign("POST", URL, pl.hangup())
    rejected(as_received(signed, body=signed.body.replace(b"TotalCost=0.04250", b"TotalCost=0.00001")))


def test_signature_made_with_another_token_is_rejected():
    rejected(as_received(pl.PlivoSigner(token="T" * 40).sign("POST", URL, pl.hangup())))


def test_other_nonce_is_rejected():
    rejected(signed_request(pl.hangup(), X_Plivo_Signature_V3_Nonce="11111111111111111111"))


@pytest.mark.parametrize("header", [SIGNATURE, NONCE])
def test_missing_signature_header_is_rejected(header):
    assert header in rejected(signed_request(pl.hangup(), drop=header))


def test_tampered_get_query_is_rejected():
    signed = SIGNER.sign("GET", URL, pl.hangup())
    rejected(as_received(signed, url=signed.url.replace("Duration=287", "Duration=2870")))


def test_get_signed_as_a_post_is_rejected():
    get = SIGNER.sign("GET", URL, pl.hangup())
    rejected(as_received(get, X_Plivo_Signature_V3=SIGNER.signature("POST", URL, pl.hangup())))


@pytest.mark.parametrize("signed_url, received_url", [
    (URL, "https://ledger.example.com:443/webhooks/plivo"),  # Plivo signs the URL exactly as called
    ("https://ledger.example.com:443/webhooks/plivo", URL),
    (URL, "http://ledger.example.com/webhooks/plivo"),
    (URL + "?tenant=a", URL + "?tenant=b"),
])
def test_signature_over_a_different_url_is_rejected(signed_url, received_url):
    rejected(as_received(SIGNER.sign("POST", signed_url, pl.hangup()), url=received_url))


def test_rejections_never_reveal_the_token_or_the_signature():
    signed = SIGNER.sign("POST", URL, pl.hangup())
    messages = [
        rejected(as_received(signed, body=signed.body + b"&x=1")),
        rejected(as_received(signed), make_source("Z" * 40)),
        rejected(as_received(signed, drop=SIGNATURE)),
        rejected(as_received(signed, drop=NONCE)),
    ]
    for message in messages:
        assert pl.AUTH_TOKEN not in message and "Z" * 40 not in message
        assert signed.headers[SIGNATURE] not in message


# --- malformed and invalid bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"CallUUID=x&From=\xff\xfe", b"CallUUID=%FF%FE&CallStatus=completed"])
def test_body_that_is_not_utf8_form_data_is_malformed(body):
    request = as_received(SIGNER.sign("POST", URL, pl.hangup()), body=body)
    with pytest.raises(MalformedBody):
        make_source().verify(request)
    with pytest.raises(MalformedBody):
        make_source().parse(request)


def _without(params: pl.Params, name: str) -> pl.Params:
    return [(k, v) for k, v in params if k != name]


def _with(params: pl.Params, name: str, value: str) -> pl.Params:
    return [(k, value if k == name else v) for k, v in params]


@pytest.mark.parametrize("params, field", [
    (_without(pl.hangup(), "CallUUID"), "CallUUID"),
    (_with(pl.hangup(), "CallUUID", " "), "CallUUID"),
    (_without(pl.hangup(), "CallStatus"), "CallStatus"),
    (_with(pl.hangup(), "CallStatus", "on-hold"), "CallStatus"),
    (_with(pl.hangup(), "Duration", "-1"), "Duration"),
    (_with(pl.hangup(), "Duration", "2.5"), "Duration"),
    (_with(pl.hangup(), "TotalCost", "0,0425"), "TotalCost"),
    (_with(pl.hangup(), "TotalCost", "NaN"), "TotalCost"),
    (_with(pl.hangup(), "TotalCost", "USD 0.04"), "TotalCost"),
    ([*pl.hangup(), ("CallStatus", "busy")], "CallStatus"),
])
def test_signed_callback_lacking_what_a_call_event_needs_is_invalid(params, field):
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match=field):
        make_source().parse(request)


# --- strict formats: every field the ledger reads, exactly as Plivo writes it ------------------------------

@pytest.mark.parametrize("name, value", [
    ("CallUUID", "CA1"),
    ("CallUUID", pl.CALL_UUID.upper()),  # another case would be another call record
    ("CallUUID", pl.CALL_UUID + "CallerName+14155551234"),  # CallUUID absorbing CallerName
    ("Event", "tHangup"),
    ("Event", "HangupFrom14155551234"),  # Event absorbing From
    ("Event", ""),
    ("Direction", "outboundDuration287"),
    ("Direction", "sideways"),
    ("From", "14155551234HangupCauseNORMAL_CLEARING"),
    ("From", "anonymous"),
    ("To", "44 7700 900123"),
    ("Duration", "287EndTime2026-11-24 10:04:52"),
    ("BillDuration", "300BillRate0.00850"),
    ("TotalCost", "0.04250x"),
    ("TotalCost", "-0.04"),
    ("TotalCost", "1e3"),
    ("StartTime", "2026-11-24 10:00:00To447700900123"),
    ("AnswerTime", "2026-11-24 10:00:05 "),
])
def test_field_not_as_plivo_writes_it_is_invalid_and_named(name, value):
    params = [(k, value if k == name else v) for k, v in pl.hangup()]
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match=name):
        make_source().parse(request)


@pytest.mark.parametrize("event_name", ["StartApp", "Redirect", "Transfer", "Ring"])
def test_documented_event_values_are_accepted(event_name):
    parsed = accept(signed_request(pl.callback("in-progress", event=event_name)))
    assert parsed is not None and parsed.event_id.endswith(f":{event_name}:in-progress")


def test_blank_answer_time_of_an_unanswered_call_is_absent():
    parsed = accept(signed_request([*pl.busy(), ("AnswerTime", "")]))
    assert parsed is not None and parsed.answered_at is None


@pytest.mark.parametrize("params", [
    [("Even", "tHangup") if k == "Event" else (k, v) for k, v in pl.hangup()],
    [("EventH", "angup") if k == "Event" else (k, v) for k, v in pl.hangup()],
    [("CallStatu", "scompleted") if k == "CallStatus" else (k, v) for k, v in pl.hangup()],
    [("EndTim", "e" + pl.END) if k == "EndTime" else (k, v) for k, v in pl.hangup()],
], ids=["event-cut-left", "event-cut-right", "status-cut", "end-time-cut"])
def test_trace_of_a_moved_boundary_around_the_event_id_is_invalid(params):
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent):
        make_source().parse(request)


def test_verify_identity_is_the_matching_mac_not_the_header_text():
    valid = SIGNER.signature("POST", URL, pl.hangup())
    plain = make_source().verify(signed_request(pl.hangup()))
    padded = make_source().verify(signed_request(pl.hangup(), X_Plivo_Signature_V3=f"garbage,{valid}, more"))
    assert plain == padded


def test_public_url_is_required_to_build_the_source():
    with pytest.raises(ValueError, match="LEDGER_PUBLIC_URL"):
        PlivoSource.from_settings(Settings(plivo_auth_token=pl.AUTH_TOKEN))
