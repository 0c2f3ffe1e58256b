"""Bearer tokens for the read API: compared as SHA-256 digests, in constant time.

Configured tokens are hashed when settings are built (`sha256:<hex>` entries are
digests already), so no plain token is kept in memory longer than that.
"""

import hashlib
import hmac

from ledger.errors import Unauthorized


def check_bearer(header: str | None, digests: tuple[bytes, ...]) -> None:
    """Raise Unauthorized unless `header` is `Bearer <token>` with a configured token."""
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("expected Authorization: Bearer <token>")
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    matched = False
    for digest in digests:  # no early exit: the time taken says nothing about which token
        matched |= hmac.compare_digest(presented, digest)
    if not matched:
        raise Unauthorized("invalid token")
