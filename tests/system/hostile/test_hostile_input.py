"""Hostile input on every route: junk that carries no valid signature, validly signed junk, replays, oversized
and trickled bodies, odd SIDs, and schema-driven fuzzing of the read API.

The service runs whole (intake + read API) on fake Redis with all five sources configured; the worker runs in
burst mode. Signatures come from the payload modules' signers (the providers' SDKs, PyJWT, `cryptography`,
`standardwebhooks`; for a platform body that is not UTF-8, the Standard Webhooks recipe over the raw bytes),
never from the code under test.

Every product bug this file found (ten, all fixed) has a regression test in the last section."""

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from multidict import CIMultiDict
from structlog.testing import capture_logs
from yarl import URL

from call_ledger.app import create_app
from call_ledger.core.events import COMPONENTS, STATUSES, CallEvent
from call_ledger.settings import Settings
from call_ledger.store.records import Store
from call_ledger.web.base import MAX_BODY, METRICS
from call_ledger.worker.consumer import Consumer
from tests.conftest import AUTH, PLATFORM_SECRET, make_settings, sign_platform
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn

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


@pytest.fixture
def settings() -> Settings:
    """Overrides conftest's: `client`, `store` and `consumer` then run with every source configured."""
    return make_settings(**ALL_SOURCES)


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


# -- 1. unsigned (or wrongly signed) hostile requests --------------------------------------------------------

SIGNATURE_HEADERS = {
    "platform": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "twilio": ("X-Twilio-Signature", "X-Twilio-Webhooks-Signature-Settings"),
    "telnyx": ("telnyx-signature-ed25519", "telnyx-timestamp"),
    "vonage": ("Authorization",),
    "plivo": ("X-Plivo-Signature-V3", "X-Plivo-Signature-V3-Nonce"),
}
# What an HTTP client can put in a header value (aiohttp refuses control characters other than tab; the raw
# socket test below sends those).
HEADER_SAFE = st.characters(exclude_categories=("Cs", "Cc"), include_characters="\t")
JUNK_HEADER_VALUES = ["", " ", "v1,", "v1,=", "v1, v2,x", "Bearer", "Bearer ", "Bearer a.b.c", "Bearer ..", "null",
                      "0", "-1", "1e9", "NaN", "\uff11\uff17" + "\uff10" * 8, "١٧٦٤٠٠٠٠٠٠", "algorithm=HMAC_SHA256",
                      "algorithm=MD5", "key=x,algorithm=", "a,b,,c", "\t", "é😀", " v1,x "]


def _b64(raw: bytes, url: bool = False) -> str:
    return (base64.urlsafe_b64encode(raw).rstrip(b"=") if url else base64.b64encode(raw)).decode()


@st.composite
def jwt_like(draw: st.DrawFn) -> str:
    """Bearer tokens that look right: another secret, alg none/RS256, forged signature, junk claims."""
    claims = {"iat": draw(st.one_of(st.just(int(time.time())), st.integers(-(2**70), 2**70), st.floats(),
                                    st.text(max_size=5), st.none())),
              "payload_hash": draw(st.one_of(st.text(max_size=70), st.binary(max_size=32).map(bytes.hex)))}
    kind = draw(st.sampled_from(["other-secret", "none", "forged", "junk"]))
    if kind == "other-secret":
        token = jwt.encode(claims, draw(st.sampled_from(["wrong-" * 6, vn.SECRET[::-1], "a" * 64])), algorithm="HS256")
    else:
        alg = {"none": "none", "forged": "HS256"}.get(kind, draw(st.text(max_size=8)))
        header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode(), url=True)
        body = _b64(json.dumps(claims, default=str).encode(), url=True)
        token = f"{header}.{body}.{_b64(draw(st.binary(max_size=40)), url=True)}"
    return draw(st.sampled_from(["Bearer ", "bearer ", "BEARER  ", ""])) + token


def junk_header_value() -> st.SearchStrategy[str]:
    now = st.integers(-400, 400).map(lambda skew: str(int(time.time()) + skew))  # inside the window
    return st.one_of(
        st.text(HEADER_SAFE, max_size=40),
        st.sampled_from(JUNK_HEADER_VALUES),
        st.integers(-(10**20), 10**20).map(str),
        now,
        st.binary(min_size=1, max_size=96).map(_b64),
        st.binary(min_size=1, max_size=64).map(lambda raw: "v1," + _b64(raw)),
        st.lists(st.binary(min_size=32, max_size=32).map(lambda raw: "v1," + _b64(raw)), min_size=2,
                 max_size=4).map(" ".join),
        st.lists(st.binary(min_size=32, max_size=32).map(_b64), min_size=2, max_size=4).map(",".join),
        jwt_like(),
        st.integers(1000, 9000).map(lambda n: "A" * n),  # huge (the server's limit is 8190 bytes a line)
        st.integers(310, 2000).map(lambda n: "9" * n),  # a timestamp no float can hold
    )


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "application/x-www-form-urlencoded",
                 "application/x-www-form-urlencoded; charset=latin-1", "multipart/form-data; boundary=x",
                 "text/plain", "application/octet-stream", "*/*", "", ";;;", "application/json; charset=\u00ff"]


def realistic_bodies(source: str) -> list[bytes]:
    """Bodies that would be stored if they were signed: a missing check would show."""
    return {
        "platform": [platform_status(), platform_status(status="completed")],
        "telnyx": [tx.encode(doc) for doc in (tx.initiated(), tx.hangup(), tx.cost())],
        "vonage": [vn.encode(doc) for doc in (vn.started(), vn.completed())],
        "twilio": [urlencode(p).encode() for p in (tw.lifecycle("ringing"), tw.completed())],
        "plivo": [urlencode(p).encode() for p in (pl.ringing(), pl.hangup())],
    }[source]


def realistic_queries(source: str) -> list[str]:
    return {
        "twilio": [urlencode(tw.completed())],
        "plivo": [urlencode(pl.hangup())],
        "vonage": [urlencode(vn.query_params(vn.completed()))],
    }.get(source, [])


RAW_QUERIES = ["%", "%ZZ", "%FF", "a=%ED%A0%80", "a=%00", "&&&", "=", "==&=", "a=1&a=2", "CallSid=CA1&CallSid=CA2",
               "CallUUID=%C0%AF", "x=" + "%41" * 3000, "a[]=1&a[b]=2", ";;", "+=+", "%2F..%2F"]


def query_strings(source: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        sample(RAW_QUERIES + realistic_queries(source)),
        st.text(max_size=60).map(lambda text: quote(text, safe="=&%+;")),
        st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=6).map(urlencode),
    )


