"""Plivo ring / answer / hangup callbacks: Signature V3 form parameters → `CallEvent`.

Signature V3 is base64(HMAC-SHA256(auth token, base + "." + nonce)), mirroring the SDK's
`plivo.utils.signature_v3` (not imported: the service does not depend on Plivo's SDK):

- POST with form parameters: `scheme://host[:port]/path` + `?` + the URL's own query as
  sorted `k=v&…` (a bare `?` when there is none) + `.` if that query is non-empty + every
  POST parameter as `name + value`, sorted by name (a repeated name: each value, sorted);
- GET, or a POST without parameters: the URL without its query, then `?` + the URL's query
  as sorted `k=v&…` when it has one.

Values are decoded, not percent-encoded. The URL is signed exactly as called: no default
port variants (the SDK tries none). `X-Plivo-Signature-V3` may list several signatures
(comma-separated, e.g. during a token rotation): one match is enough. The signature covers
decoded parameters, so a body that is not UTF-8 form data is `MalformedBody` (400).

`occurred_at`: Plivo sends no event time as such. A hangup (`Event=Hangup` or a terminal
status) takes `EndTime`; an answered call `AnswerTime`, else `StartTime`; a ringing call
`StartTime`. These are `YYYY-MM-DD HH:MM:SS`, read as UTC unless they carry an offset.
They are undocumented fields, so one that is absent or unreadable is skipped and the time
intake received the request stands in. `TotalCost` is a charge in `LEDGER_PLIVO_CURRENCY`.
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable
from typing import ClassVar
from urllib.parse import urlparse, urlunparse

from ledger.errors import InvalidEvent, SignatureInvalid
from ledger.events import TERMINAL_STATUSES, CallEvent, Cost
from ledger.instants import Instant, from_unix, parse_iso
from ledger.money import parse_amount
from ledger.phones import to_e164
from ledger.settings import Settings
from worker.sources.base import WebhookRequest
from worker.sources.fields import decode_form, read_fields, required, whole_seconds

SIGNATURE_HEADER = "X-Plivo-Signature-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
STATUSES = {
    "ringing": "ringing",
    "in-progress": "ongoing",
    "completed": "completed",
    "busy": "busy",
    "failed": "failed",
    "timeout": "no-answer",
    "no-answer": "no-answer",
    "cancel": "canceled",
    "canceled": "canceled",
    "cancelled": "canceled",
}
DIRECTIONS = {"inbound": "inbound", "outbound": "outbound"}
# An answering-machine verdict says who picked up, not where the call stands.
IGNORED_EVENTS = frozenset({"MachineDetection"})
# Recording callbacks pointed at this route carry a CallUUID but no CallStatus: dropped, not a 422.
OTHER_CALLBACK_FIELDS = ("RecordingID", "RecordUrl")
READ_FIELDS = frozenset({"CallUUID", "CallStatus", "Event", "Direction", "From", "To", "Duration",
                         "TotalCost", "StartTime", "AnswerTime", "EndTime", *OTHER_CALLBACK_FIELDS})


def _sorted_values(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs sorted by name, then by value within a name (the SDK sorts list values)."""
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return [(name, value) for name in sorted(grouped) for value in sorted(grouped[name])]


def signature_base(method: str, url: str, form: list[tuple[str, str]]) -> str:
    """The text Plivo signs, before `"." + nonce` (see the module docstring)."""
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    query = "&".join(f"{k}={v}" for k, v in _sorted_values(decode_form(parts.query, "URL query")))
    if method == "GET" or not form:
        return f"{base}?{query}" if query else base
    params = "".join(k + v for k, v in _sorted_values(form))
    return f"{base}?{query}{'.' if query else ''}{params}"


def occurred_at(fields: dict[str, str], event: str, status: str, received_at: float) -> Instant:
    """The callback's own time for its kind of event, else the time intake received it."""
    if event == "Hangup" or status in TERMINAL_STATUSES:
        names: tuple[str, ...] = ("EndTime",)
    elif status == "ongoing":
        names = ("AnswerTime", "StartTime")
    else:
        names = ("StartTime",)
    for name in names:
        value = fields.get(name, "").strip()
        if value:
            try:
                return parse_iso(value)
            except ValueError:
                continue
    return from_unix(received_at)


