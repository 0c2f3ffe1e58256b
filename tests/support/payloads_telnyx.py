"""Realistic Telnyx Call Control webhook bodies, and a key pair to sign them.

Field sets follow Telnyx's webhook samples and its SDK's event models. Shared by the
source unit tests and any end-to-end test that posts a whole call over HTTP:
`whole_call()` gives the bodies in the order Telnyx sends them plus a `TelnyxSigner`
whose `public_key_b64` is what `LEDGER_TELNYX_PUBLIC_KEY` must hold.

Signing here uses `cryptography` directly from the documented recipe
(`f"{timestamp}|"` + raw body), independent of the code under test.
"""

import base64
import json
import re
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CALL_CONTROL_ID = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
CALL_LEG_ID = "428c31b6-7af4-4bcb-b7f5-5013ef9657c1"
CALL_SESSION_ID = "428c31b6-abf3-3bc1-b7f4-5013ef9657c1"
CONNECTION_ID = "1684641123236054244"
CLIENT_STATE = "YXNzaXN0YW50LTEy"  # base64("assistant-12")
CUSTOMER = "+15559876543"
OUR_NUMBER = "+15551234567"
DELIVERED_TO = "https://ledger.example.com/webhooks/telnyx"


@dataclass(frozen=True)
class TelnyxSigner:
    """An Ed25519 key pair standing in for Telnyx's signing key."""

    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        """The headers Telnyx sends with `body` signed at `timestamp` (unix seconds)."""
        signature = self.private_key.sign(f"{timestamp}|".encode() + body)
        return {
            "Content-Type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(signature).decode("ascii"),
            "telnyx-timestamp": str(timestamp),
        }


def envelope(event_type: str, payload: dict, *, event_id: str, occurred_at: str, attempt: int = 1) -> dict:
    return {
        "data": {
            "event_type": event_type,
            "id": event_id,
            "occurred_at": occurred_at,
            "payload": payload,
            "record_type": "event",
        },
        "meta": {"attempt": attempt, "delivered_to": DELIVERED_TO},
    }


def _call_payload(direction: str, call_control_id: str) -> dict:
    caller, callee = (CUSTOMER, OUR_NUMBER) if direction == "incoming" else (OUR_NUMBER, CUSTOMER)
    return {
        "call_control_id": call_control_id,
        "call_leg_id": CALL_LEG_ID,
        "call_session_id": CALL_SESSION_ID,
        "client_state": CLIENT_STATE,
        "connection_id": CONNECTION_ID,
        "from": caller,
        "to": callee,
        "start_time": "2026-11-24T10:00:00.104566Z",
        "tags": ["voice-ai"],
    }


def initiated(direction: str = "incoming", call_control_id: str = CALL_CONTROL_ID,
              event_id: str = "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
              occurred_at: str = "2026-11-24T10:00:00.521992Z") -> dict:
    payload = _call_payload(direction, call_control_id) | {
        "direction": direction,
        "state": "parked" if direction == "incoming" else "bridging",
        "caller_id_name": "Jane Doe",
        "call_screening_result": "not_spam",
        "connection_codecs": "G722,PCMU,PCMA,G729,OPUS,VP8,H264",
        "offered_codecs": "PCMU,PCMA",
        "shaken_stir_attestation": "A",
        "shaken_stir_validated": True,
        "custom_headers": [],
        "sip_headers": [],
    }
    return envelope("call.initiated", payload, event_id=event_id, occurred_at=occurred_at)


def answered(direction: str = "incoming", call_control_id: str = CALL_CONTROL_ID,
             event_id: str = "1d2b6a1e-8d4f-4b1a-9a7c-2f9e3c4d5b60",
             occurred_at: str = "2026-11-24T10:00:03.250000Z") -> dict:
    payload = _call_payload(direction, call_control_id) | {"state": "answered", "custom_headers": []}
    return envelope("call.answered", payload, event_id=event_id, occurred_at=occurred_at)


