"""Replays with moved name/value boundaries (SPEC §8), the signed URL, and the signature settings.

Twilio and Plivo sign `name1 value1 name2 value2 …` (sorted by name) with no separator, so a
captured request re-split (`Event=Hangup` as `Even=tHangup`, `From` absorbing
`SequenceNumber`) keeps its valid signature. These tests take a request signed by the
provider's own SDK, post and apply it, then post every single re-split of it: each adjacent
pair merged (the first name keeps `value1 + name2 + value2`) and every boundary moved inside
each pair, in both directions. Each re-split is first checked to verify under the original
signature with the SDK's validator (that is the attack), then must be refused (401/422) with
the record byte-identical and no new call in Redis.
"""

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from plivo.utils.signature_v3 import validate_v3_signature
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from yarl import URL

from call_ledger.app import create_app
from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.replay import SignatureUse, params_digest, signature_identity
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.signatures import SignatureLedger
from call_ledger.worker.consumer import Consumer
from tests.support import payloads_plivo as pl
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.cli import run_cli
from tests.support.redis_server import free_port
from tests.support.resplits import (
    PROVIDERS,
    PUBLIC_URL,
    Params,
    post,
    post_while_redis_is_down,
    resplit_settings,
    resplits,
    sign,
)
from tests.support.settings import AUTH, make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings() -> Settings:
    """Overrides conftest's: every URL-signed source configured behind LEDGER_PUBLIC_URL."""
    return resplit_settings()


async def snapshot(client: Any, store: Store, sid: str) -> tuple[bytes, bytes, list[bytes], int]:
    """The record, its /events, every call key in Redis, and the stream's length."""
    record = await client.get(f"/api/v1/calls/sid/{sid}", headers=AUTH)
    events = await client.get(f"/api/v1/calls/sid/{sid}/events", headers=AUTH)
    assert record.status == 200 and events.status == 200
    keys = sorted(await store.redis.keys("cl:call:*"))
    return await record.read(), await events.read(), keys, int(await store.redis.xlen(store.stream))


async def post_original(client: Any, consumer: Consumer, provider: str) -> tuple[dict[str, str], str]:
    path, sid, params, _, _ = PROVIDERS[provider]
    headers = sign(provider, params)
    response = await post(client, path, headers, params)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["outcome"] == "stored" and answer["call_sid"] == sid
    assert await consumer.run_burst() == 1
    return headers, answer["event_id"]


