"""No secret, token, signature, request line or phone number reaches the logs (SPEC §8), library lines included."""

import base64
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from call_ledger.web.logs import configure_logging
from call_ledger.web.redact import Redactor, mask_digit_runs, mask_phone
from tests.support.polling import until_sync
from tests.support.redis_server import free_port
from tests.support.service import start_service, stop
from tests.support.settings import API_TOKEN, PLATFORM_SECRET
from tests.support.signing import sign_platform

PHONE = "+15551234567"
DIGITS = "5551234567"
TWILIO_TOKEN = "twilio-auth-" + secrets.token_hex(12)
PLIVO_TOKEN = "plivo-auth-" + secrets.token_hex(12)
VONAGE_SECRET = "vonage-sig-" + secrets.token_hex(12)
SECOND_TOKEN = "second-api-token-" + secrets.token_hex(8)
TELNYX_KEY = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes(
    Encoding.Raw, PublicFormat.Raw)).decode()
TWILIO_SIGNATURE = base64.b64encode(secrets.token_bytes(20)).decode()  # looks real, is wrong
PLIVO_SIGNATURE = base64.b64encode(secrets.token_bytes(32)).decode()
TELNYX_SIGNATURE = base64.b64encode(secrets.token_bytes(64)).decode()
FAKE_JWT = "eyJhbGciOiJIUzI1NiJ9." + base64.urlsafe_b64encode(b'{"iat":1}').decode().rstrip("=") + ".c2lnbmF0dXJl"

SECRETS = [API_TOKEN, SECOND_TOKEN, PLATFORM_SECRET, PLATFORM_SECRET.removeprefix("whsec_"), TWILIO_TOKEN,
           PLIVO_TOKEN, VONAGE_SECRET, TELNYX_KEY, TWILIO_SIGNATURE, PLIVO_SIGNATURE, TELNYX_SIGNATURE, FAKE_JWT]


