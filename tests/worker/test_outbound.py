"""worker/outbound.py and the consumer's share of outbound call events (SPEC §15), through the real
consumer on fake Redis (the Lua the embedded store runs):

- commit.lua and finalize.lua decide as call_ledger.core.outbound's `after_change` and `on_quiet`, event
  for event, over any order of a call's events, duplicates and quiet periods: the messages each commit
  writes, with the record exactly as GET serves it right after;
- over batches: exactly one `call.ended` for a call that ends, at most one `call.finalized`, revisions
  that only grow, and a redelivery that changes nothing makes nothing;
- a worker that fails (or dies) between its commit and scheduling the fan-out and the finalize timer
  leaves its entries pending, and their redelivery schedules both;
- the finalizer finalizes a quiet call in a running process;
- and the whole path, to a receiver that verifies the signatures.
"""

import asyncio
import hashlib
import time
from typing import Any

import fakeredis
import orjson
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from call_ledger.core.events import TERMINAL_STATUSES, CallEvent
from call_ledger.core.indexes import shard_of
from call_ledger.core.outbound import MESSAGE_TYPES, Endpoint, Finality, OutboxMessage, after_change, on_quiet
from call_ledger.core.served import StoredCall
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import new_call, plan_call
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.delivery import Outbound
from call_ledger.worker.outbound import Finalizer
from tests.support.polling import until
from tests.support.receivers import verifying_receiver
from tests.support.settings import make_settings
from tests.support.workers import make_event, usage

SID = "CA-final"
FAR_FUTURE_MS = 10**13
S = 1_000_000

# A call's possible events: statuses (two different endings), costs, call_meta (one repeating a value
# under another event: the record does not change), and registers (the organization is not in the record,
# but a message is routed by it: one arriving after the end moves the call to another organization).
POOL = [
    make_event(SID, "ringing", 1 * S, status="ringing"),
    make_event(SID, "ongoing", 5 * S, status="ongoing"),
    make_event(SID, "completed", 60 * S, status="completed", duration=55),
    make_event(SID, "failed", 61 * S, status="failed"),
    usage(SID, "llm", 20 * S, "llm", 1_000_000),
    usage(SID, "tts", 30 * S, "tts", 2_000_000),
    make_event(SID, "meta-1", 40 * S, call_meta={"k": 1}),
    make_event(SID, "meta-1-again", 41 * S, call_meta={"k": 1}),
    make_event(SID, "meta-2", 42 * S, call_meta={"k": [2, "two"]}),
    make_event(SID, "name", 45 * S, assistant_name="Ada"),
    make_event(SID, "org", 46 * S, organization_id=7),
    make_event(SID, "org-8", 47 * S, organization_id=8),  # a later organization: the call moves to it
    make_event(SID, "org-9-meta", 48 * S, organization_id=9, call_meta={"k": 3}),  # moves and changes the record
]
QUIET = "quiet"


class Call:
    """One call on a fresh fake Redis, applied through one long-lived consumer (its cache included)."""

    def __init__(self, **overrides: Any) -> None:
        self.settings: Settings = make_settings(**overrides)
        self.store = Store(fakeredis.FakeAsyncRedis(), self.settings.key_prefix)
        self.consumer = Consumer(self.store, self.settings, Metrics())
        self.finalizer = Finalizer(self.store, self.settings, Metrics())

    async def apply(self, *events: CallEvent) -> None:
        for event in events:
            await self.store.append(event.model_dump_json().encode())
        await self.consumer.run_burst()

    async def served(self, sid: str = SID) -> bytes | None:
        fields = await self.store.records.call_fields(sid)
        return None if fields is None else StoredCall(sid, fields).served(self.settings.policy)

    async def messages(self, sid: str = SID) -> list[OutboxMessage]:
        return await self.store.outbox.messages(sid, self.settings.policy)

    async def organization(self, sid: str = SID) -> int | None:
        register = await self.store.redis.hget(self.store.keys.call(sid), "r:organization_id")
        return None if register is None else orjson.loads(register)[3]

    async def finality(self, sid: str = SID) -> Finality:
        ended, revision = await self.store.redis.hmget(self.store.keys.call(sid), "fe", "fr")
        return Finality(ended == b"1", int(revision or 0))

    async def scheduled(self, sid: str = SID) -> tuple[float | None, float | None]:
        shard = shard_of(sid)
        return (await self.store.redis.zscore(self.store.keys.outbox_due(shard), sid),
                await self.store.redis.zscore(self.store.keys.finalize_due(shard), sid))

    async def close(self) -> None:
        await self.store.close()


