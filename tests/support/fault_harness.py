"""Fault harness: two or more Consumers on one stream (each with its own client), random batch
sizes, random faults (a commit refused by a dropped connection before or after Redis ran it, an id
allocation whose reply is lost, a load that fails, a finish pipeline that fails before or after
Redis ran it), random redeliveries (claims at idle 0, provider retries), refusals (another
provider's event, the call_meta key bound, the per-call event bound), LEDGER_JOURNAL on/off,
stream shards; then a clean drain, and checks:

- every sent event is applied exactly once or dead-lettered as refused (never both, never neither;
  a delivery dead-lettered as exhausted by the faults may have a copy that was applied);
- each stored state equals the fold of its applied events; version = applied count; the served `j`
  equals the record rendered from that fold; /events has each applied event once (journal on);
- record ids are unique; the indexes equal a rebuild from the records.
"""

import asyncio
import random
from decimal import Decimal
from typing import Any

import fakeredis
import orjson

from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.indexes import index_entry, shard_of
from call_ledger.core.instants import format_us
from call_ledger.core.members import key_of
from call_ledger.core.rules import CallState, apply_event, fix_estimate, render_record
from call_ledger.core.served import stored_record
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.indexes import IndexStore
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings

BASE_US = 1_795_996_800_000_000  # 2026-12-01T00:00:00Z


class Fault(ConnectionError):
    pass


def ev(sid: str, eid: str, us: int, source: str = "platform", **fields: Any) -> CallEvent:
    kind = "call.status" if "status" in fields else "call.usage" if "costs" in fields else "call.metadata"
    return CallEvent(source=source, event_id=eid, call_sid=sid, type=kind, occurred_at=format_us(us),
                     occurred_us=us, **fields)


def random_events(rng: random.Random, calls: int) -> list[CallEvent]:
    out: list[CallEvent] = []
    for c in range(calls):
        sid = f"CA-r{c}"
        start = BASE_US + rng.randrange(3) * 86_400_000_000 + rng.randrange(100) * 1_000_000
        for k in range(rng.randrange(1, 14)):
            us = start + rng.randrange(-5, 600) * 1_000_000
            kind = rng.random()
            source = rng.choice(["platform", "platform", "twilio", "telnyx"])
            eid = f"{sid}-{k}"
            if kind < 0.3:
                status = rng.choice(["ringing", "ongoing", "completed", "failed", "busy", "canceled"])
                extra = {"duration": rng.randrange(300)} if status == "completed" and rng.random() < .5 else {}
                out.append(ev(sid, eid, us, source, status=status, **extra))
            elif kind < 0.6:
                out.append(ev(sid, eid, us, "platform", costs=(Cost(
                    component=rng.choice(["llm", "stt", "tts", "telephony"]),
                    amount_nano=rng.choice([1, 100_000_000, 10**12 + 7]),
                    currency="EUR" if rng.random() < 0.1 else "USD"),)))  # EUR: no rate, fails until replay
            else:
                meta = {f"k{rng.randrange(6)}": rng.randrange(100) for _ in range(rng.randrange(0, 3))}
                out.append(ev(sid, eid, us, "platform", organization_id=rng.choice([7, 8]),
                              assistant_id=rng.choice([1, 2, 3]), assistant_name=rng.choice(["A", "B", None]),
                              flow_name=rng.choice(["f1", "f2"]), customer_phone_number=rng.choice(["+1555", "+1666"]),
                              **({"call_meta": meta} if meta else {})))
    return out


class FaultyPipeline:
    def __init__(self, pipe: Any, rng: random.Random, rate: float) -> None:
        self._pipe, self._rng, self._rate = pipe, rng, rate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        roll = self._rng.random()
        if roll < self._rate / 2:
            raise Fault("connection dropped before the pipeline ran")
        result = await self._pipe.execute(*args, **kwargs)
        if roll < self._rate:
            raise Fault("connection dropped after the pipeline ran")
        return result


class FaultyRedis:
    """Delegates to a client; its pipelines fail at random, before or after running."""

    def __init__(self, client: Any, rng: random.Random, rate: float) -> None:
        self._client, self._rng, self.rate = client, rng, rate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return FaultyPipeline(self._client.pipeline(*args, **kwargs), self._rng, self.rate)


