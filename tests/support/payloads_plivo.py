"""Realistic Plivo ring / answer / hangup callbacks, and a signer built on Plivo's SDK.

Field sets follow Plivo's XML-request and hangup-URL references (numbers as bare digits,
`YYYY-MM-DD HH:MM:SS` times, `TotalCost` as a decimal string). Parameters are ordered
(name, value) lists, as they appear in the form body. Shared by the source unit tests
and any end-to-end test that posts a whole call over HTTP: `whole_call()` gives the
requests in the order Plivo sends them plus a `PlivoSigner` whose `token` is what
`LEDGER_PLIVO_AUTH_TOKEN` must hold.

Signatures come from `plivo.utils.signature_v3` (the helpers its own
`validate_v3_signature` uses), never from the code under test.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

AUTH_TOKEN = "ZWYzNjM1NjA5ZDU4YzU2ZmE2OGY4ZjhmNDg4MjA0"  # 40 characters, like a real auth token
CALL_UUID = "2b1f6c1e-8a3d-4f5e-9c7b-6d2e1f0a9b8c"
A_LEG_REQUEST_UUID = "7d9e3f2a-1b4c-4d5e-8f6a-0b1c2d3e4f5a"
OUR_NUMBER = "14155551234"  # the Plivo number, bare digits as Plivo writes them
CUSTOMER = "447700900123"
PATH = "/webhooks/plivo"
PUBLIC_URL = "https://ledger.example.com"
NONCE = "05429567804466091622"

Params = list[tuple[str, str]]

START, ANSWER, END = "2026-11-24 10:00:00", "2026-11-24 10:00:05", "2026-11-24 10:04:52"


def callback(status: str, *, event: str | None = None, direction: str = "outbound",
             call_uuid: str = CALL_UUID, extra: Iterable[tuple[str, str]] = ()) -> Params:
    """The parameters Plivo sends with every call callback, then `extra`."""
    caller, callee = (CUSTOMER, OUR_NUMBER) if direction == "inbound" else (OUR_NUMBER, CUSTOMER)
    params: Params = [
        ("CallUUID", call_uuid),
        ("CallStatus", status),
        ("CallerName", "JANE DOE" if direction == "inbound" else f"+{caller}"),
        ("Direction", direction),
        ("From", caller),
        ("To", callee),
        ("RequestUUID", call_uuid),
        ("SessionStart", f"{START}.104566"),
    ]
    if direction == "outbound":
        params += [("ALegUUID", call_uuid), ("ALegRequestUUID", A_LEG_REQUEST_UUID), ("STIRAttestation", "A")]
    else:
        params.append(("STIRVerification", "Verified"))
    if event:
        params.append(("Event", event))
    return params + list(extra)


def ringing(**kw) -> Params:
    """What `ring_url` receives (no Event)."""
    return callback("ringing", **kw)


def answered(**kw) -> Params:
    """What `answer_url` receives once the call is answered."""
    return callback("in-progress", event="StartApp", **kw)


def hangup(status: str = "completed", *, cause: str = "NORMAL_CLEARING", cause_code: str = "4000",
           cause_name: str = "Normal Hangup", source: str = "Callee", duration: str = "287",
           bill_duration: str = "300", total_cost: str | None = "0.04250", answered_at: str | None = ANSWER,
           end: str = END, **kw) -> Params:
    """What `hangup_url` receives: the call's outcome, durations and price."""
    extra: Params = [
        ("HangupCause", cause),
        ("HangupCauseCode", cause_code),
        ("HangupCauseName", cause_name),
        ("HangupSource", source),
        ("Duration", duration),
        ("BillDuration", bill_duration),
        ("BillRate", "0.00850"),
        ("StartTime", START),
        ("EndTime", end),
    ]
    if answered_at:
        extra.append(("AnswerTime", answered_at))
    if total_cost is not None:
        extra.append(("TotalCost", total_cost))
    return callback(status, event="Hangup", extra=extra, **kw)


