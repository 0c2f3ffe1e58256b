"""Twilio source: X-Twilio-Signature verification and status-callback normalisation.

Every signature here is computed by the official SDK (`twilio.request_validator`), so a
misreading of the recipe in our code cannot be mirrored by the tests that check it.
"""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import CIMultiDict

from ledger.errors import InvalidEvent, MalformedBody, SignatureInvalid
from ledger.events import CallEvent
from ledger.settings import Settings
from tests.sources import payloads_twilio as tw
from worker.sources.base import WebhookRequest
from worker.sources.twilio import TwilioSource

NOW = 1_795_000_000.25  # when intake received the request (unix seconds)
URL = tw.PUBLIC_URL + tw.PATH
SIGNER = tw.TwilioSigner()
OURS, CUSTOMER = tw.OUR_NUMBER, tw.CUSTOMER


def make_source(token: str = tw.AUTH_TOKEN) -> TwilioSource:
    source = TwilioSource.from_settings(Settings(twilio_auth_token=token))
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
    """(canonical text, microseconds since the epoch), computed independently of ledger.instants."""
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


def test_hmac_sha256_signature_is_accepted_when_the_settings_header_says_so():
    params = tw.completed()
    request = as_received(SIGNER.sign("POST", URL, params, algorithm="HMAC_SHA256"))
    assert request.headers["X-Twilio-Webhooks-Signature-Settings"] == tw.SHA256_SETTINGS
    assert accept(request) == LIFECYCLE["completed"][1]


def test_sha1_signature_is_rejected_when_the_settings_header_says_sha256():
    request = signed_request(tw.completed(), X_Twilio_Webhooks_Signature_Settings=tw.SHA256_SETTINGS)
    rejected(request)


def test_settings_header_without_an_algorithm_means_sha1():
    make_source().verify(signed_request(tw.completed(), X_Twilio_Webhooks_Signature_Settings="key=KS123"))


def test_unsupported_signature_algorithm_is_rejected():
    request = signed_request(tw.completed(), X_Twilio_Webhooks_Signature_Settings="algorithm=HMAC_MD5")
    assert "unsupported" in rejected(request)


def test_rejections_never_reveal_the_token_or_the_signature():
    signed = SIGNER.sign("POST", URL, tw.completed())
    messages = [
        rejected(as_received(signed, body=signed.body + b"&x=1")),
        rejected(as_received(signed), make_source("f" * 32)),
        rejected(as_received(signed, drop="X-Twilio-Signature")),
        rejected(as_received(signed, X_Twilio_Webhooks_Signature_Settings="algorithm=NOPE")),
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