def faulty_store(client: Any, rng: random.Random, rate: float, shards: int) -> tuple[Store, FaultyRedis]:
    redis = FaultyRedis(client, rng, rate)
    store = Store(redis, stream_shards=shards)
    commit = store.commit

    async def flaky_commit(writes: Any) -> Any:
        roll = rng.random()
        if roll < redis.rate / 2:
            raise Fault("commit: dropped before running")
        result = await commit(writes)
        if roll < redis.rate:
            raise Fault("commit: reply lost")
        return result

    store.commit = flaky_commit  # type: ignore[method-assign]
    return store, redis


async def append(intake: Store, e: CallEvent) -> None:
    """Intake's XADD; a 503 (Redis restarting) is retried, as a provider would."""
    for _ in range(100):
        try:
            await intake.append(e.model_dump_json(exclude_defaults=True).encode(), e.call_sid)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise AssertionError("intake never got the event in")


async def drive(  # noqa: C901 - one scenario, read top to bottom
        rng: random.Random, clients: list[Any], check_client: Any, *, calls: int = 8, workers: int = 2,
                fault_rate: float = 0.15, concurrent: bool = False, flush_scripts: bool = False,
                replay: bool = False, restart: Any = None) -> dict[str, Any]:
    journal = rng.choice(["on", "off"])
    shards = rng.choice([1, 1, 3])
    settings = make_settings(max_call_meta_keys=3, max_events_per_call=rng.choice([8, 10_000]),
                             max_deliveries=3, journal=journal, stream_shards=shards)
    events = random_events(rng, calls)
    stores, faulty = [], []
    consumers = []
    for i in range(workers):
        store, redis = faulty_store(clients[i], rng, fault_rate, shards)
        stores.append(store)
        faulty.append(redis)
        consumers.append(Consumer(store, settings.model_copy(update={
            "consumer_name": f"w{i}", "batch_size": rng.randint(1, 9)}), Metrics()))
    # Intake may run another LEDGER_STREAM_SHARDS than the workers (a rolling change of K).
    intake = Store(check_client, stream_shards=rng.choice([shards, 1, 2]))
    await intake.ensure_group()
    sent = [e for e in events for _ in range(1 + (rng.random() < 0.3))]
    rng.shuffle(sent)

    async def one(consumer: Consumer) -> None:
        try:
            await consumer.run_burst(claim_idle_ms=0 if rng.random() < 0.3 else None)
        except (Fault, ConnectionError, OSError):
            pass
        except Exception as exc:
            if "Fault" not in repr(exc) and "dropped" not in str(exc) and "reply lost" not in str(exc):
                raise

    while sent:
        size = rng.randint(1, 10)
        chunk, sent = sent[:size], sent[size:]
        for e in chunk:
            await append(intake, e)
        if restart is not None and rng.random() < 0.08:  # redis-server restarted (AOF): scripts gone
            restart()
        if concurrent:
            await asyncio.gather(*(one(c) for c in rng.sample(consumers, rng.randint(1, len(consumers)))))
        else:
            await one(rng.choice(consumers))
        if flush_scripts and rng.random() < 0.2:  # as a redis-server restart would (scripts gone)
            await check_client.script_flush()
        if rng.random() < 0.1:  # a provider retry of something already sent
            await append(intake, rng.choice(events))
    # Clean drain: no more faults; claims at idle 0 until nothing is pending.
    for redis in faulty:
        redis.rate = 0.0
    for store in stores:
        await store.ensure_group()
    await intake.refresh_shards()
    for _ in range(50):
        for c in consumers:
            try:  # a finish task left failing by the faulty phase raises once, here
                await c.run_burst(claim_idle_ms=0)
            except (Fault, ConnectionError, OSError):
                await asyncio.sleep(0.05)
        if await intake.group_stats() == (0, 0):
            break
    assert await intake.group_stats() == (0, 0), "entries left pending"
    if replay:  # the bounds raised, `call-ledger dlq replay`, the old workers still running
        relaxed = settings.model_copy(update={"max_call_meta_keys": 256, "max_events_per_call": 10_000,
                                              "fx_rates": {"EUR": Decimal("1.1")}})
        consumers.append(Consumer(Store(clients[0], stream_shards=shards),
                                  relaxed.model_copy(update={"consumer_name": "new"}), Metrics()))
        await intake.replay_dead()
        for _ in range(3):
            for c in consumers[::-1]:
                await c.run_burst(claim_idle_ms=0)
        settings = relaxed if not any("call_meta" in row["reason"] or "events" in row["reason"]
                                      for row in await intake.dead_letters(100_000)) else \
            settings.model_copy(update={"fx_rates": {"EUR": Decimal("1.1")}})
    return {"settings": settings, "events": events, "store": intake}


