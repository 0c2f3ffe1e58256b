"""Signature claims around the one-server claim-and-XADD script: a parser failure of any kind
still claims, claims are confirmed like writes under LEDGER_DURABLE_ACK, concurrent re-splits
store one set of parameters; and a claim that reached no Redis (503) is held by the process
until it lands."""

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.core.errors import InvalidEvent, LedgerError, StoreUnavailable
from call_ledger.core.replay import SignatureUse
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store import signatures as signature_ledger
from call_ledger.store.signatures import SignatureLedger
from call_ledger.worker import intake
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.sources import WebhookRequest
from call_ledger.worker.sources.twilio import TwilioSource
from tests.support import payloads_plivo as pl
from tests.support import payloads_twilio as tw
from tests.support.redis_server import RedisServer
from tests.support.resplits import (
    PROVIDERS,
    PUBLIC_URL,
    post,
    post_while_redis_is_down,
    resplit_settings,
    resplits,
    sign,
)
from tests.support.service import start_service, stop
from tests.support.settings import make_settings


@pytest.fixture
def settings() -> Settings:
    """Overrides conftest's: every URL-signed source configured behind LEDGER_PUBLIC_URL."""
    return resplit_settings()


def parsing_resplit(client: Any, provider: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A single re-split of `params` that the source parses (found offline, so the attacker's one try
    per signature is spent on it)."""
    path = PROVIDERS[provider][0]
    source = client.server.app[intake.CONFIGURED][provider]
    for _label, moved in resplits(params):
        webhook = WebhookRequest(method="POST", url=PUBLIC_URL + path, headers={}, body=urlencode(moved).encode(),
                                 received_at=time.time(), query=())
        try:
            if source.parse(webhook) is not None:
                return moved
        except LedgerError:
            continue
    raise AssertionError("no single re-split parses")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_503_original_holds_its_claim_so_a_resplit_is_deferred_and_the_honest_retry_passes(
        client: Any, store: Store, consumer: Consumer, provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The original is answered 503 (the one-server script never ran: Redis went away), so Redis
    has no claim. The process holds it: the captured request re-split, delivered before the
    provider's retry, is deferred (503, sent nowhere) and stores nothing; the honest retry passes
    and is stored, and the re-split is refused 401 from then on."""
    path, sid, params, _, _ = PROVIDERS[provider]
    headers = sign(provider, params)
    assert await post_while_redis_is_down(client, store, monkeypatch, path, headers, params) == 503
    assert client.server.app[intake.SIGNATURES].held == 1
    moved = parsing_resplit(client, provider, params)
    attack = await post(client, path, headers, moved)
    assert attack.status == 503 and (await attack.json())["error"] == "signature_claim_pending"
    assert await store.redis.xlen(store.stream) == 0  # the re-split stored nothing
    assert await store.redis.keys(f"{store.prefix}:sig:*") == []  # nor claimed anything
    retry = await post(client, path, headers, params)
    assert retry.status == 200 and (await retry.json())["call_sid"] == sid
    assert client.server.app[intake.SIGNATURES].held == 0  # Redis holds the claim now
    again = await post(client, path, headers, moved)
    assert again.status == 401  # refused by Redis's claim from here on, in every process
    assert (await again.json())["detail"] == "signature already used with other parameters"


async def test_a_refused_request_whose_claim_reached_no_redis_holds_it_too(
        client: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at parse (422), its claim goes through `remember` (as every claim on a Cluster):
    when Redis is away the answer is 503 and the claim is held, so a re-split is deferred while
    the provider's retry gets the 422 again, and refused once the claim is in Redis."""
    path, _sid, params, _, _ = PROVIDERS["twilio"]
    bad = [(name, "not-a-status" if name == "CallStatus" else value) for name, value in params]
    headers = sign("twilio", bad)
    signatures = client.server.app[intake.SIGNATURES]
    claim = signatures._claim

    async def down(_use: SignatureUse) -> bool:
        raise StoreUnavailable("redis: ConnectionError")

    monkeypatch.setattr(signatures, "_claim", down)
    assert (await post(client, path, headers, bad)).status == 503
    assert signatures.held == 1
    _label, moved = next(resplits(bad))
    assert (await post(client, path, headers, moved)).status == 503  # deferred here, nothing sent
    monkeypatch.setattr(signatures, "_claim", claim)
    assert (await post(client, path, headers, bad)).status == 422  # the retry: claimed, refused as before
    assert signatures.held == 0
    assert (await post(client, path, headers, moved)).status == 401  # and now by Redis's claim


async def test_held_claims_land_in_redis_when_it_answers_again_so_other_processes_refuse_the_resplit(
        client: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _sid, params, _, _ = PROVIDERS["twilio"]
    headers = sign("twilio", params)
    assert await post_while_redis_is_down(client, store, monkeypatch, path, headers, params) == 503
    here = client.server.app[intake.SIGNATURES]
    (identity, digest), = here._held.items()
    assert await store.redis.exists(here.key(identity)) == 0
    for _ in range(100):  # the service's background task tries every 100 ms
        if here.held == 0:
            break
        await asyncio.sleep(0.05)
    assert here.held == 0 and await store.redis.get(here.key(identity)) == digest
    # Another process on the same Redis, which never saw the 503, refuses the re-split.
    elsewhere = SignatureLedger(store.redis, "cl")
    assert not await elsewhere.remember(SignatureUse(identity, b"\0" * 32))
    assert await elsewhere.remember(SignatureUse(identity, digest))  # the provider's retry, anywhere


async def test_a_held_claim_taken_elsewhere_first_yields_to_redis(store: Store) -> None:
    """Two processes each held a claim of one signature; the first to land wins, as in Redis."""
    here, elsewhere = SignatureLedger(store.redis, "cl"), SignatureLedger(store.redis, "cl")
    original, resplit = SignatureUse("sig-1", b"a" * 32), SignatureUse("sig-1", b"b" * 32)
    elsewhere.hold(resplit)
    here.hold(original)
    assert await elsewhere.land_held() == 1
    with capture_logs() as logs:
        assert await here.land_held() == 0
    assert [line["event"] for line in logs] == ["signature_claim_taken_elsewhere"]
    assert here.held == 0 and not here.held_elsewhere(resplit)  # Redis decides from here on
    assert not await here.remember(original)


async def test_many_held_claims_land_a_chunk_at_a_time(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signature_ledger, "LAND_CHUNK", 2)
    ledger = SignatureLedger(store.redis, "cl")
    for n in range(5):
        ledger.hold(SignatureUse(f"sig-{n}", b"%d" % n * 32))
    assert await ledger.land_held() == 5 and ledger.held == 0
    assert [await store.redis.get(ledger.key(f"sig-{n}")) for n in range(5)] == [b"%d" % n * 32 for n in range(5)]

    # Redis answering some claims of a chunk and not others: the answered ones are settled.
    remember = ledger.remember
    for n in range(5, 8):
        ledger.hold(SignatureUse(f"sig-{n}", b"x" * 32))

    async def flaky(use: SignatureUse) -> bool:
        if use.identity == "sig-6":
            raise StoreUnavailable("redis: TimeoutError")
        return await remember(use)

    monkeypatch.setattr(ledger, "remember", flaky)
    with pytest.raises(StoreUnavailable):
        await ledger.land_held()
    assert list(ledger._held) == ["sig-6", "sig-7"]  # sig-5 landed; sig-7's chunk was never sent
    monkeypatch.setattr(ledger, "remember", remember)
    assert await ledger.land_held() == 2 and ledger.held == 0


async def test_held_claims_stay_held_while_redis_is_away_and_are_bounded(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = SignatureLedger(store.redis, "cl")
    monkeypatch.setattr(signature_ledger, "HELD_CLAIMS", 3)
    for n in range(5):
        ledger.hold(SignatureUse(f"sig-{n}", b"a" * 32))
    ledger.hold(SignatureUse("sig-4", b"b" * 32))  # a second 503 of the same signature: the first stays
    assert list(ledger._held) == ["sig-2", "sig-3", "sig-4"] and ledger._held["sig-4"] == b"a" * 32
    assert ledger.held_elsewhere(SignatureUse("sig-4", b"b" * 32))
    assert not ledger.held_elsewhere(SignatureUse("sig-4", b"a" * 32))
    assert not ledger.held_elsewhere(SignatureUse("sig-0", b"b" * 32))  # given up: Redis will decide

    async def down(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreUnavailable("redis: ConnectionError")

    monkeypatch.setattr(ledger, "remember", down)
    with pytest.raises(StoreUnavailable):
        await ledger.land_held()
    assert ledger.held == 3  # nothing given up while Redis is away


# -- LEDGER_DURABLE_ACK=replica: the claims made apart from the script are never confirmed ----------------------





async def _synced(client: Any) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up"

@contextlib.asynccontextmanager
async def primary_and_replica() -> AsyncIterator[tuple[RedisServer, RedisServer, Any]]:
    """A redis-server and its replica (in sync when this yields), and a client of the replica."""
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        primary = RedisServer(Path(a))
        primary.start()
        replica = RedisServer(Path(b), extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
        replica.start()
        rclient = aioredis.Redis.from_url(replica.url)
        try:
            for _ in range(200):
                if await _synced(rclient):
                    break
                await asyncio.sleep(0.05)
            yield primary, replica, rclient
        finally:
            with contextlib.suppress(Exception):
                os.kill(replica.proc.pid, signal.SIGCONT)
            await rclient.aclose()
            replica.stop()
            primary.stop()



@pytest.mark.parametrize("outcome", ["refused", "ignored"])
async def test_durable_ack_replica_confirms_the_claim_of_a_refused_or_ignored_request(
        aiohttp_client: Any, outcome: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With LEDGER_DURABLE_ACK=replica a claim is confirmed like an XADD: a request refused at parse
    or ignored is not answered 422/200 with its claim on the primary only (a failover would lose it,
    and a re-split of the captured request would then be stored). With no replica in sync it is 503."""
    async with primary_and_replica() as (primary, _replica, rclient):
        assert await _synced(rclient)
        settings = make_settings(twilio_auth_token=tw.AUTH_TOKEN, plivo_auth_token=pl.AUTH_TOKEN,
                                 public_url=PUBLIC_URL, redis_url=primary.url, durable_ack="replica",
                                 durable_ack_timeout_ms=300)
        store = Store.from_settings(settings)
        client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
        path, _sid, params, _, _ = PROVIDERS["twilio"]
        headers = sign("twilio", params)

        # The replica's link drops (a network cut, a restart): no replica in sync. A request that
        # parses is now refused 503, as promised ("while no replica is in sync every webhook gets 503").
        await rclient.replicaof("127.0.0.1", "1")
        for _ in range(200):
            if int((await store.redis.info("replication"))["connected_slaves"]) == 0:
                break
            await asyncio.sleep(0.05)
        other = [(n, v) for n, v in params if n != "SequenceNumber"] + [("SequenceNumber", "4")]
        assert (await post(client, path, sign("twilio", other), other)).status == 503
        real_parse = intake.parse

        def refuse(*_args: Any) -> Any:
            if outcome == "refused":
                raise InvalidEvent("refused for the test")
            return None

        monkeypatch.setattr(intake, "parse", refuse)
        answer = await post(client, path, headers, params)
        monkeypatch.setattr(intake, "parse", real_parse)
        assert answer.status == 503, await answer.text()  # not answered before a replica has the claim
        await store.close()



# -- what held ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
async def test_held_original_and_resplits_raced_in_one_tick_store_exactly_one(
        client: Any, store: Store, consumer: Consumer, provider: str) -> None:
    """Original and every single re-split posted at once, over and over: one parameters digest wins."""
    path, _sid, params, _, _ = PROVIDERS[provider]
    headers = sign(provider, params)
    moved = [m for _, m in resplits(params)][:10]
    answers = await asyncio.gather(*(post(client, path, headers, p) for p in [*moved, params, *moved]))
    statuses = [a.status for a in answers]
    digests_stored = {i % (len(moved) + 1) for i, a in enumerate(answers) if a.status == 200}
    assert len(digests_stored) <= 1, statuses


async def test_held_durable_ack_replica_the_script_path_confirms_on_the_replica(aiohttp_client: Any) -> None:
    async with primary_and_replica() as (primary, replica, rclient):
        settings = make_settings(twilio_auth_token=tw.AUTH_TOKEN, plivo_auth_token=pl.AUTH_TOKEN,
                                 public_url=PUBLIC_URL, redis_url=primary.url, durable_ack="replica",
                                 durable_ack_timeout_ms=300)
        store = Store.from_settings(settings)
        client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
        for provider in PROVIDERS:
            path, _sid, params, _, _ = PROVIDERS[provider]
            answer = await post(client, path, sign(provider, params), params)
            assert answer.status == 200
            # the moment the 200 is here, the replica has the entry and the claim
            assert int(await rclient.xlen(store.stream)) >= 1 and await rclient.keys("cl:sig:*")
        os.kill(replica.proc.pid, signal.SIGSTOP)
        other = [(n, v) for n, v in PROVIDERS["twilio"][2] if n != "SequenceNumber"] + [("SequenceNumber", "4")]
        assert (await post(client, PROVIDERS["twilio"][0], sign("twilio", other), other)).status == 503
        os.kill(replica.proc.pid, signal.SIGCONT)


async def test_the_honest_retry_reaching_a_process_that_holds_a_resplit_is_deferred_not_refused(
        store: Store) -> None:
    """During an outage the original went to one process (held there) and a re-split to another
    (held there). The provider's retry reaching the second is 503, to be retried, not 401 (which
    would end it): Redis decides once both land, first claim wins, and here the original's does."""
    original, resplit = SignatureUse("sig-9", b"a" * 32), SignatureUse("sig-9", b"b" * 32)
    a, b = SignatureLedger(store.redis, "cl"), SignatureLedger(store.redis, "cl")
    a.hold(original)
    b.hold(resplit)
    assert b.held_elsewhere(original)  # the retry at b: intake answers 503 signature_claim_pending
    assert await a.land_held() == 1
    assert await b.land_held() == 0  # the re-split's claim lost: taken elsewhere
    assert not b.held_elsewhere(original)
    assert await b.remember(original)  # the provider's next retry passes at b
    assert not await b.remember(resplit)  # and the re-split is refused everywhere


# -- several intake processes during an outage ------------------------------------------------

def _post_to(port: int, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/twilio", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _parsing_resplit_params(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    source = TwilioSource(tw.AUTH_TOKEN)
    for _label, moved in resplits(params):
        webhook = WebhookRequest(method="POST", url=PUBLIC_URL + tw.PATH, headers={},
                                 body=urlencode(moved).encode(), received_at=time.time(), query=())
        try:
            if source.parse(webhook) is not None:
                return moved  # ApiVersion absorbs CallDuration: the record's duration would change
        except LedgerError:
            continue
    raise AssertionError("no single re-split parses")


def test_an_honest_retry_at_a_process_holding_a_resplit_is_deferred_not_refused(redis_server: RedisServer) -> None:
    """Two intake processes, Redis down: the provider's request reaches A (503, held there), an
    attacker's re-split of it reaches B (503, held there), and the provider's retry reaches B."""
    env = {"LEDGER_REDIS_URL": redis_server.url, "LEDGER_TWILIO_AUTH_TOKEN": tw.AUTH_TOKEN,
           "LEDGER_PUBLIC_URL": PUBLIC_URL, "LEDGER_LOG_FORMAT": "json"}
    a = start_service("intake", **env)
    port_a = a.port
    b = start_service("intake", **env)
    port_b = b.port
    try:
        params = tw.completed()
        headers = tw.TwilioSigner().sign("POST", PUBLIC_URL + tw.PATH, params).headers
        body, moved = urlencode(params).encode(), urlencode(_parsing_resplit_params(params)).encode()
        redis_server.stop()
        assert _post_to(port_a, headers, body)[0] == 503  # the provider's request: A holds its claim
        assert _post_to(port_b, headers, moved)[0] == 503  # the attacker's re-split to B: B holds *it*
        status, answer = _post_to(port_b, headers, body)  # the provider retries, and the balancer picks B
        # B cannot know which use Redis will keep (A holds the original): "retry", not 401, which
        # would end the provider's retries.
        assert status == 503 and answer["error"] == "signature_claim_pending", answer
    finally:
        for proc in (a, b):
            stop(proc)
