"""Schema-driven fuzzing of the calls API (schemathesis, from the served /openapi.json): never a
5xx, and every answer matches its documented status codes, content types and schemas."""

import asyncio
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.settings import Settings
from call_ledger.store import Store
from tests.support.calls import ADMIN, BASE_US, TOKENS, auth, call, event, load
from tests.support.settings import make_settings

PATHS = ["/api/v1/calls", "/api/v1/calls/count", "/api/v1/calls/stats", "/api/v1/calls/analytics",
         "/api/v1/calls/search", "/api/v1/calls/export", "/api/v1/calls/{id}", "/api/v1/calls/{id}/costs",
         "/api/v1/calls/sid/{call_sid}/costs"]


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=TOKENS, telephony_rates="twilio:inbound=0.01")


async def test_calls_api_conforms_to_its_openapi_document_under_schemathesis(
        aiohttp_server: Any, store: Store, settings: Settings) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    now = int(time.time() * 1_000_000)
    events = call("CA-fz-1", BASE_US, org=7, assistant=1, name="Fuzz", customer="+15551112222", cost=10**8)
    events += call("CA-fz-2", now, status="ongoing", duration=None, assistant=2)
    events.append(event("CA-fz-1", "meta", BASE_US + 1, call_meta={"k": [1, {"n": None}]}))
    await load(store, settings, events)
    first_id = (await store.get_call("CA-fz-1"))[0]  # type: ignore[index]
    server = await aiohttp_server(create_app(settings, "api", store))
    base_url = f"http://127.0.0.1:{server.port}"
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{base_url}/openapi.json")
    operations = [schema[path]["GET"] for path in PATHS]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: list[int] = []

    def send(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers=auth(ADMIN), checks=checks)
        seen.append(response.status_code)

    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategies = [op.as_strategy(generation_mode=mode) for op in operations for mode in modes]

    @hsettings(max_examples=150, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=st.one_of(strategies))
    def fuzz(case: Any) -> None:
        send(case)

    def explicit() -> None:
        for op in operations:
            params: dict[str, Any] = {}
            if "{id}" in op.path:
                params["path_parameters"] = {"id": str(first_id)}
            if "{call_sid}" in op.path:
                params["path_parameters"] = {"call_sid": "CA-fz-1"}
            query = {"q": "fuzz"} if op.path.endswith("search") else {}
            send(op.Case(query=query, **params))

    with capture_logs():
        await asyncio.to_thread(explicit)
        assert seen == [200] * len(PATHS)  # the seeded calls validated against their schemas
        await asyncio.to_thread(fuzz)
    assert all(status < 500 for status in seen)