# -- the attack, with the signature ledger ---------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_resplit_of_a_signed_request_is_refused_and_changes_nothing(
        client: Any, store: Store, consumer: Consumer, provider: str, guarantees: Any) -> None:
    path, sid, params, header, verifies = PROVIDERS[provider]
    headers, _ = await post_original(client, consumer, provider)
    before = await snapshot(client, store, sid)
    splits = list(resplits(params))
    labels = {label for label, _ in splits}
    if provider == "plivo":  # the findings, by name
        assert {"Even=tHangup", "EventH=angup", "Event+From", "CallUUID+CallerName"} <= labels
    else:
        assert {"From+FromCity", "FromZip+SequenceNumber", "SipResponseCode+Timestamp", "SequenceNumbe=r3"} <= labels
    assert len(splits) > 300
    answers: dict[int, int] = {}
    for label, split in splits:
        assert verifies(split, headers[header]), label  # the original signature still holds: the attack
        response = await post(client, path, headers, split)
        assert response.status in (401, 422), (label, response.status, await response.text())
        answers[response.status] = answers.get(response.status, 0) + 1
        await consumer.run_burst()
    assert answers == {401: len(splits)}  # the ledger answers before any parsing
    assert await snapshot(client, store, sid) == before
    metrics = await (await client.get("/metrics")).text()
    assert f'ledger_events_received_total{{outcome="rejected_replay",source="{provider}"}} {len(splits)}.0' in metrics
    guarantees.record(f"{provider}: every re-split replay of a signed request (401, record unchanged)",
                      sent=len(splits), answered_2xx=0, applied=0, duplicates_suppressed=0, lost=0)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_same_request_redelivered_is_a_2xx_duplicate(client: Any, store: Store, consumer: Consumer,
                                                               provider: str) -> None:
    path, sid, params, _, _ = PROVIDERS[provider]
    headers, event_id = await post_original(client, consumer, provider)
    before = await snapshot(client, store, sid)
    reordered = list(reversed(params))  # same pairs, another order in the body: the same request
    for body_params in (params, reordered):
        response = await post(client, path, headers, body_params)
        assert response.status == 200
        assert (await response.json())["event_id"] == event_id
    await consumer.run_burst()
    record, events, keys, _ = await snapshot(client, store, sid)
    assert (record, events, keys) == before[:3]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_after_the_signature_ttl_formats_and_dedupe_still_hold_single_resplits(
        client: Any, store: Store, consumer: Consumer, provider: str, guarantees: Any) -> None:
    """The signature's ledger entry gone (its TTL expired) before each re-split.

    Honestly: the strict formats refuse every single re-split that would touch a field the
    ledger reads in a way that matters (a merged value, a cut event-id or time field). The
    re-splits they let through only drop or mangle a field the ledger ignores, or drop a field
    (From, Direction, CallDuration, AnswerTime…) while the event id stays the same, so the
    event is a duplicate and changes nothing. Re-partitions that move several boundaries at
    once are not enumerated here: within the TTL the signature ledger refuses them all; after
    it, only the formats stand between them and the record.
    """
    path, sid, params, _, _ = PROVIDERS[provider]
    headers, event_id = await post_original(client, consumer, provider)
    before = await snapshot(client, store, sid)
    passed = []
    duplicates = 0
    for label, split in resplits(params):
        await store.redis.delete(*(await store.redis.keys("cl:sig:*")))
        response = await post(client, path, headers, split)
        assert response.status in (200, 422), (label, response.status, await response.text())
        if response.status == 200:
            answer = await response.json()
            assert answer.get("event_id") == event_id or answer["outcome"] == "ignored", (label, answer)
            passed.append(label)
            duplicates += answer.get("event_id") == event_id
    await consumer.run_burst()
    record, events, keys, _ = await snapshot(client, store, sid)
    assert (record, events, keys) == before[:3]
    assert passed, "some re-splits of ignored fields pass the formats: that is why the ledger exists"
    guarantees.record(f"{provider}: re-split replays after the signature's TTL (422, duplicate or ignored)",
                      sent=len(list(resplits(params))), answered_2xx=len(passed), applied=0,
                      duplicates_suppressed=duplicates, lost=0)


async def test_plivo_signature_padded_with_garbage_entries_is_one_signature(client: Any, store: Store,
                                                                           consumer: Consumer) -> None:
    """The identity is the MAC that matched, not the header text: extra entries make no new key."""
    headers, _ = await post_original(client, consumer, "plivo")
    signature = headers["X-Plivo-Signature-V3"]
    padded = {**headers, "X-Plivo-Signature-V3": f"bm90IGEgc2lnbmF0dXJl,{signature},Z2FyYmFnZQ=="}
    _, split = next(s for s in resplits(pl.hangup()) if s[0] == "Even=tHangup")
    assert (await post(client, pl.PATH, padded, split)).status == 401
    assert (await post(client, pl.PATH, padded, pl.hangup())).status == 200
    assert len(await store.redis.keys("cl:sig:*")) == 1


async def test_replay_refusals_never_show_the_signature(client: Any, consumer: Consumer) -> None:
    from structlog.testing import capture_logs

    headers, _ = await post_original(client, consumer, "twilio")
    _, split = next(s for s in resplits(tw.completed()) if s[0] == "FromZip+SequenceNumber")
    with capture_logs() as logs:
        response = await post(client, tw.PATH, headers, split)
    answer = await response.json()
    assert response.status == 401 and answer == {"error": "invalid_signature",
                                                  "detail": "signature already used with other parameters"}
    assert headers["X-Twilio-Signature"] not in repr(logs)
    assert any(log.get("outcome") == "rejected_replay" for log in logs)


# -- the signature ledger itself ---------------------------------------------------------------------------------

