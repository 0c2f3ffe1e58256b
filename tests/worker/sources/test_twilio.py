"""Twilio source: X-Twilio-Signature verification and status-callback normalisation.

Every signature here is computed by the official SDK (`twilio.request_validator`), so a
misreading of the recipe in our code cannot be mirrored by the tests that check it.
"""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import CIMultiDict

from call_ledger.core.errors import InvalidEvent, MalformedBody, SignatureInvalid
from call_ledger.core.events import CallEvent
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.twilio import TwilioSource
from tests.support import payloads_twilio as tw

NOW = 1_795_000_000.25  # when intake received the request (unix seconds)
URL = tw.PUBLIC_URL + tw.PATH
SIGNER = tw.TwilioSigner()
OURS, CUSTOMER = tw.OUR_NUMBER, tw.CUSTOMER


def make_source(token: str = tw.AUTH_TOKEN, algorithm: str = "sha1") -> TwilioSource:
    source = TwilioSource.from_settings(Settings(twilio_auth_token=token, public_url=tw.PUBLIC_URL,
                                                 twilio_signature_algorithm=algorithm))
    assert source is not None
    return source


def as_received(signed: tw.SignedRequest, *, url: str | None = None, body: bytes | None = None,
                drop: str | None = None, **headers: str) -> WebhookRequest:
    """The `WebhookRequest` intake builds from what Twilio sent (optionally altered on the way)."""
    url = url or signed.url
    all_headers = CIMultiDict(signed.headers)
    if drop:
        del all_headers[drop]
    for name, value in headers.items():
        all_headers[name.replace("_", "-")] = value
    query = tuple(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return WebhookRequest(method=signed.method, url=url, headers=all_headers,
                          body=signed.body if body is None else body, received_at=NOW, query=query)


def signed_request(params: tw.Params, method: str = "POST", url: str = URL, **kw: str) -> WebhookRequest:
    return as_received(SIGNER.sign(method, url, params), **kw)


def accept(request: WebhookRequest) -> CallEvent | None:
    """What intake does: verify, then parse."""
    source = make_source()
    source.verify(request)
    return source.parse(request)


def rejected(request: WebhookRequest, source: TwilioSource | None = None) -> str:
    with pytest.raises(SignatureInvalid) as info:
        (source or make_source()).verify(request)
    return str(info.value)


def _instant(iso: str) -> tuple[str, int]:
    """(canonical text, microseconds since the epoch), computed independently of call_ledger.core.instants."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return iso, (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def event(suffix: str, raw_status: str, status: str, at: str, *, direction: str = "outbound",
          from_number: str = OURS, to_number: str = CUSTOMER, duration: int | None = None,
          call_sid: str = tw.CALL_SID) -> CallEvent:
    text, us = _instant(at)
    return CallEvent(source="twilio", event_id=f"{call_sid}:{suffix}", call_sid=call_sid,
                     type=f"status.{raw_status}", occurred_at=text, occurred_us=us, status=status,
                     direction=direction, from_number=from_number, to_number=to_number, duration=duration)


# --- configuration ---------------------------------------------------------------------------------------


def test_source_is_absent_when_auth_token_is_not_configured():
    assert TwilioSource.from_settings(Settings(twilio_auth_token=None)) is None
    assert TwilioSource.from_settings(Settings(twilio_auth_token="  ")) is None


def test_source_declares_its_route_contract():
    assert TwilioSource.name == "twilio"
    assert TwilioSource.secret_variable == "LEDGER_TWILIO_AUTH_TOKEN"
    assert TwilioSource.methods == frozenset({"POST", "GET"})


def test_source_repr_does_not_show_the_token():
    assert tw.AUTH_TOKEN not in repr(make_source())


# --- lifecycle: every status callback, verified then parsed ----------------------------------------------

LIFECYCLE = {
    "queued": (tw.lifecycle("queued"), event("0", "queued", "initiated", "2026-11-24T10:00:00Z")),
    "initiated": (tw.lifecycle("initiated"), event("0", "initiated", "initiated", "2026-11-24T10:00:00Z")),
    "ringing": (tw.lifecycle("ringing"), event("1", "ringing", "ringing", "2026-11-24T10:00:01Z")),
    "in-progress": (tw.lifecycle("in-progress"),
                    event("2", "in-progress", "ongoing", "2026-11-24T10:00:06Z")),
    "completed": (tw.completed(), event("3", "completed", "completed", "2026-11-24T10:05:06Z", duration=300)),
    "busy": (tw.ended("busy", sequence=2), event("2", "busy", "busy", "2026-11-24T10:00:09Z", duration=0)),
    "no-answer": (tw.ended("no-answer", sequence=2),
                  event("2", "no-answer", "no-answer", "2026-11-24T10:00:31Z", duration=0)),
    "canceled": (tw.ended("canceled", sequence=1, direction="inbound"),
                 event("1", "canceled", "canceled", "2026-11-24T10:00:12Z", direction="inbound",
                       from_number=CUSTOMER, to_number=OURS, duration=0)),
    # Timestamp with an unpadded day: "Tue, 1 Dec 2026 08:15:02 +0000".
    "failed": (tw.ended("failed", sequence=1),
               event("1", "failed", "failed", "2026-12-01T08:15:02Z", duration=0)),
    # Only the terminal callback was requested: no SequenceNumber, so the status keys the event.
    "completed-unsequenced": (tw.completed(sequence=None),
                              event("completed", "completed", "completed", "2026-11-24T10:05:06Z",
                                    duration=300)),
    "child-leg": (tw.lifecycle("ringing", direction="outbound-dial"),
                  event("1", "ringing", "ringing", "2026-11-24T10:00:01Z")),
}


@pytest.mark.parametrize("params, expected", LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_signed_status_callback_becomes_the_whole_call_event(params, expected):
    assert accept(signed_request(params)) == expected


@pytest.mark.parametrize("params, expected", LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_signed_get_callback_is_parsed_from_its_query_string(params, expected):
    request = signed_request(params, method="GET")
    assert request.body == b"" and "CallSid=" in request.url
    assert accept(request) == expected


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_whole_call_fixture_yields_one_event_per_status_in_order(method):
    call = tw.whole_call(method=method)
    events = [accept(as_received(call.signer.sign(method, tw.PUBLIC_URL + path, params)))
              for method, path, params in call.requests]
    assert [e.status for e in events] == ["initiated", "ringing", "ongoing", "completed"]
    assert len({e.event_id for e in events}) == 4


def test_missing_timestamp_falls_back_to_the_time_of_receipt():
    params = [(k, v) for k, v in tw.lifecycle("ringing") if k != "Timestamp"]
    parsed = accept(signed_request(params))
    received = datetime.fromtimestamp(NOW, UTC)
    assert parsed == event("1", "ringing", "ringing", received.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_sip_and_client_addresses_are_kept_as_given():
    params = [(k, {"From": "client:assistant-12", "To": "sip:agent@acme.sip.twilio.com"}.get(k, v))
              for k, v in tw.lifecycle("ringing")]
    parsed = accept(signed_request(params))
    assert (parsed.from_number, parsed.to_number) == ("client:assistant-12", "sip:agent@acme.sip.twilio.com")


def test_recording_callback_sent_to_the_same_url_is_acknowledged_and_dropped():
    assert accept(signed_request(tw.recording_status())) is None


# --- signature ---------------------------------------------------------------------------------------------


def test_signature_with_default_port_added_is_accepted():
    signed = SIGNER.sign("POST", "https://ledger.example.com:443/webhooks/twilio", tw.completed())
    make_source().verify(as_received(signed, url=URL))


def test_signature_with_default_port_removed_is_accepted():
    signed = SIGNER.sign("POST", URL, tw.completed())
    make_source().verify(as_received(signed, url="https://ledger.example.com:443/webhooks/twilio"))


@pytest.mark.parametrize("signed_url, received_url", [
    ("http://ledger.internal:80/webhooks/twilio", "http://ledger.internal/webhooks/twilio"),
    ("http://ledger.internal/webhooks/twilio", "http://ledger.internal:80/webhooks/twilio"),
    ("https://ledger.example.com:8443/webhooks/twilio", "https://ledger.example.com:8443/webhooks/twilio"),
])
def test_signature_over_an_equivalent_url_is_accepted(signed_url, received_url):
    make_source().verify(as_received(SIGNER.sign("POST", signed_url, tw.completed()), url=received_url))


@pytest.mark.parametrize("signed_url, received_url", [
    ("https://ledger.example.com:8443/webhooks/twilio", URL),
    (URL, "https://ledger.example.com:8443/webhooks/twilio"),
    ("https://ledger.example.com:80/webhooks/twilio", URL),
    ("https://other.example.com/webhooks/twilio", URL),
    (URL + "?tenant=a", URL + "?tenant=b"),
])
def test_signature_over_a_different_url_is_rejected(signed_url, received_url):
    rejected(as_received(SIGNER.sign("POST", signed_url, tw.completed()), url=received_url))


def test_query_string_of_a_post_url_is_signed_with_it():
    make_source().verify(signed_request(tw.completed(), url=URL + "?tenant=acme&env=prod"))


def test_tampered_body_is_rejected():
    signed = SIGNER.sign("POST", URL, tw.completed())
    assert rejected(as_received(signed, body=signed.body.replace(b"CallDuration=300", b"CallDuration=3000")))


def test_extra_parameter_in_body_is_rejected():
    signed = SIGNER.sign("POST", URL, tw.completed())
    rejected(as_received(signed, body=signed.body + b"&Price=0"))


def test_signature_made_with_another_token_is_rejected():
    other = tw.TwilioSigner(token="0" * 32)
    rejected(as_received(other.sign("POST", URL, tw.completed())))


def test_missing_signature_header_is_rejected():
    assert "X-Twilio-Signature" in rejected(signed_request(tw.completed(), drop="X-Twilio-Signature"))


def test_post_parameters_are_covered_by_the_signature():
    # A signature over the URL alone (what a GET gets) does not cover a POST's form.
    request = signed_request(tw.completed(), X_Twilio_Signature=SIGNER.signature(URL, []))
    rejected(request)


def test_tampered_get_query_is_rejected():
    signed = SIGNER.sign("GET", URL, tw.completed())
    rejected(as_received(signed, url=signed.url.replace("CallDuration=300", "CallDuration=3000")))


def test_get_signed_as_a_post_is_rejected():
    # A GET carries its parameters in the URL: nothing is appended to it.
    get = SIGNER.sign("GET", URL, tw.completed())
    rejected(as_received(get, X_Twilio_Signature=SIGNER.signature(get.url, tw.completed())))


def test_repeated_parameters_are_signed_as_the_sdk_signs_them():
    # The SDK signs each distinct value of a repeated name, sorted: Tag=b, Tag=a, Tag=b → "TagaTagb".
    params = [*tw.completed(), ("Tag", "b"), ("Tag", "a"), ("Tag", "b")]
    assert accept(signed_request(params)) == LIFECYCLE["completed"][1]


def test_reordered_form_parameters_still_verify():
    signed = SIGNER.sign("POST", URL, tw.completed())
    reordered = "&".join(sorted(signed.body.decode().split("&"), reverse=True)).encode()
    make_source().verify(as_received(signed, body=reordered))


def test_hmac_sha256_signature_is_accepted_when_configured():
    source = make_source(algorithm="sha256")
    request = as_received(SIGNER.sign("POST", URL, tw.completed(), algorithm="HMAC_SHA256"))
    source.verify(request)
    assert source.parse(request) == LIFECYCLE["completed"][1]


def test_sha256_signature_is_rejected_when_configured_sha1_whatever_the_settings_header_says():
    # The settings header is not signed: anyone could otherwise choose the algorithm.
    request = as_received(SIGNER.sign("POST", URL, tw.completed(), algorithm="HMAC_SHA256"))
    assert request.headers["X-Twilio-Webhooks-Signature-Settings"] == tw.SHA256_SETTINGS
    rejected(request)


def test_sha1_signature_is_rejected_when_configured_sha256_whatever_the_settings_header_says():
    rejected(signed_request(tw.completed()), make_source(algorithm="sha256"))
    rejected(signed_request(tw.completed(), X_Twilio_Webhooks_Signature_Settings="algorithm=HMAC_SHA1"),
             make_source(algorithm="sha256"))


def test_settings_header_is_ignored():
    for header in ("key=KS123", "algorithm=HMAC_MD5", tw.SHA256_SETTINGS):
        make_source().verify(signed_request(tw.completed(), X_Twilio_Webhooks_Signature_Settings=header))


def test_rejections_never_reveal_the_token_or_the_signature():
    signed = SIGNER.sign("POST", URL, tw.completed())
    messages = [
        rejected(as_received(signed, body=signed.body + b"&x=1")),
        rejected(as_received(signed), make_source("f" * 32)),
        rejected(as_received(signed, drop="X-Twilio-Signature")),
        rejected(as_received(signed), make_source(algorithm="sha256")),
    ]
    for message in messages:
        assert tw.AUTH_TOKEN not in message and "f" * 32 not in message
        assert signed.headers["X-Twilio-Signature"] not in message


# --- malformed and invalid bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"CallSid=CA1&From=\xff\xfe", b"CallSid=%FF%FE&CallStatus=completed"])
def test_body_that_is_not_utf8_form_data_is_malformed(body):
    request = as_received(SIGNER.sign("POST", URL, tw.completed()), body=body)
    with pytest.raises(MalformedBody):
        make_source().verify(request)
    with pytest.raises(MalformedBody):
        make_source().parse(request)


def _without(params: tw.Params, name: str) -> tw.Params:
    return [(k, v) for k, v in params if k != name]


def _with(params: tw.Params, name: str, value: str) -> tw.Params:
    return [(k, value if k == name else v) for k, v in params]


@pytest.mark.parametrize("params, field", [
    (_without(tw.completed(), "CallSid"), "CallSid"),
    (_with(tw.completed(), "CallSid", ""), "CallSid"),
    (_without(tw.completed(), "CallStatus"), "CallStatus"),
    (_with(tw.completed(), "CallStatus", "paused"), "CallStatus"),
    (_with(tw.completed(), "CallDuration", "-5"), "CallDuration"),
    (_with(tw.completed(), "CallDuration", "12.5"), "CallDuration"),
    (_with(tw.completed(), "CallDuration", "five"), "CallDuration"),
    (_with(tw.completed(), "Timestamp", "yesterday"), "Timestamp"),
    ([*tw.completed(), ("CallStatus", "failed")], "CallStatus"),
])
def test_signed_callback_lacking_what_a_call_event_needs_is_invalid(params, field):
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match=field):
        make_source().parse(request)


def test_blank_call_duration_is_treated_as_absent():
    parsed = accept(signed_request(_with(tw.completed(), "CallDuration", "")))
    assert parsed is not None and parsed.duration is None


# --- strict formats: every field the ledger reads, exactly as Twilio writes it -----------------------------

@pytest.mark.parametrize("name, value", [
    ("CallSid", "CA1"),
    ("CallSid", "CA" + tw.CALL_SID[2:].upper()),  # upper-case hex: would be another call record
    ("CallSid", tw.CALL_SID + "CallStatuscompleted"),  # CallSid absorbing CallStatus
    ("CallSid", " " + tw.CALL_SID),
    ("AccountSid", "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ("AccountSid", tw.ACCOUNT_SID + "ApiVersion2010-04-01"),
    ("AccountSid", ""),
    ("SequenceNumber", "3SipResponseCode200"),
    ("SequenceNumber", ""),
    ("SequenceNumber", "-1"),
    ("Timestamp", "Tue, 24 Nov 2026 10:05:06 +0000To+15559876543"),  # trailing garbage parsedate accepts
    ("Timestamp", "Wed, 24 Nov 2026 10:05:06 +0000"),  # weekday does not match the date
    ("Timestamp", "24 Nov 2026 10:05:06 +0000"),
    ("Timestamp", "Tue, 24 Nov 2026 10:05:06 GMT"),
    ("Timestamp", "Tue, 24 Nov 2026 25:05:06 +0000"),
    ("Timestamp", ""),
    ("Direction", "outbound-apiDuration5"),
    ("Direction", "sideways"),
    ("Direction", ""),
    ("From", "+15551234567SequenceNumber3"),  # From absorbing SequenceNumber
    ("From", "+15551234567FromCitySAN FRANCISCO"),
    ("From", "15551234567"),
    ("From", "client:alice bob"),
    ("To", "+1 555 123 4567"),
    ("To", "sip:"),
    ("CallDuration", "300Direction"),
])
def test_field_not_as_twilio_writes_it_is_invalid_and_named_without_echoing_it(name, value):
    params = [(k, value if k == name else v) for k, v in tw.completed()]
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match=name) as info:
        make_source().parse(request)
    assert len(value) < 8 or value not in str(info.value)


@pytest.mark.parametrize("number", ["+266696687", "+7378742833", "anonymous", "Anonymous",
                                    "client:assistant_12", "sip:alice@acme.sip.twilio.com", ""])
def test_withheld_caller_ids_and_addresses_twilio_sends_are_accepted(number):
    params = [(k, number if k == "From" else v) for k, v in tw.completed()]
    assert accept(signed_request(params)) is not None


@pytest.mark.parametrize("direction, ours", [("trunking-originating", "inbound"),
                                             ("trunking-terminating", "outbound")])
def test_sip_trunking_directions_are_known(direction, ours):
    parsed = accept(signed_request(tw.completed(direction=direction)))
    assert parsed is not None and parsed.direction == ours


def test_absent_direction_is_fine():
    parsed = accept(signed_request(_without(tw.completed(), "Direction")))
    assert parsed is not None and parsed.direction is None


@pytest.mark.parametrize("params", [
    [("SequenceNumbe", "r3") if k == "SequenceNumber" else (k, v) for k, v in tw.completed()],  # cut inside
    [("SequenceNumber3", "") if k == "SequenceNumber" else (k, v) for k, v in tw.completed()],
    [("Timestam", "pTue, 24 Nov 2026 10:05:06 +0000") if k == "Timestamp" else (k, v) for k, v in tw.completed()],
    # FromZip (unread) absorbing SequenceNumber: the event id would fall back to CallSid:CallStatus.
    [(k, v + "SequenceNumber3") if k == "FromZip" else (k, v) for k, v in tw.completed() if k != "SequenceNumber"],
    [(k, v + "Timestamp" + tw.TIMESTAMPS["completed"]) if k == "SipResponseCode" else (k, v)
     for k, v in tw.completed() if k != "Timestamp"],
], ids=["cut-left", "cut-right", "timestamp-cut", "sequence-absorbed", "timestamp-absorbed"])
def test_trace_of_a_moved_boundary_around_the_event_id_is_invalid(params):
    request = signed_request(params)
    make_source().verify(request)
    with pytest.raises(InvalidEvent, match="moved name/value boundary"):
        make_source().parse(request)


def test_verify_returns_the_matching_mac_and_the_parameters_digest():
    use = make_source().verify(signed_request(tw.completed()))
    again = make_source().verify(signed_request(tw.completed()))
    other = make_source().verify(signed_request(tw.ended("busy")))
    assert use == again and use.identity != other.identity and use.params_digest != other.params_digest
    assert tw.AUTH_TOKEN not in use.identity


def test_public_url_is_required_to_build_the_source():
    with pytest.raises(ValueError, match="LEDGER_PUBLIC_URL"):
        TwilioSource.from_settings(Settings(twilio_auth_token=tw.AUTH_TOKEN))
