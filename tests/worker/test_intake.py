"""Every answer of POST /webhooks/platform, through HTTP on fake Redis."""

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.store import Store, open_redis
from tests.support.redis_server import free_port
from tests.support.settings import PLATFORM_SECRET, make_settings
from tests.support.signing import post_platform, sign_platform

STATUS = {"type": "call.status", "call_sid": "CA1", "occurred_at": "2026-11-24T10:00:00Z",
          "data": {"status": "ringing"}}


async def stream_length(store: Store) -> int:
    return int(await store.redis.xlen(store.stream))


async def test_authentic_event_is_stored_before_the_2xx(client: Any, store: Store) -> None:
    with capture_logs() as logs:
        response = await post_platform(client, STATUS, "msg_1")
    assert response.status == 200
    assert await response.json() == {"outcome": "stored", "call_sid": "CA1", "event_id": "msg_1"}
    entries = await store.redis.xrange(store.stream)
    assert len(entries) == 1
    stored = json.loads(entries[0][1][b"e"])
    assert (stored["call_sid"], stored["event_id"], stored["status"]) == ("CA1", "msg_1", "ringing")
    line = next(log for log in logs if log["event"] == "webhook_received")
    assert line["source"] == "platform" and line["call_sid"] == "CA1"
    assert line["event_id"] == "msg_1" and line["outcome"] == "stored"


async def test_redelivery_is_stored_again_and_applied_once(client: Any, store: Store, consumer: Any) -> None:
    for _ in range(3):
        assert (await post_platform(client, STATUS, "msg_same")).status == 200
    await consumer.run_burst()
    events = await store.all_events("CA1")
    assert len(events) == 1


async def test_unused_event_kind_is_acknowledged_and_not_stored(client: Any, store: Store) -> None:
    response = await post_platform(client, {"type": "call.transcript", "call_sid": "CA1"}, "msg_t")
    assert response.status == 200
    assert (await response.json())["outcome"] == "ignored"
    assert await stream_length(store) == 0


async def test_bad_signature_is_401_and_stores_nothing(client: Any, store: Store) -> None:
    body = json.dumps(STATUS).encode()
    headers = sign_platform(body, "msg_1")
    headers["webhook-signature"] = "v1,Zm9yZ2VkLXNpZ25hdHVyZS1mb3JnZWQtc2lnbmF0dXJlLXg="
    with capture_logs() as logs:
        response = await client.post("/webhooks/platform", data=body, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_signature"
    assert await stream_length(store) == 0
    assert "Zm9yZ2Vk" not in repr(logs)  # the signature is never logged


async def test_missing_signature_is_401(client: Any, store: Store) -> None:
    response = await client.post("/webhooks/platform", json=STATUS)
    assert response.status == 401
    assert await stream_length(store) == 0


async def test_unparsable_body_is_400(client: Any, store: Store) -> None:
    body = b"{not json"
    response = await client.post("/webhooks/platform", data=body, headers=sign_platform(body, "msg_1"))
    assert response.status == 400
    assert (await response.json())["error"] == "malformed_body"
    assert await stream_length(store) == 0


async def test_event_without_call_id_is_422_saying_what_is_missing(client: Any, store: Store) -> None:
    response = await post_platform(client, {"type": "call.status", "data": {"status": "ringing"}}, "msg_1")
    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_event" and "call_sid" in body["detail"]
    assert await stream_length(store) == 0


async def test_malformed_amount_is_422(client: Any, store: Store) -> None:
    response = await post_platform(client, {"type": "call.usage", "call_sid": "CA1",
                                            "data": {"component": "llm", "cost": "1.2.3"}}, "msg_1")
    assert response.status == 422
    assert await stream_length(store) == 0


async def test_body_over_64_kib_is_413_before_the_signature_is_checked(client: Any, store: Store) -> None:
    body = b"x" * (64 * 1024 + 1)
    response = await client.post("/webhooks/platform", data=body)  # unsigned: size is decided first
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert await stream_length(store) == 0


async def test_chunked_body_over_64_kib_is_413(client: Any, store: Store) -> None:
    async def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 1024

    response = await client.post("/webhooks/platform", data=chunks())
    assert response.status == 413
    assert await stream_length(store) == 0


async def test_source_without_secret_is_404_and_logs_the_missing_variable(aiohttp_client: Any, store: Store) -> None:
    settings = make_settings(platform_webhook_secret=None)
    client = await aiohttp_client(create_app(settings, "worker", store, run_consumer=False))
    with capture_logs() as logs:
        response = await client.post("/webhooks/platform", json=STATUS)
    assert response.status == 404
    assert (await response.json())["error"] == "source_not_configured"
    assert any(log.get("missing_variable") == "LEDGER_PLATFORM_WEBHOOK_SECRET" for log in logs)


async def test_unknown_source_is_a_json_404(client: Any) -> None:
    response = await client.post("/webhooks/skype", json=STATUS)
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_get_on_platform_webhook_is_405(client: Any) -> None:
    response = await client.get("/webhooks/platform")
    assert response.status == 405


async def test_redis_unreachable_is_503_never_2xx(aiohttp_client: Any) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    store = Store(open_redis(settings))
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    response = await post_platform(client, STATUS, "msg_1")
    assert response.status == 503
    assert (await response.json())["error"] == "store_unavailable"
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await client.get("/healthz")).status == 200
    await store.close()


@pytest.mark.parametrize("secret_like", [PLATFORM_SECRET, PLATFORM_SECRET.removeprefix("whsec_")])
async def test_secrets_never_reach_the_logs(client: Any, secret_like: str) -> None:
    with capture_logs() as logs:
        await post_platform(client, STATUS, "msg_1")
        await client.post("/webhooks/platform", json=STATUS)
    assert secret_like not in repr(logs)


async def test_unused_provider_event_is_2xx_not_stored_and_counted(aiohttp_client: Any, store: Store) -> None:
    import time

    from tests.support import payloads_telnyx as tx

    signer = tx.TelnyxSigner()
    client = await aiohttp_client(create_app(make_settings(telnyx_public_key=signer.public_key_b64), "worker",
                                             store, run_consumer=False))
    body = tx.encode(tx.speak_ended())
    response = await client.post("/webhooks/telnyx", data=body, headers=signer.headers(body, int(time.time())))
    assert response.status == 200
    assert (await response.json())["outcome"] == "ignored"
    assert await stream_length(store) == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'ledger_events_received_total{outcome="ignored",source="telnyx"} 1.0' in metrics
