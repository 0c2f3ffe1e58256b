"""Platform webhooks → stream → worker (burst) → GET, through HTTP on fake Redis."""

from typing import Any

from call_ledger.store import Store
from tests.support.settings import AUTH
from tests.support.signing import post_platform
from tests.support.workers import nth_record_id


async def test_signed_platform_events_become_the_call_record(client: Any, consumer: Any, store: Store) -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    events = [
        ({"type": "call.status", "call_sid": sid, "occurred_at": "2026-11-24T10:00:00Z",
          "data": {"status": "ongoing"}}, "msg_1"),
        ({"type": "call.metadata", "call_sid": sid, "occurred_at": "2026-11-24T10:00:01Z",
          "data": {"assistant_id": 12, "assistant_name": "ServiceBot", "flow_name": "Support",
                   "to_phone_number": "+15551234567", "customer_phone_number": "+15559876543",
                   "direction": "inbound", "call_meta": {"customer_id": "cust_abc123"}}}, "msg_2"),
        ({"type": "call.usage", "call_sid": sid, "occurred_at": "2026-11-24T10:02:00Z",
          "data": {"component": "llm", "cost": "0.1", "currency": "USD"}}, "msg_3"),
        ({"type": "call.usage", "call_sid": sid, "occurred_at": "2026-11-24T10:03:00Z",
          "data": {"component": "llm", "cost": 0.2, "currency": "USD"}}, "msg_4"),
        ({"type": "call.status", "call_sid": sid, "occurred_at": "2026-11-24T10:05:00Z",
          "data": {"status": "completed", "duration": 300}}, "msg_5"),
    ]
    for payload, webhook_id in events:
        response = await post_platform(client, payload, webhook_id)
        assert response.status == 200, await response.text()
    assert await consumer.run_burst() == 5

    response = await client.get(f"/api/v1/calls/sid/{sid}", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {
        "call_sid": sid,
        "to_phone_number": "+15551234567",
        "customer_phone_number": "+15559876543",
        "id": await nth_record_id(store),
        "assistant_id": 12,
        "status": "completed",
        "call_meta": {"customer_id": "cust_abc123"},
        "assistant_name": "ServiceBot",
        "flow_name": "Support",
        "duration": 300,
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:05:00Z",
        "total_cost": 0.3,
        "llm_cost": 0.3,
        "tts_cost": None,
        "stt_cost": None,
        "telephony_cost": None,
        "cost_currency": "USD",
    }
    assert b'"llm_cost":0.3' in await response.read()
