"""Telnyx Call Control webhooks: Ed25519-signed JSON events → `CallEvent`.

Telnyx signs `f"{timestamp}|{raw body}"` with its own Ed25519 key, so the ledger
holds only the public half (`LEDGER_TELNYX_PUBLIC_KEY`): a leaked config cannot
forge events. Only `call.initiated`, `call.answered`, `call.hangup` and `call.cost`
say something the record keeps; every other event type is acknowledged and dropped
before its fields are looked at, so a lean `call.speak.ended` is never a 422.

Costs: `total_cost` counts when present, else the sum of `cost_parts[].cost`, in the
parts' currency (USD when none is given). Telnyx bills an account in one currency,
but should the parts ever disagree, no single total can be right: the event then
carries one `Cost` per currency (the sum of that currency's parts, `total_cost`
ignored) and the ledger converts each with its FX rates. A `call.cost` whose
`status` is `error` carries no usable price and is ignored (the rate card applies).
"""

import base64
import binascii
import re
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from call_ledger.core.errors import InvalidEvent, SignatureInvalid
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.instants import parse_iso
from call_ledger.core.money import normalise_currency, parse_amount
from call_ledger.core.phones import to_e164
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.fields import load_json_object

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_CURRENCY = "USD"
USED_EVENTS = frozenset({"call.initiated", "call.answered", "call.hangup", "call.cost"})
DIRECTIONS = {"incoming": "inbound", "outgoing": "outbound"}
# hangup_cause → ledger status; any other cause (call_rejected, not_found, unspecified, none) → failed.
HANGUP_STATUSES = {
    "normal_clearing": "completed",
    "time_limit": "completed",
    "user_busy": "busy",
    "no_answer": "no-answer",
    "timeout": "no-answer",
    "originator_cancel": "canceled",
}
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def load_public_key(encoded: str) -> Ed25519PublicKey:
    """The portal's base64 public key → a verifier; ValueError (never echoing it) otherwise."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("LEDGER_TELNYX_PUBLIC_KEY is not valid base64") from None
    if len(raw) != 32:
        raise ValueError("LEDGER_TELNYX_PUBLIC_KEY must be the base64 of a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _text(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _required(obj: dict[str, object], key: str, path: str) -> str:
    value = _text(obj, key)
    if value is None:
        raise InvalidEvent(f"{path} is missing")
    return value


def _amount(value: object, path: str) -> int:
    try:
        return parse_amount(value)
    except ValueError as exc:
        raise InvalidEvent(f"{path}: {exc}") from None
    except ArithmeticError:  # decimal.InvalidOperation from quantize on a huge exponent ("1e400")
        raise InvalidEvent(f"{path}: amount is implausibly large") from None


def _cost_parts(value: object) -> list[tuple[int, str | None]]:
    """(nano, currency or None) of each part that states a cost."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidEvent("data.payload.cost_parts must be a list")
    parts = []
    for i, part in enumerate(value):
        path = f"data.payload.cost_parts[{i}]"
        if not isinstance(part, dict):
            raise InvalidEvent(f"{path} must be an object")
        currency = part.get("currency")
        try:
            code = None if currency in (None, "") else normalise_currency(currency)
        except ValueError as exc:
            raise InvalidEvent(f"{path}.currency: {exc}") from None
        if part.get("cost") not in (None, ""):
            parts.append((_amount(part["cost"], f"{path}.cost"), code))
    return parts


def telephony_costs(payload: dict[str, object]) -> tuple[Cost, ...]:
    """The charges of a `call.cost` payload (see the module docstring for the rules)."""
    parts = _cost_parts(payload.get("cost_parts"))
    currencies = sorted({code for _, code in parts if code})
    total = payload.get("total_cost")
    if len(currencies) > 1:
        if any(code is None for _, code in parts):
            raise InvalidEvent("data.payload.cost_parts mix currencies and give a part none")
        sums = {code: sum(nano for nano, c in parts if c == code) for code in currencies}
        return tuple(Cost(component="telephony", amount_nano=sums[c], currency=c) for c in currencies)
    currency = currencies[0] if currencies else DEFAULT_CURRENCY
    if total not in (None, ""):
        amount = _amount(total, "data.payload.total_cost")
    elif parts:
        amount = sum(nano for nano, _ in parts)
    else:
        raise InvalidEvent("call.cost carries neither total_cost nor cost_parts[].cost")
    return (Cost(component="telephony", amount_nano=amount, currency=currency),)