async def check(settings: Settings, events: list[CallEvent], store: Store) -> None:
    by_key: dict[tuple[str, str], CallEvent] = {(e.call_sid, e.key): e for e in events}
    await store.refresh_shards()
    dead = [orjson.loads(row["e"]) | {"reason": row["reason"]} for row in await store.dead_letters(100_000)]
    refused: dict[tuple[str, str], str] = {}
    for row in dead:
        refused[(row["call_sid"], f"{row['source']}:{row['event_id']}")] = row["reason"]
    sids = sorted({e.call_sid for e in events})
    ids: dict[int, str] = {}
    entries = []
    for sid in sids:
        order = await store.redis.zrange(store.order_key(sid), 0, -1)
        applied = {key_of(k.decode() if isinstance(k, bytes) else k, sid) for k in order}  # either form
        sent = {k for (s, k) in by_key if s == sid}
        assert applied <= sent, (sid, applied - sent)
        for key in sent:
            # A delivery kept pending by faults past LEDGER_MAX_DELIVERIES is dead-lettered whatever its
            # cause (SPEC §14), while a provider's second copy of the event may be applied: it is then
            # listed once as a dead letter (replaying it is a duplicate) and applied once.
            exhausted = "not settled after" in refused.get((sid, key), "")
            assert (key in applied) != ((sid, key) in refused) or exhausted, (
                sid, key, key in applied, refused.get((sid, key)))
        for key in sent - applied:
            reason = refused[(sid, key)]
            # ... or kept pending by faults past LEDGER_MAX_DELIVERIES (SPEC §14): kept, replayable
            assert ("attributed" in reason or "call_meta" in reason or "events" in reason or "EUR" in reason
                    or "not settled after" in reason), reason
        found = await store.get_call(sid)
        if not applied:
            assert found is None, sid
            continue
        assert found is not None, sid
        record_id, stored = found
        assert record_id not in ids, f"{sid} and {ids.get(record_id)} share id {record_id}"
        ids[record_id] = sid
        model = CallState()
        for key in sorted(applied, key=lambda k: by_key[(sid, k)].occurred_us):
            apply_event(model, by_key[(sid, key)], settings.policy)
        fix_estimate(model, settings.policy)
        model.changed.clear()
        stored.changed.clear()
        assert stored == model, (sid, stored, model)
        version = await store.event_count(sid)
        assert version == len(applied), (sid, version, len(applied))
        j = await store.redis.hget(store.call_key(sid), "j")
        assert j == stored_record(render_record(sid, record_id, model, settings.policy), version), sid
        if settings.journal == "on":
            page = await store.all_events(sid)
            got = sorted(orjson.loads(p)["event_id"] for p in page)
            assert got == sorted(k.split(":", 1)[1] for k in applied), sid
        # refused provider events: the call really is another provider's
        for key in sent - applied:
            if "attributed" in refused[(sid, key)]:
                assert stored.provider not in (None, by_key[(sid, key)].source), (sid, key)
        entries.append((shard_of(sid), index_entry(sid, record_id, stored, settings.policy), version))
    from tests.support.index_dump import dump_indexes
    fresh = fakeredis.FakeAsyncRedis()
    await IndexStore(fresh).update(entries)
    expected = await dump_indexes(fresh)
    await fresh.aclose()
    got = await dump_indexes(store.redis)
    if got != expected:
        diff = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
        raise AssertionError(f"indexes differ from a rebuild: {diff}")