USE = SignatureUse(signature_identity("twilio", b"\x01" * 20), params_digest("POST", [], [("a", "b")]))
OTHER = SignatureUse(USE.identity, params_digest("POST", [], [("a", "bc")]))


def test_params_digest_is_a_multiset_of_pairs_with_unmovable_boundaries() -> None:
    digest = params_digest
    assert digest("POST", [], [("a", "1"), ("b", "2")]) == digest("post", [], [("b", "2"), ("a", "1")])
    assert digest("POST", [], [("Event", "Hangup")]) != digest("POST", [], [("Even", "tHangup")])
    assert digest("POST", [], [("a", "1")]) != digest("POST", [], [("a", "1"), ("a", "1")])
    assert digest("POST", [("a", "1")], []) != digest("POST", [], [("a", "1")])
    assert digest("GET", [("a", "1")], []) != digest("POST", [("a", "1")], [])
    assert digest("POST", [], [("a", '","')]) != digest("POST", [], [("a", ""), ("", "")])
    assert len(digest("POST", [], [("\ud800", "x")])) == 32  # a lone surrogate does not break it
    assert signature_identity("twilio", b"m") != signature_identity("plivo", b"m")


async def test_ledger_accepts_new_and_same_and_refuses_other_parameters(fake_redis: Any) -> None:
    ledger = SignatureLedger(fake_redis, "cl", ttl_s=60)
    assert await ledger.remember(USE) and await ledger.remember(USE)
    assert not await ledger.remember(OTHER)
    assert await fake_redis.get(ledger.key(USE.identity)) == USE.params_digest  # the first use stays
    assert 0 < await fake_redis.ttl(ledger.key(USE.identity)) <= 60


