"""Schema-driven fuzzing of the read API (schemathesis, from the served /openapi.json).
The service and the signers: tests/support/hostile.py."""

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from call_ledger.worker.consumer import Consumer
from tests.support.hostile import platform_req
from tests.support.settings import AUTH

# -- 7. schema-driven fuzzing of the read API (schemathesis) -------------------------------------------------------

SCHEMA_SID = "CA_schema_0123456789"


async def test_read_api_conforms_to_its_openapi_document_under_schemathesis(client: Any, consumer: Consumer) -> None:
    """Schemathesis loads /openapi.json from the live server and fuzzes the GET routes with a valid token:
    never a 5xx, and every answer (200 record, 404/401 errors, probes) matches its documented schema."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Two calls to find: a full one, and one whose SID holds unicode and control characters.
    odd_sid = "☎ CA\x01\x7f/ü"
    for i, payload in enumerate([
        {"type": "call.metadata", "call_sid": SCHEMA_SID, "occurred_at": "2026-11-24T10:00:00Z",
         "data": {"assistant_id": 12, "assistant_name": "ServiceBot", "call_meta": {"k": [1, {"n": None}]}}},
        {"type": "call.status", "call_sid": SCHEMA_SID, "occurred_at": "2026-11-24T10:05:00Z",
         "data": {"status": "completed", "duration": 300}},
        {"type": "call.usage", "call_sid": SCHEMA_SID, "data": {"component": "llm", "cost": "0.1"}},
        {"type": "call.status", "call_sid": odd_sid, "data": {"status": "ringing"}},
    ]):
        assert (await platform_req(json.dumps(payload).encode(), f"msg_schema_{i}").send(client)).status == 200
    await consumer.run_burst()

    base_url = str(client.make_url("")).rstrip("/")
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{base_url}/openapi.json")
    paths = ["/api/v1/calls/sid/{call_sid}", "/api/v1/calls/sid/{call_sid}/events", "/healthz", "/readyz",
             "/openapi.json"]
    operations = [schema[path]["GET"] for path in paths]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: list[int] = []

    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks)
        seen.append(response.status_code)

    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategies = [op.as_strategy(generation_mode=mode) for op in operations[:2] for mode in modes]
    strategies += [op.as_strategy() for op in operations[2:]]

    @hsettings(max_examples=90, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=st.one_of(strategies))
    def fuzz(case: Any) -> None:
        call(case)

    def explicit() -> None:
        for sid in (SCHEMA_SID, odd_sid):
            for op in operations[:2]:
                call(op.Case(path_parameters={"call_sid": sid}))

    with capture_logs():
        await asyncio.to_thread(explicit)
        assert seen == [200, 200, 200, 200]  # the seeded records validated against CallResponse / the events
        await asyncio.to_thread(fuzz)
    assert all(status < 500 for status in seen)
