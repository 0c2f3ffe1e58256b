"""The platform's own events (SPEC §6), signed with Standard Webhooks.

Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 with the
base64 key after `whsec_`; the `webhook-signature` header lists `v1,<base64>` entries
and one match is enough. The event id is the `webhook-id` header: stable across the
platform's redeliveries of one message.
"""

import hmac
import math
import re
from decimal import Decimal
from typing import Any, ClassVar

from call_ledger.core.errors import InvalidEvent, SignatureInvalid
from call_ledger.core.events import STATUSES, CallEvent
from call_ledger.core.instants import from_unix, parse_iso
from call_ledger.core.standard_webhooks import expected_signature, signing_key
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.fields import load_json_object
from call_ledger.worker.sources.usage import parse_usage

USED_TYPES = ("call.metadata", "call.usage", "call.status")
MAX_META_DEPTH = 32
_UNIX_SECONDS = re.compile(r"^[0-9]{1,12}$")


def _plain(value: Any, depth: int = 0) -> Any:
    """Metadata is free-form, not money: JSON numbers parsed as Decimal go back to int/float.

    Bounded so that whatever is accepted can be stored and served: nesting up to
    MAX_META_DEPTH, integers inside 64 bits, finite numbers.
    """
    if depth > MAX_META_DEPTH:
        raise InvalidEvent(f"data.call_meta is nested deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        number: int | float
        if isinstance(value, int) or (value == value.to_integral_value() and "E" not in str(value)):
            number = int(value)
            if not -(2**63) <= number < 2**63:
                raise InvalidEvent("data.call_meta: integers must fit in 64 bits")
        else:
            number = float(value)
            if not math.isfinite(number):
                raise InvalidEvent("data.call_meta: numbers must be finite")
        return number
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    return [_plain(v, depth + 1) for v in value]


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"data.{name} must be a string")
    return value


class PlatformSource:
    name: ClassVar[str] = "platform"
    secret_variable: ClassVar[str] = "LEDGER_PLATFORM_WEBHOOK_SECRET"
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def __init__(self, key: bytes, tolerance_s: int, currency: str) -> None:
        self._key = key
        self._tolerance = tolerance_s
        self._currency = currency

    @classmethod
    def from_settings(cls, settings: Settings) -> "PlatformSource | None":
        if settings.platform_webhook_secret is None:
            return None
        try:
            key = signing_key(settings.platform_webhook_secret.get_secret_value())
        except ValueError as exc:  # the message names the variable, never a part of the secret
            raise ValueError(f"LEDGER_PLATFORM_WEBHOOK_SECRET: {exc}") from None
        return cls(key, settings.signature_tolerance_s, settings.currency)

    def verify(self, request: WebhookRequest) -> None:
        webhook_id = request.headers.get("webhook-id")
        timestamp = request.headers.get("webhook-timestamp")
        signatures = request.headers.get("webhook-signature")
        if not webhook_id or not timestamp or not signatures:
            raise SignatureInvalid("webhook-id, webhook-timestamp and webhook-signature headers are required")
        if not _UNIX_SECONDS.match(timestamp):
            raise SignatureInvalid("webhook-timestamp is not unix seconds")
        if abs(request.received_at - int(timestamp)) > self._tolerance:
            raise SignatureInvalid("webhook-timestamp is outside the accepted window")
        expected = expected_signature(self._key, webhook_id, timestamp, request.body)
        matched = False
        for candidate in signatures.split(" "):
            version, _, value = candidate.partition(",")
            # Check every entry (no early exit) so timing says nothing about which matched.
            matched |= version == "v1" and hmac.compare_digest(value.encode("utf-8", "surrogateescape"), expected)
        if not matched:
            raise SignatureInvalid("no valid v1 signature for this body")

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        body = load_json_object(request.body)  # JSON numbers as Decimal: a cost is its decimal text
        kind = body.get("type")
        if not isinstance(kind, str):
            raise InvalidEvent("type is required")
        if kind not in USED_TYPES:
            return None
        call_sid = body.get("call_sid")
        if not isinstance(call_sid, str) or not call_sid:
            raise InvalidEvent("call_sid is required")
        data = body.get("data", {})
        if not isinstance(data, dict):
            raise InvalidEvent("data must be an object")
        occurred = self._occurred_at(body.get("occurred_at"), request)
        fields: dict[str, Any] = {
            "source": self.name,
            "event_id": request.headers["webhook-id"],
            "call_sid": call_sid,
            "type": kind,
            "occurred_at": occurred.text,
            "occurred_us": occurred.us,
        }
        if kind == "call.metadata":
            fields.update(self._metadata(data))
        elif kind == "call.usage":
            fields.update(parse_usage(data, self._currency))
        else:
            fields.update(self._status(data))
        return CallEvent(**fields)

    @staticmethod
    def _occurred_at(value: object, request: WebhookRequest) -> Any:
        if value is None:
            # The signed send time is the best instant the platform gave us.
            return from_unix(int(request.headers["webhook-timestamp"]))
        try:
            return parse_iso(value)  # type: ignore[arg-type]
        except ValueError:
            raise InvalidEvent("occurred_at must be an ISO 8601 timestamp") from None

    @staticmethod
    def _metadata(data: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        assistant_id = data.get("assistant_id")
        if assistant_id is not None:
            if isinstance(assistant_id, bool) or not isinstance(assistant_id, int) or assistant_id < 0:
                raise InvalidEvent("data.assistant_id must be a non-negative integer")
            fields["assistant_id"] = assistant_id
        organization_id = data.get("organization_id")
        if organization_id is not None:
            if (isinstance(organization_id, bool) or not isinstance(organization_id, int)
                    or not 1 <= organization_id < 2**63):
                raise InvalidEvent("data.organization_id must be a positive integer")
            fields["organization_id"] = organization_id
        for name in ("assistant_name", "flow_name", "to_phone_number", "customer_phone_number"):
            fields[name] = _text(data, name)
        direction = _text(data, "direction")
        if direction is not None and direction not in ("inbound", "outbound"):
            raise InvalidEvent("data.direction must be inbound or outbound")
        fields["direction"] = direction
        meta = data.get("call_meta")
        if meta is not None:
            if not isinstance(meta, dict):
                raise InvalidEvent("data.call_meta must be an object")
            fields["call_meta"] = _plain(meta)
        return fields

    @staticmethod
    def _status(data: dict[str, Any]) -> dict[str, Any]:
        status = data.get("status")
        if status not in STATUSES:
            raise InvalidEvent(f"data.status must be one of {', '.join(STATUSES)}")
        fields: dict[str, Any] = {"status": status}
        duration = data.get("duration")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
                raise InvalidEvent("data.duration must be a non-negative integer (seconds)")
            fields["duration"] = duration
        return fields
