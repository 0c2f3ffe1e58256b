"""Hostile input on every route, the shared part: the service with all five sources configured, and
requests signed by the providers' own signers.

The service runs whole (intake + read API) on fake Redis with all five sources configured; the worker runs in
burst mode. Signatures come from the payload modules' signers (the providers' SDKs, PyJWT, `cryptography`,
`standardwebhooks`; for a platform body that is not UTF-8, the Standard Webhooks recipe over the raw bytes),
never from the code under test. The tests are in tests/system/hostile/, one file per kind of attack; every
product bug they found (ten, all fixed) has a regression test in test_regressions.py."""

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck
from hypothesis import strategies as st
from yarl import URL

from call_ledger.store import Store
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.settings import PLATFORM_SECRET
from tests.support.signing import sign_platform

# -- the service, with every source configured ---------------------------------------------------------------

TELNYX = tx.TelnyxSigner()
PUBLIC_URL = tw.PUBLIC_URL
assert pl.PUBLIC_URL == PUBLIC_URL  # Twilio and Plivo sign the same public base URL
ALL_SOURCES: dict[str, Any] = {
    "twilio_auth_token": tw.AUTH_TOKEN,
    "telnyx_public_key": TELNYX.public_key_b64,
    "vonage_signature_secret": vn.SECRET,
    "plivo_auth_token": pl.AUTH_TOKEN,
    "public_url": PUBLIC_URL,
    "fx_rates": "EUR=1.10,GBP=1.27",  # Vonage prices are in EUR: they must apply, not wait for a rate
}
SOURCES = ("platform", "twilio", "telnyx", "vonage", "plivo")
ROUTES = [("platform", "POST"), ("twilio", "POST"), ("twilio", "GET"), ("telnyx", "POST"), ("vonage", "POST"),
          ("vonage", "GET"), ("plivo", "POST"), ("plivo", "GET")]
ROUTE_IDS = [f"{method}-{source}" for source, method in ROUTES]
RECORD_KEYS = {"call_sid", "to_phone_number", "customer_phone_number", "id", "assistant_id", "status", "call_meta",
               "assistant_name", "flow_name", "duration", "started_at", "ended_at", "total_cost", "llm_cost",
               "tts_cost", "stt_cost", "telephony_cost", "cost_currency"}
FX_REASON = "no LEDGER_FX_RATES entry"  # an event in an unconfigured currency waits (by design), it is no error

FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                     HealthCheck.filter_too_much, HealthCheck.data_too_large]}

def sample(values: list[Any]) -> st.SearchStrategy[Any]:
    """`sampled_from(values)` with a short repr: Hypothesis warns (an error here) when it renders a huge one."""
    return st.sampled_from(range(len(values))).map(values.__getitem__)


async def stream_length(store: Store) -> int:
    return int(await store.redis.xlen(store.stream))


def sid_path(sid: str, suffix: str = "") -> URL:
    """The read route for `sid`, every character percent-encoded (dots too: `..` is no path segment)."""
    return URL("/api/v1/calls/sid/" + quote(sid, safe="").replace(".", "%2E") + suffix, encoded=True)


# -- signed requests, built with the providers' own signers -------------------------------------------------

@dataclass(frozen=True)
class Req:
    method: str
    url: URL  # path and query exactly as the sender wrote them
    headers: dict[str, str]
    body: bytes

    async def send(self, client: Any, **kwargs: Any) -> Any:
        return await client.request(self.method, self.url, headers=self.headers, data=self.body, **kwargs)


_ids = itertools.count()


def fresh_id(prefix: str = "msg") -> str:
    return f"{prefix}_{next(_ids)}_{time.time_ns()}"


def as_sent(signed_url: str) -> URL:
    """A signed URL's path and query untouched (`URL(str)` would re-quote a GET's query)."""
    return URL(signed_url.removeprefix(PUBLIC_URL), encoded=True)


def platform_req(body: bytes, webhook_id: str | None = None, when: datetime | None = None) -> Req:
    webhook_id = webhook_id or fresh_id()
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:  # the reference library signs text only: the spec's recipe, over the raw bytes
        timestamp = str(int((when or datetime.now(UTC)).timestamp()))
        key = base64.b64decode(PLATFORM_SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp,
                   "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json"}
        return Req("POST", URL("/webhooks/platform"), headers, body)
    return Req("POST", URL("/webhooks/platform"), sign_platform(body, webhook_id, when), body)


