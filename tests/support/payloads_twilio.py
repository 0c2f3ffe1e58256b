"""Realistic Twilio voice status callbacks, and a signer built on Twilio's own SDK.

Field sets follow Twilio's status-callback reference (call-progress events with
geographic fields, `SequenceNumber`, RFC 2822 `Timestamp`). Parameters are ordered
(name, value) lists, as they appear in the form body. Shared by the source unit tests
and any end-to-end test that posts a whole call over HTTP: `whole_call()` gives the
requests in the order Twilio fires them plus a `TwilioSigner` whose `token` is what
`LEDGER_TWILIO_AUTH_TOKEN` must hold.

Signatures come from `twilio.request_validator.RequestValidator`, never from the code
under test.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from multidict import MultiDict
from twilio.request_validator import RequestValidator

AUTH_TOKEN = "9f3c1a7be2d84c06a51e8d2f7b3c9e41"  # 32 hex digits, like a real auth token
ACCOUNT_SID = "AC3f1e2d3c4b5a69788796a5b4c3d2e1f0"
CALL_SID = "CA5b2f0e6a9c1d4e8f7a3b2c1d0e9f8a7b"
PARENT_CALL_SID = "CA0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b"
OUR_NUMBER = "+15551234567"  # the Twilio number the assistant answers and calls from
CUSTOMER = "+15559876543"
PATH = "/webhooks/twilio"
PUBLIC_URL = "https://ledger.example.com"
SHA256_SETTINGS = "key=webhooks_sharedkey_5e1f2a3b,algorithm=HMAC_SHA256"

Params = list[tuple[str, str]]

# Twilio writes the day unpadded when it is below 10; the first of December shows it.
TIMESTAMPS = {
    "queued": "Tue, 24 Nov 2026 10:00:00 +0000",
    "initiated": "Tue, 24 Nov 2026 10:00:00 +0000",
    "ringing": "Tue, 24 Nov 2026 10:00:01 +0000",
    "in-progress": "Tue, 24 Nov 2026 10:00:06 +0000",
    "completed": "Tue, 24 Nov 2026 10:05:06 +0000",
    "busy": "Tue, 24 Nov 2026 10:00:09 +0000",
    "no-answer": "Tue, 24 Nov 2026 10:00:31 +0000",
    "canceled": "Tue, 24 Nov 2026 10:00:12 +0000",
    "failed": "Tue, 1 Dec 2026 08:15:02 +0000",
}
SEQUENCE = {"queued": 0, "initiated": 0, "ringing": 1, "in-progress": 2}
SIP_RESPONSE = {"completed": "200", "busy": "486", "no-answer": "487", "canceled": "487", "failed": "404"}


def _geography(prefix: str, number: str) -> Params:
    if number == OUR_NUMBER:
        city, state, zip_code, country = "SAN FRANCISCO", "CA", "94105", "US"
    else:
        city, state, zip_code, country = "MONTRÉAL", "QC", "", "CA"
    return [(f"{prefix}City", city), (f"{prefix}Country", country), (f"{prefix}State", state),
            (f"{prefix}Zip", zip_code)]


def status_callback(status: str, *, direction: str = "outbound-api", call_sid: str = CALL_SID,
                    sequence: int | None = None, timestamp: str | None = None,
                    extra: Iterable[tuple[str, str]] = ()) -> Params:
    """One status callback, as the form body lists it."""
    caller, callee = (CUSTOMER, OUR_NUMBER) if direction == "inbound" else (OUR_NUMBER, CUSTOMER)
    params: Params = [
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", status),
        ("Called", callee), *_geography("Called", callee),
        ("Caller", caller), *_geography("Caller", caller),
        ("Direction", direction),
        ("From", caller), *_geography("From", caller),
        ("To", callee), *_geography("To", callee),
        ("CallbackSource", "call-progress-events"),
        ("Timestamp", timestamp or TIMESTAMPS[status]),
    ]
    if direction == "outbound-dial":
        params.append(("ParentCallSid", PARENT_CALL_SID))
    if sequence is not None:
        params.append(("SequenceNumber", str(sequence)))
    if status in SIP_RESPONSE:
        params.append(("SipResponseCode", SIP_RESPONSE[status]))
    return params + list(extra)


def lifecycle(status: str, **kw) -> Params:
    """Non-terminal events carry a sequence number; `ended` covers the terminal ones."""
    return status_callback(status, sequence=SEQUENCE[status], **kw)


def ended(status: str, call_duration: str = "0", billed_minutes: str = "0", sequence: int | None = 3,
          **kw) -> Params:
    """A terminal callback: CallDuration (seconds connected) and Duration (billed minutes)."""
    extra = [("CallDuration", call_duration), ("Duration", billed_minutes)]
    return status_callback(status, sequence=sequence, extra=extra, **kw)


def completed(**kw) -> Params:
    return ended("completed", call_duration="300", billed_minutes="5", **kw)


def recording_status(call_sid: str = CALL_SID) -> Params:
    """A recording-status callback (another feature) sent to the same URL."""
    return [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", call_sid),
        ("RecordingSid", "RE557ce644e5ab84fa21cc21112e22c485"),
        ("RecordingUrl", f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE557ce644e5"),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "297"),
        ("RecordingChannels", "1"),
        ("RecordingStartTime", "Tue, 24 Nov 2026 10:00:07 +0000"),
        ("RecordingSource", "RecordVerb"),
        ("RecordingTrack", "both"),
    ]


@dataclass(frozen=True)
class SignedRequest:
    method: str
    url: str  # what Twilio requested (for a GET, the parameters are in its query)
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class TwilioSigner:
    """Stands in for Twilio: signs with `RequestValidator` from the official SDK."""

    token: str = AUTH_TOKEN

    def signature(self, url: str, params: Iterable[tuple[str, str]] = (),
                  algorithm: str | None = None) -> str:
        """`X-Twilio-Signature` for a request to `url` with these POST parameters (none for a GET)."""
        return RequestValidator(self.token).compute_signature(url, MultiDict(params), algorithm)

    def sign(self, method: str, url: str, params: Params, *, algorithm: str | None = None) -> SignedRequest:
        """The request Twilio sends: a form POST, or a GET with the parameters in the query."""
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if algorithm:
            headers["X-Twilio-Webhooks-Signature-Settings"] = SHA256_SETTINGS
        if method == "GET":
            url = f"{url}?{urlencode(params)}"
            headers["X-Twilio-Signature"] = self.signature(url, [], algorithm)
            return SignedRequest(method, url, headers, b"")
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["X-Twilio-Signature"] = self.signature(url, params, algorithm)
        return SignedRequest(method, url, headers, urlencode(params).encode("utf-8"))


@dataclass(frozen=True)
class TwilioCall:
    signer: TwilioSigner
    call_sid: str
    requests: list[tuple[str, str, Params]]  # (method, path, params), in the order Twilio fires them


def whole_call(direction: str = "outbound-api", call_sid: str = CALL_SID, method: str = "POST",
               signer: TwilioSigner | None = None) -> TwilioCall:
    """One answered call: initiated, ringing, in-progress, completed (300 s connected).

    Sign each with `signer.sign(method, PUBLIC_URL + path, params)`.
    """
    events = [
        lifecycle("initiated", direction=direction, call_sid=call_sid),
        lifecycle("ringing", direction=direction, call_sid=call_sid),
        lifecycle("in-progress", direction=direction, call_sid=call_sid),
        completed(direction=direction, call_sid=call_sid),
    ]
    return TwilioCall(signer or TwilioSigner(), call_sid, [(method, PATH, params) for params in events])
