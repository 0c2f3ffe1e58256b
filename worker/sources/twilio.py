"""Twilio voice status callbacks: HMAC-signed form parameters → `CallEvent`.

Twilio signs the URL it called plus, for a POST, every form parameter as `name + value`
sorted by name (a repeated name contributes each distinct value, sorted: what the SDK's
`RequestValidator` does), keyed with the account's auth token. HMAC-SHA1 unless
`X-Twilio-Webhooks-Signature-Settings` names `algorithm=HMAC_SHA256`; the key is then
whatever secret the account signs with, still read from `LEDGER_TWILIO_AUTH_TOKEN`.
Twilio is inconsistent about default ports, so, like its SDK, the URL is tried as given,
with `:443`/`:80` added and with it removed. The signature covers decoded parameters, so
a POST body that is not UTF-8 form data has no signature to check: `MalformedBody` (400).

Twilio numbers its events (`SequenceNumber`); the event id is `CallSid:SequenceNumber`,
or `CallSid:CallStatus` for the lone terminal callback sent without one. `occurred_at` is
the callback's `Timestamp` (RFC 2822); when it is absent, the time intake received the
request stands in (the same request redelivered is still deduplicated by its event id).
Status callbacks carry no price: Twilio fills it in on the Call resource later.
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from ledger.errors import InvalidEvent, SignatureInvalid
from ledger.events import CallEvent
from ledger.instants import Instant, from_unix, parse_rfc2822
from ledger.phones import to_e164
from ledger.settings import Settings
from worker.sources.base import WebhookRequest
from worker.sources.fields import read_fields, required, whole_seconds

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
DIGESTS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
DEFAULT_PORTS = {"https": 443, "http": 80}
STATUSES = {
    "queued": "initiated",
    "initiated": "initiated",
    "ringing": "ringing",
    "in-progress": "ongoing",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "canceled",
    "failed": "failed",
}
DIRECTIONS = {"inbound": "inbound", "outbound-api": "outbound", "outbound-dial": "outbound"}
# Callbacks of other Twilio features (recording, transcription, async AMD) pointed at this
# route carry a CallSid but no CallStatus: acknowledged and dropped, not a 422.
OTHER_CALLBACK_FIELDS = ("RecordingSid", "TranscriptionSid", "AnsweredBy")
READ_FIELDS = frozenset({"CallSid", "CallStatus", "SequenceNumber", "Timestamp", "Direction", "From", "To",
                         "CallDuration", *OTHER_CALLBACK_FIELDS})


def signed_parameters(pairs: Iterable[tuple[str, str]]) -> str:
    """`name + value` for each name sorted, each distinct value sorted (the SDK's rule)."""
    grouped: dict[str, set[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, set()).add(value)
    return "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))


def url_variants(url: str) -> tuple[str, ...]:
    """The URL as given, plus the same URL with its default port added or removed."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return (url,)
    if default is None or port not in (None, default):
        return (url,)
    host = parts.netloc.rsplit(":", 1)[0] if port else parts.netloc
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{default}"))
    without_port = urlunsplit(parts._replace(netloc=host))
    return tuple(dict.fromkeys((url, with_port, without_port)))


def signature_algorithm(settings_header: str | None) -> str:
    """`key=…,algorithm=HMAC_SHA256` → its algorithm; absent means the legacy HMAC_SHA1."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def occurred_at(fields: dict[str, str], received_at: float) -> Instant:
    """The callback's `Timestamp`, else the time intake received it."""
    value = fields.get("Timestamp", "").strip()
    if not value:
        return from_unix(received_at)
    try:
        return parse_rfc2822(value)
    except ValueError:
        raise InvalidEvent("Timestamp is not an RFC 2822 date") from None


class TwilioSource:
    """`/webhooks/twilio`: verifies `X-Twilio-Signature` with the account's auth token."""

    name: ClassVar[str] = "twilio"
    secret_variable: ClassVar[str] = "LEDGER_TWILIO_AUTH_TOKEN"
    methods: ClassVar[frozenset[str]] = frozenset({"POST", "GET"})

    def __init__(self, auth_token: str) -> None:
        self._key = auth_token.encode("utf-8")

    @classmethod
    def from_settings(cls, settings: Settings) -> "TwilioSource | None":
        """None when no auth token is configured."""
        secret = settings.twilio_auth_token
        if secret is None or not secret.get_secret_value().strip():
            return None
        return cls(secret.get_secret_value().strip())

    def verify(self, request: WebhookRequest) -> None:
        """Check the signature over the URL (and, for a POST, the form parameters)."""
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        digest = DIGESTS.get(signature_algorithm(request.headers.get(SETTINGS_HEADER)))
        if digest is None:
            raise SignatureInvalid(f"{SETTINGS_HEADER} names an unsupported algorithm")
        params = "" if request.method == "GET" else signed_parameters(request.form)
        given = signature.encode("utf-8", "surrogateescape")
        matched = False
        for url in url_variants(request.url):
            mac = hmac.new(self._key, (url + params).encode("utf-8", "surrogateescape"), digest)
            matched |= hmac.compare_digest(base64.b64encode(mac.digest()), given)
        if not matched:
            raise SignatureInvalid("signature does not match the URL and parameters")

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The status callback's facts; None for another feature's callback sent here."""
        pairs = request.query if request.method == "GET" else request.form
        fields = read_fields(pairs, READ_FIELDS)
        if not fields.get("CallStatus") and any(fields.get(f) for f in OTHER_CALLBACK_FIELDS):
            return None
        call_sid = required(fields, "CallSid")
        call_status = required(fields, "CallStatus")
        status = STATUSES.get(call_status)
        if status is None:
            raise InvalidEvent(f"CallStatus {call_status[:40]!r} is not a Twilio call status")
        sequence = fields.get("SequenceNumber", "").strip()
        instant = occurred_at(fields, request.received_at)
        return CallEvent(
            source=self.name,
            event_id=f"{call_sid}:{sequence or call_status}",
            call_sid=call_sid,
            type=f"status.{call_status}",
            occurred_at=instant.text,
            occurred_us=instant.us,
            status=status,  # type: ignore[arg-type]
            direction=DIRECTIONS.get(fields.get("Direction", "").strip()),  # type: ignore[arg-type]
            from_number=to_e164(fields.get("From")),
            to_number=to_e164(fields.get("To")),
            duration=whole_seconds(fields, "CallDuration"),
        )