def endpoint_of(organization_id: int | None) -> Endpoint:
    """An endpoint of every type, of this organization (None: unscoped)."""
    return Endpoint(id="ep_" + "2" * 24, url="https://example.com/hook", events=MESSAGE_TYPES, description="",
                    organization_id=organization_id, secrets=(), created_ms=0)


def terminal(record: bytes | None) -> bool:
    return record is not None and orjson.loads(record)["status"] in TERMINAL_STATUSES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(range(len(POOL))), st.just(QUIET)), max_size=18))
@example([1, QUIET, 2, 1, QUIET, 4, 6, 7, 8, 10, 3, QUIET, 5])  # ends, is final, revised 2..5: every branch
@example([2, 10, 4, QUIET, 11, 5, 12])  # ends, moves (not final), final, moves, revised, moves with a revision
def test_the_scripts_decide_as_the_model_event_for_event(steps: list[int | str]) -> None:
    async def run() -> None:
        call, model = Call(), Finality()
        try:
            for step in steps:
                before, known = await call.served(), {m.id for m in await call.messages()}
                organization = await call.organization()
                if step == QUIET:
                    await call.finalizer.run_once(FAR_FUTURE_MS)
                    expected = on_quiet(model, terminal(before))
                else:
                    await call.apply(POOL[int(step)])
                    after, moved_to = await call.served(), await call.organization()
                    expected = after_change(model, terminal(after), moved_to not in (None, organization),
                                            after != before)
                after = await call.served()
                new = [m for m in await call.messages() if m.id not in known]
                model = expected.finality
                assert [(m.type, m.revision, m.audience) for m in new] == list(expected.messages)
                now_of = await call.organization()
                assert all(m.record == after and m.organization_id == now_of for m in new)
                assert await call.finality() == model
        finally:
            await call.close()

    asyncio.run(run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=6), st.just(QUIET)),
                max_size=10))
def test_in_batches_a_call_ends_once_is_final_once_and_revisions_only_grow(steps: list[list[int] | str]) -> None:
    async def run() -> None:
        call, sent = Call(), list[OutboxMessage]()
        try:
            for step in steps:
                known = {m.id for m in sent}
                if step == QUIET:
                    await call.finalizer.run_once(FAR_FUTURE_MS)
                else:
                    await call.apply(*(POOL[i] for i in step))
                sent += [m for m in await call.messages() if m.id not in known]  # in the order they were made
            # What each endpoint that hears of the call receives: the unscoped ones, and the final
            # organization's (the call may have moved after its end: they get what they missed).
            ended, finality = terminal(await call.served()), await call.finality()
            for organization in {None, await call.organization()}:
                got = [m for m in sent if endpoint_of(organization).wants(m)]
                kinds = [m.type for m in got]
                assert kinds.count("call.ended") == (1 if ended else 0)
                assert kinds.count("call.finalized") == (1 if finality.revision >= 1 else 0)
                revisions = [m.revision for m in got if m.type != "call.ended"]
                if organization is None:  # every revision, from 1
                    assert revisions == list(range(1, len(revisions) + 1))
                assert revisions == sorted(set(revisions)) and max(revisions, default=0) == finality.revision
            # Everything delivered again, as a batch: duplicates change nothing and make nothing.
            await call.apply(*POOL)  # the new ones among them may announce: settle them first
            settled = {m.id for m in await call.messages()}
            await call.apply(*POOL)
            assert {m.id for m in await call.messages()} == settled
        finally:
            await call.close()

    asyncio.run(run())


async def test_a_failed_schedule_leaves_the_entries_pending_and_their_redelivery_repairs_it() -> None:
    call = Call()
    schedule, failures = call.store.outbox.schedule, [1]

    async def failing(*args: Any) -> None:
        if failures:
            failures.pop()
            raise ConnectionError("Redis went away after the commit")
        await schedule(*args)

    call.store.outbox.schedule = failing  # type: ignore[method-assign]
    await call.apply(make_event(SID, "ongoing", 5 * S, status="ongoing"))  # nothing to schedule: no failure
    try:
        await call.apply(make_event(SID, "completed", 60 * S, status="completed", duration=55))
    except ConnectionError:
        pass
    [message] = await call.messages()  # committed with the commit...
    assert await call.scheduled() == (None, None)  # ...but neither the fan-out nor the timer is scheduled
    assert (await call.store.group_stats())[1] == 1  # and its entry is pending
    # Redelivered to the same worker (its cache forgot the call) or to another: scheduled from the fields.
    await call.consumer.run_burst(claim_idle_ms=0)
    lc = int(await call.store.redis.hget(call.store.keys.call(SID), "lc") or 0)
    outbox_at, timer_at = await call.scheduled()
    assert outbox_at is not None and timer_at == lc + call.settings.finalize_after_s * 1000
    assert (await call.store.group_stats())[1] == 0
    assert [m.id for m in await call.messages()] == [message.id]  # and no second message
    await call.close()


