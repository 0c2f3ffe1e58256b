"""Vonage Voice API event webhooks: signed-webhook JWT (HS256) → `CallEvent`.

Vonage puts an HS256 JWT in `Authorization: Bearer …`, signed with the account's
signature secret. The signature alone proves only that Vonage issued the token, not
that it belongs to this body or this moment (Vonage sets no `exp`), so three checks
are made, here, with the standard library rather than a JWT library:

- the header's `alg` is exactly HS256 (no `none`, no algorithm confusion), and the
  HMAC matches in constant time;
- `iat` lies within ±`LEDGER_SIGNATURE_TOLERANCE_S` of arrival;
- `payload_hash` is the hex SHA-256 of what was sent. For `POST` that is the raw body.
  For `GET` the body is empty; Vonage hashes the query parameters as a JSON object in
  their order, without whitespace (its support article on verifying Voice webhook
  payloads), so that is what is recomputed. The hash of an empty body is never
  accepted for a `GET`: it would let one token vouch for any query string;
- with `LEDGER_VONAGE_APPLICATION_ID` set, the `application_id` claim is exactly it: the
  signature secret is the account's, shared by all its applications, so this is what
  keeps another application's webhooks (or a test application's) out.

Vonage sends no event id: `uuid:status:timestamp` (raw text) is stable across
redeliveries. Amounts carry no currency: `LEDGER_VONAGE_CURRENCY` supplies it.
"""

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from typing import ClassVar

from call_ledger.core.errors import InvalidEvent, SignatureInvalid
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.instants import parse_iso
from call_ledger.core.money import parse_amount
from call_ledger.core.phones import to_e164
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.fields import load_json_object

