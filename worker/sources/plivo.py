"""Plivo ring / answer / hangup callbacks: Signature V3 form parameters → `CallEvent`.

Signature V3 is base64(HMAC-SHA256(auth token, base + "." + nonce)), mirroring the SDK's
`plivo.utils.signature_v3` (not imported: the service does not depend on Plivo's SDK):

- POST with form parameters: `scheme://host[:port]/path` + `?` + the URL's own query as
  sorted `k=v&…` (a bare `?` when there is none) + `.` if that query is non-empty + every
  POST parameter as `name + value`, sorted by name (a repeated name: each value, sorted);
- GET, or a POST without parameters: the URL without its query, then `?` + the URL's query
  as sorted `k=v&…` when it has one.

Values are decoded, not percent-encoded. The URL is `LEDGER_PUBLIC_URL` + the path and
query (never the Host header), signed exactly as called: no default port variants (the
SDK tries none). `X-Plivo-Signature-V3` may list several signatures
(comma-separated, e.g. during a token rotation): one match is enough. The signature covers
decoded parameters, so a body that is not UTF-8 form data is `MalformedBody` (400).

Names and values are concatenated without a separator (and a GET's `k=v&` text can be
re-split through encoded `&`/`=`), so one signature also verifies the same text split
differently. `verify` therefore returns the `SignatureUse` intake remembers
(`call_ledger.core.replay`), and every field the ledger reads has an exact format, refused with 422
otherwise: `CallUUID` a lowercase UUID (as Plivo writes it: another case would be another
call record), `Event` and `CallStatus` and `Direction` from the known sets, numbers digits
(optionally `+`) or `sip:`, times `YYYY-MM-DD HH:MM:SS`, durations digits, `TotalCost` a
plain decimal.

`occurred_at`: Plivo sends no event time as such. A hangup (`Event=Hangup` or a terminal
status) takes `EndTime`; an answered call `AnswerTime`, else `StartTime`; a ringing call
`StartTime`. These are `YYYY-MM-DD HH:MM:SS`, read as UTC unless they carry an offset
(`+05:30`); blank or absent, the time intake received the request stands in; anything else
is 422 (a silently skipped time is what a re-split would aim for). `TotalCost` is a charge
in `LEDGER_PLIVO_CURRENCY`.
"""

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import ClassVar
from urllib.parse import urlparse, urlunparse

from call_ledger.core.errors import InvalidEvent, SignatureInvalid
from call_ledger.core.events import TERMINAL_STATUSES, CallEvent, Cost
from call_ledger.core.instants import Instant, from_unix, parse_iso
from call_ledger.core.money import parse_amount
from call_ledger.core.phones import to_e164
from call_ledger.core.replay import SignatureUse, signature_use
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.fields import decode_form, read_fields, required, whole_seconds
from call_ledger.worker.sources.formats import DECIMAL, DIGITS, SIP, checked, moved_boundary, one_of

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
# Plivo's documented `Event` values (XML request "Event" reference, plus the hang-up's and
# ring URL's own); ring callbacks may carry none.
EVENTS = frozenset({"Hangup", "StartApp", "Redirect", "Transfer", "Ring", "MachineDetection"})
# An answering-machine verdict says who picked up, not where the call stands.
IGNORED_EVENTS = frozenset({"MachineDetection"})
# Recording callbacks pointed at this route carry a CallUUID but no CallStatus: dropped, not a 422.
OTHER_CALLBACK_FIELDS = ("RecordingID", "RecordUrl")
READ_FIELDS = frozenset({"CallUUID", "CallStatus", "Event", "Direction", "From", "To", "Duration", "BillDuration",
                         "TotalCost", "StartTime", "AnswerTime", "EndTime", *OTHER_CALLBACK_FIELDS})
# The fields that make an event's id and time (see formats.py). Their sorted predecessors
# are fields with exact formats (EndTime or Direction before Event, Duration before EndTime),
# so only a cut inside their own pair needs looking for.
GUARDED_FIELDS = ("CallUUID", "CallStatus", "Event", "StartTime", "AnswerTime", "EndTime")

CALL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ADDRESS = re.compile(rf"\+?[0-9]{{1,15}}|{SIP.pattern}")
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:[+-][0-9]{2}:?[0-9]{2})?")


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


def reported_instant(fields: dict[str, str], name: str) -> Instant | None:
    """A time field of the callback: None when absent or blank, InvalidEvent when unreadable."""
    value = checked(fields, name, TIME, "a time as YYYY-MM-DD HH:MM:SS")
    if value is None:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise InvalidEvent(f"{name} is not a valid date and time") from None