@st.composite
def hostile_request(draw: st.DrawFn, source: str, method: str) -> tuple[URL, CIMultiDict[str], bytes]:
    names = SIGNATURE_HEADERS[source]
    header_name = st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper),
                            st.text(TOKEN_CHARS, min_size=1, max_size=30))
    # Duplicates allowed: a signature header given twice or more, with different values.
    pairs = draw(st.lists(st.tuples(header_name, junk_header_value()), max_size=8))
    if draw(st.booleans()):  # every signature header present, so verification goes as deep as it can
        pairs += [(name, draw(junk_header_value())) for name in names]
    pairs.append(("Content-Type", draw(st.one_of(st.sampled_from(CONTENT_TYPES), st.text(HEADER_SAFE, max_size=30)))))
    if draw(st.integers(0, 9)) == 0:
        pairs.append(("Content-Encoding", draw(st.one_of(
            st.sampled_from(["identity", "x-unknown", "br", "zstd", "gzip", "deflate"])))))
    body = draw(st.one_of(st.binary(max_size=2048), sample(realistic_bodies(source)),
                          st.just(b"") if method == "GET" else st.nothing()))
    query = draw(query_strings(source))
    url = URL(f"/webhooks/{source}" + (f"?{query}" if query else ""), encoded=True)
    return url, CIMultiDict(pairs), body


def _fuzz_unsigned(source: str, method: str) -> Any:
    @hsettings(max_examples=40, **FUZZ)
    @given(sent=hostile_request(source, method))
    async def run(client: Any, store: Store, sent: tuple[URL, CIMultiDict[str], bytes]) -> None:
        url, headers, body = sent
        with capture_logs():
            response = await client.request(method, url, headers=headers, data=body)
        event(f"answered {response.status}")  # --hypothesis-show-statistics shows how deep the fuzz went
        # 401 from the service, or 400 (unparsable form, or the HTTP parser refusing a header or the URL).
        assert response.status in (400, 401), (response.status, await response.text())
        if response.status == 401:
            assert (await response.json())["error"] == "invalid_signature"
        assert await stream_length(store) == 0

    return run


# One test per route, so a failure names the route.
test_unsigned_hostile_platform_post = _fuzz_unsigned("platform", "POST")
test_unsigned_hostile_twilio_post = _fuzz_unsigned("twilio", "POST")
test_unsigned_hostile_twilio_get = _fuzz_unsigned("twilio", "GET")
test_unsigned_hostile_telnyx_post = _fuzz_unsigned("telnyx", "POST")
test_unsigned_hostile_vonage_post = _fuzz_unsigned("vonage", "POST")
test_unsigned_hostile_vonage_get = _fuzz_unsigned("vonage", "GET")
test_unsigned_hostile_plivo_post = _fuzz_unsigned("plivo", "POST")
test_unsigned_hostile_plivo_get = _fuzz_unsigned("plivo", "GET")


RAW_HEADER_VALUES = [b"\x01\x02", b"\x7f", b"a\x00b", b"\x1b[31m", b"\xc3\xa9\xf0\x9f\x98\x80", b"\x80\xff",
                     b"v1,\xfe", b" \t ", b"A" * 9000]


@pytest.mark.parametrize("value", RAW_HEADER_VALUES, ids=lambda v: v[:12].hex())
@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_raw_header_bytes_no_client_library_would_send(client: Any, store: Store, source: str, method: str,
                                                             value: bytes) -> None:
    """Control characters, obs-text and non-UTF-8 bytes in every signature header, over a raw socket."""
    req = valid_request(source, method)
    headers = {**req.headers, **dict.fromkeys(SIGNATURE_HEADERS[source], "\x00")}  # placeholders
    head = _head(Req(method, req.url, headers, req.body), len(req.body)).replace(b"\x00", value)
    with capture_logs():
        answer, _ = await _raw_exchange(client.server.port, head, req.body)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401), answer[:300]
    assert await stream_length(store) == 0


@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_a_valid_body_with_a_tampered_signature_is_401(client: Any, store: Store, source: str,
                                                             method: str) -> None:
    """The realistic request, signed, with one byte of its signature (or its body) changed."""
    req = valid_request(source, method)
    header = {"platform": "webhook-signature", "twilio": "X-Twilio-Signature", "telnyx": "telnyx-signature-ed25519",
              "vonage": "Authorization", "plivo": "X-Plivo-Signature-V3"}[source]
    value = req.headers[header]
    middle = len(value) // 2  # not the last base64 digit: its low bits are padding, which decoders ignore
    flipped = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
    tampered_body = req.body[:-1] + b" " if req.body else req.body
    for headers, body in (({**req.headers, header: flipped}, req.body), (req.headers, tampered_body)):
        if body == req.body and headers == req.headers:
            continue  # a GET has no body to tamper with
        response = await client.request(method, req.url, headers=headers, data=body)
        assert response.status in (400, 401), await response.text()
    assert await stream_length(store) == 0


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_on_intake_routes_are_405(client: Any, store: Store, source: str, method: str) -> None:
    req = valid_request(source)
    response = await client.request(method, req.url, headers=req.headers, data=req.body)
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"
    assert await stream_length(store) == 0


# -- 2. validly signed, hostile bodies -------------------------------------------------------------------------

ODD_STRINGS = ["", " ", "\t", "\x00", "CA\x00\r\n\x1b[31m\x7f", "\u202eRTL", "☎️💥", "Ω≈ç√", "a" * 512, "../..", "%2F",
               "%00", "{}", "[]", "null", "true", "NaN", "-Infinity", "1e400", "-1e400", "-0", "0x1F", "1_000", "١٢٣",
               "\uff19", "   42  ", "9" * 30, "-0.013", "1,5", "0.1", "1000000000", "1000000001", "\ufeff", "\u2028"]
TIMES = ["2026-11-24T10:00:00Z", "2026-11-24T10:00:00.123456789Z", "2026-11-24 10:00:00", "2026-11-24T10:00:00+05:30",
         "2026-11-24T10:00:00-0800", "2026-02-30T10:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:00:60Z",
         "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-11-24T10:00:00+99:99", "2026-11-24T10:00:00 GMT",
         "Tue, 24 Nov 2026 10:00:00 +0000", "Tue, 31 Feb 2026 10:00:00 +0000", "Tue, 24 Nov 2026 10:00:00", "yesterday",
         "\uff11\uff19\uff17\uff10-01-01T00:00:00Z", "2026-11-24T10:00:00,5Z"]
EDGE_TIMES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31 23:59:59-2359",
              "Fri, 31 Dec 9999 23:59:59 -2359", "Mon, 01 Jan 0001 00:00:00 +2359"]
SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800"]

texts = st.one_of(st.text(max_size=24), sample(ODD_STRINGS),
                  st.sampled_from(SURROGATES))
form_texts = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=24), sample(ODD_STRINGS))
times = st.one_of(st.sampled_from(TIMES), st.datetimes().map(lambda dt: dt.isoformat() + "Z"),
                  st.sampled_from(EDGE_TIMES))
