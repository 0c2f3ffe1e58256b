"""The calls a caller may see, read as `StoredCall`s: the one way every read route loads a call.

Each reads the calls' raw hashes (no state decoded) and keeps those the caller's scope may see
(`api.auth.may_see` on the organization field alone). Another tenant's call is left out exactly
as an unknown one: a route cannot tell them apart, so neither can its caller.
"""

from call_ledger.api.auth import may_see
from call_ledger.core.served import StoredCall
from call_ledger.store import Store


async def visible_call(store: Store, call_sid: str, scope: int | None) -> StoredCall | None:
    """The call with this SID if it has a record the caller may see; else None."""
    fields = await store.call_fields(call_sid)
    if fields is None:
        return None
    call = StoredCall(call_sid, fields)
    return call if may_see(call.organization_id, scope) else None


async def visible_calls(store: Store, call_sids: list[str], scope: int | None) -> list[StoredCall]:
    """The calls of these SIDs the caller may see, in their order, for many calls in one round
    trip (`Store.calls_fields`: for a call whose stored record is current, only the fields
    serving it needs)."""
    found = await store.calls_fields(call_sids)
    calls = [StoredCall(sid, fields) for sid, fields in zip(call_sids, found, strict=True) if fields is not None]
    return [call for call in calls if may_see(call.organization_id, scope)]