async def test_a_worker_killed_before_scheduling_is_repaired_by_another() -> None:
    """The commit went through, then the worker died (nothing scheduled, nothing acknowledged): the next
    worker claims the entry, reads the call from Redis, finds it a duplicate and schedules both."""
    call = Call()
    event = make_event(SID, "completed", 60 * S, status="completed", duration=55)
    await call.store.append(event.model_dump_json().encode())
    await call.store.ensure_group()
    [entry] = await call.store.read_new("dead-worker", 10, None)
    lc = int(time.time() * 1000)
    plan = plan_call(new_call(), [(entry, event)], call.settings)
    assert plan.new_events
    write = call.consumer._write_of(SID, plan, new_call(), {SID: 77}, lc)
    [reply] = await call.store.commit([write])
    assert reply.ok and reply.outbox and reply.timer
    assert await call.scheduled() == (None, None)
    other = Consumer(call.store, make_settings(consumer_name="other"), Metrics())
    await other.run_burst(claim_idle_ms=0)
    outbox_at, timer_at = await call.scheduled()
    assert outbox_at is not None and timer_at == lc + call.settings.finalize_after_s * 1000
    await call.close()


async def test_the_finalizer_finalizes_a_quiet_call_in_a_running_process() -> None:
    call = Call(finalize_after_s=1)
    await call.apply(make_event(SID, "completed", 60 * S, status="completed", duration=55),
                     make_event("CA-live", "ongoing", 5 * S, status="ongoing"))
    await call.finalizer.start()
    try:
        async def finalized() -> bool:
            return (await call.finality()).revision == 1
        await until(finalized, 10, "the quiet call finalized")
    finally:
        await call.finalizer.stop()
    assert [m.type for m in await call.messages()] == ["call.ended", "call.finalized"]
    assert await call.finality("CA-live") == Finality()
    assert (await call.scheduled())[1] is None
    await call.close()


async def test_a_call_that_ends_and_goes_quiet_reaches_a_receiver_as_served(aiohttp_server: Any) -> None:
    """The whole path on one fake Redis: commit -> outbox -> fan-out (store.outbox) -> delivery to a
    receiver that verifies each message with the `standardwebhooks` library; each body's call is the
    record GET served at that revision, and the webhook-id is the outbox message's id."""
    secret = new_secret()
    server, got = await verifying_receiver(aiohttp_server, secret)
    call = Call(outbound_allow_private=True, finalize_after_s=1)
    assert await call.store.endpoints.create(Endpoint(
        id="ep_" + "0" * 24, url=str(server.make_url("/hook")), events=MESSAGE_TYPES, description="",
        organization_id=None, secrets=((secret, None),), created_ms=int(time.time() * 1000)), 50)
    outbound = Outbound(call.store.outbox, call.store.endpoints, call.store.deliveries, call.settings, Metrics())
    await outbound.start()
    try:
        await call.apply(make_event(SID, "completed", 60 * S, status="completed", duration=55, organization_id=9))
        ended = await call.served()
        await until(lambda: len(got) == 1, 10, "call.ended delivered")
        await call.finalizer.run_once(int(time.time() * 1000) + 1000)  # a second later: the call is quiet
        await until(lambda: len(got) == 2, 10, "call.finalized delivered")
    finally:
        await outbound.stop()
    assert await call.messages() == []  # the fan-out emptied the outbox
    assert [(body["type"], body["data"]["revision"], body["data"]["organization_id"]) for _, body in got] == [
        ("call.ended", 0, 9), ("call.finalized", 1, 9)]
    assert got[0][1]["data"]["call"] == orjson.loads(ended or b"null")
    assert [webhook_id for webhook_id, _ in got] == [
        "msg_" + hashlib.sha1(f"{SID}\n{kind}\n{revision}\n9".encode()).hexdigest()[:32]
        for kind, revision in (("call.ended", 0), ("call.finalized", 1))]
    await call.close()


