"""Platform events: Standard Webhooks verification and parsing, without HTTP."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from multidict import CIMultiDict

from call_ledger.core.errors import InvalidEvent, MalformedBody, SignatureInvalid
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.platform import PlatformSource
from tests.support.platform_requests import SOURCE, request
from tests.support.settings import make_settings

USAGE = {"type": "call.usage", "call_sid": "CA1", "occurred_at": "2026-11-24T10:00:00Z",
         "data": {"component": "llm", "cost": "0.0123", "currency": "USD", "provider": "openai",
                  "model": "gpt-4o-mini", "usage_type": "tokens", "usage_amount": 8200}}


def test_signature_from_the_reference_library_verifies() -> None:
    SOURCE.verify(request(USAGE))


def test_any_one_valid_signature_in_the_list_is_enough() -> None:
    good = request(USAGE)
    headers = CIMultiDict(good.headers)
    headers["webhook-signature"] = "v1,AAAA " + good.headers["webhook-signature"]
    SOURCE.verify(WebhookRequest("POST", good.url, headers, good.body, good.received_at))


@pytest.mark.parametrize("change", [
    {"webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
    {"webhook-signature": "v2,whatever"},
    {"webhook-signature": None},
    {"webhook-id": None},
    {"webhook-timestamp": None},
    {"webhook-timestamp": "not-a-number"},
    {"webhook-id": "msg_other"},  # the id is part of what is signed
])
def test_wrong_or_missing_signature_headers_are_rejected(change: dict[str, str | None]) -> None:
    with pytest.raises(SignatureInvalid):
        SOURCE.verify(request(USAGE, header_changes=change))


def test_tampered_body_is_rejected() -> None:
    good = request(USAGE)
    tampered = WebhookRequest("POST", good.url, good.headers, good.body.replace(b"0.0123", b"0.0001"),
                              good.received_at)
    with pytest.raises(SignatureInvalid):
        SOURCE.verify(tampered)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(SignatureInvalid):
        SOURCE.verify(request(USAGE, secret="whsec_" + "b3RoZXItc2VjcmV0LWtleS0xMjM0NTY3ODkwMTI="))


@pytest.mark.parametrize("skew", [timedelta(seconds=-301), timedelta(seconds=301)])
def test_timestamps_outside_five_minutes_are_rejected(skew: timedelta) -> None:
    with pytest.raises(SignatureInvalid, match="window"):
        SOURCE.verify(request(USAGE, when=datetime.now(UTC) + skew))


def test_usage_event_is_normalised_with_exact_amount() -> None:
    event = SOURCE.parse(request(USAGE, webhook_id="msg_usage"))
    assert event is not None
    assert event.model_dump() == {
        "source": "platform", "event_id": "msg_usage", "call_sid": "CA1", "type": "call.usage",
        "occurred_at": "2026-11-24T10:00:00Z", "occurred_us": 1795514400000000,
        "status": None, "direction": None, "from_number": None, "to_number": None, "duration": None,
        "started_at": None, "started_us": None, "answered_at": None, "answered_us": None,
        # The cost counts; the usage beside it is kept on the Cost as information (SPEC §11).
        "costs": ({"component": "llm", "amount_nano": 12_300_000, "currency": "USD", "provider": "openai",
                   "model": "gpt-4o-mini", "usage_type": "tokens", "usage_amount": "8200"},),
        "assistant_id": None, "organization_id": None, "assistant_name": None, "flow_name": None,
        "to_phone_number": None, "customer_phone_number": None, "call_meta": None,
    }


def test_json_number_cost_is_taken_as_its_decimal_text() -> None:
    raw = (b'{"type":"call.usage","call_sid":"CA1","occurred_at":"2026-11-24T10:00:00Z",'
           b'"data":{"component":"tts","cost":0.1000000007}}')
    event = SOURCE.parse(request(None, raw=raw))
    assert event is not None and event.costs[0].amount_nano == 100_000_001
    assert event.costs[0].currency == "USD"  # the ledger currency when none is given


def test_metadata_event_keeps_every_field() -> None:
    payload = {"type": "call.metadata", "call_sid": "CA1", "occurred_at": "2026-11-24T10:00:00.5Z",
               "data": {"assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support",
                        "to_phone_number": "+15551234567", "customer_phone_number": "+15559876543",
                        "direction": "inbound", "call_meta": {"customer_id": "cust_abc123", "score": 1.5}}}
    event = SOURCE.parse(request(payload))
    assert event is not None
    assert (event.assistant_id, event.assistant_name, event.flow_name) == (12, "ServiceBot", "Support")
    with_org = SOURCE.parse(request({"type": "call.metadata", "call_sid": "CA1", "data": {"organization_id": 42}}))
    assert with_org is not None and with_org.organization_id == 42
    assert (event.to_phone_number, event.customer_phone_number) == ("+15551234567", "+15559876543")
    assert event.direction == "inbound" and event.occurred_at == "2026-11-24T10:00:00.5Z"
    assert event.call_meta == {"customer_id": "cust_abc123", "score": 1.5}


def test_status_event_and_missing_occurred_at_uses_the_signed_timestamp() -> None:
    when = datetime.now(UTC).replace(microsecond=0)
    event = SOURCE.parse(request({"type": "call.status", "call_sid": "CA1",
                                  "data": {"status": "completed", "duration": 300}}, when=when))
    assert event is not None
    assert (event.status, event.duration) == ("completed", 300)
    assert event.occurred_us == int(when.timestamp()) * 1_000_000


def test_unknown_event_type_is_ignored() -> None:
    assert SOURCE.parse(request({"type": "call.transcript", "call_sid": "CA1"})) is None


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
def test_unparsable_body_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedBody):
        SOURCE.parse(request(None, raw=raw))


@pytest.mark.parametrize(("payload", "message"), [
    ({"type": "call.status", "data": {"status": "completed"}}, "call_sid"),
    ({"call_sid": "CA1", "data": {}}, "type"),
    ({"type": "call.status", "call_sid": "CA1", "data": {"status": "hung-up"}}, "status"),
    ({"type": "call.status", "call_sid": "CA1", "data": {"status": "completed", "duration": -1}}, "duration"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "llm", "cost": "12,5"}}, "cost"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "llm", "cost": "NaN"}}, "cost"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "llm", "cost": "1e400"}}, "cost"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "llm", "cost": True}}, "cost"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "video", "cost": "1"}}, "component"),
    ({"type": "call.usage", "call_sid": "CA1", "data": {"component": "llm", "cost": "1", "currency": "dollars"}},
     "currency"),
    ({"type": "call.metadata", "call_sid": "CA1", "occurred_at": "yesterday", "data": {}}, "occurred_at"),
    ({"type": "call.metadata", "call_sid": "CA1", "data": {"assistant_id": "twelve"}}, "assistant_id"),
    ({"type": "call.metadata", "call_sid": "CA1", "data": {"direction": "sideways"}}, "direction"),
    ({"type": "call.metadata", "call_sid": "CA1", "data": {"organization_id": 0}}, "organization_id"),
    ({"type": "call.metadata", "call_sid": "CA1", "data": {"organization_id": "7"}}, "organization_id"),
    ({"type": "call.metadata", "call_sid": "CA1", "data": {"organization_id": 1.5}}, "organization_id"),
])
def test_events_that_lack_what_a_call_event_needs_are_invalid(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        SOURCE.parse(request(payload))


# -- SPEC §14: no amount text a signed event carries can cost the worker more than its size -----

@pytest.mark.parametrize("amount", ["1e-999999999", "1e-5000000", "1.0000000000000000000000000000001",
                                    "0.0000000001"])
def test_a_usage_amount_with_more_than_nine_decimals_is_refused_without_writing_it_out(amount: str) -> None:
    """1e-999999999 once passed as 0 after `normalize()` and was then written out digit by digit
    (a 1 KB body held a worker for seconds and gigabytes)."""
    line = {"component": "llm", "provider": "openai", "usage_type": "tokens", "usage_amount": amount}
    with pytest.raises(InvalidEvent, match="more than 9 decimals"):
        SOURCE.parse(request({**USAGE, "data": line}))


@pytest.mark.parametrize(("amount", "text"), [("1.50000000000000000000000000000000000", "1.5"), ("1.5E+3", "1500"),
                                              ("0e-999999999", "0"), ("0.000000001", "0.000000001")])
def test_a_usage_amount_is_kept_as_its_exact_shortest_text(amount: str, text: str) -> None:
    line = {"component": "llm", "provider": "openai", "usage_type": "tokens", "usage_amount": amount}
    event = SOURCE.parse(request({**USAGE, "data": line}))
    assert event is not None and event.usage[0].usage_amount == text


@pytest.mark.parametrize("number", ["1E+99999999999999999999", "1e-99999999999999999999"])
def test_a_number_no_decimal_holds_is_a_malformed_body_not_a_500(number: str) -> None:
    raw = ('{"type":"call.status","call_sid":"CA1","occurred_at":"2026-11-24T10:00:00Z",'
           '"data":{"status":"ongoing","junk":' + number + '}}').encode()
    with pytest.raises(MalformedBody):
        SOURCE.parse(request(None, raw=raw))


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not-base64!"])
def test_a_platform_secret_that_names_no_key_stops_start_up_naming_the_variable_only(secret: str) -> None:
    # An empty key would accept a signature anyone can compute.
    with pytest.raises(ValueError, match=r"^LEDGER_PLATFORM_WEBHOOK_SECRET: ") as refused:
        PlatformSource.from_settings(make_settings(platform_webhook_secret=secret))
    assert "base64!" not in str(refused.value)