def reported_instant(fields: dict[str, str], name: str) -> Instant | None:
    """A time field the callback reports about the call (unreadable or absent: None)."""
    value = fields.get(name, "").strip()
    try:
        return parse_iso(value) if value else None
    except ValueError:
        return None


def telephony_costs(fields: dict[str, str], currency: str) -> tuple[Cost, ...]:
    """`TotalCost` as one telephony charge; none when Plivo did not send it."""
    value = fields.get("TotalCost", "").strip()
    if not value:
        return ()
    try:
        nano = parse_amount(value)
    except ValueError as exc:
        raise InvalidEvent(f"TotalCost: {exc}") from None
    return (Cost(component="telephony", amount_nano=nano, currency=currency),)


class PlivoSource:
    """`/webhooks/plivo`: verifies Signature V3 with the account's auth token."""

    name: ClassVar[str] = "plivo"
    secret_variable: ClassVar[str] = "LEDGER_PLIVO_AUTH_TOKEN"
    methods: ClassVar[frozenset[str]] = frozenset({"POST", "GET"})

    def __init__(self, auth_token: str, currency: str) -> None:
        self._key = auth_token.encode("utf-8")
        self._currency = currency

    @classmethod
    def from_settings(cls, settings: Settings) -> "PlivoSource | None":
        """None when no auth token is configured."""
        secret = settings.plivo_auth_token
        if secret is None or not secret.get_secret_value().strip():
            return None
        return cls(secret.get_secret_value().strip(), settings.plivo_currency)

    def verify(self, request: WebhookRequest) -> None:
        """Accept if any listed signature matches the URL, parameters and nonce."""
        signatures = request.headers.get(SIGNATURE_HEADER, "").strip()
        nonce = request.headers.get(NONCE_HEADER, "").strip()
        if not signatures:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        if not nonce:
            raise SignatureInvalid(f"missing {NONCE_HEADER} header")
        form = [] if request.method == "GET" else request.form
        signed = f"{signature_base(request.method, request.url, form)}.{nonce}"
        mac = hmac.new(self._key, signed.encode("utf-8", "surrogateescape"), hashlib.sha256)
        expected = base64.b64encode(mac.digest())
        matched = False
        for candidate in signatures.split(","):
            matched |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "surrogateescape"))
        if not matched:
            raise SignatureInvalid("signature does not match the URL, parameters and nonce")

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The callback's facts; None for callbacks (AMD, recording) the ledger does not use."""
        pairs = request.query if request.method == "GET" else request.form
        fields = read_fields(pairs, READ_FIELDS)
        event = fields.get("Event", "").strip()
        if event in IGNORED_EVENTS:
            return None
        if not fields.get("CallStatus") and any(fields.get(f) for f in OTHER_CALLBACK_FIELDS):
            return None
        call_uuid = required(fields, "CallUUID")
        call_status = required(fields, "CallStatus")
        status = STATUSES.get(call_status)
        if status is None:
            raise InvalidEvent(f"CallStatus {call_status[:40]!r} is not a Plivo call status")
        instant = occurred_at(fields, event, status, request.received_at)
        # The hang-up says when the call started and was answered: with only hangup_url set,
        # or ring/answer callbacks arriving late, that is the only true start of the call.
        started = reported_instant(fields, "StartTime")
        answered = reported_instant(fields, "AnswerTime")
        return CallEvent(
            source=self.name,
            event_id=f"{call_uuid}:{event}:{call_status}",
            call_sid=call_uuid,
            type=f"{event or 'callback'}.{call_status}",
            occurred_at=instant.text,
            occurred_us=instant.us,
            status=status,  # type: ignore[arg-type]
            direction=DIRECTIONS.get(fields.get("Direction", "").strip()),  # type: ignore[arg-type]
            from_number=to_e164(fields.get("From")),
            to_number=to_e164(fields.get("To")),
            duration=whole_seconds(fields, "Duration"),
            costs=telephony_costs(fields, self._currency),
            started_at=started.text if started else None,
            started_us=started.us if started else None,
            answered_at=answered.text if answered else None,
            answered_us=answered.us if answered else None,
        )