class _OldRedis:
    """A Redis before 7.0: SET refuses NX together with GET."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        raise ResponseError("syntax error")

    async def eval(self, *args: Any) -> Any:
        return await self.inner.eval(*args)


async def test_ledger_falls_back_to_a_one_key_script_without_set_nx_get(fake_redis: Any) -> None:
    ledger = SignatureLedger(_OldRedis(fake_redis), "cl", ttl_s=60)
    assert await ledger.remember(USE) and await ledger.remember(USE)
    assert not await ledger.remember(OTHER)
    assert 0 < await fake_redis.ttl(ledger.key(USE.identity)) <= 60


class _DownRedis:
    async def set(self, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("down")


async def test_ledger_unavailable_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await SignatureLedger(_DownRedis()).remember(USE)


@pytest.mark.real_redis
async def test_ledger_on_a_real_redis_server(redis_server: Any) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        ledger = SignatureLedger(client, "cl", ttl_s=1)
        assert await ledger.remember(USE) and await ledger.remember(USE) and not await ledger.remember(OTHER)
        assert ledger._set_nx_get  # Redis 7 takes SET NX GET
        deadline = time.monotonic() + 5
        while await client.exists(ledger.key(USE.identity)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await ledger.remember(OTHER)  # expired: the signature is free again (formats + dedupe remain)
    finally:
        await client.aclose()


# -- the signed URL: LEDGER_PUBLIC_URL, never the Host header ----------------------------------------------------

async def test_request_signed_for_another_host_is_refused_even_with_that_host_header(client: Any) -> None:
    params = tw.completed()
    for host, signer in (("attacker.example", tw.TwilioSigner()), ("127.0.0.1", tw.TwilioSigner())):
        port = client.server.port
        for base in (f"https://{host}", f"http://{host}:{port}", f"http://{host}"):
            signed = signer.sign("POST", base + tw.PATH, params)
            response = await client.post(tw.PATH, data=signed.body, headers={**signed.headers, "Host": host})
            assert response.status == 401, (base, await response.text())
        plivo = pl.PlivoSigner().sign("POST", f"http://{host}:{port}{pl.PATH}", pl.hangup())
        response = await client.post(pl.PATH, data=plivo.body, headers={**plivo.headers, "Host": f"{host}:{port}"})
        assert response.status == 401


async def test_request_signed_for_the_public_url_is_accepted_whatever_the_host_header(client: Any) -> None:
    signed = tw.TwilioSigner().sign("POST", PUBLIC_URL + tw.PATH, tw.completed())
    response = await client.post(tw.PATH, data=signed.body, headers={**signed.headers, "Host": "anything.example"})
    assert response.status == 200


@pytest.mark.parametrize("secret", ["twilio_auth_token", "plivo_auth_token"])
def test_intake_refuses_to_be_built_without_public_url(secret: str) -> None:
    settings = make_settings(**{secret: "tok"})
    with pytest.raises(ValueError, match="LEDGER_PUBLIC_URL"):
        create_app(settings, "worker")
    create_app(settings, "api")  # the read API signs nothing: it starts with the same shared secrets


@pytest.mark.parametrize("variable", ["LEDGER_TWILIO_AUTH_TOKEN", "LEDGER_PLIVO_AUTH_TOKEN"])
def test_start_up_without_public_url_stops_with_one_line_and_exit_2(variable: str, tmp_path: Path) -> None:
    env = {variable: "tok", "LEDGER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    try:
        done = run_cli("worker", timeout=60, cwd=tmp_path, **env)
    except subprocess.TimeoutExpired:  # it started serving: the requirement is not enforced
        pytest.fail("the worker started without LEDGER_PUBLIC_URL")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LEDGER_PUBLIC_URL" in lines[0] and variable in lines[0], done.stderr
    assert "tok" not in done.stderr


# -- Vonage application id, Twilio algorithm -------------------------------------------------------------------

@pytest.mark.parametrize(("configured", "status"), [(None, 200), (vn.APPLICATION_ID, 200),
                                                     ("11111111-2222-3333-4444-555555555555", 401)])
async def test_vonage_application_id_must_match_when_configured(aiohttp_client: Any, store: Store,
                                                                configured: str | None, status: int) -> None:
    settings = make_settings(vonage_signature_secret=vn.SECRET, vonage_application_id=configured, fx_rates="EUR=1.1")
    client = await aiohttp_client(create_app(settings, "worker", store, run_consumer=False))
    body = vn.encode(vn.completed())
    headers = vn.VonageSigner().headers(body, int(time.time()))
    response = await client.post("/webhooks/vonage", data=body, headers=headers)
    assert response.status == status, await response.text()


async def test_vonage_token_without_application_id_is_refused_when_one_is_configured(aiohttp_client: Any,
                                                                                      store: Store) -> None:
    settings = make_settings(vonage_signature_secret=vn.SECRET, vonage_application_id=vn.APPLICATION_ID)
    client = await aiohttp_client(create_app(settings, "worker", store, run_consumer=False))
    body = vn.encode(vn.completed())
    token = vn.VonageSigner().token(body, int(time.time()), {"application_id": None})
    response = await client.post("/webhooks/vonage", data=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401


@pytest.mark.parametrize(("configured", "status"), [("sha1", 401), ("sha256", 200), ("SHA256", 200)])
async def test_twilio_algorithm_comes_from_configuration(aiohttp_client: Any, store: Store, configured: str,
                                                         status: int) -> None:
    settings = make_settings(twilio_auth_token=tw.AUTH_TOKEN, public_url=PUBLIC_URL,
                             twilio_signature_algorithm=configured)
    client = await aiohttp_client(create_app(settings, "worker", store, run_consumer=False))
    signed = tw.TwilioSigner().sign("POST", PUBLIC_URL + tw.PATH, tw.completed(), algorithm="HMAC_SHA256")
    assert signed.headers["X-Twilio-Webhooks-Signature-Settings"].endswith("algorithm=HMAC_SHA256")
    response = await client.post(URL(tw.PATH), data=signed.body, headers=signed.headers)
    assert response.status == status, await response.text()


def test_unknown_twilio_algorithm_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="twilio_signature_algorithm"):
        Settings(twilio_signature_algorithm="md5")


# -- Plivo GET: the signed `k=v&…` text re-split through an encoded `&` and `=` ---------------------------------

def plivo_get_merges(params: Params) -> Iterator[tuple[str, Params]]:
    """Each adjacent pair (sorted) merged into the first's value as `v1&n2=v2`: the same signed text."""
    ordered = sorted(params)
    for i in range(len(ordered) - 1):
        (n1, v1), (n2, v2) = ordered[i], ordered[i + 1]
        yield f"{n1}+{n2}", [*ordered[:i], (n1, f"{v1}&{n2}={v2}"), *ordered[i + 2:]]


