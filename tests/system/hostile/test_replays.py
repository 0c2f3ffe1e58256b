"""Replayed signed requests: applied once, and refused outside the signature window.
The service and the signers: tests/support/hostile.py."""

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.base import METRICS
from call_ledger.worker.consumer import Consumer
from tests.support import payloads_telnyx as tx
from tests.support import payloads_vonage as vn
from tests.support.hostile import (
    SOURCES,
    platform_req,
    platform_status,
    sid_path,
    stream_length,
    telnyx_req,
    valid_request,
    vonage_req,
)
from tests.support.settings import AUTH

# -- 3. replayed signed requests --------------------------------------------------------------------------------

async def test_replayed_signed_requests_are_applied_once(client: Any, store: Store, settings: Settings,
                                                         guarantees: Any) -> None:
    consumer = Consumer(store, settings, client.app[METRICS])  # the app's metrics, as in `serve`
    requests = {source: valid_request(source) for source in SOURCES}
    answered = 0
    sids = {}
    for source, req in requests.items():
        for _ in range(5):  # the very same bytes and headers, five times
            response = await req.send(client)
            assert response.status == 200, (source, await response.text())
            answer = await response.json()
            assert answer["outcome"] == "stored"
            sids[source] = answer["call_sid"]
            answered += 1
    assert await consumer.run_burst() == 25

    applied = 0
    metrics = await (await client.get("/metrics")).text()
    for source in requests:
        events = await (await client.get(sid_path(sids[source], "/events"), headers=AUTH)).json()
        assert len(events["events"]) == 1, source
        applied += len(events["events"])
        assert f'ledger_events_applied_total{{source="{source}"}} 1.0' in metrics
        assert f'ledger_events_duplicate_total{{source="{source}"}} 4.0' in metrics
    guarantees.record("replayed signed requests", sent=25, answered_2xx=answered, applied=applied,
                      duplicates_suppressed=25 - applied, lost=0)
    assert applied == 5


@pytest.mark.parametrize("skew", [-301, 301], ids=["301s-old", "301s-ahead"])
@pytest.mark.parametrize("source", ["platform", "telnyx", "vonage"])
async def test_replay_outside_the_signature_window_is_401(client: Any, store: Store, source: str, skew: int) -> None:
    when = int(time.time()) + skew
    if source == "platform":
        req = platform_req(platform_status(), "msg_stale", datetime.fromtimestamp(when, UTC))
    elif source == "telnyx":
        req = telnyx_req(tx.encode(tx.hangup()), when)
    else:
        req = vonage_req(vn.encode(vn.completed()), when)
    response = await req.send(client)
    assert response.status == 401
    assert "window" in (await response.json())["detail"]
    assert await stream_length(store) == 0