sids = st.one_of(st.text(min_size=1, max_size=40),
                 st.sampled_from(["CA1", "a/b", "..", "%2F", "CA\x00\n", "☎", "a" * 512]),
                 st.integers(513, 4000).map(lambda n: "S" * n),
                 st.sampled_from(SURROGATES))
amounts = st.one_of(st.sampled_from(["0.1", "-0.013", "1e400", "1e-400", "1000000000", "1000000000.000000001",
                                     "0.0000000005", "  1 ", "1,5", "", "0x10", "Infinity", "NaN"]),
                    st.decimals(allow_nan=True, allow_infinity=True).map(str), st.integers(-(10**12), 10**12),
                    st.sampled_from(["1e1000000", "-1E+999999999", "9e9999999"]))
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson (the worker's state) can carry
numbers = st.one_of(INT64, st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64 - 1]), st.floats(),
                    st.sampled_from([2**64, -(2**63) - 1, 10**30, 10**4000]))


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


scalars = st.one_of(st.none(), st.booleans(), numbers, texts, times)
hostile = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                       | st.dictionaries(texts, children, max_size=3), max_leaves=8)
deep = st.integers(1, 400).map(nested)
call_metas = st.one_of(st.dictionaries(texts, hostile, max_size=4),
                       st.dictionaries(texts, deep, min_size=1, max_size=1))


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the field should hold, sometimes anything at all."""
    return st.one_of(valid, valid, hostile)


platform_data = st.fixed_dictionaries({}, optional={
    "status": either(st.sampled_from(STATUSES)),
    "duration": either(st.integers(0, 10**6)),
    "component": either(st.sampled_from(COMPONENTS)),
    "cost": either(amounts),
    "currency": either(st.sampled_from(["USD", "EUR", "usd", " GBP ", "XYZ", "US", "€", ""])),
    "assistant_id": either(st.integers(0, 2**31)),
    "assistant_name": either(texts),
    "flow_name": either(texts),
    "to_phone_number": either(texts),
    "customer_phone_number": either(texts),
    "direction": either(st.sampled_from(["inbound", "outbound"])),
    "call_meta": either(call_metas),
})
platform_docs = st.fixed_dictionaries(
    {"type": either(st.sampled_from(["call.metadata", "call.usage", "call.status", "call.transcript"])),
     "call_sid": either(sids)},
    optional={"occurred_at": either(times), "data": either(platform_data), "extra": hostile},
)
telnyx_payload = st.fixed_dictionaries({"call_control_id": either(sids)}, optional={
    "direction": either(st.sampled_from(["incoming", "outgoing"])),
    "from": either(texts), "to": either(texts),
    "hangup_cause": either(st.sampled_from(["normal_clearing", "user_busy", "timeout", "call_rejected"])),
    "status": either(st.sampled_from(["success", "error"])),
    "total_cost": either(amounts),
    "cost_parts": either(st.lists(st.fixed_dictionaries({}, optional={
        "cost": either(amounts), "currency": either(st.sampled_from(["USD", "EUR", "XYZ", "", "usd"]))}),
        max_size=3)),
})
telnyx_docs = st.fixed_dictionaries({"data": either(st.fixed_dictionaries({
    "event_type": either(st.sampled_from(["call.initiated", "call.answered", "call.hangup", "call.cost",
                                          "call.speak.ended"])),
    "id": either(texts), "occurred_at": either(times), "payload": either(telnyx_payload)}))},
    optional={"meta": hostile})
VONAGE_STATUSES = ["started", "ringing", "answered", "completed", "busy", "cancelled", "unanswered", "timeout",
                   "rejected", "failed", "human", "record", "COMPLETED", "unknown"]
vonage_docs = st.fixed_dictionaries(
    {"uuid": either(sids), "status": either(st.sampled_from(VONAGE_STATUSES)), "timestamp": either(times)},
    optional={"direction": either(st.sampled_from(["inbound", "outbound"])), "from": either(texts),
              "to": either(texts), "price": either(amounts), "recording_url": texts, "type": texts,
              "duration": either(st.one_of(st.integers(-5, 10**6), st.integers(0, 10**6).map(str)))})


# Mutations: a realistic event with one to three of its fields made hostile (or dropped, or repeated), so most
# examples get past the first check and reach the parser's, the store's and the worker's deeper paths.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(["call_sid", "call_control_id", "uuid"], sids),
    **dict.fromkeys(["occurred_at", "timestamp", "start_time", "end_time"], times),
    **dict.fromkeys(["cost", "total_cost", "price"], amounts),
    **dict.fromkeys(["duration", "assistant_id", "billed_duration_secs"], st.one_of(numbers, texts)),
    "call_meta": call_metas,
    "cost_parts": st.lists(st.fixed_dictionaries({}, optional={"cost": amounts, "currency": texts}), max_size=3),
}


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a document's objects (lists are left whole)."""
    paths = []
    for key, value in doc.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _paths(value, (*prefix, key))
    return paths


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]], keep: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """One of `bases` with one to three fields changed or dropped. Paths in `keep` stay: a hostile `type` or
    `call_sid` stops the parser at once, and the free-form strategies cover those already."""
    doc = json.loads(json.dumps(draw(st.sampled_from(bases))))  # a deep copy
    paths = [path for path in _paths(doc) if path not in keep]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        parent: Any = doc
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier mutation replaced an ancestor
        if draw(st.integers(0, 5)) == 0:
            parent.pop(path[-1], None)
        else:
            specific = FIELD_VALUES.get(path[-1], st.nothing())
            parent[path[-1]] = draw(st.one_of(specific, specific, hostile))
    return doc


def _platform_bases() -> list[dict[str, Any]]:
    common = {"call_sid": "CA_fuzz", "occurred_at": "2026-11-24T10:00:00Z"}
    return [
        common | {"type": "call.metadata", "data": {
            "assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support", "direction": "inbound",
            "to_phone_number": "+15551234567", "customer_phone_number": "+15559876543",
            "call_meta": {"customer_id": "cust_abc123"}}},
        common | {"type": "call.usage", "data": {"component": "llm", "cost": "0.0123", "currency": "USD",
                                                 "provider": "openai", "usage_amount": 8200}},
        common | {"type": "call.status", "data": {"status": "completed", "duration": 300}},
    ]


platform_docs = st.one_of(*[mutated(_platform_bases(), keep=(("type",), ("data",), ("call_sid",)))] * 3,
                          mutated(_platform_bases()), platform_docs)
telnyx_docs = st.one_of(telnyx_docs, mutated([tx.initiated(), tx.answered(), tx.hangup(), tx.cost(),
                                               tx.cost(total_cost=None), tx.speak_ended()]),
                        mutated([tx.initiated(), tx.hangup(), tx.cost()]))
vonage_docs = st.one_of(vonage_docs, mutated([vn.started(), vn.ringing(), vn.answered(), vn.completed(),
                                              vn.unsuccessful("busy", "busy"), vn.human(), vn.record()]),
                        mutated([vn.started(), vn.completed()]))


