"""Worker processes crashing, overloaded and stopped under load, on a real redis-server.

Every scenario ends the same way: the stream is drained (lag 0, pending 0) and every
record equals what one process applying each event once makes of the same events
(status, times, duration, every cost in USD and converted from EUR, call_meta), and a
row goes to the guarantees table. The last test pins down how often an idle worker looks
for a dead worker's entries.
"""

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from call_ledger.core.events import COMPONENTS, CallEvent
from call_ledger.core.money import format_nano
from call_ledger.core.rules import CallState, record_json, render_record
from call_ledger.settings import Settings
from call_ledger.store import GROUP, Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.apply import frozen_fx
from call_ledger.worker.consumer import Consumer
from tests.support.guarantees import Guarantees
from tests.support.redis_server import RedisServer, free_port
from tests.support.service import Service, start
from tests.support.settings import API_TOKEN, AUTH, PLATFORM_SECRET, make_settings
from tests.support.signing import sign_platform
from tests.support.streams import drained, fill
from tests.support.workers import assert_records_exact, by_call, call_events, fold, usage, with_duplicates

pytestmark = pytest.mark.real_redis

FX_RATES = "EUR=1.0837"  # 1 EUR = 1.0837 USD: conversions that really round (half-even, nano-units)
S = 1_000_000  # microseconds


# -- events, and what the records must be ------------------------------------------------------

def ledger_events(prefix: str, calls: int, seed: int | str, usages: int, eur: int) -> list[CallEvent]:
    """Calls with statuses (sometimes two endings), self-overwriting metadata and call_meta,
    `usages` USD costs and `eur` EUR costs each."""
    rng = random.Random(seed)
    events: list[CallEvent] = []
    for i in range(calls):
        sid = f"{prefix}-{i:04d}"
        events += call_events(sid, rng, usages)
        for j in range(eur):
            events.append(usage(sid, f"{sid}-eur{j}", rng.randrange(600 * S), rng.choice(COMPONENTS),
                                rng.randrange(1, 3 * 10**9), currency="EUR"))
    return events


def ledger_settings(server: RedisServer) -> Settings:
    return make_settings(redis_url=server.url, fx_rates=FX_RATES)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    settings = ledger_settings(redis_server)
    store = Store(open_redis(settings), settings.key_prefix)
    yield store
    await store.close()


async def assert_api_records(port: int, events: list[CallEvent], settings: Settings) -> None:
    """Every record as a real `call-ledger api` process serves it: byte-for-byte the JSON of the
    single-process fold (money compared as decimal literals, not floats)."""
    expected = fold(events, settings)
    sem = asyncio.Semaphore(16)

    async def check(session: aiohttp.ClientSession, sid: str, state: CallState) -> int:
        async with sem, session.get(f"http://127.0.0.1:{port}/api/v1/calls/sid/{sid}", headers=AUTH) as response:
            assert response.status == 200, (sid, response.status)
            got = json.loads(await response.read(), parse_float=Decimal)
        want = json.loads(record_json(render_record(sid, got["id"], state, settings.policy)), parse_float=Decimal)
        assert got == want, sid
        return int(got["id"])

    async with aiohttp.ClientSession() as session:
        ids = await asyncio.gather(*(check(session, sid, state) for sid, state in expected.items()))
    assert len(set(ids)) == len(ids)


async def group_info(store: Store) -> dict[str, Any]:
    [group] = [g for g in await store.redis.xinfo_groups(store.stream) if g["name"] in (GROUP, GROUP.encode())]
    return group


async def pending_ids(store: Store, consumer: str | None = None) -> list[str]:
    kwargs: dict[str, Any] = {"consumername": consumer} if consumer else {}
    rows = await store.redis.xpending_range(store.stream, GROUP, min="-", max="+", count=1_000_000, **kwargs)
    return [_text(row["message_id"]) for row in rows]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def duplicates_in(sent: Iterable[str]) -> int:
    """How many of these deliveries repeat an event id delivered before them."""
    seen: set[str] = set()
    repeats = 0
    for event_id in sent:
        repeats += event_id in seen
        seen.add(event_id)
    return repeats


