"""The webhook endpoints (SPEC §15): one hash, `cl:wh:endpoints`, endpoint id -> its JSON (call_ledger.core.endpoints
makes and reads it).

One hash because they are few (LEDGER_MAX_ENDPOINTS per organization) and read whole: by the routes' lists and by
delivery's fan-out (`all`, cached there). The two writes that depend on what is stored are scripts, so that they
hold with any number of API processes: `create` counts the organization's endpoints and adds one in one step (two
creates at once cannot both pass the limit), and `rotate` writes the rotated endpoint only if it is still the one
it read (a rotation or a delete in between makes it read again).
"""

from typing import Any

from call_ledger.core.endpoints import decode, encode, organization_tag, rotated
from call_ledger.core.errors import EndpointBusy
from call_ledger.core.outbound import Endpoint
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua

CREATE = Lua("endpoint_create.lua")
SWAP = Lua("endpoint_swap.lua")
# A rotation that keeps losing to concurrent ones gives up rather than spin: each loss means another rotation won.
ROTATE_TRIES = 5


class Endpoints:
    """`store.endpoints`: create, read, rotate and delete webhook endpoints."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.endpoints

    async def create(self, endpoint: Endpoint, limit: int) -> bool:
        """Store a new endpoint; False (nothing stored) when its organization already has `limit` endpoints (the
        unscoped tokens' endpoints, of no organization, count as one organization)."""
        created = await CREATE.run(self.redis, [self.key], [endpoint.id, encode(endpoint),
                                                            organization_tag(endpoint.organization_id), limit])
        return bool(created)

    async def get(self, endpoint_id: str) -> Endpoint | None:
        raw = await self.redis.hget(self.key, endpoint_id)
        return decode(raw) if raw is not None else None

    async def all(self) -> list[Endpoint]:
        """Every endpoint, oldest first (ties by id): the order the list route shows."""
        endpoints = [decode(raw) for raw in (await self.redis.hgetall(self.key)).values()]
        return sorted(endpoints, key=lambda endpoint: (endpoint.created_ms, endpoint.id))

    async def count(self, organization_id: int | None) -> int:
        """How many endpoints this organization has (None: the unscoped tokens')."""
        return sum(1 for endpoint in await self.all() if endpoint.organization_id == organization_id)

    async def delete(self, endpoint_id: str) -> bool:
        """Remove the endpoint; False if there was none. Its deliveries are `store.deliveries.drop`'s."""
        return bool(await self.redis.hdel(self.key, endpoint_id))

    async def rotate(self, endpoint_id: str, new_secret: str, now_ms: int) -> Endpoint | None:
        """Make `new_secret` the endpoint's current secret, the previous ones still signing for 24 h
        (`core.endpoints.rotated`); the endpoint as stored, or None if there is no such endpoint. Raises
        EndpointBusy (409: try again) if concurrent rotations kept changing it, ROTATE_TRIES times in a row."""
        for _ in range(ROTATE_TRIES):
            raw = await self.redis.hget(self.key, endpoint_id)
            if raw is None:
                return None
            endpoint = rotated(decode(raw), new_secret, now_ms)
            if await SWAP.run(self.redis, [self.key], [endpoint_id, raw, encode(endpoint)]):
                return endpoint
        raise EndpointBusy("the endpoint kept changing while its secret was rotated: try again")