@st.composite
def json_body(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """A document as JSON (escaped or raw UTF-8), or a hand-written hostile literal."""
    raw = draw(sample([
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing","duration":NaN}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":Infinity}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":1e400}}',
        b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":-1e-400}}',
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing","duration":1' + b"0" * 5000 + b"}}",
        b'{"type":"call.status","call_sid":"A","call_sid":"B","data":{"status":"ringing"}}',
        b'\xef\xbb\xbf{"type":"call.status","call_sid":"CA1","data":{"status":"ringing"}}',
        b'{"type":"call.status","call_sid":"CA1","data":{"status":"ringing"}} trailing',
        '{"type":"call.status","call_sid":"CA1"}'.encode("utf-16"),
        b"[" * 5000 + b"]" * 5000,
        b'{"data":' * 3000 + b"{}" + b"}" * 3000,
        b"", b"null", b"[]", b'"x"', b"\xff\xfe", b'{"a":"\xc3"}',
    ]))
    doc = draw(docs)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: send it escaped
        body = json.dumps(doc, allow_nan=True).encode("utf-8")
    return draw(st.sampled_from([body, body, body, raw]))


def form_fields(names: dict[str, st.SearchStrategy[str]], junk_names: list[str]) -> st.SearchStrategy[Any]:
    """(name, value) pairs: the fields a source reads, hostile values, extra and repeated names."""
    required = {name: s for name, s in names.items() if name in ("CallSid", "CallUUID", "CallStatus")}
    optional = {name: s for name, s in names.items() if name not in required}
    fields = st.fixed_dictionaries(required, optional=optional).map(lambda d: list(d.items()))
    extra = st.lists(st.tuples(st.one_of(st.sampled_from(list(names) + junk_names), form_texts), form_texts),
                     max_size=3)
    return st.tuples(fields, extra).map(lambda pair: pair[0] + pair[1])


def form_either(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    hostile_text = st.one_of(form_texts, st.sampled_from(TIMES), numbers.map(str),
                             st.integers(1000, 4000).map(lambda n: "9" * n))
    return st.one_of(valid, valid, hostile_text)


form_sids = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
                      st.sampled_from(["CA1", " CA1 ", "CA\x00\n", "☎", "a" * 512]),
                      st.integers(513, 4000).map(lambda n: "S" * n))
twilio_params = form_fields({
    "CallSid": form_either(form_sids),
    "CallStatus": form_either(st.sampled_from(["queued", "ringing", "in-progress", "completed", "busy", "failed",
                                               "Completed", "answered"])),
    "SequenceNumber": form_either(st.integers(0, 5).map(str)),
    "Timestamp": form_either(st.sampled_from(TIMES)),
    "Direction": form_either(st.sampled_from(["inbound", "outbound-api", "outbound-dial"])),
    "From": form_texts, "To": form_texts,
    "CallDuration": form_either(st.integers(0, 10**6).map(str)),
    "RecordingSid": form_texts,
}, ["AnsweredBy", "TranscriptionSid", "AccountSid"])
plivo_params = form_fields({
    "CallUUID": form_either(form_sids),
    "CallStatus": form_either(st.sampled_from(["ringing", "in-progress", "completed", "busy", "timeout", "cancel",
                                               "Completed", "queued"])),
    "Event": form_either(st.sampled_from(["Hangup", "StartApp", "MachineDetection", ""])),
    "Direction": form_either(st.sampled_from(["inbound", "outbound"])),
    "From": form_texts, "To": form_texts,
    "Duration": form_either(st.integers(0, 10**6).map(str)),
    "TotalCost": form_either(amounts.map(str)),
    "StartTime": form_either(st.sampled_from(TIMES)),
    "AnswerTime": form_either(st.sampled_from(TIMES)),
    "EndTime": form_either(st.sampled_from(TIMES)),
}, ["RecordUrl", "RecordingID", "BillDuration"])
# The form sources' own time fields at the edge of datetime's range.
twilio_params = st.one_of(twilio_params, twilio_params.map(lambda p: [*p, ("Timestamp", EDGE_TIMES[3])]))
plivo_params = st.one_of(plivo_params, plivo_params.map(lambda p: [*p, ("EndTime", EDGE_TIMES[2])]))

FORM_VALUES: dict[str, st.SearchStrategy[str]] = {
    **dict.fromkeys(["CallSid", "CallUUID"], form_sids),
    "Timestamp": st.sampled_from(TIMES + EDGE_TIMES[3:]),
    **dict.fromkeys(["StartTime", "AnswerTime", "EndTime", "SessionStart"], st.sampled_from(TIMES + EDGE_TIMES)),
    **dict.fromkeys(["CallDuration", "Duration", "BillDuration", "SequenceNumber"], numbers.map(str)),
    "TotalCost": amounts.map(str),
}