@pytest.mark.parametrize("ledger", ["remembered", "expired"])
async def test_plivo_get_resplit_through_encoded_separators_is_refused(client: Any, store: Store,
                                                                       consumer: Consumer, ledger: str) -> None:
    params = pl.hangup()
    original = pl.PlivoSigner().sign("GET", PUBLIC_URL + pl.PATH, params)
    response = await client.get(URL(original.url.removeprefix(PUBLIC_URL), encoded=True), headers=original.headers)
    assert response.status == 200
    event_id = (await response.json())["event_id"]
    await consumer.run_burst()
    before = await snapshot(client, store, pl.CALL_UUID)
    merges = list(plivo_get_merges(params))
    assert "Event+From" in {label for label, _ in merges}
    for label, merged in merges:
        url = f"{PUBLIC_URL}{pl.PATH}?{urlencode(merged)}"
        signature = original.headers["X-Plivo-Signature-V3"]
        assert validate_v3_signature("GET", url, pl.NONCE, pl.AUTH_TOKEN, signature), label  # still verifies
        if ledger == "expired":
            await store.redis.delete(*(await store.redis.keys("cl:sig:*")))
        response = await client.get(URL(url.removeprefix(PUBLIC_URL), encoded=True), headers=original.headers)
        if ledger == "remembered":
            assert response.status == 401, (label, await response.text())
        else:  # formats alone: refused, or the original event again (a duplicate)
            assert response.status in (200, 422), (label, await response.text())
            if response.status == 200:
                assert (await response.json())["event_id"] == event_id, label
    await consumer.run_burst()
    assert (await snapshot(client, store, pl.CALL_UUID))[:3] == before[:3]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_on_one_server_the_claim_and_the_xadd_are_one_round_trip(
        client: Any, store: Store, consumer: Consumer, provider: str) -> None:
    """The signature ledger's claim goes in the XADD's own script: one tick, not two in sequence."""
    path, _, params, _, _ = PROVIDERS[provider]
    before = store.batcher.batches
    response = await post(client, path, sign(provider, params), params)
    assert response.status == 200 and (await response.json())["outcome"] == "stored"
    assert store.batcher.batches == before + 1
    assert await store.redis.exists(*[key async for key in store.redis.scan_iter("cl:sig:*")]) == 1
    assert int(await store.redis.xlen(store.stream)) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("failure,status", [("refused", 422), ("parser bug", 500)])
async def test_a_request_failing_at_parse_still_claims_its_signature(
        client: Any, store: Store, consumer: Consumer, provider: str, failure: str, status: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed before its claim now (the claim goes with the XADD), a request refused at parse, or
    failing there in any way, claims its signature all the same: a re-split of it is refused later."""
    from call_ledger.core.errors import InvalidEvent
    from call_ledger.worker import intake

    path, _, params, _, _ = PROVIDERS[provider]
    headers = sign(provider, params)

    def refuse(*_args: Any) -> None:
        raise InvalidEvent("refused for the test") if failure == "refused" else ValueError("a parser bug")

    monkeypatch.setattr(intake, "parse", refuse)
    assert (await post(client, path, headers, params)).status == status
    assert [key async for key in store.redis.scan_iter("cl:sig:*")]
    monkeypatch.undo()
    resplit = next(moved for _, moved in resplits(params))
    assert (await post(client, path, headers, resplit)).status == 401
    assert int(await store.redis.xlen(store.stream)) == 0


async def test_a_failed_claim_and_xadd_claims_nothing_so_the_retry_passes(
        client: Any, store: Store, consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sid, params, _, _ = PROVIDERS["twilio"]
    headers = sign("twilio", params)
    assert await post_while_redis_is_down(client, store, monkeypatch, path, headers, params) == 503
    response = await post(client, path, headers, params)  # the provider's retry
    assert response.status == 200 and (await response.json())["call_sid"] == sid
