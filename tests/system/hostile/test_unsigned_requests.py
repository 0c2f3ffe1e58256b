"""Hostile requests that carry no valid signature (or a wrong one) at every intake route: junk headers,
bodies, queries and raw header bytes no client library would send, tampered signatures, other methods.
The service and the signers: tests/support/hostile.py."""

import base64
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
from hypothesis import event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from multidict import CIMultiDict
from structlog.testing import capture_logs
from yarl import URL

from call_ledger.store import Store
from tests.support import payloads_plivo as pl
from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.hostile import (
    FUZZ,
    ROUTE_IDS,
    ROUTES,
    SOURCES,
    Req,
    platform_status,
    raw_exchange,
    request_head,
    sample,
    stream_length,
    valid_request,
)

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
    head = request_head(Req(method, req.url, headers, req.body), len(req.body)).replace(b"\x00", value)
    with capture_logs():
        answer, _ = await raw_exchange(client.server.port, head, req.body)
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