@st.composite
def mutated_form(draw: st.DrawFn, bases: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """A realistic callback with one to three parameters changed, dropped or repeated with another value."""
    params = list(draw(st.sampled_from(bases)))
    names = sorted({n for n, _ in params})
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        value = draw(st.one_of(FORM_VALUES.get(name, st.nothing()), form_either(form_texts)))
        action = draw(st.sampled_from(["replace", "replace", "drop", "repeat"]))
        if action == "repeat":
            params.append((name, value))
        else:
            params = [(n, value if n == name else v) for n, v in params if not (action == "drop" and n == name)]
    return params


twilio_params = st.one_of(twilio_params, mutated_form(
    [tw.lifecycle("initiated"), tw.lifecycle("ringing", direction="inbound"), tw.completed(),
     tw.ended("busy"), tw.recording_status()]))
plivo_params = st.one_of(plivo_params, mutated_form([pl.ringing(), pl.answered(), pl.hangup(), pl.busy(),
                                                     pl.machine_detection(direction="inbound")]))

ascii_only = st.lists(st.tuples(st.text(st.characters(max_codepoint=127), max_size=12),
                                st.text(st.characters(max_codepoint=127), max_size=24)), max_size=4)


def _no_surrogates(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def clean(text: str) -> str:
        return text.encode("utf-8", "replace").decode("utf-8")

    return [(clean(name), clean(value)) for name, value in pairs]


def _ascii_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in pairs if name.isascii() and value.isascii()]


vonage_query = st.one_of(
    vonage_docs.map(lambda doc: [(k, v if isinstance(v, str) else json.dumps(v, allow_nan=True))
                                 for k, v in doc.items() if v is not None]),
    mutated_form([vn.query_params(doc) for doc in (vn.started(), vn.answered(), vn.completed(), vn.human())]))


def signed_hostile(source: str, method: str) -> st.SearchStrategy[Req]:
    """Hostile requests of `source`, each signed as the provider would sign it."""
    if source == "platform":
        return json_body(platform_docs).map(platform_req)
    if source == "telnyx":
        return json_body(telnyx_docs).map(telnyx_req)
    if source == "vonage" and method == "POST":
        return json_body(vonage_docs).map(vonage_req)
    if source == "vonage":
        return vonage_query.map(_no_surrogates).map(vonage_get_req)  # a URL cannot carry a lone surrogate
    if source == "twilio":
        return twilio_params.map(lambda params: twilio_req(method, params))
    if method == "GET":  # Plivo's SDK cannot sign a GET whose query holds non-ASCII text
        return st.one_of(plivo_params.map(_ascii_pairs), ascii_only).map(lambda params: plivo_req("GET", params))
    return plivo_params.map(lambda params: plivo_req("POST", params))


async def assert_stored_event_is_sound(client: Any, store: Store, consumer: Consumer, answer: dict[str, Any]) -> None:
    """The last stream entry decodes as a CallEvent, applies in a burst, and its call can be read back."""
    [(entry_id, fields)] = await store.redis.xrevrange(store.stream, count=1)
    stored = CallEvent.model_validate_json(fields[b"e"])
    assert (stored.call_sid, stored.event_id) == (answer["call_sid"], answer["event_id"])
    await consumer.run_burst()  # raises on a bug the batch could not contain
    assert await store.dead_letters() == []
    reason = await store.redis.hget(store.failures, entry_id)
    if reason is not None:  # waiting for an FX rate: by design, and nothing to read back yet
        assert FX_REASON in reason.decode()
        return
    record = await client.get(sid_path(stored.call_sid), headers=AUTH)
    assert record.status == 200, await record.text()
    body = await record.json()
    assert set(body) == RECORD_KEYS and body["call_sid"] == stored.call_sid
    events = await client.get(sid_path(stored.call_sid, "/events"), headers=AUTH)
    assert events.status == 200, await events.text()
    assert stored.event_id in [e["event_id"] for e in (await events.json())["events"]]


def _fuzz_signed(source: str, method: str, examples: int = 60) -> Any:
    @hsettings(max_examples=examples, **FUZZ)
    @given(req=signed_hostile(source, method))
    async def run(client: Any, store: Store, consumer: Consumer, req: Req) -> None:
        assume(len(req.body) <= MAX_BODY and len(str(req.url)) < 8000)
        before = await stream_length(store)
        with capture_logs():
            response = await req.send(client)
            answer = await response.json()
            # Examples share one store, and Twilio/Plivo sign names and values concatenated: two
            # examples can carry one signature over other parameters (a repeated pair, a moved
            # boundary). The signature ledger refuses the later one, rightly (test_replay_resplit.py).
            replay = response.status == 401 and answer.get("detail") == "signature already used with other parameters"
            assert response.status in (200, 400, 422) or (replay and source in ("twilio", "plivo")), (
                response.status, await response.text(), req.method, str(req.url)[:500], req.body[:1000])
            event(f"answered {response.status} {answer.get('outcome') or answer.get('detail', '')[:40]}")
            if response.status != 200:
                assert answer["error"] in ("malformed_body", "invalid_event", "invalid_signature") and answer["detail"]
                assert await stream_length(store) == before
                return
            assert answer["outcome"] in ("stored", "ignored")
            assert await stream_length(store) == before + (answer["outcome"] == "stored")
            if answer["outcome"] == "stored":
                await assert_stored_event_is_sound(client, store, consumer, answer)

    return run


test_signed_hostile_platform = _fuzz_signed("platform", "POST", examples=120)
test_signed_hostile_twilio_post = _fuzz_signed("twilio", "POST")
test_signed_hostile_twilio_get = _fuzz_signed("twilio", "GET", examples=30)
test_signed_hostile_telnyx = _fuzz_signed("telnyx", "POST", examples=80)
test_signed_hostile_vonage_post = _fuzz_signed("vonage", "POST", examples=80)
test_signed_hostile_vonage_get = _fuzz_signed("vonage", "GET", examples=30)
test_signed_hostile_plivo_post = _fuzz_signed("plivo", "POST")
test_signed_hostile_plivo_get = _fuzz_signed("plivo", "GET", examples=30)


@pytest.mark.parametrize("body", [
    json.dumps({"type": "call.status", "call_sid": "CA\x00\x01\x1f\x7f\u2028", "data": {"status": "ringing"}}),
    json.dumps({"type": "call.metadata", "call_sid": "CA_types", "data": {
        "assistant_id": "12", "assistant_name": 12, "call_meta": {"n": [1, {"x": None}], "ü": "ß"}}}),
    json.dumps({"type": "call.status", "call_sid": "CA_dur", "data": {"status": "completed", "duration": "300"}}),
    json.dumps({"type": "call.usage", "call_sid": "CA_cost", "data": {"component": "llm", "cost": [0.1]}}),
    json.dumps({"type": "call.metadata", "call_sid": "CA_meta", "data": {"call_meta": {"x": nested(150)}}}),
    '{"type":"call.usage","call_sid":"CA_e","data":{"component":"llm","cost":1E+999999}}',
    '{"type":"call.metadata","call_sid":"CA_f","data":{"call_meta":{"big":1e999999999,"tiny":1e-999999999}}}',
], ids=["control-chars-sid", "wrong-types", "string-duration", "list-cost", "nested-150", "huge-exponent-cost",
        "huge-exponent-meta"])
async def test_signed_platform_examples(client: Any, store: Store, consumer: Consumer, body: str) -> None:
    """Named cases of the fuzz above, always run: never a 5xx, and what is stored applies."""
    response = await platform_req(body.encode()).send(client)
    assert response.status in (200, 400, 422), await response.text()
    if response.status == 200 and (answer := await response.json())["outcome"] == "stored":
        await assert_stored_event_is_sound(client, store, consumer, answer)


# -- 3. replayed signed requests --------------------------------------------------------------------------------

async def test_replayed_signed_requests_are_applied_once(client: Any, store: Store, settings: Settings,
                                                         guarantees: Any) -> None:
    consumer = Consumer(store, settings, client.app[METRICS])  # the app's metrics, as in `serve`
    requests = {source: valid_request(source) for source in SOURCES}
    answered = 0
    sids = {}
    for source, req in requests.items():
        for _ in range(5):  # the very same bytes and headers, five times
            response = await req.send(client)
            assert response.status == 200, (source, await response.text())
            answer = await response.json()
            assert answer["outcome"] == "stored"
            sids[source] = answer["call_sid"]
            answered += 1
    assert await consumer.run_burst() == 25

    applied = 0
    metrics = await (await client.get("/metrics")).text()
    for source in requests:
        events = await (await client.get(sid_path(sids[source], "/events"), headers=AUTH)).json()
        assert len(events["events"]) == 1, source
        applied += len(events["events"])
        assert f'ledger_events_applied_total{{source="{source}"}} 1.0' in metrics
        assert f'ledger_events_duplicate_total{{source="{source}"}} 4.0' in metrics
    guarantees.record("replayed signed requests", sent=25, answered_2xx=answered, applied=applied,
                      duplicates_suppressed=25 - applied, lost=0)
    assert applied == 5


@pytest.mark.parametrize("skew", [-301, 301], ids=["301s-old", "301s-ahead"])
@pytest.mark.parametrize("source", ["platform", "telnyx", "vonage"])
async def test_replay_outside_the_signature_window_is_401(client: Any, store: Store, source: str, skew: int) -> None:
    when = int(time.time()) + skew
    if source == "platform":
        req = platform_req(platform_status(), "msg_stale", datetime.fromtimestamp(when, UTC))
    elif source == "telnyx":
        req = telnyx_req(tx.encode(tx.hangup()), when)
    else:
        req = vonage_req(vn.encode(vn.completed()), when)
    response = await req.send(client)
    assert response.status == 401
    assert "window" in (await response.json())["detail"]
    assert await stream_length(store) == 0


# -- 4. oversized bodies ----------------------------------------------------------------------------------------

async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_body_over_64_kib_is_413_with_or_without_content_length(client: Any, store: Store, source: str,
                                                                      method: str) -> None:
    req = valid_request(source, method)  # signed headers: only the size is wrong
    body = b"x" * (MAX_BODY + 1)
    with_length = await client.request(method, req.url, headers=req.headers, data=body)
    chunked = await client.request(method, req.url, headers=req.headers, data=_chunks(body))
    for response in (with_length, chunked):
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert with_length.request_info.headers.get("Content-Length") == str(MAX_BODY + 1)
    assert "Content-Length" not in chunked.request_info.headers
    assert await stream_length(store) == 0


@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_body_of_exactly_64_kib_validly_signed_is_accepted(client: Any, store: Store, source: str,
                                                                 method: str) -> None:
    req = padded_request(source, method, MAX_BODY)
    assert len(req.body) == MAX_BODY
    with_length = await req.send(client)
    assert with_length.status == 200, await with_length.text()
    chunked = await client.request(method, req.url, headers=req.headers, data=_chunks(req.body))
    assert chunked.status == 200, await chunked.text()
    assert await stream_length(store) == 2


async def test_compressed_body_that_inflates_past_64_kib_is_413(client: Any, store: Store) -> None:
    import gzip

    bomb = gzip.compress(b" " * (4 * 1024 * 1024))  # 4 MiB of spaces in a few KiB
    assert len(bomb) < MAX_BODY
    response = await client.post("/webhooks/platform", data=bomb,
                                 headers={**platform_req(bomb, "msg_bomb").headers, "Content-Encoding": "gzip"})
    assert response.status == 413, await response.text()
    assert await stream_length(store) == 0


# -- 5. a slow client --------------------------------------------------------------------------------------------

async def _raw_exchange(port: int, head: bytes, partial_body: bytes, deadline_s: float = 5.0) -> tuple[bytes, float]:
    """Send the head and part of the body, stall, and read what the server answers (within a deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + partial_body)
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(_read_response(reader), deadline_s)
        return answer, time.monotonic() - started
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response: its head, then Content-Length bytes of body (or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    body = await (reader.readexactly(length) if length is not None else reader.read())
    return head + body


def _head(req: Req, content_length: int) -> bytes:
    lines = [f"{req.method} {req.url} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in req.headers.items() if name.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("source", SOURCES)
async def test_a_client_that_stalls_mid_body_gets_408_and_nothing_is_stored(store: Store, source: str) -> None:
    settings = make_settings(read_timeout_s=0.5, **ALL_SOURCES)
    if source == "platform":  # exactly 100 bytes, as the provider would sign them
        body = platform_status(call_sid="CA_slow")
        body += b" " * (100 - len(body))
        req = platform_req(body)
    else:
        req = valid_request(source)
    assert req.body
    async with TestServer(create_app(settings, "worker", store, run_consumer=False), host="127.0.0.1") as server:
        with capture_logs():
            stalls = [req.body[: len(req.body) // 2]] + ([b""] if source == "platform" else [])  # part, or none
            for sent in stalls:
                answer, waited = await _raw_exchange(server.port, _head(req, len(req.body)), sent)
                status_line, _, rest = answer.partition(b"\r\n")
                assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b'"error":"request_timeout"' in rest
                assert 0.3 < waited < 4.0
    assert await stream_length(store) == 0


# -- 6. odd SIDs at the read routes -----------------------------------------------------------------------------

ODD_SID_PATHS = ["", "%2F", "a%2Fb", "..", "%2E%2E", "%2E", "%00", "%00%01%1F%7F", "x" * 5000, "%E2%98%8E",
                 "%F0%9F%92%A5", "%ZZ", "%", "%C0%AF", "%ED%A0%80", "%FF%FE", "{x}", "a/b/c", "%20", "+", "%0D%0A",
                 "..%2F..%2Fetc%2Fpasswd", "events", "%3Fq=1", "%23f", ";a=b"]


@pytest.mark.parametrize("suffix", ["", "/events"])
@pytest.mark.parametrize("sid", ODD_SID_PATHS)
async def test_odd_sids_at_both_read_routes_never_cause_a_server_error(client: Any, sid: str, suffix: str) -> None:
    response = await client.get(URL("/api/v1/calls/sid/" + sid + suffix, encoded=True), headers=AUTH)
    assert response.status in (400, 404, 414), await response.text()
    if response.status == 404:
        assert (await response.json())["error"] == "not_found"


@hsettings(max_examples=60, **FUZZ)
@given(sid=st.text(max_size=300), suffix=st.sampled_from(["", "/events"]))
async def test_any_sid_string_at_both_read_routes_is_a_json_404(client: Any, sid: str, suffix: str) -> None:
    response = await client.get(sid_path(sid, suffix), headers=AUTH)
    assert response.status == 404, await response.text()
    assert (await response.json())["error"] == "not_found"


READABLE_SIDS = ["CA\x00\x01\x1f\x7f", "CA\r\t", "CA\r\n\t", "☎️ünïcödé💥", "\u202eevil", "a/b", "%2F", "..", ".",
                 "?x=1#y", "a" * 512, " ", "\ufeff", "\u2028", "events", "a/b/events", "%ZZ", "+"]


@pytest.mark.parametrize("sid", READABLE_SIDS)
async def test_a_call_with_an_odd_sid_posted_signed_reads_back_by_its_percent_encoded_sid(
        client: Any, consumer: Consumer, sid: str) -> None:
    body = platform_status(call_sid=sid)  # JSON-escaped: \u0000, \ud83d\udca5, ...
    assert body.isascii()
    response = await platform_req(body).send(client)
    assert response.status == 200, await response.text()
    await consumer.run_burst()
    record = await client.get(sid_path(sid), headers=AUTH)
    assert record.status == 200, await record.text()
    assert (await record.json())["call_sid"] == sid
    events = await client.get(sid_path(sid, "/events"), headers=AUTH)
    assert events.status == 200
    assert (await events.json())["call_sid"] == sid


@hsettings(max_examples=40, **FUZZ)
@given(sid=st.text(min_size=1, max_size=120))
async def test_any_sid_the_platform_posts_reads_back(client: Any, consumer: Consumer, sid: str) -> None:
    response = await platform_req(platform_status(call_sid=sid)).send(client)
    assert response.status == 200, await response.text()
    await consumer.run_burst()
    record = await client.get(sid_path(sid), headers=AUTH)
    assert record.status == 200, await record.text()
    assert (await record.json())["call_sid"] == sid


# -- 7. schema-driven fuzzing of the read API (schemathesis) -------------------------------------------------------

SCHEMA_SID = "CA_schema_0123456789"


async def test_read_api_conforms_to_its_openapi_document_under_schemathesis(client: Any, consumer: Consumer) -> None:
    """Schemathesis loads /openapi.json from the live server and fuzzes the GET routes with a valid token:
    never a 5xx, and every answer (200 record, 404/401 errors, probes) matches its documented schema."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Two calls to find: a full one, and one whose SID holds unicode and control characters.
    odd_sid = "☎ CA\x01\x7f/ü"
    for i, payload in enumerate([
        {"type": "call.metadata", "call_sid": SCHEMA_SID, "occurred_at": "2026-11-24T10:00:00Z",
         "data": {"assistant_id": 12, "assistant_name": "ServiceBot", "call_meta": {"k": [1, {"n": None}]}}},
        {"type": "call.status", "call_sid": SCHEMA_SID, "occurred_at": "2026-11-24T10:05:00Z",
         "data": {"status": "completed", "duration": 300}},
        {"type": "call.usage", "call_sid": SCHEMA_SID, "data": {"component": "llm", "cost": "0.1"}},
        {"type": "call.status", "call_sid": odd_sid, "data": {"status": "ringing"}},
    ]):
        assert (await platform_req(json.dumps(payload).encode(), f"msg_schema_{i}").send(client)).status == 200
    await consumer.run_burst()

    base_url = str(client.make_url("")).rstrip("/")
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{base_url}/openapi.json")
    paths = ["/api/v1/calls/sid/{call_sid}", "/api/v1/calls/sid/{call_sid}/events", "/healthz", "/readyz",
             "/openapi.json"]
    operations = [schema[path]["GET"] for path in paths]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: list[int] = []

    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks)
        seen.append(response.status_code)

    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategies = [op.as_strategy(generation_mode=mode) for op in operations[:2] for mode in modes]
    strategies += [op.as_strategy() for op in operations[2:]]

    @hsettings(max_examples=90, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=st.one_of(strategies))
    def fuzz(case: Any) -> None:
        call(case)

    def explicit() -> None:
        for sid in (SCHEMA_SID, odd_sid):
            for op in operations[:2]:
                call(op.Case(path_parameters={"call_sid": sid}))

    with capture_logs():
        await asyncio.to_thread(explicit)
        assert seen == [200, 200, 200, 200]  # the seeded records validated against CallResponse / the events
        await asyncio.to_thread(fuzz)
    assert all(status < 500 for status in seen)


