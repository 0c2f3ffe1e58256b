"""The read API and the operational routes, through HTTP on fake Redis."""

import hashlib
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.api.openapi import openapi_document
from call_ledger.app import create_app
from call_ledger.store import Store
from call_ledger.web.base import METRICS
from call_ledger.worker.consumer import Consumer
from tests.support.settings import API_TOKEN, AUTH, make_settings
from tests.support.signing import post_platform
from tests.support.workers import nth_record_id

SID = "CA0123456789abcdef0123456789abcdef"


async def make_call(client: Any, consumer: Any) -> None:
    await post_platform(client, {"type": "call.usage", "call_sid": SID, "occurred_at": "2026-11-24T10:00:00Z",
                                 "data": {"component": "stt", "cost": "0.004"}}, "msg_u")
    await post_platform(client, {"type": "call.status", "call_sid": SID, "occurred_at": "2026-11-24T09:59:00Z",
                                 "data": {"status": "ringing"}}, "msg_s")
    await consumer.run_burst()


async def test_unknown_sid_is_a_json_404(client: Any) -> None:
    response = await client.get("/api/v1/calls/sid/CAunknown", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_missing_token_is_401(client: Any, consumer: Any) -> None:
    await make_call(client, consumer)
    response = await client.get(f"/api/v1/calls/sid/{SID}")
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic dGVzdA==", f"Token {API_TOKEN}", "Bearer ", ""])
async def test_invalid_token_is_401(client: Any, consumer: Any, header: str) -> None:
    await make_call(client, consumer)
    response = await client.get(f"/api/v1/calls/sid/{SID}", headers={"Authorization": header})
    assert response.status == 401


async def test_token_configured_as_sha256_digest_is_accepted(aiohttp_client: Any, store: Store) -> None:
    digest = hashlib.sha256(b"only-the-digest-is-configured").hexdigest()
    client = await aiohttp_client(create_app(make_settings(api_tokens=f"other,sha256:{digest}"), "api", store))
    response = await client.get("/api/v1/calls/sid/CAx",
                                headers={"Authorization": "Bearer only-the-digest-is-configured"})
    assert response.status == 404  # authorised; the call just does not exist
    assert (await client.get("/api/v1/calls/sid/CAx",
                             headers={"Authorization": f"Bearer {digest}"})).status == 401


async def test_call_record_after_usage_only_and_ringing(client: Any, consumer: Any, store: Store) -> None:
    await make_call(client, consumer)
    response = await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {
        "call_sid": SID, "to_phone_number": "", "customer_phone_number": "", "id": await nth_record_id(store),
        "assistant_id": 0,
        "status": "ringing", "call_meta": {}, "assistant_name": None, "flow_name": None, "duration": None,
        "started_at": "2026-11-24T09:59:00Z", "ended_at": None, "total_cost": 0.004, "llm_cost": None,
        "tts_cost": None, "stt_cost": 0.004, "telephony_cost": None, "cost_currency": "USD",
    }


async def test_events_route_lists_applied_events_oldest_first(client: Any, consumer: Any) -> None:
    await make_call(client, consumer)
    response = await client.get(f"/api/v1/calls/sid/{SID}/events", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert [(e["event_id"], e["source"], e["type"]) for e in body["events"]] == [
        ("msg_s", "platform", "call.status"), ("msg_u", "platform", "call.usage")]
    assert (await client.get(f"/api/v1/calls/sid/{SID}/events")).status == 401
    assert (await client.get("/api/v1/calls/sid/nope/events", headers=AUTH)).status == 404


@pytest.mark.parametrize("path", [
    "/api/v1/calls/sid/", "/api/v1/calls/sid/a%2Fb", "/api/v1/calls/sid/..", "/api/v1/calls/sid/%2E%2E",
    "/api/v1/calls/sid/" + "x" * 5000, "/api/v1/calls/sid/%E2%98%8E", "/api/v1/calls/sid/%00%01",
    "/api/v1/calls/sid/a/b/c", "/api/v1/calls/sid/%ZZ", "/api/v1/calls/sid/{x}",
])
async def test_odd_sids_never_cause_a_server_error(client: Any, path: str) -> None:
    response = await client.get(path, headers=AUTH)
    assert response.status in (400, 404, 414)
    if response.status == 404:
        assert (await response.json())["error"] == "not_found"


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sid=st.text(min_size=0, max_size=300))
async def test_any_sid_string_answers_404_not_5xx(client: TestClient, sid: str) -> None:
    response = await client.get("/api/v1/calls/sid/" + quote(sid, safe=""), headers=AUTH)
    assert response.status in (400, 404)


async def test_probes(client: Any) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_metrics_count_events_by_source_and_outcome(client: Any, store: Store, settings: Any) -> None:
    consumer = Consumer(store, settings, client.app[METRICS])  # the app's metrics, as in `serve`
    await make_call(client, consumer)
    await post_platform(client, {"type": "call.status", "call_sid": SID, "occurred_at": "2026-11-24T09:59:00Z",
                                 "data": {"status": "ringing"}}, "msg_s")
    await consumer.run_burst()
    await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)
    text = await (await client.get("/metrics")).text()
    assert 'ledger_events_received_total{outcome="stored",source="platform"} 3.0' in text
    assert 'ledger_events_applied_total{source="platform"} 2.0' in text
    assert 'ledger_events_duplicate_total{source="platform"} 1.0' in text
    assert "ledger_consumer_lag 0.0" in text and "ledger_consumer_pending 0.0" in text
    assert 'ledger_http_request_duration_seconds_count{method="GET",route="/api/v1/calls/sid/{call_sid}"' in text


async def test_metrics_show_lag_while_events_wait(client: Any) -> None:
    for i in range(3):
        await post_platform(client, {"type": "call.status", "call_sid": f"CA{i}",
                                     "data": {"status": "ringing"}}, f"m{i}")
    text = await (await client.get("/metrics")).text()
    assert "ledger_consumer_lag 3.0" in text


def _routes(app: Any) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical
        if route.method != "HEAD":
            routes.add((path, route.method.lower()))
    return routes


def test_openapi_document_describes_exactly_the_served_routes() -> None:
    document = openapi_document()
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert _routes(create_app(make_settings(), "serve")) == described
    assert _routes(create_app(make_settings(), "api")) <= described
    assert _routes(create_app(make_settings(), "worker")) <= described


async def test_served_record_matches_the_openapi_schema(client: Any, consumer: Any) -> None:
    await make_call(client, consumer)
    schema = (await (await client.get("/openapi.json")).json())["components"]["schemas"]["CallResponse"]
    record = await (await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)).json()
    assert set(record) == set(schema["properties"]) == set(schema["required"])
    json_types = {str: "string", int: "integer", float: "number", dict: "object", type(None): "null"}
    for key, value in record.items():
        allowed = schema["properties"][key]["type"]
        allowed = allowed if isinstance(allowed, list) else [allowed]
        kind = json_types[type(value)]
        assert kind in allowed or (kind == "integer" and "number" in allowed), key
