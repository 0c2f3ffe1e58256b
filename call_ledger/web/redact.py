"""Keeping secrets, signatures, request lines and phone numbers out of log lines (SPEC §8).

Three pieces, from the most to the least specific:

- `mask_phone`: for code that wants to log a number, its last 4 digits only (`+15551234567` → `***4567`).
- `ForeignRecords`: every line a library writes through stdlib logging. aiohttp's messages and
  exceptions quote the request line or header they choke on, so an aiohttp record keeps only a fixed
  event name, its level, logger and exception class. Other libraries' messages and tracebacks are
  kept, with secrets redacted and digit runs that could be phone numbers masked.
- `Redactor`: the last line of defence, run on every rendered line (ours included): configured
  secret values, `Bearer …`/`Basic …` credentials and base64 runs after `…Signature:` become
  `[redacted]`. It costs one lower-casing and a few substring tests per line unless something
  matches; phone-number masking is *not* applied to our own lines, whose ids are long digit runs too.
"""

import ipaddress
import json
import re
import traceback
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import orjson

REDACTED = "[redacted]"
# Shorter configured values are not redacted: they would blank out ordinary words of every line.
MIN_SECRET_LENGTH = 8

# A credential as a rendered line shows it:
# - the keyword starts a word, or follows one of a JSON line's escapes (`\nBearer`, `\u00e9Basic`:
#   after the escape's letter or digit there is no word boundary);
# - the separator is whitespace (any, as str.split() knows it) as sent, URL-encoded, or escaped
#   as a JSON line does (`\t`, `\f`, `\u000b`...) or a repr() inside one (`\\t`), in any mix;
# - the credential stops at a backslash: a match that took the backslash of an escape
#   (`abc\"def`) would leave its quote bare and the line no longer JSON.
_KEYWORD_START = r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrtbf])|(?<=\\u[0-9a-fA-F]{4}))"
_ESCAPED_SPACE = r"\\{1,4}(?:[tnrfbv]|u00[01][0-9a-fA-F]|u00[aA]0|u0085|u20[0-2][0-9a-fA-F]|u3000|u1680|u180[eE])"
_CREDENTIAL = re.compile(rf"(?i){_KEYWORD_START}(bearer|basic)(?:\s|%20|%09|\+|{_ESCAPED_SPACE})+[^\s\"',;&\\]+")
# Bounded: `[\w-]*` rescanned from every "signature" of a long word run is quadratic.
_SIGNATURE = re.compile(r"(?i)(signature[\w-]{0,64}[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9+/=_,.\-]{16,}")
_TRIGGERS = ("bearer", "basic", "signature")
# In library text only: a run of 7+ digits (optionally after + or %2B) may be a phone number.
_DIGIT_RUN = re.compile(r"(?:\+|%2[bB])?\d{7,}")


def mask_phone(number: str | None) -> str:
    """A phone number reduced to its last 4 digits, for logs: `+15551234567` → `***4567`.

    Anything with fewer than 4 digits (or a `sip:` address without digits) becomes `***`.
    """
    digits = "".join(ch for ch in number or "" if ch.isdigit())
    return "***" + digits[-4:] if len(digits) >= 4 else "***"


def mask_digit_runs(text: str) -> str:
    """Every run of 7+ digits (a phone number, maybe URL-encoded as %2B…) masked to its last 4."""
    return _DIGIT_RUN.sub(lambda match: mask_phone(match.group()), text)


class Redactor:
    """Redacts known secrets and obvious credentials from one rendered log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        # As a JSON line shows them too: a quote, backslash or control character escaped, and
        # with ensure_ascii every non-ASCII character.
        values |= {form[1:-1] for value in list(values)
                   for form in (json.dumps(value, ensure_ascii=False), json.dumps(value))}
        ordered = sorted(values, key=len, reverse=True)
        # Substring tests on the lower-cased line are the cheap common path (about 1 µs a line); a regex
        # alternation over the same needles is some 20 times slower in CPython.
        self._needles = (*_TRIGGERS, *(value.lower() for value in ordered))
        self._secrets = re.compile("|".join(re.escape(value) for value in ordered), re.I) if ordered else None

    def clean(self, text: str) -> bool:
        """Whether the redactor would give back each line of `text` as it is: no secret, no
        credential or signature word, no line separator to escape (`_one_line`)."""
        lowered = text.lower()
        return not any(needle in lowered for needle in self._needles) and "\u2028" not in text \
            and "\u2029" not in text

    def __call__(self, line: str) -> str:
        line = _one_line(line)
        lowered = line.lower()
        for needle in self._needles:
            if needle in lowered:
                break
        else:
            return line  # the common case: nothing to look at
        redacted = self._text(line)
        if redacted != line and line[:1] == "{" and not _is_json(redacted) and _is_json(line):
            # A match cut through one of the line's escapes: redact the decoded strings instead.
            redacted = _one_line(orjson.dumps(_map_strings(orjson.loads(line), self._text)).decode())
        return redacted

    def _text(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        return _SIGNATURE.sub(lambda m: m.group(1) + REDACTED, text)

    def processor(self, logger: Any, method: str, rendered: Any) -> Any:
        """structlog processor, placed after the renderer: redacts the rendered line."""
        return self(rendered) if isinstance(rendered, str) else rendered


def _one_line(line: str) -> str:
    """JSON allows U+2028/U+2029 inside strings, but line splitters (str.splitlines, some log
    shippers) break a line there: written escaped. Free for ASCII lines (a wider character is
    never in one)."""
    if "\u2028" in line or "\u2029" in line:
        return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return line


def _is_json(line: str) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _map_strings(value: Any, redact: Callable[[str], str]) -> Any:
    """`value` (decoded JSON) with `redact` applied to every string in it, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(key): _map_strings(item, redact) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, redact) for item in value]
    return value


def _peer(args: object) -> str | None:
    """The peer address aiohttp passes as its message argument, if it is one (never free text)."""
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        try:
            return str(ipaddress.ip_address(args[0]))
        except ValueError:
            return None
    return None


class ForeignRecords:
    """structlog `foreign_pre_chain` processor for stdlib records (aiohttp, asyncio, redis, …)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redact = redactor

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        record = event_dict.get("_record")
        name = getattr(record, "name", "") or ""
        args = event_dict.pop("positional_args", None)
        exc_info = event_dict.pop("exc_info", None)
        event_dict.pop("stack_info", None)
        exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
        event_dict["logger"] = name
        if name == "aiohttp" or name.startswith("aiohttp."):
            # "Error handling request from %s" with a BadStatusLine quoting the line, "Can not load
            # cookies: Illegal cookie name %r", ...: the text is the leak, so none of it is kept.
            message = str(getattr(record, "msg", ""))
            protocol = message.startswith("Error handling request")
            event_dict["event"] = "http_protocol_error" if protocol else "http_library_message"
            if protocol and (peer := _peer(args)):
                event_dict["peer"] = peer
            if exc is not None:
                event_dict["error"] = type(exc).__name__
            return event_dict
        event_dict["event"] = mask_digit_runs(self._redact(str(event_dict.get("event", ""))))
        if exc is not None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            event_dict["exception"] = mask_digit_runs(self._redact(text))
        return event_dict