def hangup(cause: str = "normal_clearing", direction: str = "incoming",
           call_control_id: str = CALL_CONTROL_ID,
           event_id: str = "2e3c7b2f-9e50-4c2b-8b8d-3a0f4d5e6c71",
           occurred_at: str = "2026-11-24T10:05:03.998877Z") -> dict:
    payload = _call_payload(direction, call_control_id) | {
        "hangup_cause": cause,
        "hangup_source": "caller",
        "sip_hangup_cause": "16" if cause == "normal_clearing" else "unspecified",
        "state": "hangup",
        "call_quality_stats": {
            "inbound": {"jitter_max_variance": "2.31", "jitter_packet_count": "15012", "mos": "4.49",
                        "packet_count": "15088", "skip_packet_count": "4"},
            "outbound": {"packet_count": "15060", "skip_packet_count": "0"},
        },
        "sip_headers": [],
    }
    return envelope("call.hangup", payload, event_id=event_id, occurred_at=occurred_at)


COST_PARTS = [
    {"billed_duration_secs": 360, "call_part": "call-control", "cost": "0.012", "currency": "USD",
     "rate": "0.002"},
    {"billed_duration_secs": 360, "call_part": "sip-trunking", "cost": "0.0210", "currency": "USD",
     "rate": "0.0035"},
]


def cost(total_cost: str | None = "0.0330", cost_parts: list[dict] | None = None,
         call_control_id: str = CALL_CONTROL_ID,
         event_id: str = "3f4d8c30-af61-4d3c-9c9e-4b1f5e6f7d82",
         occurred_at: str = "2026-11-24T10:05:09.001234Z", status: str = "success") -> dict:
    payload = {
        "billed_duration_secs": 360,
        "billing_group_id": "0d3c0b6e-4b43-4a1a-8e8f-5b2d6f7a8b93",
        "call_control_id": call_control_id,
        "call_leg_id": CALL_LEG_ID,
        "call_session_id": CALL_SESSION_ID,
        "client_state": CLIENT_STATE,
        "connection_id": CONNECTION_ID,
        "cost_parts": COST_PARTS if cost_parts is None else cost_parts,
        "occurred_at": occurred_at,
        "status": status,
        "total_cost": total_cost,
    }
    return envelope("call.cost", payload, event_id=event_id, occurred_at=occurred_at)


def speak_ended(call_control_id: str = CALL_CONTROL_ID,
                event_id: str = "4a5e9d41-b072-4e4d-8daf-5c2a6f7a8e93",
                occurred_at: str = "2026-11-24T10:00:09.112233Z") -> dict:
    payload = {"call_control_id": call_control_id, "call_leg_id": CALL_LEG_ID,
               "call_session_id": CALL_SESSION_ID, "client_state": CLIENT_STATE,
               "connection_id": CONNECTION_ID, "status": "completed"}
    return envelope("call.speak.ended", payload, event_id=event_id, occurred_at=occurred_at)


_AMOUNT = re.compile(r'"(cost|total_cost|rate)": "(-?\d+(?:\.\d+)?)"')


def encode(doc: dict, *, numeric_amounts: bool = False) -> bytes:
    """The body as Telnyx sends it; `numeric_amounts` writes amounts as JSON numbers (older samples)."""
    text = json.dumps(doc)
    if numeric_amounts:
        text = _AMOUNT.sub(r'"\1": \2', text)
    return text.encode("utf-8")


@dataclass(frozen=True)
class TelnyxCall:
    signer: TelnyxSigner
    call_sid: str
    bodies: list[bytes]


def whole_call(direction: str = "incoming", cause: str = "normal_clearing",
               call_control_id: str = CALL_CONTROL_ID, signer: TelnyxSigner | None = None) -> TelnyxCall:
    """One answered call in Telnyx's order: initiated, answered, speak.ended (ignored), hangup, cost.

    Event ids derive from the call id, so several calls can be posted side by side.
    """
    def event_id(kind: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"telnyx/{call_control_id}/{kind}"))

    docs = [
        initiated(direction, call_control_id, event_id=event_id("initiated")),
        answered(direction, call_control_id, event_id=event_id("answered")),
        speak_ended(call_control_id, event_id=event_id("speak.ended")),
        hangup(cause, direction, call_control_id, event_id=event_id("hangup")),
        cost(call_control_id=call_control_id, event_id=event_id("cost")),
    ]
    return TelnyxCall(signer or TelnyxSigner(), call_control_id, [encode(doc) for doc in docs])
