"""Standard Webhooks, both ways: the platform's events come in signed with it (SPEC §6) and call-ledger's
own messages go out signed with it (SPEC §15).

Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 under the key that a secret
`whsec_<base64>` names; `webhook-signature` lists space-separated `v1,<base64>` entries, one per key the
sender holds (two while a secret is being rotated), and one match is enough.
"""

import base64
import binascii
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for at least 24 random bytes


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret. ValueError (naming no part of the secret) if it is not one."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not whsec_ followed by base64") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def new_secret() -> str:
    """A fresh `whsec_` secret from the operating system's random source."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def expected_signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    """The base64 HMAC of one message under one key (the part after `v1,`)."""
    # surrogateescape: header bytes that are not UTF-8 reach us as surrogates; they are
    # signed (and compared) as the bytes they were, never a crash.
    signed = f"{webhook_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())


def signature_header(keys: list[bytes], webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value that signs a message under every key given, newest first."""
    return " ".join("v1," + expected_signature(key, webhook_id, timestamp, body).decode() for key in keys)