def telnyx_req(body: bytes, timestamp: int | None = None) -> Req:
    return Req("POST", URL("/webhooks/telnyx"), TELNYX.headers(body, timestamp or int(time.time())), body)


def vonage_req(body: bytes, iat: int | None = None) -> Req:
    return Req("POST", URL("/webhooks/vonage"), vn.VonageSigner().headers(body, iat or int(time.time())), body)


def vonage_get_req(query: list[tuple[str, str]], iat: int | None = None) -> Req:
    headers = vn.VonageSigner().get_headers(query, iat or int(time.time()))
    return Req("GET", URL("/webhooks/vonage?" + urlencode(query), encoded=True), headers, b"")


def twilio_req(method: str, params: list[tuple[str, str]]) -> Req:
    signed = tw.TwilioSigner().sign(method, PUBLIC_URL + tw.PATH, params)
    return Req(method, as_sent(signed.url), signed.headers, signed.body)


def plivo_req(method: str, params: list[tuple[str, str]]) -> Req:
    signed = pl.PlivoSigner().sign(method, PUBLIC_URL + pl.PATH, params)
    return Req(method, as_sent(signed.url), signed.headers, signed.body)


def platform_status(call_sid: str = "CA_hostile", status: str = "ringing") -> bytes:
    return json.dumps({"type": "call.status", "call_sid": call_sid, "occurred_at": "2026-11-24T10:00:00Z",
                       "data": {"status": status}}).encode()


def valid_request(source: str, method: str = "POST") -> Req:
    """One authentic, well-formed event of `source` that the ledger stores."""
    if source == "platform":
        return platform_req(platform_status())
    if source == "telnyx":
        return telnyx_req(tx.encode(tx.hangup()))
    if source == "vonage":
        doc = vn.completed()
        if method == "GET":
            return vonage_get_req(vn.query_params(doc))
        return vonage_req(vn.encode(doc))
    if source == "twilio":
        return twilio_req(method, tw.completed())
    return plivo_req(method, pl.hangup())


def padded_request(source: str, method: str, size: int) -> Req:
    """A valid signed request whose body is exactly `size` bytes (padding in a field no source reads)."""
    def pad(build: Any, start: int) -> Req:
        filler = max(0, start)
        for _ in range(3):  # the encoded length grows by one per filler character
            req = build("x" * filler)
            filler += size - len(req.body)
        assert len(req.body) == size
        return req

    if method == "GET":  # the event rides in the query: the body is bytes no signature covers
        req = valid_request(source, "GET")
        return Req("GET", req.url, req.headers, b"y" * size)
    if source == "platform":
        doc = json.loads(platform_status())
        return pad(lambda f: platform_req(json.dumps(doc | {"padding": f}).encode()), size - 200)
    if source == "telnyx":
        doc = tx.hangup()
        return pad(lambda f: telnyx_req(tx.encode(doc | {"padding": f})), size - 2000)
    if source == "vonage":
        return pad(lambda f: vonage_req(vn.encode(vn.completed(padding=f))), size - 500)
    if source == "twilio":
        return pad(lambda f: twilio_req("POST", [*tw.completed(), ("Padding", f)]), size - 2000)
    return pad(lambda f: plivo_req("POST", [*pl.hangup(), ("Padding", f)]), size - 2000)


# -- raw HTTP, for a client that stalls ----------------------------------------------------------------------

async def raw_exchange(port: int, head: bytes, partial_body: bytes, deadline_s: float = 5.0) -> tuple[bytes, float]:
    """Send the head and part of the body, stall, and read what the server answers (within a deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + partial_body)
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(read_response(reader), deadline_s)
        return answer, time.monotonic() - started
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response: its head, then Content-Length bytes of body (or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    body = await (reader.readexactly(length) if length is not None else reader.read())
    return head + body


def request_head(req: Req, content_length: int) -> bytes:
    lines = [f"{req.method} {req.url} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in req.headers.items() if name.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
