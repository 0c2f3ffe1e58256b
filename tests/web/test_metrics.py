"""ledger_http_request_duration_seconds counts each answer under the status it was answered with (SPEC §8)."""

import asyncio
import json
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from call_ledger.app import create_app
from call_ledger.core.errors import StoreUnavailable
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.serving import make_runner
from tests.support.redis_server import free_port
from tests.support.settings import AUTH, make_settings
from tests.support.signing import post_platform, sign_platform

STATUS = {"type": "call.status", "call_sid": "CA1", "occurred_at": "2026-11-24T10:00:00Z",
          "data": {"status": "ringing"}}


def request_counts(metrics_text: str) -> dict[tuple[str, str, str], float]:
    """(route, method, status) -> number of requests, from the Prometheus text."""
    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "ledger_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                labels = sample.labels
                counts[(labels["route"], labels["method"], labels["status"])] = sample.value
    return counts


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return the one response the server answers (head and Content-Length body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()

        async def response() -> bytes:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            return head + await reader.readexactly(length)

        return await asyncio.wait_for(response(), timeout)
    finally:
        writer.close()


async def test_every_refusal_is_counted_under_its_own_status_never_500(
    aiohttp_client: Any, store: Store, monkeypatch: Any
) -> None:
    settings = make_settings(read_timeout_s=0.3)
    client = await aiohttp_client(create_app(settings, "serve", store, run_consumer=False))
    expected = {}

    async def answer(status: int, key: tuple[str, str], response: Any) -> None:
        assert response.status == status, await response.text()
        expected[(*key, str(status))] = expected.get((*key, str(status)), 0) + 1

    sid_route = "/api/v1/calls/sid/{call_sid}"
    await answer(401, (sid_route, "GET"), await client.get("/api/v1/calls/sid/CA1"))
    await answer(401, (sid_route, "GET"), await client.get("/api/v1/calls/sid/CA1",
                                                            headers={"Authorization": "Bearer wrong"}))
    await answer(404, (sid_route, "GET"), await client.get("/api/v1/calls/sid/CA-unknown", headers=AUTH))
    await answer(404, ("unmatched", "GET"), await client.get("/no/such/route"))
    await answer(405, ("unmatched", "GET"), await client.get("/webhooks/platform"))
    await answer(413, ("/webhooks/platform", "POST"),
                 await client.post("/webhooks/platform", data=b"x" * (70 * 1024)))  # Content-Length check

    async def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 1024

    await answer(413, ("/webhooks/platform", "POST"),  # aiohttp's own client_max_size, while reading
                 await client.post("/webhooks/platform", data=chunks()))
    no_call = {"type": "call.status", "occurred_at": "2026-11-24T10:00:00Z", "data": {"status": "ringing"}}
    await answer(422, ("/webhooks/platform", "POST"), await post_platform(client, no_call, "m-422"))
    await answer(401, ("/webhooks/platform", "POST"),
                 await client.post("/webhooks/platform", data=json.dumps(STATUS).encode(),
                                   headers={**sign_platform(b"{}", "m-401"), "content-type": "application/json"}))

    async def unavailable(event_json: bytes, call_sid: str | None = None) -> str:
        raise StoreUnavailable("redis did not take the event")

    monkeypatch.setattr(store, "append", unavailable)
    await answer(503, ("/webhooks/platform", "POST"), await post_platform(client, STATUS, "m-503"))

    # 408: headers and half a body, then a stall past LEDGER_READ_TIMEOUT_S.
    body = json.dumps(STATUS).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in sign_platform(body, "m-408").items())
    stalled = await raw_exchange(client.server.port, (
        f"POST /webhooks/platform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body[:10])
    assert stalled.startswith(b"HTTP/1.1 408"), stalled[:200]
    expected[("/webhooks/platform", "POST", "408")] = 1

    counts = request_counts(await (await client.get("/metrics")).text())
    for key, number in expected.items():
        assert counts.get(key) == number, (key, counts)
    assert not [key for key in counts if key[2] == "500"], counts


async def test_invented_methods_share_one_label(client: Any) -> None:
    response = await client.request("PROPFIND", "/healthz")
    assert response.status == 405
    counts = request_counts(await (await client.get("/metrics")).text())
    assert counts[("unmatched", "OTHER", "405")] == 1
    assert not [key for key in counts if key[1] == "PROPFIND"]


async def test_requests_the_parser_refuses_are_answered_json_400_and_counted(store: Store) -> None:
    """Through the production server (LedgerRunner): aiohttp's 400 for a bad request line is ours."""
    settings: Settings = make_settings(port=free_port())
    app: web.Application = create_app(settings, "serve", store, run_consumer=False)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        answer = await raw_exchange(settings.port, b"GET /webhooks/twilio?From=%2B15551234567&x=\x01 HTTP/1.1\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400"
        assert json.loads(body) == {"error": "bad_request", "detail": "malformed HTTP request"}
        assert b"5551234567" not in answer  # aiohttp's own answer quoted the line back
        metrics = await raw_exchange(settings.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        counts = request_counts(metrics.partition(b"\r\n\r\n")[2].decode())
        assert counts[("unparsed", "OTHER", "400")] == 1
    finally:
        await runner.cleanup()
