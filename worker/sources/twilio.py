"""Twilio voice status callbacks: HMAC-signed form parameters → `CallEvent`.

Twilio signs the URL it called plus, for a POST, every form parameter as `name + value`
sorted by name (a repeated name contributes each distinct value, sorted: what the SDK's
`RequestValidator` does), keyed with the account's auth token. The HMAC is SHA-1 unless
`LEDGER_TWILIO_SIGNATURE_ALGORITHM=sha256`: the `X-Twilio-Webhooks-Signature-Settings`
header is not signed, so letting it pick the algorithm would let anyone choose. The URL is
`LEDGER_PUBLIC_URL` + the path and query (never the Host header); Twilio is inconsistent
about default ports, so, like its SDK, it is tried as given, with `:443`/`:80` added and
with it removed. The signature covers decoded parameters, so a POST body that is not UTF-8
form data has no signature to check: `MalformedBody` (400).

Names and values are concatenated without a separator, so one signature also verifies the
same text split differently. `verify` therefore returns the `SignatureUse` that intake
remembers (`call_ledger.core.replay`), and every field the ledger reads has an exact format
(`CallSid` is `CA` + 32 lowercase hex, as Twilio writes it: another case would be another
call record), refused with 422 otherwise.

Twilio numbers its events (`SequenceNumber`); the event id is `CallSid:SequenceNumber`,
or `CallSid:CallStatus` for the lone terminal callback sent without one. `occurred_at` is
the callback's `Timestamp` (RFC 2822 exactly as Twilio writes it); when it is absent, the
time intake received the request stands in (the same request redelivered is still
deduplicated by its event id). Status callbacks carry no price.
"""

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from call_ledger.core.errors import InvalidEvent, SignatureInvalid
from call_ledger.core.events import CallEvent
from call_ledger.core.instants import Instant, from_unix, parse_rfc2822, utc_instant
from call_ledger.core.phones import to_e164
from call_ledger.core.replay import SignatureUse, signature_use
from call_ledger.settings import Settings
from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.fields import read_fields, required, whole_seconds
from call_ledger.worker.sources.formats import DIGITS, checked, moved_boundary, one_of

SIGNATURE_HEADER = "X-Twilio-Signature"
DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
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
# Elastic SIP Trunking calls: originating = from the PSTN into the trunk, terminating = out to it.
DIRECTIONS = {"inbound": "inbound", "outbound-api": "outbound", "outbound-dial": "outbound",
              "trunking-originating": "inbound", "trunking-terminating": "outbound"}
# Callbacks of other Twilio features (recording, transcription, async AMD) pointed at this
# route carry a CallSid but no CallStatus: acknowledged and dropped, not a 422.
OTHER_CALLBACK_FIELDS = ("RecordingSid", "TranscriptionSid", "AnsweredBy")
READ_FIELDS = frozenset({"CallSid", "AccountSid", "CallStatus", "SequenceNumber", "Timestamp", "Direction", "From",
                         "To", "CallDuration", *OTHER_CALLBACK_FIELDS})
# The fields that make an event's id and time, and those whose sorted predecessor the ledger
# does not read (FromZip before SequenceNumber, SipResponseCode before Timestamp): see formats.py.
GUARDED_FIELDS = ("CallSid", "CallStatus", "SequenceNumber", "Timestamp")
ABSORBABLE_FIELDS = ("SequenceNumber", "Timestamp")

CALL_SID = re.compile(r"CA[0-9a-f]{32}")
ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
# E.164 (which also covers the numbers Twilio substitutes for a withheld caller id, e.g.
# +266696687, "ANONYMOUS" on a keypad), a Twilio Client identity, a SIP URI, or "anonymous".
ADDRESS = re.compile(r"\+[1-9][0-9]{1,14}|client:[A-Za-z0-9_.@+-]{1,256}|sips?:[^\s]{1,500}|[Aa]nonymous")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# `Tue, 1 Dec 2026 08:15:02 +0000`: parsedate_to_datetime alone also takes trailing garbage.
TIMESTAMP = re.compile(rf"({'|'.join(WEEKDAYS)}), ([0-9]{{1,2}}) ({'|'.join(MONTHS)}) ([0-9]{{4}}) "
                       r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})")


def signed_parameters(pairs: Iterable[tuple[str, str]]) -> str:
    """`name + value` for each name sorted, each distinct value sorted (the SDK's rule)."""
    # Sorting the distinct (name, value) pairs is that order: by name, then each name's values.
    return "".join(map("".join, sorted(set(pairs))))


@functools.lru_cache(maxsize=256)  # a service is called on a handful of URLs; urlsplit per request showed
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


