"""`store.endpoints` (call_ledger/store/endpoints.py) on fake Redis with Lua, and the pure rules it keeps
(call_ledger/core/endpoints.py): the stored form round-trips, the per-organization limit holds under concurrent
creates, and a rotation keeps the previous secret signing for 24 hours, then drops it."""

import asyncio

import pytest

from call_ledger.core.endpoints import (
    ROTATION_OVERLAP_MS,
    decode,
    encode,
    is_endpoint_id,
    new_endpoint_id,
    rotated,
)
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.store import Store

NOW = 1_764_000_000_000
HUGE_ORG = 2**63 + 12_345  # beyond a double's exact integers: the create script must not round it


def endpoint(organization_id: int | None = 7, *, created_ms: int = NOW, secret: str = "whsec_AAAA") -> Endpoint:
    return Endpoint(id=new_endpoint_id(), url="https://hooks.example.com/in", events=MESSAGE_TYPES,
                    description="billing", organization_id=organization_id, secrets=((secret, None),),
                    created_ms=created_ms)


def test_ids_are_random_and_recognised() -> None:
    ids = {new_endpoint_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_endpoint_id(i) and len(i) == 27 for i in ids)
    assert not is_endpoint_id("ep_") and not is_endpoint_id("ep_" + "G" * 24) and not is_endpoint_id("x" * 27)


@pytest.mark.parametrize("organization_id", [None, 7, HUGE_ORG])
def test_stored_form_round_trips(organization_id: int | None) -> None:
    original = endpoint(organization_id)
    assert decode(encode(original)) == original
    expected = b"null" if organization_id is None else str(organization_id).encode()
    assert b'"organization_id":' + expected + b"," in encode(original)  # what endpoint_create.lua reads


async def test_create_get_all_delete(store: Store) -> None:
    first, second = endpoint(created_ms=NOW + 5), endpoint(None, created_ms=NOW)
    assert await store.endpoints.create(first, 50) and await store.endpoints.create(second, 50)
    assert await store.endpoints.get(first.id) == first
    assert await store.endpoints.get(new_endpoint_id()) is None
    assert await store.endpoints.all() == [second, first]  # oldest first
    assert await store.endpoints.count(7) == 1 and await store.endpoints.count(None) == 1
    assert await store.endpoints.count(8) == 0
    assert await store.endpoints.delete(first.id) is True
    assert await store.endpoints.delete(first.id) is False
    assert await store.endpoints.all() == [second]
    assert await store.redis.hlen("cl:wh:endpoints") == 1  # the key named in store/keys.py


@pytest.mark.parametrize("organization_id", [None, 7, HUGE_ORG])
async def test_limit_is_per_organization_and_atomic(store: Store, organization_id: int | None) -> None:
    # Another organization's endpoints (and the unscoped ones, for a scoped organization) do not count.
    for other in (8, HUGE_ORG + 1, None if organization_id is not None else 9):
        assert await store.endpoints.create(endpoint(other), 3)
    results = await asyncio.gather(*(store.endpoints.create(endpoint(organization_id), 3) for _ in range(8)))
    assert sorted(results) == [False] * 5 + [True] * 3
    assert await store.endpoints.count(organization_id) == 3
    # A description that spells the field inside a string is not counted as one more organization.
    tricky = Endpoint(id=new_endpoint_id(), url="https://a.example/x", events=MESSAGE_TYPES,
                      description=f'"organization_id":{organization_id}', organization_id=8,
                      secrets=(("whsec_AAAA", None),), created_ms=NOW)
    assert await store.endpoints.create(tricky, 3)
    assert await store.endpoints.count(organization_id) == 3


def test_rotation_keeps_the_previous_secret_for_a_day() -> None:
    first = endpoint(secret="whsec_one")
    second = rotated(first, "whsec_two", NOW)
    assert second.secrets == (("whsec_two", None), ("whsec_one", NOW + ROTATION_OVERLAP_MS))
    assert second.current_secrets(NOW) == ["whsec_two", "whsec_one"]  # newest first: both sign
    assert second.current_secrets(NOW + ROTATION_OVERLAP_MS - 1) == ["whsec_two", "whsec_one"]
    assert second.current_secrets(NOW + ROTATION_OVERLAP_MS) == ["whsec_two"]
    # A second rotation an hour later: the second gets a day, the first goes at once (rotating twice is how
    # a leaked secret stops being accepted now; a message never carries more than two signatures).
    third = rotated(second, "whsec_three", NOW + 3_600_000)
    assert third.secrets == (("whsec_three", None), ("whsec_two", NOW + 3_600_000 + ROTATION_OVERLAP_MS))
    later = rotated(third, "whsec_four", NOW + 2 * ROTATION_OVERLAP_MS)  # "two" had expired: only "three" stays
    assert later.secrets == (("whsec_four", None), ("whsec_three", NOW + 3 * ROTATION_OVERLAP_MS))
    looped = first
    for i in range(20):
        looped = rotated(looped, f"whsec_{i}", NOW + i)
    assert looped.secrets == (("whsec_19", None), ("whsec_18", NOW + 19 + ROTATION_OVERLAP_MS))  # rotated at NOW + 19


async def test_rotate_in_the_store(store: Store) -> None:
    original = endpoint()
    await store.endpoints.create(original, 50)
    secret = new_secret()
    stored = await store.endpoints.rotate(original.id, secret, NOW)
    assert stored is not None and await store.endpoints.get(original.id) == stored
    assert stored.current_secrets(NOW) == [secret, "whsec_AAAA"]
    assert stored.current_secrets(NOW + ROTATION_OVERLAP_MS) == [secret]
    assert await store.endpoints.rotate(new_endpoint_id(), secret, NOW) is None


async def test_concurrent_rotations_are_applied_one_over_another(store: Store) -> None:
    """Each rotation is written only over what it read (endpoint_swap.lua): the last one's previous secret is
    another rotation's, never a secret that no rotation saw."""
    original = endpoint()
    await store.endpoints.create(original, 50)
    secrets = [new_secret() for _ in range(4)]
    await asyncio.gather(*(store.endpoints.rotate(original.id, s, NOW) for s in secrets), return_exceptions=True)
    final = await store.endpoints.get(original.id)
    assert final is not None
    newest, previous = final.current_secrets(NOW)
    assert newest in secrets and previous in {*secrets, "whsec_AAAA"} and previous != newest
