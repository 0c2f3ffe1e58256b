"""Telnyx source: Ed25519 verification and Call Control event normalisation.

Signatures come from a key pair generated here and signed with `cryptography` from
the documented recipe; one fixture is also checked by the Telnyx SDK's own verifier,
so a shared misreading of the recipe cannot make both sides agree.
"""

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from multidict import CIMultiDict

from call_ledger.core.errors import InvalidEvent, MalformedBody, SignatureInvalid
from call_ledger.core.events import CallEvent, Cost
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.telnyx import TelnyxSource
from tests.support import payloads_telnyx as tx

NOW = 1_795_000_000
URL = "https://ledger.example.com/webhooks/telnyx"
SIGNER = tx.TelnyxSigner()


def telephony(nano: int, currency: str = "USD") -> Cost:
    return Cost(component="telephony", amount_nano=nano, currency=currency)


def _us(text: str) -> int:
    """Microseconds since the epoch, computed independently of call_ledger.core.instants."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def make_source(signer: tx.TelnyxSigner = SIGNER) -> TelnyxSource:
    source = TelnyxSource.from_settings(Settings(telnyx_public_key=signer.public_key_b64))
    assert source is not None
    return source


def signed(body: bytes, *, timestamp: int = NOW, received_at: float = NOW,
           signer: tx.TelnyxSigner = SIGNER, drop: str | None = None, **replace: str) -> WebhookRequest:
    headers = CIMultiDict(signer.headers(body, timestamp))
    if drop:
        del headers[drop]
    for name, value in replace.items():
        headers[name.replace("_", "-")] = value
    return WebhookRequest(method="POST", url=URL, headers=headers, body=body, received_at=received_at)


def parse(doc: dict, *, numeric_amounts: bool = False) -> CallEvent | None:
    return make_source().parse(signed(tx.encode(doc, numeric_amounts=numeric_amounts)))


def parse_raw(body: bytes) -> CallEvent | None:
    return make_source().parse(signed(body))


# --- configuration ---------------------------------------------------------------------------------------


def test_source_is_absent_when_public_key_is_not_configured():
    assert TelnyxSource.from_settings(Settings(telnyx_public_key=None)) is None
    assert TelnyxSource.from_settings(Settings(telnyx_public_key="  ")) is None


@pytest.mark.parametrize("key", ["not base64 at all!", base64.b64encode(b"k" * 31).decode(),
                                 base64.b64encode(b"k" * 33).decode()])
def test_malformed_public_key_fails_at_start_without_echoing_the_key(key):
    with pytest.raises(ValueError, match="LEDGER_TELNYX_PUBLIC_KEY") as info:
        TelnyxSource.from_settings(Settings(telnyx_public_key=key))
    assert key not in str(info.value)


def test_source_declares_its_route_contract():
    assert TelnyxSource.name == "telnyx"
    assert TelnyxSource.secret_variable == "LEDGER_TELNYX_PUBLIC_KEY"
    assert TelnyxSource.methods == frozenset({"POST"})


# --- verification ----------------------------------------------------------------------------------------


def test_accepts_body_signed_with_the_configured_key():
    make_source().verify(signed(tx.encode(tx.initiated())))


def test_header_names_are_case_insensitive():
    body = tx.encode(tx.answered())
    headers = CIMultiDict({k.title(): v for k, v in SIGNER.headers(body, NOW).items()})
    make_source().verify(WebhookRequest(method="POST", url=URL, headers=headers, body=body, received_at=NOW))


@pytest.mark.parametrize("skew", [-300, 300])
def test_accepts_timestamp_at_the_edge_of_the_window(skew):
    make_source().verify(signed(tx.encode(tx.hangup()), timestamp=NOW + skew))


def test_telnyx_sdk_verifier_accepts_the_fixture_our_verifier_accepts():
    pytest.importorskip("nacl", reason="the Telnyx SDK's verifier needs PyNaCl")
    from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

    now = int(time.time())  # the SDK checks freshness against the wall clock
    body = tx.encode(tx.cost())
    headers = SIGNER.headers(body, now)
    verify_webhook_signature(body, headers, SIGNER.public_key_b64)
    make_source().verify(WebhookRequest(method="POST", url=URL, headers=CIMultiDict(headers), body=body,
                                        received_at=now))
    tampered = body.replace(b"0.0330", b"0.0003")
    with pytest.raises(WebhookVerificationError):
        verify_webhook_signature(tampered, headers, SIGNER.public_key_b64)
    with pytest.raises(SignatureInvalid):
        make_source().verify(WebhookRequest(method="POST", url=URL, headers=CIMultiDict(headers),
                                            body=tampered, received_at=now))


def test_rejects_tampered_body():
    body = tx.encode(tx.hangup("user_busy"))
    request = signed(body)
    forged = WebhookRequest(method="POST", url=URL, headers=request.headers,
                            body=body.replace(b"user_busy", b"normal_clearing"), received_at=NOW)
    with pytest.raises(SignatureInvalid, match="does not match"):
        make_source().verify(forged)


def test_rejects_body_signed_with_another_key():
    with pytest.raises(SignatureInvalid):
        make_source().verify(signed(tx.encode(tx.initiated()), signer=tx.TelnyxSigner()))


def test_rejects_signature_replayed_with_another_timestamp():
    body = tx.encode(tx.initiated())
    with pytest.raises(SignatureInvalid):
        make_source().verify(signed(body, timestamp=NOW, telnyx_timestamp=str(NOW + 1)))


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_rejects_stale_or_future_timestamp(skew):
    with pytest.raises(SignatureInvalid, match="window"):
        make_source().verify(signed(tx.encode(tx.initiated()), timestamp=NOW + skew))


def test_window_follows_configured_tolerance():
    source = TelnyxSource.from_settings(Settings(telnyx_public_key=SIGNER.public_key_b64,
                                                 signature_tolerance_s=10))
    assert source is not None
    with pytest.raises(SignatureInvalid):
        source.verify(signed(tx.encode(tx.initiated()), timestamp=NOW - 11))


@pytest.mark.parametrize("header", ["telnyx-signature-ed25519", "telnyx-timestamp"])
def test_rejects_request_missing_a_signature_header(header):
    with pytest.raises(SignatureInvalid, match=header):
        make_source().verify(signed(tx.encode(tx.initiated()), drop=header))


@pytest.mark.parametrize("signature", ["%%%not-base64%%%", base64.b64encode(b"s" * 63).decode(),
                                       base64.b64encode(b"s" * 64).decode()])
def test_rejects_malformed_or_wrong_signature(signature):
    with pytest.raises(SignatureInvalid):
        make_source().verify(signed(tx.encode(tx.initiated()), telnyx_signature_ed25519=signature))


@pytest.mark.parametrize("timestamp", ["yesterday", "1795000000.5", "-1795000000", " ",
                                       "١٧٩٥٠٠٠٠٠٠", "1795000000\n"])
def test_rejects_timestamp_that_is_not_unix_seconds(timestamp):
    with pytest.raises(SignatureInvalid):
        make_source().verify(signed(tx.encode(tx.initiated()), telnyx_timestamp=timestamp))


def test_rejection_messages_never_contain_the_key_or_the_signature():
    body = tx.encode(tx.initiated())
    good = signed(body)
    signature = good.headers["telnyx-signature-ed25519"]
    attempts = [
        WebhookRequest(method="POST", url=URL, headers=good.headers, body=body + b" ", received_at=NOW),
        signed(body, signer=tx.TelnyxSigner()),
        signed(body, received_at=NOW + 1000),
        signed(body, telnyx_signature_ed25519=signature[:-4]),
    ]
    for request in attempts:
        with pytest.raises(SignatureInvalid) as info:
            make_source().verify(request)
        message = str(info.value)
        assert SIGNER.public_key_b64 not in message
        assert signature not in message and request.headers["telnyx-signature-ed25519"] not in message


# --- lifecycle events ------------------------------------------------------------------------------------


def _expected(doc: dict, **facts) -> CallEvent:
    data = doc["data"]
    return CallEvent(source="telnyx", event_id=data["id"], call_sid=tx.CALL_CONTROL_ID,
                     type=data["event_type"], occurred_at=data["occurred_at"],
                     occurred_us=_us(data["occurred_at"]), **facts)


def test_incoming_call_initiated_is_an_inbound_initiated_call():
    doc = tx.initiated("incoming")
    assert parse(doc) == _expected(doc, status="initiated", direction="inbound",
                                   from_number="+15559876543", to_number="+15551234567")


def test_outgoing_call_initiated_is_an_outbound_initiated_call():
    doc = tx.initiated("outgoing")
    assert parse(doc) == _expected(doc, status="initiated", direction="outbound",
                                   from_number="+15551234567", to_number="+15559876543")


def test_call_answered_makes_the_call_ongoing():
    doc = tx.answered()
    assert parse(doc) == _expected(doc, status="ongoing", from_number="+15559876543",
                                   to_number="+15551234567")


def test_occurred_at_keeps_microseconds():
    event = parse(tx.initiated(occurred_at="2026-11-24T10:00:00.000001Z"))
    assert event is not None
    assert event.occurred_at == "2026-11-24T10:00:00.000001Z"
    assert event.occurred_us == _us("2026-11-24T10:00:00.000001Z")


@pytest.mark.parametrize(("cause", "status"), [
    ("normal_clearing", "completed"),
    ("time_limit", "completed"),
    ("user_busy", "busy"),
    ("no_answer", "no-answer"),
    ("timeout", "no-answer"),
    ("originator_cancel", "canceled"),
    ("call_rejected", "failed"),
    ("not_found", "failed"),
    ("unspecified", "failed"),
    ("a_cause_telnyx_adds_later", "failed"),
])
def test_call_hangup_takes_its_status_from_hangup_cause(cause, status):
    doc = tx.hangup(cause)
    assert parse(doc) == _expected(doc, status=status, from_number="+15559876543", to_number="+15551234567")


def test_sip_addresses_are_kept_as_given():
    doc = tx.initiated()
    doc["data"]["payload"]["from"] = "sip:alice@example.sip.telnyx.com"
    event = parse(doc)
    assert event is not None and event.from_number == "sip:alice@example.sip.telnyx.com"


# --- call.cost -------------------------------------------------------------------------------------------


def _cost_event(doc: dict, *costs: Cost) -> CallEvent:
    return _expected(doc, costs=costs)


def test_call_cost_with_string_amounts_counts_total_cost():
    doc = tx.cost(total_cost="0.0330")
    assert parse(doc) == _cost_event(doc, telephony(33_000_000))


def test_call_cost_with_numeric_amounts_is_exact():
    doc = tx.cost(total_cost="0.0330")
    body = tx.encode(doc, numeric_amounts=True)
    assert b'"total_cost": 0.0330' in body and b'"cost": 0.012' in body
    assert parse_raw(body) == _cost_event(doc, telephony(33_000_000))


def test_call_cost_without_total_sums_the_parts_exactly():
    parts = [{"call_part": "call-control", "cost": "0.1", "currency": "USD"},
             {"call_part": "sip-trunking", "cost": "0.2", "currency": "USD"}]
    doc = tx.cost(total_cost=None, cost_parts=parts)
    assert parse(doc) == _cost_event(doc, telephony(300_000_000))


def test_call_cost_currency_is_the_parts_currency():
    parts = [{"call_part": "call-control", "cost": "0.0100", "currency": "eur", "rate": "0.002"}]
    doc = tx.cost(total_cost="0.0100", cost_parts=parts)
    assert parse(doc) == _cost_event(doc, telephony(10_000_000, "EUR"))


def test_call_cost_without_any_currency_is_usd():
    doc = tx.cost(total_cost="0.05", cost_parts=[])
    assert parse(doc) == _cost_event(doc, telephony(50_000_000))


def test_call_cost_in_several_currencies_gives_one_cost_per_currency():
    parts = [{"call_part": "call-control", "cost": "0.010", "currency": "USD"},
             {"call_part": "sip-trunking", "cost": "0.020", "currency": "EUR"},
             {"call_part": "call-recording", "cost": "0.005", "currency": "USD"}]
    doc = tx.cost(total_cost="0.035", cost_parts=parts)
    assert parse(doc) == _cost_event(doc, telephony(20_000_000, "EUR"),
                                     telephony(15_000_000))


def test_call_cost_whose_calculation_failed_is_ignored():
    assert parse(tx.cost(total_cost=None, cost_parts=[], status="error")) is None


@pytest.mark.parametrize("total", ["abc", "1,5", "NaN", "1e400", True, [], {}])
def test_call_cost_with_malformed_total_is_invalid(total):
    doc = tx.cost()
    doc["data"]["payload"]["total_cost"] = total
    with pytest.raises(InvalidEvent, match="total_cost"):
        parse(doc)


def test_call_cost_with_malformed_part_is_invalid():
    parts = [{"call_part": "call-control", "cost": "twelve cents", "currency": "USD"}]
    with pytest.raises(InvalidEvent, match=r"cost_parts\[0\]"):
        parse(tx.cost(total_cost=None, cost_parts=parts))


def test_call_cost_with_no_amount_at_all_is_invalid():
    with pytest.raises(InvalidEvent, match="total_cost"):
        parse(tx.cost(total_cost=None, cost_parts=[]))


# --- ignored events --------------------------------------------------------------------------------------


def test_call_speak_ended_is_ignored():
    assert parse(tx.speak_ended()) is None


@pytest.mark.parametrize("event_type", ["call.speak.ended", "call.recording.saved", "call.playback.started",
                                        "call.bridged", "call.machine.detection.ended"])
def test_unused_event_types_are_ignored_whatever_fields_they_lack(event_type):
    assert parse_raw(b'{"data": {"event_type": "%s"}}' % event_type.encode()) is None


# --- malformed and invalid bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"not json", b'{"data": ', b"\xff\xfe{}", b"[1, 2]", b'"call"',
                                  b'{"data": {"event_type": "call.cost", "total_cost": NaN}}'])
def test_unparsable_body_is_malformed(body):
    with pytest.raises(MalformedBody):
        parse_raw(body)


@pytest.mark.parametrize(("path", "field"), [
    (("data",), "id"),
    (("data", "payload"), "call_control_id"),
    (("data",), "occurred_at"),
])
@pytest.mark.parametrize("builder", [tx.initiated, tx.answered, tx.hangup, tx.cost])
def test_used_event_missing_an_identifier_is_invalid_and_names_it(builder, path, field):
    doc = builder()
    target = doc
    for key in path:
        target = target[key]
    del target[field]
    with pytest.raises(InvalidEvent, match=field):
        parse(doc)


@pytest.mark.parametrize("body", [b"{}", b'{"data": []}', b'{"data": {"id": "x"}}',
                                  b'{"data": {"event_type": "call.hangup", "id": "x"}}'])
def test_body_without_event_structure_is_invalid(body):
    with pytest.raises(InvalidEvent):
        parse_raw(body)


def test_unparsable_occurred_at_is_invalid():
    with pytest.raises(InvalidEvent, match="occurred_at"):
        parse(tx.answered(occurred_at="yesterday at noon"))


# --- a whole call ----------------------------------------------------------------------------------------


def test_whole_call_verifies_and_parses_in_order():
    call = tx.whole_call(direction="outgoing", call_control_id="v3:e2e-call-1")
    source = make_source(call.signer)
    events = []
    for body in call.bodies:
        request = WebhookRequest(method="POST", url=URL, headers=CIMultiDict(call.signer.headers(body, NOW)),
                                 body=body, received_at=NOW)
        source.verify(request)
        events.append(source.parse(request))
    assert [e and (e.type, e.status, e.call_sid) for e in events] == [
        ("call.initiated", "initiated", "v3:e2e-call-1"),
        ("call.answered", "ongoing", "v3:e2e-call-1"),
        None,
        ("call.hangup", "completed", "v3:e2e-call-1"),
        ("call.cost", None, "v3:e2e-call-1"),
    ]
    assert events[0] is not None and events[0].direction == "outbound"
    assert len({e.event_id for e in events if e}) == 4
