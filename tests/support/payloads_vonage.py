"""Realistic Vonage Voice API event-webhook bodies, and a signer for them.

Field sets follow Vonage's Voice API webhook reference. Shared by the source unit
tests and any end-to-end test that posts a whole call over HTTP: `whole_call()` gives
the bodies in the order Vonage sends them plus a `VonageSigner` whose `secret` is
what `LEDGER_VONAGE_SIGNATURE_SECRET` must hold.

Tokens are signed with PyJWT (`jwt.encode(..., algorithm="HS256")`), independent of
the code under test; the claims are the ones Vonage documents.
"""

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

CALL_UUID = "63f61863-4a51-4f6b-86e1-46edebcf9356"
CONVERSATION_UUID = "CON-f972836a-550f-45fa-956c-12a2ab5b7d22"
OUR_NUMBER = "447700900001"  # the Vonage number, bare digits as Vonage writes them
CUSTOMER = "447700900000"
SECRET = "K3v9qW7xZp2LmN8rT5yB1cD4fG6hJ0sA"  # 32 characters, like a dashboard signature secret
API_KEY = "abcd1234"
APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"


@dataclass(frozen=True)
class VonageSigner:
    """Stands in for Vonage: issues the signed-webhook JWT for a request."""

    secret: str = SECRET
    api_key: str = API_KEY
    application_id: str = APPLICATION_ID

    def token(self, payload: bytes, iat: int, overrides: dict[str, object] | None = None) -> str:
        """The JWT for `payload` issued at `iat`; `overrides` replace claims (None removes one)."""
        claims: dict[str, object] = {
            "iat": iat,
            "jti": str(uuid.uuid4()),
            "iss": "Vonage",
            "payload_hash": hashlib.sha256(payload).hexdigest(),
            "api_key": self.api_key,
            "application_id": self.application_id,
        }
        for name, value in (overrides or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def headers(self, body: bytes, iat: int) -> dict[str, str]:
        """Headers of a POST of `body` (JSON) signed at `iat`."""
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.token(body, iat)}"}

    def get_headers(self, query: list[tuple[str, str]], iat: int) -> dict[str, str]:
        """Headers of a GET: Vonage hashes the query parameters as a compact JSON object, in order."""
        hashed = json.dumps(dict(query), separators=(",", ":")).encode()
        return {"Authorization": f"Bearer {self.token(hashed, iat)}"}


def event(status: str, *, direction: str = "outbound", timestamp: str = "2026-11-24T10:00:00.123Z",
          call_uuid: str = CALL_UUID, **extra: Any) -> dict:
    caller, callee = (OUR_NUMBER, CUSTOMER) if direction == "outbound" else (CUSTOMER, OUR_NUMBER)
    doc: dict[str, object] = {
        "from": caller,
        "to": callee,
        "uuid": call_uuid,
        "conversation_uuid": CONVERSATION_UUID,
        "status": status,
        "direction": direction,
        "timestamp": timestamp,
    }
    doc.update(extra)
    return doc


def started(**kw: Any) -> dict:
    return event("started", **kw)


def ringing(**kw: Any) -> dict:
    return event("ringing", timestamp="2026-11-24T10:00:01.456Z", **kw)


def answered(**kw: Any) -> dict:
    return event("answered", timestamp="2026-11-24T10:00:05.789Z", start_time=None, rate=None,
                 network=None, **kw)


def completed(duration: str = "300", price: str = "0.02250000", **kw: Any) -> dict:
    return event("completed", timestamp="2026-11-24T10:05:06.012Z", start_time="2026-11-24T10:00:05.000Z",
                 end_time="2026-11-24T10:05:05.000Z", duration=duration, rate="0.00450000", price=price,
                 network="GB-FIXED", **kw)


def unsuccessful(status: str, detail: str, **kw: Any) -> dict:
    """busy, cancelled, unanswered, rejected, timeout, failed: the call never connected."""
    return event(status, timestamp="2026-11-24T10:00:31.000Z", detail=detail, **kw)


def record(**kw: Any) -> dict:
    doc = {
        "start_time": "2026-11-24T10:00:06.000Z",
        "recording_url": "https://api.nexmo.com/v1/files/bbbbbbbb-aaaa-cccc-dddd-0123456789ab",
        "size": 29634,
        "recording_uuid": "cccccccc-aaaa-bbbb-dddd-0123456789ab",
        "end_time": "2026-11-24T10:05:05.000Z",
        "conversation_uuid": CONVERSATION_UUID,
        "timestamp": "2026-11-24T10:05:07.345Z",
    }
    return doc | kw


def input_event(**kw: Any) -> dict:
    doc = {
        "from": CUSTOMER,
        "to": OUR_NUMBER,
        "uuid": CALL_UUID,
        "conversation_uuid": CONVERSATION_UUID,
        "timestamp": "2026-11-24T10:00:20.678Z",
        "dtmf": {"digits": "1", "timed_out": False},
        "speech": {"results": []},
    }
    return doc | kw


def human(**kw: Any) -> dict:
    return event("human", timestamp="2026-11-24T10:00:07.001Z", sub_state=None, **kw)


def encode(doc: dict) -> bytes:
    """Compact JSON, as Vonage sends it (and as `payload_hash` is computed over)."""
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def query_params(doc: dict) -> list[tuple[str, str]]:
    """The same event as a GET's query parameters (nulls omitted, values as text)."""
    return [(key, str(value)) for key, value in doc.items()
            if value is not None and not isinstance(value, dict)]


@dataclass(frozen=True)
class VonageCall:
    signer: VonageSigner
    call_sid: str
    bodies: list[bytes]


def whole_call(direction: str = "outbound", call_uuid: str = CALL_UUID,
               signer: VonageSigner | None = None) -> VonageCall:
    """One connected call in Vonage's order.

    started, ringing, answered, human (ignored), completed, record (ignored).
    """
    docs = [
        started(direction=direction, call_uuid=call_uuid),
        ringing(direction=direction, call_uuid=call_uuid),
        answered(direction=direction, call_uuid=call_uuid),
        human(direction=direction, call_uuid=call_uuid),
        completed(direction=direction, call_uuid=call_uuid),
        record(),
    ]
    return VonageCall(signer or VonageSigner(), call_uuid, [encode(doc) for doc in docs])
