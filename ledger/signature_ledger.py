"""The signature ledger: each accepted Twilio/Plivo signature, remembered with its parameters.

One Redis string per signature, keyed by the signature itself (not by call: a re-split
can change the call id):

    cl:sig:<identity>   the params digest (32 bytes), expiring after LEDGER_SIGNATURE_TTL_S

`SET key digest NX GET EX ttl` answers in one round trip, on one key (so it works on a
Redis Cluster and on the embedded fakeredis): nothing there → remembered, go on; the same
digest → the very same request redelivered, go on (its event id dedupes it); another
digest → the signature is being reused with other parameters. Redis before 7.0 refuses
NX together with GET: a one-key Lua script does the same there.

In the service the `SET` goes through the store's AppendBatcher: the signed requests of one
event-loop tick share one round trip (with that tick's XADDs).

Intake claims every verified request's signature. On one server a request that parses claims
it in its XADD's own script (ledger/append_batcher.py, `claim_and_xadd`: one round trip; a
503 claims nothing); otherwise (refused at parse, ignored, or on a Cluster, where the two keys
are in different slots) it calls `remember` before answering or before the XADD: if the XADD
then fails (503), the provider's retry carries the same parameters and passes.
"""

from typing import Any

from redis.exceptions import ResponseError

from ledger.append_batcher import AppendBatcher
from ledger.errors import StoreUnavailable
from ledger.replay import SignatureUse
from ledger.store import unavailable_on_error

# GET-or-SET for servers without SET NX GET (Redis < 7.0).
_REMEMBER_LUA = """
local previous = redis.call('GET', KEYS[1])
if previous then return previous end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class SignatureLedger:
    """`remember(use)`: True unless the signature was already used with other parameters."""

    def __init__(self, redis: Any, prefix: str = "cl", ttl_s: int = 7 * 86_400,
                 batcher: AppendBatcher | None = None) -> None:
        self.redis = redis
        self.batcher = batcher
        self.ttl_s = ttl_s
        self._prefix = f"{prefix}:sig:"
        self._set_nx_get = True  # until the server says it cannot

    def key(self, identity: str) -> str:
        return self._prefix + identity

    async def remember(self, use: SignatureUse) -> bool:
        """Remember the signature with these parameters; False if it is known with other ones.
        Failures are StoreUnavailable (503)."""
        if self.batcher is not None and self._set_nx_get:
            key = self.key(use.identity)
            try:  # bounded in time by the batcher's tick, not one timeout per request
                previous = await self.batcher.set_nx_get(key, use.params_digest, self.ttl_s)
            except ResponseError as exc:
                if "syntax" not in str(exc).lower():
                    raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
                self._set_nx_get = False
            else:
                return previous is None or bytes(previous) == use.params_digest
        return await self._remember(use)

    @unavailable_on_error
    async def _remember(self, use: SignatureUse) -> bool:
        key = self.key(use.identity)
        if self._set_nx_get:
            try:
                previous = await self.redis.set(key, use.params_digest, nx=True, get=True, ex=self.ttl_s)
            except ResponseError as exc:
                if "syntax" not in str(exc).lower():
                    raise
                self._set_nx_get = False
        if not self._set_nx_get:
            previous = await self.redis.eval(_REMEMBER_LUA, 1, key, use.params_digest, self.ttl_s)
        return previous is None or bytes(previous) == use.params_digest