def call_facts(event_type: str, payload: dict[str, object]) -> dict[str, object]:
    """Status, direction and numbers of a lifecycle event (no ringing event on Telnyx)."""
    if event_type == "call.initiated":
        status = "initiated"
    elif event_type == "call.answered":
        status = "ongoing"
    else:
        status = HANGUP_STATUSES.get(_text(payload, "hangup_cause") or "", "failed")
    return {
        "status": status,
        "direction": DIRECTIONS.get(_text(payload, "direction") or ""),
        "from_number": to_e164(_text(payload, "from")),
        "to_number": to_e164(_text(payload, "to")),
    }


class TelnyxSource:
    """`/webhooks/telnyx`: verifies with the account's Ed25519 public key."""

    name: ClassVar[str] = "telnyx"
    secret_variable: ClassVar[str] = "LEDGER_TELNYX_PUBLIC_KEY"
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def __init__(self, public_key: Ed25519PublicKey, tolerance_s: int) -> None:
        self._key = public_key
        self._tolerance_s = tolerance_s

    @classmethod
    def from_settings(cls, settings: Settings) -> "TelnyxSource | None":
        """None when no key is configured; the key is decoded once, here, so a bad one fails at start."""
        secret = settings.telnyx_public_key
        if secret is None or not secret.get_secret_value().strip():
            return None
        return cls(load_public_key(secret.get_secret_value()), settings.signature_tolerance_s)

    def verify(self, request: WebhookRequest) -> None:
        """Check the signature over `timestamp|raw body` and that the timestamp is fresh."""
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        if not timestamp:
            raise SignatureInvalid(f"missing {TIMESTAMP_HEADER} header")
        if not _UNIX_SECONDS.fullmatch(timestamp):
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} is not unix seconds")
        if abs(request.received_at - int(timestamp)) > self._tolerance_s:
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} is outside the accepted window")
        try:
            raw_signature = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is not base64") from None
        if len(raw_signature) != 64:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is not an Ed25519 signature")
        try:
            self._key.verify(raw_signature, timestamp.encode("ascii") + b"|" + request.body)
        except InvalidSignature:
            raise SignatureInvalid("signature does not match the body") from None

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The event's facts, or None for event types (and failed cost runs) the ledger does not use."""
        data = load_json_object(request.body).get("data")
        if not isinstance(data, dict):
            raise InvalidEvent("data must be an object")
        event_type = _required(data, "event_type", "data.event_type")
        if event_type not in USED_EVENTS:
            return None
        payload = data.get("payload")
        if not isinstance(payload, dict):
            raise InvalidEvent("data.payload must be an object")
        if event_type == "call.cost" and payload.get("status") == "error":
            return None
        event_id = _required(data, "id", "data.id")
        call_sid = _required(payload, "call_control_id", "data.payload.call_control_id")
        try:
            instant = parse_iso(_required(data, "occurred_at", "data.occurred_at"))
        except ValueError:
            raise InvalidEvent("data.occurred_at is not an ISO 8601 timestamp") from None
        facts: dict[str, object]
        if event_type == "call.cost":
            facts = {"costs": telephony_costs(payload)}
        else:
            facts = call_facts(event_type, payload)
        return CallEvent(
            source=self.name,
            event_id=event_id,
            call_sid=call_sid,
            type=event_type,
            occurred_at=instant.text,
            occurred_us=instant.us,
            **facts,  # type: ignore[arg-type]
        )