def unanswered(status: str, cause: str, cause_code: str, cause_name: str, *, end: str, **kw) -> Params:
    """busy, timeout, no-answer, failed, cancel: never connected, nothing billed."""
    return hangup(status, cause=cause, cause_code=cause_code, cause_name=cause_name, duration="0",
                  bill_duration="0", total_cost="0.00000", answered_at=None, end=end, **kw)


def busy(**kw) -> Params:
    return unanswered("busy", "USER_BUSY", "3010", "Busy Line", end="2026-11-24 10:00:09", **kw)


def timeout(**kw) -> Params:
    return unanswered("timeout", "RECOVERY_ON_TIMER_EXPIRE", "3040", "Ring Timeout Reached",
                      end="2026-11-24 10:00:45", **kw)


def no_answer(**kw) -> Params:
    return unanswered("no-answer", "NO_ANSWER", "3020", "No Answer", end="2026-11-24 10:00:31", **kw)


def failed(**kw) -> Params:
    return unanswered("failed", "UNALLOCATED_NUMBER", "3030", "Invalid Destination Address",
                      end="2026-11-24 10:00:02", **kw)


def canceled(direction: str = "inbound", **kw) -> Params:
    """The caller hung up before the call was answered."""
    return unanswered("cancel", "ORIGINATOR_CANCEL", "1010", "Cancelled", source="Caller",
                      end="2026-11-24 10:00:12", direction=direction, **kw)


def machine_detection(**kw) -> Params:
    """The asynchronous answering-machine verdict sent to `machine_detection_url`."""
    return callback("in-progress", event="MachineDetection", extra=[("Machine", "true")], **kw)


def _sdk_params(params: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Form pairs as the SDK takes them: one value per name, a list for a repeated name."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}


@dataclass(frozen=True)
class SignedRequest:
    method: str
    url: str  # what Plivo requested (for a GET, the parameters are in its query)
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class PlivoSigner:
    """Stands in for Plivo: signs with the official SDK's Signature V3 helpers."""

    token: str = AUTH_TOKEN

    def signature(self, method: str, url: str, params: Iterable[tuple[str, str]] = (),
                  nonce: str = NONCE) -> str:
        """`X-Plivo-Signature-V3` for a request to `url` (its query included) with these POST parameters."""
        if method == "GET":
            base = construct_get_url(url, {})
        else:
            base = construct_post_url(url, _sdk_params(params))
        return get_signature_v3(self.token.encode(), base.decode("utf-8"), nonce.encode()).decode("ascii")

    def sign(self, method: str, url: str, params: Params, *, nonce: str = NONCE) -> SignedRequest:
        """The request Plivo sends: a form POST, or a GET with the parameters in the query."""
        headers = {"User-Agent": "PlivoHttpClient/1.0", "X-Plivo-Signature-V3-Nonce": nonce}
        if method == "GET":
            url = f"{url}?{urlencode(params)}"
            headers["X-Plivo-Signature-V3"] = self.signature("GET", url, nonce=nonce)
            return SignedRequest(method, url, headers, b"")
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["X-Plivo-Signature-V3"] = self.signature(method, url, params, nonce)
        return SignedRequest(method, url, headers, urlencode(params).encode("utf-8"))


@dataclass(frozen=True)
class PlivoCall:
    signer: PlivoSigner
    call_sid: str
    requests: list[tuple[str, str, Params]]  # (method, path, params), in the order Plivo sends them


def whole_call(direction: str = "outbound", call_uuid: str = CALL_UUID, method: str = "POST",
               signer: PlivoSigner | None = None) -> PlivoCall:
    """One answered call: ringing, answered (StartApp), machine detection (ignored), hangup with cost.

    Sign each with `signer.sign(method, PUBLIC_URL + path, params)`.
    """
    events = [
        ringing(direction=direction, call_uuid=call_uuid),
        answered(direction=direction, call_uuid=call_uuid),
        machine_detection(direction=direction, call_uuid=call_uuid),
        hangup(direction=direction, call_uuid=call_uuid),
    ]
    return PlivoCall(signer or PlivoSigner(), call_uuid, [(method, PATH, params) for params in events])
