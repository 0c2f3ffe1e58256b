"""Vonage source: signed-webhook JWT verification and Voice API event normalisation.

Tokens are issued with PyJWT (as Vonage would) and cross-checked with Vonage's own
`vonage_jwt.verify_signature`, so our hand-written HS256 check is measured against
two independent implementations.
"""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import vonage_jwt
from multidict import CIMultiDict

from call_ledger.core.errors import InvalidEvent, MalformedBody, SignatureInvalid
from call_ledger.core.events import CallEvent, Cost
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.vonage import VonageSource
from tests.support import payloads_vonage as vg

NOW = 1_795_000_000
URL = "https://ledger.example.com/webhooks/vonage"
SIGNER = vg.VonageSigner()


def telephony(nano: int, currency: str = "EUR") -> Cost:
    return Cost(component="telephony", amount_nano=nano, currency=currency)


def _us(text: str) -> int:
    """Microseconds since the epoch, computed independently of call_ledger.core.instants."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def make_source(**settings: object) -> VonageSource:
    source = VonageSource.from_settings(Settings(vonage_signature_secret=vg.SECRET, **settings))
    assert source is not None
    return source


def post(body: bytes, headers: dict[str, str] | None = None, *, received_at: float = NOW) -> WebhookRequest:
    headers = SIGNER.headers(body, NOW) if headers is None else headers
    return WebhookRequest(method="POST", url=URL, headers=CIMultiDict(headers), body=body,
                          received_at=received_at)


def get(query: list[tuple[str, str]], headers: dict[str, str] | None = None) -> WebhookRequest:
    headers = SIGNER.get_headers(query, NOW) if headers is None else headers
    return WebhookRequest(method="GET", url=URL, headers=CIMultiDict(headers), body=b"", received_at=NOW,
                          query=tuple(query))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse(doc: dict, **settings: object) -> CallEvent | None:
    return make_source(**settings).parse(post(vg.encode(doc)))


def parse_raw(body: bytes) -> CallEvent | None:
    return make_source().parse(post(body))


# --- configuration ---------------------------------------------------------------------------------------


def test_source_is_absent_when_signature_secret_is_not_configured():
    assert VonageSource.from_settings(Settings(vonage_signature_secret=None)) is None
    assert VonageSource.from_settings(Settings(vonage_signature_secret="")) is None


def test_source_declares_its_route_contract():
    assert VonageSource.name == "vonage"
    assert VonageSource.secret_variable == "LEDGER_VONAGE_SIGNATURE_SECRET"
    assert VonageSource.methods == frozenset({"POST", "GET"})


def test_source_repr_does_not_reveal_the_secret():
    assert vg.SECRET not in repr(make_source())


# --- verification ----------------------------------------------------------------------------------------


def test_accepts_token_that_vonage_sdk_also_accepts():
    body = vg.encode(vg.started())
    token = SIGNER.token(body, NOW)
    assert vonage_jwt.verify_signature(token, vg.SECRET) is True
    make_source().verify(post(body, bearer(token)))


def test_rejects_token_signed_with_another_secret_as_vonage_sdk_does():
    body = vg.encode(vg.started())
    token = vg.VonageSigner(secret="another-secret-of-thirty-two-chars").token(body, NOW)
    assert vonage_jwt.verify_signature(token, vg.SECRET) is False
    with pytest.raises(SignatureInvalid, match="signature"):
        make_source().verify(post(body, bearer(token)))


def test_bearer_scheme_is_case_insensitive():
    body = vg.encode(vg.ringing())
    make_source().verify(post(body, {"authorization": f"bearer {SIGNER.token(body, NOW)}"}))


def test_rejects_tampered_body():
    body = vg.encode(vg.completed(price="0.02250000"))
    headers = SIGNER.headers(body, NOW)
    with pytest.raises(SignatureInvalid, match="payload_hash"):
        make_source().verify(post(body.replace(b"0.02250000", b"0.00000001"), headers))


def test_rejects_correctly_signed_token_for_another_body():
    body = vg.encode(vg.answered())
    other = vg.encode(vg.unsuccessful("busy", "busy"))
    with pytest.raises(SignatureInvalid, match="payload_hash"):
        make_source().verify(post(body, SIGNER.headers(other, NOW)))


@pytest.mark.parametrize("claims", [{"payload_hash": None}, {"payload_hash": 12}, {"iat": None},
                                    {"iat": "1795000000"}, {"iat": True}, {"iat": 10**400}])
def test_rejects_token_missing_a_required_claim(claims):
    body = vg.encode(vg.started())
    with pytest.raises(SignatureInvalid):
        make_source().verify(post(body, bearer(SIGNER.token(body, NOW, claims))))


def test_payload_hash_may_be_upper_case_hex():
    body = vg.encode(vg.started())
    token = SIGNER.token(body, NOW, {"payload_hash": hashlib.sha256(body).hexdigest().upper()})
    make_source().verify(post(body, bearer(token)))


@pytest.mark.parametrize("skew", [-300, 300])
def test_accepts_iat_at_the_edge_of_the_window(skew):
    body = vg.encode(vg.started())
    make_source().verify(post(body, SIGNER.headers(body, NOW + skew)))


@pytest.mark.parametrize("skew", [-301, 301, -3600])
def test_rejects_stale_or_future_iat(skew):
    body = vg.encode(vg.started())
    with pytest.raises(SignatureInvalid, match="iat"):
        make_source().verify(post(body, SIGNER.headers(body, NOW + skew)))


def test_window_follows_configured_tolerance():
    body = vg.encode(vg.started())
    with pytest.raises(SignatureInvalid, match="iat"):
        make_source(signature_tolerance_s=30).verify(post(body, SIGNER.headers(body, NOW - 31)))


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
                                     {"Authorization": "Basic YWJjOmRlZg=="}])
def test_rejects_request_without_bearer_token(headers):
    with pytest.raises(SignatureInvalid, match="Bearer"):
        make_source().verify(post(vg.encode(vg.started()), headers))


def test_rejects_unsigned_token_with_alg_none():
    body = vg.encode(vg.started())
    claims = {"iat": NOW, "payload_hash": hashlib.sha256(body).hexdigest(), "iss": "Vonage"}
    token = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(SignatureInvalid, match="HS256"):
        make_source().verify(post(body, bearer(token)))


def test_rejects_token_with_another_hmac_algorithm_even_with_the_right_secret():
    body = vg.encode(vg.started())
    claims = {"iat": NOW, "payload_hash": hashlib.sha256(body).hexdigest()}
    token = jwt.encode(claims, vg.SECRET + vg.SECRET, algorithm="HS512")
    with pytest.raises(SignatureInvalid, match="HS256"):
        make_source().verify(post(body, bearer(token)))


def test_rejects_token_whose_header_claims_hs256_but_signature_is_altered():
    body = vg.encode(vg.started())
    header, claims, signature = SIGNER.token(body, NOW).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(SignatureInvalid):
        make_source().verify(post(body, bearer(f"{header}.{claims}.{flipped}")))


@pytest.mark.parametrize("token", ["abc", "a.b", "a.b.c.d", "!!.??.**", "eyJhbGciOiJIUzI1NiJ9.e30.",
                                   "e30.e30.e30", "W10.e30.AAAA", "ééé.ééé.ééé"])
def test_rejects_malformed_token(token):
    with pytest.raises(SignatureInvalid):
        make_source().verify(post(vg.encode(vg.started()), bearer(token)))


def test_rejection_messages_never_contain_the_secret_or_the_token():
    body = vg.encode(vg.started())
    token = SIGNER.token(body, NOW)
    attempts = [
        post(body + b" ", bearer(token)),
        post(body, bearer(token), received_at=NOW + 1000),
        post(body, bearer(token[:-3])),
        post(body, bearer(vg.VonageSigner(secret="x" * 40).token(body, NOW))),
    ]
    for request in attempts:
        with pytest.raises(SignatureInvalid) as info:
            make_source().verify(request)
        assert vg.SECRET not in str(info.value) and token[:-3] not in str(info.value)


def test_get_is_verified_against_its_query_parameters():
    query = vg.query_params(vg.completed())
    make_source().verify(get(query))


def test_get_with_tampered_query_is_rejected():
    query = vg.query_params(vg.completed())
    headers = SIGNER.get_headers(query, NOW)
    tampered = [(k, "1" if k == "price" else v) for k, v in query]
    with pytest.raises(SignatureInvalid, match="payload_hash"):
        make_source().verify(get(tampered, headers))


def test_get_token_over_an_empty_body_does_not_vouch_for_a_query():
    query = vg.query_params(vg.completed())
    with pytest.raises(SignatureInvalid, match="payload_hash"):
        make_source().verify(get(query, bearer(SIGNER.token(b"", NOW))))


def test_get_with_non_ascii_query_values_is_verified():
    query = [*vg.query_params(vg.started()), ("from_name", "Zoë")]
    hashed = json.dumps(dict(query), separators=(",", ":"), ensure_ascii=False).encode()
    make_source().verify(get(query, bearer(SIGNER.token(hashed, NOW))))


# --- lifecycle events ------------------------------------------------------------------------------------


def _expected(doc: dict, status: str, **facts) -> CallEvent:
    return CallEvent(source="vonage", event_id=f"{vg.CALL_UUID}:{doc['status']}:{doc['timestamp']}",
                     call_sid=vg.CALL_UUID, type=doc["status"], occurred_at=doc["timestamp"],
                     occurred_us=_us(doc["timestamp"]), status=status, **facts)


OUTBOUND = {"direction": "outbound", "from_number": "+447700900001", "to_number": "+447700900000"}


@pytest.mark.parametrize(("doc", "status"), [
    (vg.started(), "initiated"),
    (vg.ringing(), "ringing"),
    (vg.answered(), "ongoing"),
])
def test_progress_events_map_to_ledger_statuses(doc, status):
    assert parse(doc) == _expected(doc, status, **OUTBOUND)


def test_inbound_event_keeps_provider_from_and_to_in_e164():
    doc = vg.started(direction="inbound")
    assert parse(doc) == _expected(doc, "initiated", direction="inbound", from_number="+447700900000",
                                   to_number="+447700900001")


def test_completed_carries_duration_and_price_in_configured_currency():
    doc = vg.completed(duration="300", price="0.02250000")
    assert parse(doc) == _expected(doc, "completed", **OUTBOUND, duration=300,
                                   costs=(telephony(22_500_000),))


def test_price_currency_follows_ledger_vonage_currency():
    event = parse(vg.completed(), vonage_currency="gbp")
    assert event is not None and event.costs == (telephony(22_500_000, "GBP"),)


def test_completed_with_zero_duration_and_price_is_kept():
    event = parse(vg.completed(duration="0", price="0.00000000"))
    assert event is not None and event.duration == 0
    assert event.costs == (telephony(0),)


@pytest.mark.parametrize(("status", "detail", "ledger_status"), [
    ("busy", "busy", "busy"),
    ("cancelled", "cancelled", "canceled"),
    ("unanswered", "ring_timeout", "no-answer"),
    ("timeout", "ring_timeout", "no-answer"),
    ("rejected", "restricted", "failed"),
    ("failed", "cannot_route", "failed"),
])
def test_unsuccessful_endings_map_to_ledger_statuses(status, detail, ledger_status):
    doc = vg.unsuccessful(status, detail)
    assert parse(doc) == _expected(doc, ledger_status, **OUTBOUND)


def test_timestamp_keeps_its_milliseconds():
    event = parse(vg.started(timestamp="2026-11-24T10:00:00.010Z"))
    assert event is not None and event.occurred_at == "2026-11-24T10:00:00.010Z"


def test_event_id_is_stable_across_redeliveries_and_distinct_per_status():
    first, again = parse(vg.answered()), parse(vg.answered())
    other = parse(vg.ringing())
    assert first is not None and again is not None and other is not None
    assert first.event_id == again.event_id != other.event_id


def test_get_event_is_parsed_from_query_parameters():
    doc = vg.completed()
    assert make_source().parse(get(vg.query_params(doc))) == _expected(
        doc, "completed", **OUTBOUND, duration=300,
        costs=(telephony(22_500_000),))


def test_numeric_json_price_and_duration_are_exact():
    body = vg.encode(vg.completed()).replace(b'"0.02250000"', b"0.1").replace(b'"300"', b"300")
    event = parse_raw(body)
    assert event is not None and event.duration == 300 and event.costs[0].amount_nano == 100_000_000


# --- ignored events --------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [
    vg.record(),
    vg.input_event(),
    vg.human(),
    vg.event("machine"),
    vg.event("disconnected"),
    {"conversation_uuid_from": "CON-1", "conversation_uuid_to": "CON-2", "uuid": vg.CALL_UUID,
     "timestamp": "2026-11-24T10:00:09.000Z", "type": "transfer"},
], ids=["record", "input", "human", "machine", "disconnected", "transfer"])
def test_events_the_ledger_does_not_use_are_ignored(doc):
    assert parse(doc) is None


def test_ignored_events_are_ignored_whatever_fields_they_lack():
    assert parse_raw(b'{"recording_url": "https://api.nexmo.com/v1/files/x"}') is None
    assert parse_raw(b'{"status": "human"}') is None


# --- malformed and invalid bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"status=started", b'{"uuid": ', b"\xff\xfe{}", b"[]", b"null",
                                  b'{"status": "completed", "price": Infinity}'])
def test_unparsable_body_is_malformed(body):
    with pytest.raises(MalformedBody):
        parse_raw(body)


@pytest.mark.parametrize("field", ["uuid", "status", "timestamp"])
def test_missing_identifier_is_invalid_and_named(field):
    doc = vg.started()
    del doc[field]
    with pytest.raises(InvalidEvent, match=field):
        parse(doc)


def test_unknown_status_is_invalid():
    with pytest.raises(InvalidEvent, match="status is not a Vonage call status") as raised:
        parse(vg.event("teleported"))
    assert "teleported" not in str(raised.value)  # a field's value is never echoed


@pytest.mark.parametrize("duration", ["-5", "12.5", "five", "1e3", "١٢", "30\n0", "\u00a02", " 2", -1, True])
def test_negative_or_non_integer_duration_is_invalid(duration):
    with pytest.raises(InvalidEvent, match="duration"):
        parse(vg.completed(duration=duration))


@pytest.mark.parametrize("price", ["abc", "0,0225", "NaN", "1e400", True, ["0.1"]])
def test_malformed_price_is_invalid(price):
    with pytest.raises(InvalidEvent, match="price"):
        parse(vg.completed(price=price))


def test_unparsable_timestamp_is_invalid():
    with pytest.raises(InvalidEvent, match="timestamp"):
        parse(vg.started(timestamp="24/11/2026 10:00"))


# --- a whole call ----------------------------------------------------------------------------------------


def test_whole_call_verifies_and_parses_in_order():
    call = vg.whole_call(direction="inbound", call_uuid="e2e-vonage-1")
    source = make_source()
    events = []
    for body in call.bodies:
        request = post(body, call.signer.headers(body, NOW))
        source.verify(request)
        events.append(source.parse(request))
    assert [e and (e.status, e.call_sid) for e in events] == [
        ("initiated", "e2e-vonage-1"),
        ("ringing", "e2e-vonage-1"),
        ("ongoing", "e2e-vonage-1"),
        None,
        ("completed", "e2e-vonage-1"),
        None,
    ]
