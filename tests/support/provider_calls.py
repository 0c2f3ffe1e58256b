"""Whole provider calls as the providers send them, and the service they are sent to.

Each provider's payload module gives a whole call and signs it with the provider's own SDK (or its
documented recipe); a `WholeCall` is the service's settings and those requests in the order the
provider sends them. A `Ledger` is one running service (intake + burst-mode worker + read API) on its
own fake Redis; the `start_ledger` fixture (tests/conftest.py) starts one per call of it."""

import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from yarl import URL

from call_ledger.core.record_ids import counter_of
from call_ledger.worker.consumer import Consumer
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.settings import AUTH
from tests.support.signing import post_platform

# One request a provider (or the platform) sends: given the test client, it posts and returns the response.
Send = Callable[[Any], Awaitable[Any]]

TWILIO_RATES = "twilio:inbound=0.0085,twilio:outbound=0.014"
TELNYX_SIGNER = tx.TelnyxSigner()  # one key pair for the module: the settings must hold its public half


# -- the service under test -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ledger:
    """One running service (intake + worker in burst mode + read API) on its own fake Redis."""

    client: Any
    consumer: Consumer

    async def deliver(self, sends: Sequence[Send]) -> None:
        """Post every request (each must be answered 200), running the worker halfway and at the end."""
        halfway = len(sends) // 2
        for batch in (sends[:halfway], sends[halfway:]):
            stored = 0
            for send in batch:
                response = await send(self.client)
                assert response.status == 200, await response.text()
                stored += (await response.json())["outcome"] == "stored"
            assert await self.consumer.run_burst() == stored

    async def record_body(self, call_sid: str) -> bytes:
        response = await self.client.get(f"/api/v1/calls/sid/{call_sid}", headers=AUTH)
        assert response.status == 200, await response.text()
        return await response.read()

    async def record(self, call_sid: str) -> dict[str, Any]:
        """The record, money as `Decimal` (exact) rather than float, and its (opaque) id as the
        number of the allocation that gave it: `"id": 1` is the first call's."""
        record = json.loads(await self.record_body(call_sid), parse_float=Decimal)
        key = await self.consumer.store.redis.get(self.consumer.store.ids_key)
        record["id"] = counter_of(key, record["id"])
        return record  # type: ignore[no-any-return]

    async def events(self, call_sid: str) -> list[tuple[str, str, str]]:
        """(source, event_id, type) of each event the call's `/events` route lists, in its order."""
        response = await self.client.get(f"/api/v1/calls/sid/{call_sid}/events", headers=AUTH)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["call_sid"] == call_sid
        return [(e["source"], e["event_id"], e["type"]) for e in body["events"]]


StartLedger = Callable[..., Awaitable[Ledger]]


def redelivered_and_shuffled(sends: Sequence[Send], seed: int) -> list[Send]:
    """Every request once, twice or three times (by position), in an order fixed by `seed`."""
    copies = [send for i, send in enumerate(sends) for _ in range(1 + i % 3)]
    random.Random(seed).shuffle(copies)
    return copies


# -- one request per provider ------------------------------------------------------------------------------

def as_sent(signed_url: str, public_url: str) -> URL:
    """The path and query exactly as the provider wrote them: a signed URL's percent-encoding must reach
    the service untouched (`URL(str)` would re-quote `%2C` and `%3A` in a GET's query)."""
    return URL(signed_url.removeprefix(public_url), encoded=True)


async def post_twilio(client: Any, *, signer: tw.TwilioSigner, method: str, path: str,
                      params: tw.Params) -> Any:
    """Twilio signs the public URL it called: LEDGER_PUBLIC_URL must be `tw.PUBLIC_URL`."""
    signed = signer.sign(method, tw.PUBLIC_URL + path, params)
    return await client.request(method, as_sent(signed.url, tw.PUBLIC_URL), headers=signed.headers,
                                data=signed.body)


async def post_plivo(client: Any, *, signer: pl.PlivoSigner, method: str, path: str, params: pl.Params) -> Any:
    """Plivo signs the public URL it called: LEDGER_PUBLIC_URL must be `pl.PUBLIC_URL`."""
    signed = signer.sign(method, pl.PUBLIC_URL + path, params)
    return await client.request(method, as_sent(signed.url, pl.PUBLIC_URL), headers=signed.headers,
                                data=signed.body)


async def post_telnyx(client: Any, *, body: bytes) -> Any:
    """Signed now: the timestamp must be within 300 s of arrival."""
    return await client.post("/webhooks/telnyx", data=body, headers=TELNYX_SIGNER.headers(body, int(time.time())))


async def post_vonage(client: Any, *, signer: vn.VonageSigner, method: str, body: bytes) -> Any:
    """Signed now (`iat` within 300 s); a GET carries the event as query parameters instead of a body."""
    iat = int(time.time())
    if method == "GET":
        query = vn.query_params(json.loads(body))
        return await client.get("/webhooks/vonage", params=query, headers=signer.get_headers(query, iat))
    return await client.post("/webhooks/vonage", data=body, headers=signer.headers(body, iat))