def occurred_at(fields: dict[str, str], event: str, status: str, received_at: float) -> Instant:
    """The callback's own time for its kind of event, else the time intake received it."""
    if event == "Hangup" or status in TERMINAL_STATUSES:
        names: tuple[str, ...] = ("EndTime",)
    elif status == "ongoing":
        names = ("AnswerTime", "StartTime")
    else:
        names = ("StartTime",)
    for name in names:
        instant = reported_instant(fields, name)
        if instant is not None:
            return instant
    return from_unix(received_at)


def check_formats(fields: dict[str, str]) -> None:
    """Every field the ledger reads, exactly as Plivo writes it (InvalidEvent otherwise)."""
    checked(fields, "CallUUID", CALL_UUID, "a lowercase UUID", blank_is_absent=False)
    one_of(fields, "Event", EVENTS)
    one_of(fields, "Direction", DIRECTIONS)
    for name in ("From", "To"):
        checked(fields, name, ADDRESS, "digits (optionally after +) or a sip: address")
    for name in ("Duration", "BillDuration"):
        checked(fields, name, DIGITS, "a non-negative whole number of seconds")
    checked(fields, "TotalCost", DECIMAL, "a plain decimal number")
    for name in ("StartTime", "AnswerTime", "EndTime"):
        reported_instant(fields, name)


def telephony_costs(fields: dict[str, str], currency: str) -> tuple[Cost, ...]:
    """`TotalCost` as one telephony charge; none when Plivo did not send it."""
    value = fields.get("TotalCost", "")
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
        """None when no auth token is configured; ValueError when LEDGER_PUBLIC_URL is missing."""
        secret = settings.plivo_auth_token
        if secret is None or not secret.get_secret_value().strip():
            return None
        if settings.public_url is None:
            raise ValueError("LEDGER_PUBLIC_URL must be set when LEDGER_PLIVO_AUTH_TOKEN is: Plivo signs the "
                             "URL it called, and the Host header is not trusted to say what that was")
        return cls(secret.get_secret_value().strip(), settings.plivo_currency)

    def verify(self, request: WebhookRequest) -> SignatureUse:
        """Accept if any listed signature matches the URL, parameters and nonce.

        Returns the signature that matched (the MAC, whichever entry of the header carried
        it) with the parameters it covered, for intake to refuse it with other parameters.
        """
        signatures = request.headers.get(SIGNATURE_HEADER, "").strip()
        nonce = request.headers.get(NONCE_HEADER, "").strip()
        if not signatures:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        if not nonce:
            raise SignatureInvalid(f"missing {NONCE_HEADER} header")
        form = [] if request.method == "GET" else request.form
        signed = f"{signature_base(request.method, request.url, form)}.{nonce}"
        mac = hmac.new(self._key, signed.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        expected = base64.b64encode(mac)
        matched = False
        for candidate in signatures.split(","):
            matched |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "surrogateescape"))
        if not matched:
            raise SignatureInvalid("signature does not match the URL, parameters and nonce")
        return signature_use(self.name, mac, request.method, request.query, form)

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The callback's facts; None for callbacks (AMD, recording) the ledger does not use."""
        pairs = request.query if request.method == "GET" else request.form
        fields = read_fields(pairs, READ_FIELDS)
        moved_boundary(pairs, GUARDED_FIELDS)
        event = fields.get("Event", "")
        if event in IGNORED_EVENTS:
            return None
        if not fields.get("CallStatus") and any(fields.get(f) for f in OTHER_CALLBACK_FIELDS):
            return None
        call_uuid = required(fields, "CallUUID")
        call_status = required(fields, "CallStatus")
        status = STATUSES.get(call_status)
        if status is None:
            raise InvalidEvent("CallStatus is not a Plivo call status")  # never echoed: it may hold anything
        check_formats(fields)
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
            direction=DIRECTIONS.get(fields.get("Direction", "")),  # type: ignore[arg-type]
            from_number=to_e164(fields.get("From")),
            to_number=to_e164(fields.get("To")),
            duration=whole_seconds(fields, "Duration"),
            costs=telephony_costs(fields, self._currency),
            started_at=started.text if started else None,
            started_us=started.us if started else None,
            answered_at=answered.text if answered else None,
            answered_us=answered.us if answered else None,
        )
