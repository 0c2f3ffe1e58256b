"""The outbound messages' outbox and schedules (SPEC §15; keys in call_ledger.store.keys).

A message is written by the commit that makes the change it announces, into the call's outbox
`cl:out:{<sid>}` (commit.lua: `call.ended`, `call.revised`, and what a call's new organization missed;
finalize.lua: `call.finalized`), so a crash anywhere loses none and invents none. Two sorted sets per
index shard say what is due:
`cl:ob:{n}`, calls whose outbox has messages to fan out, and `cl:fin:{n}`, terminal calls waiting
to be finalized. The worker adds to them after each commit, before acknowledging the events
(`schedule`), and a redelivered event repairs them from the call's fields: the schedules may run
late or twice, never lose a call (fan-out and finalization are both idempotent).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import AUDIENCES, MESSAGE_TYPES, Audience, MessageType, OutboxMessage
from call_ledger.core.policy import Policy
from call_ledger.core.served import StoredCall
from call_ledger.store.client import text
from call_ledger.store.keys import Keys
from call_ledger.store.scripts import Lua

__all__ = ["FinalizeResult", "Outbox", "OutboxClaim"]

FINALIZE = Lua("finalize.lua", include=("announce.lua",))
CLAIM = Lua("outbox_claim.lua")
DONE = Lua("outbox_done.lua")
UNSCHEDULE = Lua("outbox_unschedule.lua")

FinalizeOutcome = Literal["finalized", "not_yet", "already_final", "not_terminal"]
_OUTCOMES: dict[int, FinalizeOutcome] = {1: "finalized", 0: "not_yet", 2: "already_final", 3: "not_terminal"}


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    """What finalize.lua did with a due timer: finalized the call (its message is in the outbox),
    found it not quiet long enough (`due_ms`: when it may be), or found nothing to do."""

    outcome: FinalizeOutcome
    due_ms: int | None = None
    changed_ms: int = field(default=0, compare=False)  # finalized: when its record last changed


@dataclass(frozen=True, slots=True)
class OutboxClaim:
    """A call claimed for fan-out until `lease_score` (ms): `done` takes it off the schedule only if
    nothing re-scored it meanwhile."""

    sid: str
    lease_score: int


def message_of(call_sid: str, raw: bytes, policy: Policy) -> OutboxMessage:
    """One outbox entry (the JSON the scripts write) as a message: its record exactly as GET served it
    at that revision (the stored `j` with the call_meta fields written beside it; in layout 4 rendered
    from the fields the entry holds)."""
    data = orjson.loads(raw)
    version = str(int(data["v"])).encode()
    meta = data.get("m") or {}  # an empty Lua table may encode as []
    if "f" in data:  # layout 4: the fields the record is rendered from (announce.lua)
        fields = {name.encode(): value.encode() for name, value in data["f"].items()}
        fields[b"id"], fields[b"v"] = str(data["rid"]).encode(), version
    else:
        fields = {b"id": str(data["rid"]).encode(), b"v": version, b"j": version + b"\n" + data["j"].encode(),
                  **{name.encode(): value.encode() for name, value in meta.items()}}
    organization = data.get("o")
    kind: MessageType = data["type"]
    assert kind in MESSAGE_TYPES, kind
    audience: Audience = data.get("to") or "all"
    assert audience in AUDIENCES, audience
    return OutboxMessage(
        id=data["id"], type=kind, revision=int(data["revision"]), call_sid=call_sid,
        created_ms=int(data["at"]), organization_id=orjson.loads(organization)[3] if organization else None,
        record=StoredCall(call_sid, fields).served(policy), audience=audience)


class Outbox:
    """The calls' outboxes and the fan-out and finalize schedules."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def schedule(self, outbox: Iterable[str], timers: Mapping[str, int], now_ms: int) -> None:
        """After a commit, before its events are acknowledged: these calls' outboxes are due for fan-out
        now, these calls are due to be finalized at the given ms. One pipeline; a failure leaves the
        events pending, and their redelivery schedules again."""
        # One ZADD per shard's key, not per call: a batch's commits schedule hundreds of calls, and each
        # command in a pipeline costs the worker more CPU than its members do.
        members: dict[str, dict[str, int]] = {}
        for sid in outbox:
            members.setdefault(self.keys.outbox_due(shard_of(sid)), {})[sid] = now_ms
        for sid, due_ms in timers.items():
            members.setdefault(self.keys.finalize_due(shard_of(sid)), {})[sid] = due_ms
        pipe = self.redis.pipeline(transaction=False)
        for key, scores in members.items():
            pipe.zadd(key, scores)
        await pipe.execute()

    async def timers_due(self, shard: int, now_ms: int, limit: int) -> list[str]:
        """The calls of an index shard whose finalize timer is due."""
        found = await self.redis.zrangebyscore(self.keys.finalize_due(shard), "-inf", now_ms, start=0, num=limit)
        return [text(sid) for sid in found]

    async def finalize(self, sid: str, now_ms: int, after_ms: int) -> FinalizeResult:
        """Finalize the call if it has been quiet for `after_ms` (finalize.lua, atomic on its slot: two
        finalizers never both do), then schedule what the answer asks: its message's fan-out, the timer
        moved, or the timer dropped."""
        reply = await FINALIZE.run(self.redis, [self.keys.call(sid), self.keys.outbox(sid)], [now_ms, after_ms])
        outcome = _OUTCOMES[int(reply[0])]
        if outcome == "not_yet":
            result = FinalizeResult(outcome, int(reply[1]))
        else:
            result = FinalizeResult(outcome, changed_ms=int(reply[1]) if len(reply) > 1 else 0)
        shard = shard_of(sid)
        pipe = self.redis.pipeline(transaction=False)
        if result.outcome == "not_yet":
            pipe.zadd(self.keys.finalize_due(shard), {sid: result.due_ms})
        else:
            if result.outcome == "finalized":
                pipe.zadd(self.keys.outbox_due(shard), {sid: now_ms})
            if result.outcome in ("finalized", "already_final"):  # the archive's candidate (SPEC §16):
                pipe.zadd(self.keys.archive_due(shard), {sid: 0}, nx=True)  # 0, the next pass reads its ended_at
            pipe.zrem(self.keys.finalize_due(shard), sid)
        await pipe.execute()
        return result

    async def claim_due(self, shard: int, now_ms: int, limit: int, lease_ms: int) -> list[OutboxClaim]:
        """Up to `limit` calls of an index shard whose outbox is due for fan-out, each leased until now +
        `lease_ms` (outbox_claim.lua)."""
        lease = now_ms + lease_ms
        sids = await CLAIM.run(self.redis, [self.keys.outbox_due(shard)], [now_ms, limit, lease])
        return [OutboxClaim(text(sid), lease) for sid in sids]

    async def messages(self, sid: str, policy: Policy) -> list[OutboxMessage]:
        """The call's outbox, oldest announcement first (`call.ended` is revision 0, then 1, 2...; one commit's
        messages of one revision in the order it wrote them: `call.finalized` before `call.revised`)."""
        raw = await self.redis.hgetall(self.keys.outbox(sid))
        found = [message_of(sid, value, policy) for value in raw.values()]
        return sorted(found, key=lambda message: (message.revision, message.created_ms,
                                                  MESSAGE_TYPES.index(message.type)))

    async def done(self, claim: OutboxClaim, message_ids: list[str]) -> None:
        """These messages are fanned out: they leave the outbox; once it is empty, the call leaves the
        schedule, unless a commit re-scored it since the claim (its new message is still to fan out)."""
        sid = claim.sid
        empty = await DONE.run(self.redis, [self.keys.call(sid), self.keys.outbox(sid)], message_ids)
        if int(empty):
            await UNSCHEDULE.run(self.redis, [self.keys.outbox_due(shard_of(sid))], [sid, claim.lease_score])