async def test_an_organization_that_arrives_after_the_end_gets_the_end_and_the_finalization(
        aiohttp_server: Any) -> None:
    """The outside tester's case, through commit, fan-out and delivery: a call ends and is finalized with no
    organization, then its metadata brings organization 7 with a change of the record. Organization 7's
    endpoint receives `call.ended` and `call.finalized` (at the new revision), addressed to 7; the unscoped
    endpoint receives each message once (the revision as `call.revised`), and organization 8's nothing."""
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {"all": [], "o7": [], "o8": []}

    async def handle(request: web.Request) -> web.Response:
        got[request.match_info["who"]].append((request.headers["webhook-id"], orjson.loads(await request.read())))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{who}", handle)
    server = await aiohttp_server(app)
    call = Call(outbound_allow_private=True, finalize_after_s=1)
    for n, (who, organization) in enumerate((("all", None), ("o7", 7), ("o8", 8))):
        assert await call.store.endpoints.create(Endpoint(
            id=f"ep_{n:024d}", url=str(server.make_url(f"/hook/{who}")), events=MESSAGE_TYPES, description="",
            organization_id=organization, secrets=((new_secret(), None),), created_ms=int(time.time() * 1000)), 50)
    outbound = Outbound(call.store.outbox, call.store.endpoints, call.store.deliveries, call.settings, Metrics())
    await outbound.start()
    try:
        await call.apply(make_event(SID, "completed", 60 * S, status="completed", duration=55))
        await call.finalizer.run_once(int(time.time() * 1000) + 1000)  # a second later: the call is quiet
        await until(lambda: len(got["all"]) == 2, 10, "call.ended and call.finalized to the unscoped endpoint")
        await call.apply(make_event(SID, "org", 46 * S, organization_id=7, call_meta={"plan": "pro"}))
        served = orjson.loads(await call.served() or b"null")
        await until(lambda: len(got["o7"]) == 2 and len(got["all"]) == 3, 10, "what organization 7 missed")
        await asyncio.sleep(0.5)  # and nothing more
    finally:
        await outbound.stop()
    bodies = {who: sorted((b["data"]["revision"], b["type"], b["data"]["organization_id"]) for _, b in messages)
              for who, messages in got.items()}  # deliveries to an endpoint are in no set order: by revision
    assert bodies == {"all": [(0, "call.ended", None), (1, "call.finalized", None), (2, "call.revised", 7)],
                      "o7": [(0, "call.ended", 7), (2, "call.finalized", 7)], "o8": []}
    assert got["o7"][0][1]["data"]["call"] == got["o7"][1][1]["data"]["call"] == served
    assert served["call_meta"] == {"plan": "pro"}
    ids = [webhook_id for messages in got.values() for webhook_id, _ in messages]
    assert len(set(ids)) == len(ids) == 5  # every message its own webhook-id
    await call.close()


async def test_a_commit_wakes_the_fan_out_of_its_process_at_once(aiohttp_server: Any, monkeypatch: Any) -> None:
    """The consumer sets the Outbound's `due` event right after scheduling a batch's outboxes (worker/app.py
    hands it over in serve and worker): the message is on its way without waiting for fan-out's poll, made
    30 s here so that only the wake-up can deliver it in time."""
    import call_ledger.worker.delivery as delivery

    monkeypatch.setattr(delivery, "FANOUT_IDLE_S", 30.0)
    got: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        got.append(time.monotonic())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    call = Call(outbound_allow_private=True)
    assert await call.store.endpoints.create(Endpoint(
        id="ep_" + "1" * 24, url=str(server.make_url("/hook")), events=MESSAGE_TYPES, description="",
        organization_id=None, secrets=((new_secret(), None),), created_ms=int(time.time() * 1000)), 50)
    outbound = Outbound(call.store.outbox, call.store.endpoints, call.store.deliveries, call.settings, Metrics())
    call.consumer = Consumer(call.store, call.settings, Metrics(), fanout_due=outbound.due)
    await outbound.start()
    try:
        await asyncio.sleep(0.3)  # fan-out's first round is over: it waits (30 s, or until woken)
        committed = time.monotonic()
        await call.apply(make_event(SID, "completed", 60 * S, status="completed", duration=55))
        await until(lambda: len(got) == 1, 5, "call.ended delivered")
        assert got[0] - committed < 2
    finally:
        await outbound.stop()
        await call.close()