def parse_timestamp(value: str) -> Instant:
    """Twilio's RFC 2822 `Timestamp`, exactly as Twilio writes it, weekday matching the date."""
    m = TIMESTAMP.fullmatch(value)
    if not m:
        raise InvalidEvent("Timestamp must be an RFC 2822 date as Twilio writes it (Tue, 1 Dec 2026 08:15:02 +0000)")
    weekday, day, month, year, hour, minute, second, offset = m.groups()
    try:
        date = datetime(int(year), MONTHS.index(month) + 1, int(day))
        if WEEKDAYS[date.weekday()] != weekday:
            raise InvalidEvent("Timestamp's weekday does not match its date")
        if offset == "+0000" and date.year >= 1000:
            # What Twilio writes: the fields are already split out, so the instant is built from
            # them (email.utils' parser was ~4% of a webhook). Other offsets, and the two-digit
            # years parsedate maps to 19xx/20xx, go through it as before (tests compare the two).
            return utc_instant(date.replace(hour=int(hour), minute=int(minute), second=int(second), tzinfo=UTC))
        return parse_rfc2822(value)
    except ValueError:
        raise InvalidEvent("Timestamp is not a valid date and time") from None


def occurred_at(fields: dict[str, str], received_at: float) -> Instant:
    """The callback's `Timestamp`, else the time intake received it."""
    value = fields.get("Timestamp")
    return from_unix(received_at) if value is None else parse_timestamp(value)


def check_formats(fields: dict[str, str]) -> None:
    """Every field the ledger reads, exactly as Twilio writes it (InvalidEvent otherwise)."""
    checked(fields, "CallSid", CALL_SID, "CA followed by 32 lowercase hex digits", blank_is_absent=False)
    checked(fields, "AccountSid", ACCOUNT_SID, "AC followed by 32 lowercase hex digits", blank_is_absent=False)
    checked(fields, "SequenceNumber", DIGITS, "a whole number", blank_is_absent=False)
    one_of(fields, "Direction", DIRECTIONS)
    for name in ("From", "To"):
        checked(fields, name, ADDRESS, "an E.164 number, a client: or sip: address, or anonymous")
    checked(fields, "CallDuration", DIGITS, "a non-negative whole number of seconds")


class TwilioSource:
    """`/webhooks/twilio`: verifies `X-Twilio-Signature` with the account's auth token."""

    name: ClassVar[str] = "twilio"
    secret_variable: ClassVar[str] = "LEDGER_TWILIO_AUTH_TOKEN"
    methods: ClassVar[frozenset[str]] = frozenset({"POST", "GET"})

    def __init__(self, auth_token: str, algorithm: str = "sha1") -> None:
        self._key = auth_token.encode("utf-8")
        self._digest = DIGESTS[algorithm]

    @classmethod
    def from_settings(cls, settings: Settings) -> "TwilioSource | None":
        """None when no auth token is configured; ValueError when LEDGER_PUBLIC_URL is missing."""
        secret = settings.twilio_auth_token
        if secret is None or not secret.get_secret_value().strip():
            return None
        if settings.public_url is None:
            raise ValueError("LEDGER_PUBLIC_URL must be set when LEDGER_TWILIO_AUTH_TOKEN is: Twilio signs the "
                             "URL it called, and the Host header is not trusted to say what that was")
        return cls(secret.get_secret_value().strip(), settings.twilio_signature_algorithm)

    def verify(self, request: WebhookRequest) -> SignatureUse:
        """Check the signature over the URL (and, for a POST, the form parameters).

        Returns the signature that matched with the parameters it covered, for intake to
        refuse the same signature with other parameters.
        """
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        form = [] if request.method == "GET" else request.form
        params = signed_parameters(form)
        given = signature.encode("utf-8", "surrogateescape")
        matched: bytes | None = None
        for url in url_variants(request.url):
            mac = hmac.new(self._key, (url + params).encode("utf-8", "surrogateescape"), self._digest).digest()
            if hmac.compare_digest(base64.b64encode(mac), given) and matched is None:
                matched = mac
        if matched is None:
            raise SignatureInvalid("signature does not match the URL and parameters")
        return signature_use(self.name, matched, request.method, request.query, form)

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The status callback's facts; None for another feature's callback sent here."""
        pairs = request.query if request.method == "GET" else request.form
        fields = read_fields(pairs, READ_FIELDS)
        moved_boundary(pairs, GUARDED_FIELDS, ABSORBABLE_FIELDS)
        if not fields.get("CallStatus") and any(fields.get(f) for f in OTHER_CALLBACK_FIELDS):
            return None
        call_sid = required(fields, "CallSid")
        call_status = required(fields, "CallStatus")
        status = STATUSES.get(call_status)
        if status is None:
            raise InvalidEvent("CallStatus is not a Twilio call status")  # never echoed: it may hold anything
        check_formats(fields)
        sequence = fields.get("SequenceNumber", "")
        instant = occurred_at(fields, request.received_at)
        return CallEvent(
            source=self.name,
            event_id=f"{call_sid}:{sequence or call_status}",
            call_sid=call_sid,
            type=f"status.{call_status}",
            occurred_at=instant.text,
            occurred_us=instant.us,
            status=status,  # type: ignore[arg-type]
            direction=DIRECTIONS.get(fields.get("Direction", "")),  # type: ignore[arg-type]
            from_number=to_e164(fields.get("From")),
            to_number=to_e164(fields.get("To")),
            duration=whole_seconds(fields, "CallDuration"),
        )