# -- the bugs this file found: one regression test each ----------------------------------------------------------


async def _post_and_burst(client: Any, consumer: Consumer, req: Req) -> int:
    with capture_logs():
        response = await req.send(client)
        await consumer.run_burst()
    return int(response.status)


@pytest.mark.parametrize("case", [
    "platform-call_sid",  # a constrained field (min_length): refused by validation since the fix
    "telnyx-call_control_id",
    "vonage-uuid",
    "platform-call_meta",
    "platform-assistant_name",
    "telnyx-from",
    "vonage-from",
])
async def test_lone_surrogate_escape_in_a_json_string_is_refused(client: Any, store: Store, case: str) -> None:
    """`"\\ud800"` is valid JSON text but no UTF-8 string: 400/422, never a 500."""
    lone = b"\\ud800"
    requests = {
        "platform-call_sid": lambda: platform_req(
            b'{"type":"call.status","call_sid":"CA' + lone + b'","data":{"status":"ringing"}}'),
        "platform-call_meta": lambda: platform_req(
            b'{"type":"call.metadata","call_sid":"CA1","data":{"call_meta":{"k":"' + lone + b'"}}}'),
        "platform-assistant_name": lambda: platform_req(
            b'{"type":"call.metadata","call_sid":"CA1","data":{"assistant_name":"' + lone + b'"}}'),
        "telnyx-call_control_id": lambda: telnyx_req(
            tx.encode(tx.hangup()).replace(tx.CALL_CONTROL_ID.encode(), b"v3:" + lone)),
        "telnyx-from": lambda: telnyx_req(tx.encode(tx.hangup()).replace(tx.CUSTOMER.encode(), lone)),
        "vonage-uuid": lambda: vonage_req(vn.encode(vn.completed()).replace(vn.CALL_UUID.encode(), lone)),
        "vonage-from": lambda: vonage_req(vn.encode(vn.completed()).replace(vn.OUR_NUMBER.encode(), lone)),
    }
    req = requests[case]()
    assert lone in req.body
    with capture_logs():
        response = await req.send(client)
    assert response.status in (400, 422)
    assert await stream_length(store) == 0