def hostile_requests(port: int) -> list[bytes]:
    """Malformed (and some well-formed) requests carrying the secrets, tokens, signatures and a phone number."""
    host = f"Host: 127.0.0.1:{port}\r\n"
    form = f"CallSid=CA{'0' * 32}&From=%2B1{DIGITS}&To=%2B1{DIGITS}&CallStatus=ringing".encode()
    requests = []
    for token in (API_TOKEN, SECOND_TOKEN, VONAGE_SECRET, FAKE_JWT):
        for bad in ("\x01", "\x00", "\x7f", "\x1b[31m", "\xe9", "\r", " \x0b"):
            requests.append(f"GET /api/v1/calls/sid/CA1 HTTP/1.1\r\n{host}Authorization: Bearer {token}{bad}\r\n\r\n"
                            .encode("latin-1"))
        requests.append(f"GET /api/v1/calls/sid/CA1 HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n"
                        f"X-Pad: {'a' * 9000}\r\n\r\n".encode())  # oversized header after the token
        requests.append(f"GET /api/v1/calls/sid/CA1 HTTP/1.1\r\n{host}Authorization: Bearer {token}"
                        f"{'b' * 9000}\r\n\r\n".encode())  # oversized header holding the token
        requests.append(f"GET /api/v1/calls/sid/CA1 HTTP/1.1\r\n{host}Authorization: Bearer {token}x\r\n\r\n"
                        .encode())  # well-formed, wrong token: 401
        requests.append(f"GET /x?token={token}\x01 HTTP/1.1\r\n{host}\r\n".encode())
        requests.append(f"POST /webhooks/platform HTTP/1.1\r\n{host}Content-Length: {token}\r\n\r\n".encode())
        requests.append(f"GET /healthz HTTP/1.1\r\n{host}Cookie: {token}\x01=1\r\n\r\n".encode())
    for line in (f"GET /webhooks/twilio?From=%2B1{DIGITS}&x=\x01 HTTP/1.1", f"GET /x?From=%2B1{DIGITS} HTTP/1.1 junk",
                 f"GET /x?From={PHONE} HTTP/9.9", f"G\x01T /?To=1{DIGITS} HTTP/1.1", f"GET /?To=1{DIGITS}",
                 f"GET /webhooks/twilio?From=%2B1{DIGITS}\x00 HTTP/1.1", f"{PHONE} / HTTP/1.1",
                 f"GET /{'x' * 9000}{DIGITS} HTTP/1.1", f"GET /webhooks/plivo?From={PHONE}&\xff HTTP/1.1"):
        requests.append(f"{line}\r\n{host}\r\n".encode("latin-1"))
    for signature_header in (f"X-Twilio-Signature: {TWILIO_SIGNATURE}", f"X-Twilio-Signature: {TWILIO_SIGNATURE}\x01",
                             f"X-Twilio-Signature: {TWILIO_SIGNATURE}\xff", f"X-Twilio-Signature: {TWILIO_TOKEN}",
                             f"X-Plivo-Signature-V3: {PLIVO_SIGNATURE}\r\nX-Plivo-Signature-V3-Nonce: 12345",
                             f"X-Plivo-Signature-V3: {PLIVO_SIGNATURE}\x02"):
        path = "/webhooks/plivo" if "Plivo" in signature_header else "/webhooks/twilio"
        requests.append((f"POST {path}?From=%2B1{DIGITS} HTTP/1.1\r\n{host}Content-Type: "
                         f"application/x-www-form-urlencoded\r\n{signature_header}\r\n"
                         f"Content-Length: {len(form)}\r\n\r\n").encode("latin-1") + form)
    telnyx = json.dumps({"data": {"id": "x", "event_type": "call.initiated",
                                  "payload": {"call_control_id": "v3:x", "from": PHONE, "to": PHONE}}}).encode()
    for extra in ("", "\x01"):
        requests.append((f"POST /webhooks/telnyx HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                         f"telnyx-signature-ed25519: {TELNYX_SIGNATURE}{extra}\r\n"
                         f"telnyx-timestamp: {int(time.time())}\r\n"
                         f"Content-Length: {len(telnyx)}\r\n\r\n").encode("latin-1") + telnyx)
        requests.append((f"POST /webhooks/vonage HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                         f"Authorization: Bearer {FAKE_JWT}{extra}\r\nContent-Length: {len(telnyx)}\r\n\r\n")
                        .encode("latin-1") + telnyx)
    requests.append(f"POST /webhooks/platform HTTP/1.1\r\n{host}Content-Length: 12, {DIGITS}\r\n\r\n".encode())
    requests.append(f"POST /webhooks/platform HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"
                    f"{DIGITS}zz\r\n".encode())
    requests.append(f"GET /healthz HTTP/1.1\r\n{host}X-Phone\x01: {PHONE}\r\n\r\n".encode())
    requests.append(f"GET /healthz HTTP/1.1\r\n{host}{PHONE}: {PLATFORM_SECRET}\x01\r\n\r\n".encode())
    return requests


def send_raw(port: int, data: bytes) -> None:
    """Send one raw request and read the answer head (or until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        try:
            sock.sendall(data)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError:  # reset: the server gave up on it, which is fine
            pass


def signed_platform_metadata(port: int) -> None:
    """An authentic platform event carrying phone numbers: stored, applied, and still no number logged."""
    body = json.dumps({"type": "call.metadata", "call_sid": "CA-phones", "occurred_at": "2026-11-24T10:00:00Z",
                       "data": {"to_phone_number": PHONE, "customer_phone_number": f"+4420{DIGITS}",
                                "call_meta": {"note": PHONE}}}).encode()
    headers = "".join(f"{k}: {v}\r\n" for k, v in sign_platform(body, "wh-phones").items())
    send_raw(port, (f"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body)


def test_hostile_requests_leave_no_secret_signature_or_phone_number_in_any_output_line() -> None:
    port = free_port()
    proc = start_service(
        "serve", LEDGER_PORT=str(port), LEDGER_LOG_LEVEL="debug", LEDGER_LOG_FORMAT="json",
        LEDGER_API_TOKENS=f"{API_TOKEN},{SECOND_TOKEN}", LEDGER_PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET,
        LEDGER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN, LEDGER_PLIVO_AUTH_TOKEN=PLIVO_TOKEN, LEDGER_TELNYX_PUBLIC_KEY=TELNYX_KEY,
        LEDGER_VONAGE_SIGNATURE_SECRET=VONAGE_SECRET, LEDGER_PUBLIC_URL=f"http://127.0.0.1:{port}")
    try:
        for request in hostile_requests(port):
            send_raw(port, request)
        signed_platform_metadata(port)
        # the worker's line for it is part of what is checked: wait until it is written
        until_sync(lambda: '"event_applied"' in proc.output(), timeout=10, what="the worker's event_applied line")
    finally:
        err = proc.errors()  # stop() discards stderr: read it first
        code, out, _took = stop(proc)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every stdout line is JSON
    events = [line["event"] for line in lines]
    assert events.count("http_protocol_error") >= 40, events  # the malformed ones were seen, and logged safely
    assert "event_applied" in events  # the authentic event with numbers went all the way through
    for text in (out, err):
        for secret in SECRETS:
            assert secret not in text, f"a secret reached the output: {secret[:6]}…"
        assert DIGITS not in text, [line for line in text.splitlines() if DIGITS in line][:3]
        assert "Bearer" not in text


def test_library_lines_keep_only_a_safe_event_name(capsys: Any) -> None:
    """The last line of defence, without a process: aiohttp's record and another library's traceback."""
    configure_logging("json", "info", secrets=[TWILIO_TOKEN])
    try:
        try:
            raise ValueError(f"Invalid header value char: b'Authorization: Bearer {API_TOKEN}\\x01' From=%2B1{DIGITS}")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
            logging.getLogger("asyncio").exception("Task failed for %s with %s", PHONE, TWILIO_TOKEN)
        logging.getLogger("aiohttp.internal").warning("Can not load cookies: Illegal cookie name %r", API_TOKEN)
        structlog.get_logger("ledger").info("odd_line", detail=f"X-Twilio-Signature: {TWILIO_SIGNATURE}",
                                            auth=f"Bearer {API_TOKEN}", token=TWILIO_TOKEN)
        out = capsys.readouterr().out
    finally:
        # Back to a console chain, in the list every module's logger holds (call_ledger.web.logs): not
        # structlog.reset_defaults(), whose new list the loggers bound already would not see.
        configure_logging("console", "info")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == ["http_protocol_error", "Task failed for ***4567 with [redacted]",
                                                 "http_library_message", "odd_line"]
    assert lines[0] == {**lines[0], "logger": "aiohttp.server", "peer": "127.0.0.1", "error": "ValueError"}
    assert "ValueError" in lines[1]["exception"]  # other libraries keep their traceback, redacted
    for secret in (API_TOKEN, TWILIO_TOKEN, TWILIO_SIGNATURE, DIGITS):
        assert secret not in out


def test_mask_phone_keeps_the_last_four_digits() -> None:
    assert mask_phone("+15551234567") == "***4567"
    assert mask_phone("15551234567") == "***4567"
    assert mask_phone("sip:alice@example.com") == "***"
    assert mask_phone("") == "***"
    assert mask_phone(None) == "***"
    assert mask_digit_runs("From=%2B15551234567&To=447700900123") == "From=***4567&To=***0123"


def test_redactor_leaves_ordinary_lines_untouched_and_redacts_credentials() -> None:
    redactor = Redactor([TWILIO_TOKEN, "short"])  # values under 8 characters are not redacted
    ordinary = '{"call_sid":"CA1","event_id":"1732000000000-0","outcome":"rejected_signature","event":"short"}'
    assert redactor(ordinary) == ordinary
    assert redactor(f"t={TWILIO_TOKEN.upper()} authorization: bearer abc.def") == \
        "t=[redacted] authorization: bearer [redacted]"
    assert redactor(f'"x-plivo-signature-v3":"{PLIVO_SIGNATURE}"') == '"x-plivo-signature-v3":"[redacted]"'


@pytest.mark.parametrize("header", [
    "Bearer\t" + "tok_secret_abc",  # orjson renders the tab `\t`
    "Bearer\t " + "tok_secret_abc",  # tab then space (HTTP's optional whitespace allows both)
    "Bearer\n " + "tok_secret_abc",
    "Bearer\x0b" + "tok_secret_abc",  # vertical tab: `\u000b`
    "Bearer\x0c" + "tok_secret_abc",  # form feed: `\f`
    "Bearer\x08" + "tok_secret_abc",  # backspace: `\b`
    "Bearer\x1f" + "tok_secret_abc",  # unit separator (str.split() splits on it): `\u001f`
    "Basic\u00a0" + "tok_secret_abc",
    "Bearer%09" + "tok_secret_abc",
    repr("Basic\t" + "tok_secret_abc"),  # a repr() quoted in a message: `\\t` once rendered
])
@pytest.mark.parametrize("dumps", [lambda v: orjson.dumps(v).decode(), json.dumps,
                                   lambda v: json.dumps(v, ensure_ascii=False)])
def test_redactor_catches_credentials_whose_separator_a_rendered_line_escaped(header: str, dumps: Any) -> None:
    redactor = Redactor()
    line = dumps({"event": "x", "detail": header})
    assert "tok_secret_abc" not in redactor(line), redactor(line)


# Values a sender controls (a platform call_sid or webhook-id, a Telnyx call id) that once made
# the redactor cut through a JSON escape and leave the line invalid.
HOSTILE_VALUES = ['bearer abc"def', 'basic\\tfoo\\"x', 'Bearer x","level":"error', 'bearer \\', "basic \\u0041",
                  'Bearer "', "x\u2028y", "bearer\u2029z"]


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def msg(self, line: str) -> None:
        self.lines.append(line)


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_per_event_line_stays_one_json_line_whatever_the_ids(value: str) -> None:
    from call_ledger.web.logs import EventLines, UtcStamper

    sink = _Lines()
    lines = EventLines((), UtcStamper(), Redactor(["whsec_0123456789abcdef"]), sink)  # type: ignore[arg-type]
    lines("webhook_received", {"source": "platform", "call_sid": value, "event_id": value, "outcome": "stored"})
    (line,) = sink.lines
    assert len(line.splitlines()) == 1
    decoded = json.loads(line)
    assert decoded["event"] == "webhook_received" and decoded["outcome"] == "stored"
    assert "abc" not in line and "foo" not in line  # the credentials themselves are gone


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4),
       st.sampled_from(["bearer ", "Basic\t", "BEARER\n", "signature=", "tok_secret_abcdef", ""]),
       st.text(alphabet='"\\ \t\nabc/=+', max_size=12))
def test_the_redactor_never_makes_a_json_line_invalid(fields: dict[str, str], trigger: str, tail: str) -> None:
    redactor = Redactor(["tok_secret_abcdef", 'quote"secret\\x'])
    fields = {**fields, "detail": trigger + tail}
    for line in (orjson.dumps(fields).decode(), json.dumps(fields)):
        out = redactor(line)
        assert isinstance(json.loads(out), dict), out
        assert "tok_secret_abcdef" not in out


def test_a_configured_secret_is_redacted_as_a_json_line_escapes_it() -> None:
    secret = 'pa"ss\\word-ünïcode'
    redactor = Redactor([secret])
    for line in (orjson.dumps({"x": f"k={secret}"}).decode(), json.dumps({"x": f"k={secret}"})):
        out = redactor(line)
        assert json.loads(out) == {"x": "k=[redacted]"}, out


def test_serve_lines_stay_json_with_a_hostile_webhook_id(redis_server: Any) -> None:
    """End to end: a signed platform event whose webhook-id holds `bearer q"z` (accepted: the
    sender chose it) gives valid JSON lines in intake's and the worker's output."""
    proc = start_service("serve", LEDGER_REDIS_URL=redis_server.url, LEDGER_LOG_FORMAT="json")
    port = proc.port
    try:
        body = json.dumps({"type": "call.status", "call_sid": "CA-hostile-id", "occurred_at": "2026-11-24T10:00:05Z",
                           "data": {"status": "ongoing"}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/platform", data=body, method="POST",
                                         headers=sign_platform(body, 'wid-bearer q"z', secret=PLATFORM_SECRET))
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        for _ in range(400):  # until the worker has applied it (20 s at most)
            found = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/calls/sid/CA-hostile-id",
                                           headers={"Authorization": f"Bearer {API_TOKEN}"})
            try:
                with urllib.request.urlopen(found, timeout=10):
                    break
            except urllib.error.HTTPError:
                time.sleep(0.05)
    finally:
        code, out, _ = stop(proc)
    assert code == 0
    lines = [json.loads(line) for line in out.split("\n") if line.strip()]  # each one JSON
    events = [line["event"] for line in lines if line.get("call_sid") == "CA-hostile-id"]
    assert "webhook_received" in events and "event_applied" in events


def test_a_secret_that_only_seems_to_follow_an_escape_is_left_and_the_line_kept_json() -> None:
    """`\\n` then `abcdefghij` is not the secret `nabcdefghij`: the text match across the escape
    would have made `\\[redacted]`; redacting the decoded strings instead leaves it as it is."""
    line = orjson.dumps({"x": "\nabcdefghij", "y": "nabcdefghij"}).decode()
    assert json.loads(Redactor(["nabcdefghij"])(line)) == {"x": "\nabcdefghij", "y": "[redacted]"}


@pytest.mark.parametrize("before", ["\n", "\t", "\r\n", "\f", "\u00e9", "\u0001", "x=", "(", " "])
@pytest.mark.parametrize("dumps", [lambda v: orjson.dumps(v).decode(), json.dumps])
def test_a_credential_right_after_an_escaped_character_is_redacted(before: str, dumps: Any) -> None:
    """`\nBearer tok` as a JSON line shows it: the escape's letter leaves no word boundary."""
    for keyword in ("Bearer", "basic"):
        line = dumps({"error": f"x{before}{keyword} tok_secret_abc"})
        assert "tok_secret_abc" not in Redactor()(line), line


def test_ordinary_words_that_contain_the_keywords_are_left_alone() -> None:
    line = orjson.dumps({"note": "basically fine, bearerless, nonbasic words"}).decode()
    assert Redactor()(line) == line


def test_a_line_redone_on_its_decoded_strings_still_escapes_line_separators() -> None:
    line = orjson.dumps({"note": "\tabcdefgh", "name": "a\u2028b\u2029c"}).decode()
    out = Redactor(["tabcdefgh"])(line)
    assert len(out.splitlines()) == 1 and json.loads(out) == {"note": "\tabcdefgh", "name": "a\u2028b\u2029c"}


def test_a_secret_that_is_not_valid_unicode_does_not_stop_the_redactor() -> None:
    redactor = Redactor(["\ud800abcdefgh", "plainsecret1"])  # an environment variable's undecodable bytes
    assert redactor('{"x":"plainsecret1"}') == '{"x":"[redacted]"}'
