"""Bearer tokens for the read API: compared as SHA-256 digests, in constant time.

Configured tokens are hashed when settings are built (`sha256:<hex>` entries are
digests already), so no plain token is kept in memory longer than that. A token may
be scoped to one organization (SPEC §10): `check_bearer` returns that scope, and every
read route shows a scoped caller only its organization's calls.
"""

import hashlib
import hmac

from call_ledger.core.errors import Unauthorized
from call_ledger.settings import ApiToken

# Sentinel for "no token matched" that no organization id can equal.
_NO_MATCH = -1


def check_bearer(header: str | None, tokens: tuple[ApiToken, ...]) -> int | None:
    """The caller's scope: its organization id, or None for an unscoped token (every call).

    Raises Unauthorized unless `header` is `Bearer <token>` with a configured token.
    """
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("expected Authorization: Bearer <token>")
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    scope: int | None = _NO_MATCH
    for configured in tokens:  # no early exit: the time taken says nothing about which token
        if hmac.compare_digest(presented, configured.digest) and scope == _NO_MATCH:
            scope = configured.organization_id
    if scope == _NO_MATCH:
        raise Unauthorized("invalid token")
    return scope


def may_see(organization_id: object, scope: int | None) -> bool:
    """Whether a caller of this scope may see a call of this organization (SPEC §10): an unscoped
    token every call; a scoped one only its organization's (a call with no organization yet,
    None, is nobody's). The one scope check of every route: it takes the organization alone
    (`StoredCall.organization_id`: one field of the call's hash), so no route decodes a call
    to check it."""
    return scope is None or (organization_id is not None and organization_id == scope)
