"""The opaque text of every paging cursor the API hands out, and its strict reading.

A cursor is URL-safe base64 without padding of a short text the page's reader needs (an order
member, a score and a record id). It is read back only in exactly the form it was written:
the base64 alphabet and nothing else, within a length bound, and canonical (re-encoding what it
decodes to gives the same text). Whatever the pieces inside it are checked against
(`call_ledger.core.indexes.decode_cursor`, `api.views.decode_cursor`), a forged cursor is then refused as
malformed (422) before it reaches Redis, which parses numbers more strictly than Python does
(`float("1_0")` is 10; ZCOUNT calls `1_0` not a float: a 503).
"""

import base64
import binascii
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(cursor: str, max_chars: int) -> bytes:
    """The bytes a cursor of `encode` stands for; ValueError for anything `encode` cannot have
    written: too long, another alphabet, padding, or a non-canonical form."""
    if not cursor or len(cursor) > max_chars or not _ALPHABET.fullmatch(cursor):
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a cursor") from None
    if encode(raw) != cursor:  # a length no encoding has, or stray bits in its last character
        raise ValueError("not a cursor")
    return raw