STATUSES = {
    "started": "initiated",
    "ringing": "ringing",
    "answered": "ongoing",
    "completed": "completed",
    "busy": "busy",
    "cancelled": "canceled",
    "canceled": "canceled",
    "unanswered": "no-answer",
    "timeout": "no-answer",
    "rejected": "failed",
    "failed": "failed",
}
IGNORED_STATUSES = frozenset({"human", "machine", "disconnected", "record", "input", "transfer"})
# Fields that mark an event without `status` as a kind the ledger does not use
# (record, input, transfer).
OTHER_KIND_FIELDS = ("recording_url", "recording_uuid", "dtmf", "speech", "conversation_uuid_from")
DIRECTIONS = frozenset({"inbound", "outbound"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_WHOLE_SECONDS = re.compile(r"-?[0-9]{1,10}")


def _b64url(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):
        raise SignatureInvalid("bearer token is malformed")
    try:
        return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("bearer token is malformed") from None


def _json_segment(segment: str) -> dict[str, object]:
    try:
        value = json.loads(_b64url(segment).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureInvalid("bearer token is malformed") from None
    if not isinstance(value, dict):
        raise SignatureInvalid("bearer token is malformed")
    return value


def bearer_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureInvalid("missing Authorization: Bearer token")
    return token.strip()


def verify_hs256(token: str, secret: bytes) -> dict[str, object]:
    """The claims of a compact HS256 JWT whose signature matches; SignatureInvalid otherwise."""
    segments = token.split(".")
    if len(segments) != 3:
        raise SignatureInvalid("bearer token is malformed")
    header_b64, claims_b64, signature_b64 = segments
    # Every segment must be base64url before any is used: the claims are hashed as ASCII text
    # before they are decoded, and a token nobody signed must be a 401, never a 500.
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise SignatureInvalid("bearer token is malformed")
    if _json_segment(header_b64).get("alg") != "HS256":
        raise SignatureInvalid("bearer token must be signed with HS256")
    expected = hmac.new(secret, f"{header_b64}.{claims_b64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64url(signature_b64)):
        raise SignatureInvalid("bearer token signature does not match")
    return _json_segment(claims_b64)


def signed_payloads(request: WebhookRequest) -> list[bytes]:
    """What Vonage may have hashed into `payload_hash` for this request (see module docstring)."""
    if request.method.upper() != "GET":
        return [request.body]
    params = dict(request.query)
    return [
        json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        # Same text with non-ASCII escaped, in case Vonage's serialiser escapes it.
        json.dumps(params, separators=(",", ":")).encode("ascii"),
    ]


def _check_claims(claims: dict[str, object], request: WebhookRequest, tolerance_s: int,
                  application_id: str | None = None) -> None:
    if application_id is not None and claims.get("application_id") != application_id:
        raise SignatureInvalid("bearer token is for another Vonage application")
    iat = claims.get("iat")
    # Bounded before any float arithmetic: a huge integer would overflow it.
    if (isinstance(iat, bool) or not isinstance(iat, int | float)
            or abs(iat) > 2**53 or not math.isfinite(iat)):
        raise SignatureInvalid("bearer token has no valid iat claim")
    if abs(request.received_at - iat) > tolerance_s:
        raise SignatureInvalid("bearer token iat is outside the accepted window")
    claimed = claims.get("payload_hash")
    if not isinstance(claimed, str):
        raise SignatureInvalid("bearer token has no payload_hash claim")
    claimed_bytes = claimed.strip().lower().encode("utf-8")
    digests = [hashlib.sha256(payload).hexdigest().encode("ascii") for payload in signed_payloads(request)]
    if not any(hmac.compare_digest(claimed_bytes, digest) for digest in digests):
        raise SignatureInvalid("payload_hash does not match the body")


def request_fields(request: WebhookRequest) -> dict[str, object]:
    """The event's fields: the JSON body of a POST, the query parameters of a GET."""
    if request.method.upper() == "GET":
        return dict(request.query)
    return load_json_object(request.body)


def _text(fields: dict[str, object], key: str) -> str | None:
    value = fields.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _required(fields: dict[str, object], key: str) -> str:
    value = _text(fields, key)
    if value is None:
        raise InvalidEvent(f"{key} is missing")
    return value


def is_ignored(fields: dict[str, object]) -> bool:
    """An event kind the ledger does not use: AMD results, recordings, input, transfers..."""
    status = _text(fields, "status")
    if status is not None:
        return status.lower() in IGNORED_STATUSES
    return fields.get("type") == "transfer" or any(key in fields for key in OTHER_KIND_FIELDS)


def parse_duration(value: object) -> int | None:
    """Connected seconds (Vonage sends a string); blank means absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and _WHOLE_SECONDS.fullmatch(value):
        seconds = int(value)
    else:
        raise InvalidEvent("duration must be a whole number of seconds")
    if seconds < 0:
        raise InvalidEvent("duration must not be negative")
    return seconds


def parse_price(value: object, currency: str) -> tuple[Cost, ...]:
    """The call's total charge (no currency of its own); blank means absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    try:
        nano = parse_amount(value)
    except ValueError as exc:
        raise InvalidEvent(f"price: {exc}") from None
    except ArithmeticError:  # decimal.InvalidOperation from quantize on a huge exponent ("1e400")
        raise InvalidEvent("price: amount is implausibly large") from None
    return (Cost(component="telephony", amount_nano=nano, currency=currency),)


class VonageSource:
    """`/webhooks/vonage`: verifies the signed-webhook JWT with the signature secret."""

    name: ClassVar[str] = "vonage"
    secret_variable: ClassVar[str] = "LEDGER_VONAGE_SIGNATURE_SECRET"
    methods: ClassVar[frozenset[str]] = frozenset({"POST", "GET"})

    def __init__(self, secret: bytes, tolerance_s: int, currency: str, application_id: str | None = None) -> None:
        self._secret = secret
        self._tolerance_s = tolerance_s
        self._currency = currency
        self._application_id = application_id

    @classmethod
    def from_settings(cls, settings: Settings) -> "VonageSource | None":
        """None when no signature secret is configured."""
        secret = settings.vonage_signature_secret
        if secret is None or not secret.get_secret_value():
            return None
        return cls(secret.get_secret_value().encode("utf-8"), settings.signature_tolerance_s,
                   settings.vonage_currency, settings.vonage_application_id)

    def verify(self, request: WebhookRequest) -> None:
        """Signature, application, freshness (`iat`) and `payload_hash`; any failure is SignatureInvalid."""
        claims = verify_hs256(bearer_token(request.headers.get("Authorization")), self._secret)
        _check_claims(claims, request, self._tolerance_s, self._application_id)

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The event's facts, or None for a kind of event the ledger does not use."""
        fields = request_fields(request)
        if is_ignored(fields):
            return None
        uuid, status, timestamp = (_required(fields, key) for key in ("uuid", "status", "timestamp"))
        ledger_status = STATUSES.get(status.lower())
        if ledger_status is None:
            raise InvalidEvent("status is not a Vonage call status")  # never echoed: it may hold anything
        try:
            instant = parse_iso(timestamp)
        except ValueError:
            raise InvalidEvent("timestamp is not an ISO 8601 timestamp") from None
        direction = _text(fields, "direction")
        return CallEvent(
            source=self.name,
            event_id=f"{uuid}:{status}:{timestamp}",
            call_sid=uuid,
            type=status,
            occurred_at=instant.text,
            occurred_us=instant.us,
            status=ledger_status,  # type: ignore[arg-type]
            direction=direction if direction in DIRECTIONS else None,  # type: ignore[arg-type]
            from_number=to_e164(_text(fields, "from")),
            to_number=to_e164(_text(fields, "to")),
            duration=parse_duration(fields.get("duration")),
            costs=parse_price(fields.get("price"), self._currency),
        )