async def post_platform_event(client: Any, *, payload: dict[str, Any], webhook_id: str) -> Any:
    return await post_platform(client, payload, webhook_id)


# -- whole calls: the service's settings and the requests, in the order the provider sends them -------------

@dataclass(frozen=True)
class WholeCall:
    call_sid: str
    settings: dict[str, Any]
    sends: list[Send]


def twilio_call(direction: str = "outbound-api", method: str = "POST") -> WholeCall:
    """initiated, ringing, in-progress, completed (CallDuration 300); no price: the rate card estimates it."""
    call = tw.whole_call(direction=direction, method=method)
    sends: list[Send] = [partial(post_twilio, signer=call.signer, method=m, path=path, params=params)
                         for m, path, params in call.requests]
    settings = {"twilio_auth_token": call.signer.token, "public_url": tw.PUBLIC_URL,
                "telephony_rates": TWILIO_RATES}
    return WholeCall(call.call_sid, settings, sends)


def telnyx_call(direction: str = "incoming") -> WholeCall:
    """initiated, answered, speak.ended (ignored), hangup (normal_clearing), cost (total_cost 0.0330 USD)."""
    call = tx.whole_call(direction=direction, signer=TELNYX_SIGNER)
    sends: list[Send] = [partial(post_telnyx, body=body) for body in call.bodies]
    return WholeCall(call.call_sid, {"telnyx_public_key": TELNYX_SIGNER.public_key_b64}, sends)


def vonage_call(direction: str = "outbound", method: str = "POST", fx_rates: str = "EUR=1.10") -> WholeCall:
    """started, ringing, answered, human (ignored), completed (300 s, price 0.0225 EUR), record (ignored)."""
    call = vn.whole_call(direction=direction)
    sends: list[Send] = [partial(post_vonage, signer=call.signer, method=method, body=body) for body in call.bodies]
    return WholeCall(call.call_sid, {"vonage_signature_secret": call.signer.secret, "fx_rates": fx_rates}, sends)


def plivo_call(direction: str = "outbound", method: str = "POST") -> WholeCall:
    """ringing, answered, machine detection (ignored), hangup (Duration 287, TotalCost 0.04250 USD)."""
    call = pl.whole_call(direction=direction, method=method)
    sends: list[Send] = [partial(post_plivo, signer=call.signer, method=m, path=path, params=params)
                         for m, path, params in call.requests]
    return WholeCall(call.call_sid, {"plivo_auth_token": call.signer.token, "public_url": pl.PUBLIC_URL}, sends)


async def record_of(start_ledger: StartLedger, call: WholeCall, seed: int) -> dict[str, Any]:
    ledger = await start_ledger(**call.settings)
    await ledger.deliver(redelivered_and_shuffled(call.sends, seed))
    return await ledger.record(call.call_sid)


# -- provider and platform events on one call --------------------------------------------------------------

def platform(kind: str, occurred_at: str, data: dict[str, Any], webhook_id: str) -> Send:
    payload = {"type": kind, "call_sid": tw.CALL_SID, "occurred_at": occurred_at, "data": data}
    return partial(post_platform_event, payload=payload, webhook_id=webhook_id)


def attributed_twilio_call() -> WholeCall:
    """An inbound Twilio call the platform attributes (two metadata events) and bills for LLM, TTS and STT."""
    call = twilio_call("inbound")
    platform_sends = [
        platform("call.metadata", "2026-11-24T10:00:02Z", {
            "assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support",
            "call_meta": {"customer_id": "cust_abc123", "campaign": "renewals"},
        }, "msg_meta_1"),
        platform("call.metadata", "2026-11-24T10:04:30Z", {
            "flow_name": "Retention", "call_meta": {"campaign": "winback", "language": "fr"},
        }, "msg_meta_2"),
        platform("call.usage", "2026-11-24T10:02:00Z", {
            "component": "llm", "cost": "0.0123", "currency": "USD", "provider": "openai", "model": "gpt-4o-mini",
            "usage_type": "tokens", "usage_amount": 8200,
        }, "msg_llm_1"),
        platform("call.usage", "2026-11-24T10:03:00Z", {"component": "llm", "cost": 0.2, "currency": "USD"},
                 "msg_llm_2"),
        platform("call.usage", "2026-11-24T10:05:00Z", {"component": "tts", "cost": "0.0042", "currency": "USD"},
                 "msg_tts"),
        platform("call.usage", "2026-11-24T10:05:01Z", {"component": "stt", "cost": "0.0031"}, "msg_stt"),
    ]
    return WholeCall(call.call_sid, call.settings, call.sends + platform_sends)