# -- real processes -----------------------------------------------------------------------------

def child_env(**ledger_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(PYTHONUNBUFFERED="1", LEDGER_LOG_FORMAT="json", LEDGER_API_TOKENS=API_TOKEN,
               LEDGER_PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET, LEDGER_HOST="127.0.0.1", **ledger_vars)
    return env


def spawn(args: list[str], log_path: Path, name: str, port: int = 0, **ledger_vars: str) -> Service:
    """`args` as a process with `child_env`, stdout and stderr in `log_path`."""
    return start(name, child_env(**ledger_vars), log_dir=log_path.parent, name=log_path.stem, port=port,
                 command=args, merge_stderr=True)


def start_role(role: str, server: RedisServer, tmp_path: Path, name: str, **ledger_vars: str) -> Service:
    port = free_port()
    return spawn([sys.executable, "-m", "call_ledger.cli", role], tmp_path / f"{name}.log", name, port,
                 LEDGER_REDIS_URL=server.url, LEDGER_PORT=str(port), LEDGER_CONSUMER_NAME=name, **ledger_vars)


async def wait_healthy(*services: Service, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    for service in services:
        await service.wait_ready("/healthz", timeout=max(0.0, deadline - time.monotonic()))


@pytest.fixture
def services() -> Iterable[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def worker_vars(**overrides: str) -> dict[str, str]:
    # 64 senders and a scraper from one address stand in for many providers: no per-peer cap.
    return {"LEDGER_FX_RATES": FX_RATES, "LEDGER_CLAIM_IDLE_MS": "300", "LEDGER_BATCH_SIZE": "50",
            "LEDGER_MAX_CONNECTIONS_PER_PEER": "0", **overrides}


# -- webhooks -----------------------------------------------------------------------------------

def platform_body(event: CallEvent) -> bytes:
    """The platform webhook (SPEC §6) that intake normalises into exactly this event."""
    data: dict[str, Any] = {}
    if event.status is not None:
        kind = "call.status"
        data["status"] = event.status
        if event.duration is not None:
            data["duration"] = event.duration
    elif event.costs:
        kind = "call.usage"
        [cost] = event.costs
        data = {"component": cost.component, "cost": format_nano(cost.amount_nano), "currency": cost.currency}
    else:
        kind = "call.metadata"
        for name in ("assistant_id", "assistant_name", "flow_name", "direction", "to_phone_number",
                     "customer_phone_number", "call_meta"):
            if getattr(event, name) is not None:
                data[name] = getattr(event, name)
    assert kind == event.type
    return json.dumps({"type": kind, "call_sid": event.call_sid, "occurred_at": event.occurred_at,
                       "data": data}).encode()


@dataclass(frozen=True)
class Webhook:
    event_id: str
    body: bytes
    headers: dict[str, str]


def webhooks(events: list[CallEvent], rng: random.Random, share: float = 0.1) -> list[Webhook]:
    """Signed platform webhooks for the events, some delivered twice (same webhook-id), shuffled."""
    out = []
    for event in events:
        body = platform_body(event)
        hook = Webhook(event.event_id, body, sign_platform(body, event.event_id))
        out += [hook] * (1 + (rng.random() < share))
    rng.shuffle(out)
    return out


async def post(session: aiohttp.ClientSession, port: int, hook: Webhook) -> int:
    async with session.post(f"http://127.0.0.1:{port}/webhooks/platform", data=hook.body,
                            headers=hook.headers) as response:
        await response.read()
        return response.status


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The worker's /metrics: the lag gauges, and the platform counters summed over their other labels."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("ledger_consumer_lag", "ledger_consumer_pending"):
                values[sample.name] = sample.value
            elif sample.name.endswith("_total") and sample.labels.get("source") == "platform":
                name = sample.name
                if name == "ledger_events_received_total":
                    name = f"received_{sample.labels['outcome']}"
                values[name] = values.get(name, 0.0) + sample.value
    return values


# -- 1. a worker process SIGKILLed at several points; the other takes over -----------------------

@pytest.mark.parametrize(("point", "fraction"), [("early", 0.05), ("middle", 0.5), ("late", 0.8)])
async def test_sigkilled_worker_is_taken_over_by_the_survivor_and_records_are_exact(
    point: str, fraction: float, redis_server: RedisServer, store: Store, services: list[Service],
    tmp_path: Path, guarantees: Guarantees,
) -> None:
    settings = ledger_settings(redis_server)
    rng = random.Random(f"crash-dups-{point}")
    events = ledger_events(f"CA-kill-{point}", calls=200, seed=f"crash-{point}", usages=8, eur=3)
    payloads = with_duplicates(events, rng)
    assert len(payloads) > 4000 and len(events) > 3500

    api = start_role("api", redis_server, tmp_path, "api")
    victim = start_role("worker", redis_server, tmp_path, "victim", **worker_vars())
    survivor = start_role("worker", redis_server, tmp_path, "survivor", **worker_vars())
    services += [api, victim, survivor]
    # Both workers up and waiting on the group before the stream fills: the kill points are
    # measured on the stream, not on how fast each process happened to start.
    await wait_healthy(api, victim, survivor)
    filling = asyncio.create_task(fill(store, payloads, chunk=250))  # the stream fills while we watch

    # Kill the victim once `fraction` of the stream is acknowledged, while it holds entries:
    # freeze it (SIGSTOP), look, and either SIGKILL it or let it go on and look again.
    target = int(len(payloads) * fraction)
    deadline = time.monotonic() + 30
    while True:
        victim.assert_alive()
        survivor.assert_alive()
        assert time.monotonic() < deadline, "the workers made no progress"
        group = await group_info(store)
        acked = int(group["entries-read"] or 0) - int(group["pending"])
        if acked >= target:
            os.kill(victim.proc.pid, signal.SIGSTOP)
            held = await pending_ids(store, "victim")
            if held:
                break
            os.kill(victim.proc.pid, signal.SIGCONT)
        assert not filling.done() or int(group["lag"]) + int(group["pending"]) > 0, \
            "the stream drained before the kill point: more events"
        await asyncio.sleep(0.002)
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    killed = time.monotonic()
    await filling
    acked_at_kill = acked  # when the victim was frozen (the survivor has gone on since)
    # SPEC §7: taken over "within a few seconds after LEDGER_CLAIM_IDLE_MS" (300 ms here).
    while set(held) & set(await pending_ids(store)):
        survivor.assert_alive()
        assert time.monotonic() - killed < 0.3 + 5, "the dead worker's entries were not taken over"
        await asyncio.sleep(0.01)
    takeover_s = time.monotonic() - killed

    took = await drained(store, 30, survivor)

    # The survivor claimed and handled every entry the victim died holding, but those whose
    # acknowledgement the victim had sent before it was stopped (Redis ran it after the
    # pending list above was read): the victim's lines for them were written first.
    assert await pending_ids(store) == []
    survivor_outcomes, victim_outcomes = survivor.outcomes(), victim.outcomes()
    for entry_id in held:
        handled = survivor_outcomes.get(entry_id, []) + victim_outcomes.get(entry_id, [])
        assert set(handled) & {"applied", "duplicate"}, entry_id
    applied = await assert_records_exact(store, events, settings)
    await assert_api_records(api.port, events, settings)
    assert applied == len({(e.call_sid, e.event_id) for e in events})

    logged = [o for svc in (victim, survivor) for outs in svc.outcomes().values() for o in outs]
    print(f"\n[kill {point}] {len(payloads)} entries, {len(events)} events over 200 calls; victim killed at "
          f"{acked_at_kill} acked ({acked_at_kill / len(payloads):.0%}) holding {len(held)}, taken over in "
          f"{takeover_s:.2f} s; drained in {takeover_s + took:.2f} s; outcomes logged: "
          f"{logged.count('applied')} applied, {logged.count('duplicate')} duplicate, "
          f"{logged.count('deferred')} deferred")
    assert logged.count("applied") <= applied  # never applied twice (a kill may cut a log line, never add one)
    guarantees.record(f"worker SIGKILL {point} ({acked_at_kill / len(payloads):.0%} acked), survivor takes over",
                      sent=len(payloads), answered_2xx=len(payloads), applied=applied,
                      duplicates_suppressed=logged.count("duplicate"),
                      lost=len({(e.call_sid, e.event_id) for e in events}) - applied)


# -- 2. killed after the commit script wrote a batch, before XACK -------------------------------

async def test_worker_killed_between_commit_and_ack_is_redelivered_as_duplicates_never_double_counted(
    redis_server: RedisServer, store: Store, services: list[Service], tmp_path: Path, guarantees: Guarantees,
) -> None:
    settings = ledger_settings(redis_server)
    rng = random.Random(2)
    events = ledger_events("CA-ack", calls=60, seed=2, usages=15, eur=4)
    payloads = with_duplicates(events, rng)
    await fill(store, payloads)
    await store.ensure_group()
    batch, fatal = 50, 4

    crasher = spawn([sys.executable, "-c", "import sys; from tests.support.workers import crash_after_commit_main "
                     "as m; m(sys.argv[1:])", "crash-after-commit", str(fatal), redis_server.url, str(batch), FX_RATES],
                    tmp_path / "crasher.log", "crasher")
    services.append(crasher)
    assert crasher.proc.wait(30) == -signal.SIGKILL, crasher.tail()
    [line] = [ln for ln in crasher.output().splitlines() if ln.startswith("crashing before ack: ")]
    unacked = line.removeprefix("crashing before ack: ").split(",")

    # It died holding the batch whose acknowledgement it was sending and at most the next one,
    # read (and perhaps committed) while that was in flight: the loop overlaps a batch's index
    # update and ack with the next batch.
    assert len(unacked) == batch
    held = await pending_ids(store, "crasher")
    assert set(unacked) <= set(held) and len(held) in (batch, 2 * batch), (len(held), batch)
    assert await store.group_stats() == (len(payloads) - (fatal - 1) * batch - len(held), len(held))
    for entry_id in unacked:  # every one of them committed by the script
        [(_, fields)] = await store.redis.xrange(store.stream, min=entry_id, max=entry_id)
        event = CallEvent.model_validate_json(fields[b"e"])
        assert await store.are_applied([(event.call_sid, event.key)]) == [True], entry_id
    crasher_outcomes = crasher.outcomes()
    # The acknowledged batch's lines are written before its XACK; the next batch's never were.
    assert all(crasher_outcomes[e] in (["applied"], ["duplicate"]) for e in unacked)
    assert not any(e in crasher_outcomes for e in set(held) - set(unacked))
    applied_by_crasher = sum(o.count("applied") for o in crasher_outcomes.values())
    stored_before = sum([int(await store.redis.hget(store.call_key(sid), "v") or 0) for sid in by_call(events)])
    assert applied_by_crasher <= stored_before <= applied_by_crasher + len(held) - len(unacked)

    survivor = Consumer(store, make_settings(redis_url=redis_server.url, fx_rates=FX_RATES, consumer_name="survivor",
                                             claim_idle_ms=200, batch_size=batch), Metrics())
    with capture_logs() as logs:
        deadline = time.monotonic() + 20
        while await store.group_stats() != (0, 0):
            assert time.monotonic() < deadline, f"not drained: {await store.group_stats()}"
            await survivor.step(block_ms=20)
    outcomes: dict[str, list[str]] = {}
    for log in logs:
        if "entry_id" in log and "outcome" in log:
            outcomes.setdefault(log["entry_id"], []).append(log["outcome"])
    # Redelivered, found applied, acknowledged: a duplicate every time, never applied again.
    assert all(outcomes[e] == ["duplicate"] for e in unacked), {e: outcomes.get(e) for e in unacked}
    assert all(outcomes[e] in (["applied"], ["duplicate"]) for e in held)
    unique = len({e.event_id for e in events})
    assert sum(o.count("applied") for o in outcomes.values()) == unique - stored_before
    reg = survivor.metrics.registry
    assert reg.get_sample_value("ledger_events_applied_total", {"source": "platform"}) == unique - stored_before
    assert await pending_ids(store) == []

    applied = await assert_records_exact(store, events, settings)
    assert applied == unique
    everything = [*crasher_outcomes.values(), *outcomes.values()]
    dupes = sum(o.count("duplicate") for o in everything)
    # Each stream copy of an already-applied event, each redelivery of the unacknowledged batch,
    # and each event the crasher committed in its next batch without living to log it.
    assert dupes == len(payloads) - unique + batch + (stored_before - applied_by_crasher)
    guarantees.record("worker SIGKILLed after commit, before XACK; batch redelivered", sent=len(payloads),
                      answered_2xx=len(payloads), applied=applied, duplicates_suppressed=dupes,
                      lost=unique - applied)


# -- 3. overload: a burst of webhooks faster than the worker applies them ------------------------

async def test_a_burst_of_webhooks_is_all_applied_and_lag_shows_then_clears(
    redis_server: RedisServer, store: Store, services: list[Service], tmp_path: Path, guarantees: Guarantees,
) -> None:
    settings = ledger_settings(redis_server)
    rng = random.Random(3)
    events = ledger_events("CA-burst", calls=300, seed=3, usages=4, eur=1)
    hooks = webhooks(events, rng)
    assert len(hooks) > 4000
    worker = start_role("worker", redis_server, tmp_path, "burst-worker", **worker_vars(LEDGER_BATCH_SIZE="10"))
    api = start_role("api", redis_server, tmp_path, "burst-api")
    services += [worker, api]
    await wait_healthy(worker, api)

    statuses: list[tuple[str, int]] = []
    seen: list[dict[str, float]] = []  # every scrape, with "during_burst" 1.0 while webhooks were still posted
    burst_done = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=80)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        queue: asyncio.Queue[Webhook] = asyncio.Queue()
        for hook in hooks:
            queue.put_nowait(hook)

        async def sender() -> None:
            while not queue.empty():
                hook = queue.get_nowait()
                statuses.append((hook.event_id, await post(session, worker.port, hook)))

        async def scraper() -> None:
            while True:
                sample = await scrape(session, worker.port)
                sample["during_burst"] = 0.0 if burst_done.is_set() else 1.0
                seen.append(sample)
                if burst_done.is_set() and seen[-1]["ledger_consumer_lag"] == seen[-1]["ledger_consumer_pending"] == 0:
                    return
                await asyncio.sleep(0.02)

        started = time.monotonic()
        scraping = asyncio.create_task(scraper())
        await asyncio.gather(*(sender() for _ in range(64)))
        burst_s = time.monotonic() - started
        at_burst_end = await store.group_stats()
        burst_done.set()
        await asyncio.wait_for(scraping, 60)
        drain_s = time.monotonic() - started
        final = await scrape(session, worker.port)

    ok = [event_id for event_id, status in statuses if 200 <= status < 300]
    assert len(statuses) == len(hooks)
    assert len(ok) == len(hooks), f"refused: {sorted({s for _, s in statuses if s >= 300})}"
    assert await store.group_stats() == (0, 0)
    assert (final["ledger_consumer_lag"], final["ledger_consumer_pending"]) == (0, 0)
    during = [s for s in seen if s["during_burst"]]
    busy = [s for s in during if s["ledger_consumer_lag"] > 0 or s["ledger_consumer_pending"] > 0]
    assert busy, f"never saw a backlog in {len(during)} scrapes during the burst"

    # Every 2xx'd event is applied, as intake normalised it: the event that was sent (a cost in
    # another currency journaled with the rate and amount it was counted at).
    originals = {e.event_id: e for e in events}
    for sid, mine in by_call(originals[eid] for eid in set(ok)).items():
        journal = {e.key: e for e in map(CallEvent.model_validate_json, await store.all_events(sid))}
        assert [journal.get(e.key) for e in mine] == [frozen_fx(e, settings) for e in mine], sid
    unique = len(set(ok))
    assert final["ledger_events_applied_total"] == unique
    assert final["ledger_events_duplicate_total"] == len(ok) - unique
    assert final["received_stored"] == len(ok)
    applied = await assert_records_exact(store, events, settings)
    await assert_api_records(api.port, events, settings)

    max_lag = max(s["ledger_consumer_lag"] for s in seen)
    max_pending = max(s["ledger_consumer_pending"] for s in seen)
    during_burst = len(ok) - sum(at_burst_end)  # acknowledged while webhooks were still arriving
    print(f"\n[overload] {len(hooks)} webhooks, 64 concurrent: intake {len(ok) / burst_s:.0f}/s over {burst_s:.2f} s, "
          f"applied meanwhile {during_burst / burst_s:.0f} entries/s, then "
          f"{sum(at_burst_end) / max(drain_s - burst_s, 1e-3):.0f} entries/s once it ended; overall "
          f"apply {len(ok) / drain_s:.0f} entries/s ({unique / drain_s:.0f} events/s) drained after {drain_s:.2f} s; "
          f"(lag, pending) at burst end {at_burst_end}; max lag {max_lag:.0f}, max pending {max_pending:.0f}; "
          f"{len(busy)}/{len(during)} scrapes during the burst showed a backlog")
    guarantees.record("overload: 64-way webhook burst into a worker with LEDGER_BATCH_SIZE=10",
                      sent=len(hooks), answered_2xx=len(ok), applied=applied,
                      duplicates_suppressed=int(final["ledger_events_duplicate_total"]), lost=unique - applied)
    assert duplicates_in(ok) == len(ok) - applied


# -- 4. SIGTERM under load -----------------------------------------------------------------------

async def test_sigterm_under_load_exits_zero_acknowledged_applied_rest_finished_by_a_new_worker(
    redis_server: RedisServer, store: Store, services: list[Service], tmp_path: Path, guarantees: Guarantees,
) -> None:
    settings = ledger_settings(redis_server)
    rng = random.Random(4)
    events = ledger_events("CA-term", calls=250, seed=4, usages=12, eur=3)
    rng.shuffle(events)
    prefilled, posted = events[: len(events) * 3 // 4], events[len(events) * 3 // 4:]
    payloads = with_duplicates(prefilled, rng)
    hooks = webhooks(posted, rng)
    await fill(store, payloads)
    await store.ensure_group()
    grace = 3.0

    first = start_role("worker", redis_server, tmp_path, "first",
                       **worker_vars(LEDGER_BATCH_SIZE="100", LEDGER_SHUTDOWN_GRACE_S=str(grace)))
    services.append(first)
    await wait_healthy(first)

    answered: list[str] = []  # event ids of 2xx answers
    attempts = 0
    retry: list[Webhook] = []
    queue: asyncio.Queue[Webhook] = asyncio.Queue()
    for hook in hooks:
        queue.put_nowait(hook)
    gone = asyncio.Event()

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal attempts
        while not queue.empty():
            hook = queue.get_nowait()
            if gone.is_set():
                retry.append(hook)
                continue
            attempts += 1
            try:
                status = await post(session, first.port, hook)
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if 200 <= status < 300:
                answered.append(hook.event_id)
            else:  # the worker stopped taking requests: the sender retries later, elsewhere
                gone.set()
                retry.append(hook)
            await asyncio.sleep(0.002)  # a steady trickle, not a flood: the stream must outlast it

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        senders = asyncio.gather(*(sender(session) for _ in range(8)))
        deadline = time.monotonic() + 30
        while True:  # SIGTERM once a quarter of the stream is acknowledged, or half the webhooks are in
            first.assert_alive()
            assert time.monotonic() < deadline, "the worker made no progress"
            group = await group_info(store)
            acked = int(group["entries-read"] or 0) - int(group["pending"])
            if acked >= len(payloads) // 4 or (acked and queue.qsize() <= len(hooks) // 2):
                break
            await asyncio.sleep(0.005)
        assert not queue.empty(), "the webhooks were all in before SIGTERM: post more, or more slowly"
        answered_before_term = len(answered)
        sent_term = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        while first.proc.poll() is None:
            assert time.monotonic() - sent_term < grace + 10, "no exit after SIGTERM"
            await asyncio.sleep(0.01)
        took = time.monotonic() - sent_term
        gone.set()
        await senders
    assert first.proc.returncode == 0, first.tail()
    assert took < grace + 2.0, f"exit took {took:.2f} s (grace {grace} s)"
    assert answered_before_term > 0

    # Everything the stopped worker acknowledged is applied; the rest is pending or unread.
    group = await group_info(store)
    last = _text(group["last-delivered-id"])
    held = set(await pending_ids(store))
    entries = await store.redis.xrange(store.stream, min="-", max="+")
    delivered = [(eid, f) for eid, f in entries if _id(_text(eid)) <= _id(last)]
    acked = [(eid, f) for eid, f in delivered if _text(eid) not in held]
    assert int(group["lag"]) > 0, "the worker finished the stream before SIGTERM: make it longer"
    assert int(group["lag"]) == len(entries) - len(delivered)
    acked_events = [CallEvent.model_validate_json(fields[b"e"]) for _, fields in acked]
    assert all(await store.are_applied([(event.call_sid, event.key) for event in acked_events])), \
        "an acknowledged event is not applied"
    applied_by_first = sum(o.count("applied") for o in first.outcomes().values())
    stored = sum([int(await store.redis.hget(store.call_key(sid), "v") or 0) for sid in by_call(events)])
    assert stored == applied_by_first  # applied: exactly what it logged as applied
    assert any(line["event"] == "worker_stopped" for line in first.lines())

    second = start_role("worker", redis_server, tmp_path, "second", **worker_vars(LEDGER_BATCH_SIZE="100"))
    services.append(second)
    await wait_healthy(second)
    limit = asyncio.Semaphore(16)

    async def redeliver(session: aiohttp.ClientSession, hook: Webhook) -> None:
        async with limit:
            assert await post(session, second.port, hook) == 200
        answered.append(hook.event_id)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        attempts += len(retry)  # the provider's retries, now to the replacement
        await asyncio.gather(*(redeliver(session, hook) for hook in retry))
    await drained(store, 30, second)

    applied = await assert_records_exact(store, events, settings)
    unique = len({e.event_id for e in events})
    assert applied == unique
    delivered_2xx = [*(CallEvent.model_validate_json(p).event_id for p in payloads), *answered]
    print(f"\n[sigterm] exit 0 after {took:.2f} s (grace {grace:g} s) with {len(acked)} of {len(entries)} entries "
          f"acknowledged, {len(held)} pending, {group['lag']} unread; {answered_before_term} webhooks answered "
          f"before SIGTERM, {len(retry)} retried to the new worker")
    guarantees.record("worker SIGTERM under load, new worker finishes", sent=len(payloads) + attempts,
                      answered_2xx=len(delivered_2xx), applied=applied,
                      duplicates_suppressed=duplicates_in(delivered_2xx), lost=unique - applied)
    assert duplicates_in(delivered_2xx) == len(delivered_2xx) - applied


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -- 5. how often an idle worker looks for a dead worker's entries --------------------------------

async def test_an_idle_worker_checks_for_stale_entries_every_quarter_of_the_claim_idle_time(
    redis_server: RedisServer, store: Store,
) -> None:
    claim_idle_ms = 400  # README: "checked every second, or every quarter of that idle time if shorter": 0.1 s
    consumer = Consumer(store, make_settings(redis_url=redis_server.url, consumer_name="idle",
                                             claim_idle_ms=claim_idle_ms), Metrics())
    checks: list[float] = []
    original = store.claim_stale

    async def counting_claim(*args: Any, **kwargs: Any) -> Any:
        checks.append(time.monotonic())
        return await original(*args, **kwargs)

    store.claim_stale = counting_claim  # type: ignore[method-assign]
    await consumer.start()
    try:
        window = 2.0
        started = time.monotonic()
        while time.monotonic() - started < window:  # an idle stream: nothing to read, nothing to claim
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    # Every 0.1 s would be ~20 checks in 2 s; once a second is 2 or 3. Ask for a generous third of 20.
    assert len(checks) >= window / (claim_idle_ms / 4000) / 3, f"{len(checks)} claim checks in {window} s"