@pytest.mark.parametrize("source", ["platform", "telnyx", "vonage", "twilio", "plivo"])
async def test_timestamp_at_the_edge_of_the_datetime_range_is_not_a_500(client: Any, store: Store,
                                                                         source: str) -> None:
    """Found: OverflowError from `dt.astimezone(UTC)` in call_ledger/core/instants.py was a 500 on every source."""
    if source == "platform":
        req = platform_req(json.dumps({"type": "call.status", "call_sid": "CA1", "data": {"status": "ringing"},
                                       "occurred_at": "9999-12-31T23:59:59-23:59"}).encode())
    elif source == "telnyx":
        req = telnyx_req(tx.encode(tx.hangup(occurred_at="0001-01-01T00:00:00+23:59")))
    elif source == "vonage":
        req = vonage_req(vn.encode(vn.event("ringing", timestamp="9999-12-31T23:59:59-23:59")))
    elif source == "twilio":
        req = twilio_req("POST", tw.status_callback("ringing", timestamp="Fri, 31 Dec 9999 23:59:59 -2359"))
    else:
        req = plivo_req("POST", pl.hangup(end="9999-12-31 23:59:59-2359"))
    with capture_logs():
        response = await req.send(client)
    assert response.status in (200, 422), await response.text()


@pytest.mark.parametrize("field", ["duration", "assistant_id", "call_meta", "vonage-duration"])
async def test_integer_beyond_64_bits_never_takes_the_worker_down(client: Any, store: Store, consumer: Consumer,
                                                                   field: str) -> None:
    """Found: such an integer was stored (200), then orjson refused the call's state in Consumer._commit,
    outside the per-event error handling: the whole batch failed on every delivery, never dead-lettered."""
    big = 2**64
    if field == "duration":
        doc = {"type": "call.status", "call_sid": "CA1", "data": {"status": "completed", "duration": big}}
    elif field == "assistant_id":
        doc = {"type": "call.metadata", "call_sid": "CA1", "data": {"assistant_id": big}}
    else:
        doc = {"type": "call.metadata", "call_sid": "CA1", "data": {"call_meta": {"n": -big}}}
    req = (vonage_req(vn.encode(vn.completed(duration=big))) if field == "vonage-duration"  # type: ignore[arg-type]
           else platform_req(json.dumps(doc).encode()))
    innocent = platform_req(platform_status(call_sid="CA_innocent"))  # another call, same batch
    with capture_logs():
        response = await req.send(client)
        assert (await innocent.send(client)).status == 200
        try:
            await consumer.run_burst()
            crashed = False
        except TypeError:
            crashed = True
    # Refused at intake (422), or stored and applied (or dead-lettered) without taking the batch down.
    assert response.status in (200, 422)
    assert not crashed
    assert (await client.get(sid_path("CA_innocent"), headers=AUTH)).status == 200


