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

Intake claims every verified request's signature. A request that parses claims it with its append
(`claim_and_append`, which picks the way the store's topology allows). On one server it claims
it in its XADD's own script (call_ledger/store/append_batcher.py, `claim_and_xadd`: one round trip; a
503 claims nothing in Redis); otherwise (refused at parse, ignored, or on a Cluster, where the two keys
are in different slots) it calls `remember` before answering or before the XADD: if the XADD
then fails (503), the provider's retry carries the same parameters and passes.

A claim that reached no Redis (the request was answered 503: Redis down, or no answer in
time) is held in this process (`hold`) until one lands: until then the same signature with
other parameters is answered 503 here before anything is sent (intake's ClaimPending: Redis,
not this process, decides which use stands), so a captured copy re-split and delivered
between the 503 and the provider's retry cannot take the signature through this process. The held
claims are written to Redis as soon as it answers again (`land_held`, every 100 ms while any
are held), first claim wins, so every process sees them. What a process holds is lost if it
stops before Redis is back, and at most `HELD_CLAIMS` are held (the oldest go first).
"""

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable
from itertools import islice
from typing import Any, TypeVar

import structlog
from redis.exceptions import ResponseError

from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.replay import SignatureUse
from call_ledger.store.append_batcher import AppendBatcher
from call_ledger.store.errors import redis_failure, unavailable_on_error
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua

log = structlog.get_logger("ledger.signature_ledger")
T = TypeVar("T")

# Claims held while Redis is unreachable: ~250 B each (a 43-character identity, a 32-byte
# digest, the dict's slot), so about 12 MB at most; past it the oldest are given up.
HELD_CLAIMS = 50_000
LAND_EVERY_S = 0.1
LAND_CHUNK = 1000

# GET-or-SET for servers without SET NX GET (Redis < 7.0).
REMEMBER = Lua("remember.lua")


class SignatureLedger:
    """`remember(use)`: True unless the signature was already used with other parameters."""

    def __init__(self, redis: Any, prefix: str = "cl", ttl_s: int = 7 * 86_400,
                 batcher: AppendBatcher | None = None) -> None:
        self.redis = redis
        self.batcher = batcher
        self.ttl_s = ttl_s
        self._keys = Keys(prefix)
        self._set_nx_get = True  # until the server says it cannot
        self._held: OrderedDict[str, bytes] = OrderedDict()  # identity -> digest, first claim first

    def key(self, identity: str) -> str:
        return self._keys.signature(identity)

    # -- claims that reached no Redis ------------------------------------------------------

    def held_elsewhere(self, use: SignatureUse) -> bool:
        """True if this signature's claim is held here with other parameters (defer it: 503)."""
        held = self._held.get(use.identity)
        return held is not None and held != use.params_digest

    def hold(self, use: SignatureUse) -> None:
        """Hold the claim of a request answered 503 (the first one for a signature stays)."""
        if use.identity in self._held:
            return
        self._held[use.identity] = use.params_digest
        if len(self._held) > HELD_CLAIMS:
            self._held.popitem(last=False)
            log.warning("signature_claim_dropped", held=HELD_CLAIMS)

    def answered(self, use: SignatureUse) -> None:
        """Redis answered this signature's claim: it holds a digest for it now, held or not."""
        self._held.pop(use.identity, None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def land_held(self) -> int:
        """Write the held claims to Redis (first claim wins); how many landed as held. A chunk's
        claims go out together (one pipeline through the batcher, confirmed like any claim under
        LEDGER_DURABLE_ACK); StoreUnavailable (Redis still away) is raised once the chunk's other
        answers are taken, and what got none stays held."""
        landed = 0
        while self._held:
            uses = [SignatureUse(identity, digest) for identity, digest in islice(self._held.items(), LAND_CHUNK)]
            answers = await asyncio.gather(*(self.remember(use) for use in uses), return_exceptions=True)
            failure = None
            for answer in answers:
                if isinstance(answer, BaseException):
                    failure = failure or answer
                    continue
                if answer:  # remember let the claim go either way
                    landed += 1
                else:  # another process took the signature first, with other parameters
                    log.warning("signature_claim_taken_elsewhere")
            if failure is not None:
                if landed:
                    log.info("signature_claims_landed", claims=landed)
                raise failure
        if landed:
            log.info("signature_claims_landed", claims=landed)
        return landed

    async def land_held_forever(self) -> None:
        """The service's background task: land the held claims as soon as Redis answers again.
        Until they land, another process could take a held signature with other parameters:
        so they are tried often, and a chunk at a time."""
        while True:
            await asyncio.sleep(LAND_EVERY_S)
            if self._held:
                try:
                    await self.land_held()
                except StoreUnavailable:
                    continue
                except Exception as exc:  # a bug must not end the task: the claims stay held, retried
                    log.error("signature_claims_not_landed", error=type(exc).__name__)

    async def remember(self, use: SignatureUse) -> bool:
        """Remember the signature with these parameters; False if it is known with other ones.
        Failures are StoreUnavailable (503), and the claim is then held here until it lands."""
        return await self._settle(use, self._claim(use))

    async def append_claimed(self, store: Any, event_json: bytes, call_sid: str, use: SignatureUse) -> str | None:
        """`Store.append_claimed` with this ledger's key and TTL (one server: the claim and the XADD
        in one script): the entry id, or None if the signature is known with other parameters.
        A 503 holds the claim here, as `remember` does."""
        return await self._settle(use, store.append_claimed(event_json, call_sid, self.key(use.identity),
                                                            use.params_digest, self.ttl_s))

    async def claim_and_append(self, store: Any, event_json: bytes, call_sid: str, use: SignatureUse | None) -> bool:
        """Claim the request's signature (if it is signed) and append its event, in the way the
        store's topology allows; False, and nothing stored, if the signature is known with other
        parameters. A 503 holds the claim here either way, so the provider's retry with the same
        parameters passes and a re-split does not."""
        if use is not None and store.claims_with_append:
            # One server: the claim and the XADD in one script, one round trip.
            return await self.append_claimed(store, event_json, call_sid, use) is not None
        # A Cluster (the two keys are in different slots): claimed before the XADD; if the XADD
        # then fails (503), the retry carries the same parameters and passes.
        if use is not None and not await self.remember(use):
            return False
        await store.append(event_json, call_sid)
        return True

    async def _settle(self, use: SignatureUse, claim: Awaitable[T]) -> T:
        """Await a claim of `use`: held if it reached no Redis (StoreUnavailable), let go once
        Redis answered it (Redis holds a digest for it then, this one or another)."""
        try:
            answer = await claim
        except StoreUnavailable:
            self.hold(use)
            raise
        self.answered(use)
        return answer

    async def _claim(self, use: SignatureUse) -> bool:
        if self.batcher is not None and self._set_nx_get:
            key = self.key(use.identity)
            try:  # bounded in time by the batcher's tick, not one timeout per request
                previous = await self.batcher.set_nx_get(key, use.params_digest, self.ttl_s)
            except ResponseError as exc:
                if "syntax" not in str(exc).lower():
                    raise redis_failure(exc) from exc
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
            previous = await REMEMBER.eval(self.redis, [key], [use.params_digest, self.ttl_s])
        return previous is None or bytes(previous) == use.params_digest