@pytest.mark.parametrize("depth", [210, 300])
async def test_deeply_nested_call_meta_is_refused_or_kept(client: Any, store: Store, consumer: Consumer,
                                                          depth: int) -> None:
    """Found: 200-255 levels were stored (200) then dead-lettered as undecodable; 256+ levels were a 500."""
    doc = {"type": "call.metadata", "call_sid": "CA_deep", "data": {"call_meta": {"x": "__DEEP__"}}}
    body = json.dumps(doc).replace('"__DEEP__"', "[" * depth + "]" * depth).encode()
    status = await _post_and_burst(client, consumer, platform_req(body))
    assert status in (200, 422)
    assert await store.dead_letters() == []


async def test_unsigned_platform_request_with_a_huge_timestamp_is_401(client: Any, store: Store) -> None:
    """Found: `abs(received_at - int(webhook-timestamp))` overflowed the float: a 500 for anyone."""
    headers = {"webhook-id": "x", "webhook-timestamp": "9" * 400, "webhook-signature": "v1,x"}
    with capture_logs():
        response = await client.post("/webhooks/platform", data=b"{}", headers=headers)
    assert response.status == 401
    assert await stream_length(store) == 0


@pytest.mark.parametrize("header", ["webhook-id", "webhook-signature"])
async def test_unsigned_platform_request_with_non_utf8_header_bytes_is_401(client: Any, store: Store,
                                                                           header: str) -> None:
    """Found: header bytes arrive as surrogates (surrogateescape); a strict UTF-8 encode of them was a 500."""
    values = {"webhook-id": b"msg_1", "webhook-timestamp": str(int(time.time())).encode(),
              "webhook-signature": b"v1,abc"}
    values[header] = b"\xff\xfe" if header == "webhook-id" else b"v1,\xff\xfe"
    head = b"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in values.items()) + b"\r\n"
    with capture_logs():
        answer, _ = await _raw_exchange(client.server.port, head, b"{}")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:120]
    assert await stream_length(store) == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("source", SOURCES)
async def test_body_that_does_not_decompress_is_400(client: Any, store: Store, source: str, encoding: str) -> None:
    """Found: aiohttp's RequestPayloadError from request.read() reached no handler: a 500 for anyone."""
    with capture_logs():
        response = await client.post(f"/webhooks/{source}", data=b"not compressed at all",
                                     headers={"Content-Encoding": encoding, "Connection": "close"})
    assert response.status == 400
    assert await stream_length(store) == 0


@pytest.mark.parametrize("case", ["platform-number", "platform-string", "plivo", "telnyx", "vonage"])
async def test_amount_with_a_huge_exponent_is_422(client: Any, store: Store, case: str) -> None:
    """Found: `abs()` of a Decimal past Emax raised decimal.Overflow, which platform and Plivo did not catch."""
    if case == "plivo":
        req = plivo_req("POST", pl.hangup(total_cost="1e1000000"))
    elif case == "telnyx":
        req = telnyx_req(tx.encode(tx.cost(total_cost="1e1000000")))
    elif case == "vonage":
        req = vonage_req(vn.encode(vn.completed(price="1E+999999999")))
    else:
        cost = "1E+999999999" if case == "platform-number" else '"1e1000000"'
        req = platform_req(b'{"type":"call.usage","call_sid":"CA1","data":{"component":"llm","cost":'
                           + cost.encode() + b"}}")
    with capture_logs():
        response = await req.send(client)
    assert response.status == 422
    assert await stream_length(store) == 0


@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_call_id_with_a_line_feed_reads_back(client: Any, consumer: Consumer, suffix: str) -> None:
    """Found: the read routes' `{call_sid:.*}` did not match a line feed: the router's 404 for a stored call."""
    sid = "CA\n1"
    assert await _post_and_burst(client, consumer, platform_req(platform_status(call_sid=sid))) == 200
    assert (await client.get(sid_path(sid, suffix), headers=AUTH)).status == 200


@pytest.mark.parametrize("source", ["platform", "twilio"])
async def test_call_id_over_512_characters_is_refused_or_readable(client: Any, store: Store, consumer: Consumer,
                                                                 source: str) -> None:
    """Found: intake stored call ids of any length, but the read API answers 404 past 512 characters."""
    sid = "S" * 513
    if source == "platform":
        req = platform_req(platform_status(call_sid=sid))
    else:
        req = twilio_req("POST", tw.completed(call_sid=sid))
    status = await _post_and_burst(client, consumer, req)
    if status == 200:  # stored: then it must be readable
        assert (await client.get(sid_path(sid), headers=AUTH)).status == 200
    else:
        assert status == 422 and await stream_length(store) == 0


@pytest.mark.parametrize("segment", [0, 1, 2])
async def test_a_vonage_token_with_a_non_ascii_segment_is_401_not_an_error(client: Any, store: Store,
                                                                          segment: int) -> None:
    """Nobody signed it: a 401, and no `unhandled_error` line an attacker could flood the logs with."""
    parts = [base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("="), "eyJpYXQiOjF9",
             base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")]
    parts[segment] = parts[segment][:4] + "\u00e9" + parts[segment][4:]
    header = ("Bearer " + ".".join(parts)).encode().decode("latin-1")  # as the raw bytes arrive
    with capture_logs() as logs:
        response = await client.post("/webhooks/vonage", data=b"{}", headers={
            "Authorization": header, "Content-Type": "application/json"})
    assert response.status == 401, await response.text()
    assert (await response.json())["error"] == "invalid_signature"
    assert not [line for line in logs if line.get("log_level") == "error"], logs
    assert await stream_length(store) == 0
