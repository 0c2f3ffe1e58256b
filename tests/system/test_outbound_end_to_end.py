"""Outbound call events end to end (SPEC §15), as a user meets them: a real `call-ledger serve` on a real
redis-server, an endpoint created through the API, and the README's receiver (examples/receive_call_events.py,
which verifies every signature with the `standardwebhooks` library) printing what it gets. A call's life
gives `call.ended`, then `call.finalized` once quiet, then `call.revised` for a late event; each carries the
record exactly as GET served it then."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import service as services
from tests.support.paths import ROOT
from tests.support.polling import until
from tests.support.redis_server import RedisServer, free_port
from tests.support.settings import AUTH
from tests.support.signing import sign_platform

pytestmark = pytest.mark.real_redis


def event(call_sid: str, kind: str, at: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "call_sid": call_sid, "occurred_at": at, "data": data}


async def test_a_call_is_announced_ended_finalized_then_revised_with_the_record_get_serves(
        redis_server: RedisServer, tmp_path: Path) -> None:
    ledger = services.start("serve", services.environment(services.ledger_env(
        LEDGER_REDIS_URL=redis_server.url, LEDGER_FINALIZE_AFTER_S="1", LEDGER_OUTBOUND_ALLOW_PRIVATE="true")),
        log_dir=tmp_path, name="serve")
    receiver_port = free_port()
    receiver = None
    try:
        await ledger.wait_ready()
        async with aiohttp.ClientSession() as http:
            created = await http.post(ledger.url("/api/v1/webhook-endpoints"), headers=AUTH,
                                      json={"url": f"http://127.0.0.1:{receiver_port}/call-events"})
            assert created.status == 201, await created.text()
            secret = (await created.json())["secret"]
            receiver = services.start("receiver", services.environment({"CALL_LEDGER_SECRET": secret,
                                                                        "PORT": str(receiver_port)}),
                                      log_dir=tmp_path, name="receiver", port=0,
                                      command=[sys.executable, str(ROOT / "examples" / "receive_call_events.py")])

            async def post(payload: dict[str, Any], webhook_id: str) -> None:
                body = json.dumps(payload).encode()
                response = await http.post(ledger.url("/webhooks/platform"), data=body,
                                           headers=sign_platform(body, webhook_id))
                assert response.status == 200, await response.text()

            async def record() -> dict[str, Any]:
                response = await http.get(ledger.url("/api/v1/calls/sid/CA-out"), headers=AUTH)
                return dict(await response.json()) if response.status == 200 else {}

            def printed() -> list[list[str]]:
                return [line.split() for line in receiver.output().splitlines() if line.startswith("call.")]

            await post(event("CA-out", "call.status", "2026-12-07T10:00:00Z", {"status": "ongoing"}), "e1")
            await post(event("CA-out", "call.usage", "2026-12-07T10:01:00Z", {"component": "llm", "cost": "0.25"}),
                       "e2")
            await post(event("CA-out", "call.status", "2026-12-07T10:02:00Z",
                             {"status": "completed", "duration": 120}), "e3")
            await post(event("CA-out", "call.status", "2026-12-07T10:02:00Z",
                             {"status": "completed", "duration": 120}), "e3")  # redelivered: nothing new
            ended = await until(lambda: [p for p in printed() if p[0] == "call.ended"], 30, "call.ended",
                                detail=ledger.tail)
            served = await record()
            assert ended == [["call.ended", "CA-out", "completed", str(served["total_cost"]), "0", ended[0][5]]]

            finalized = await until(lambda: [p for p in printed() if p[0] == "call.finalized"], 30,
                                    "call.finalized", detail=ledger.tail)
            assert finalized[0][1:5] == ["CA-out", "completed", "0.25", "1"]

            await post(event("CA-out", "call.usage", "2026-12-07T10:03:00Z", {"component": "tts", "cost": "0.05"}),
                       "e4")
            revised = await until(lambda: [p for p in printed() if p[0] == "call.revised"], 30, "call.revised",
                                  detail=ledger.tail)
            assert revised[0][1:5] == ["CA-out", "completed", "0.3", "2"]
            assert (await record())["total_cost"] == 0.3
            time.sleep(1.5)  # a quiet period after the revision: no second finalized, nothing else
            kinds = [p[0] for p in printed()]
            assert kinds == ["call.ended", "call.finalized", "call.revised"], receiver.output()
            assert len({p[5] for p in printed()}) == 3  # three messages, three webhook ids

            attempts = await (await http.get(ledger.url(
                f"/api/v1/webhook-endpoints/{(await created.json())['id']}/attempts"), headers=AUTH)).json()
            assert [a["status_code"] for a in attempts["attempts"]] == [204, 204, 204]
            assert secret not in ledger.output()
    finally:
        if receiver is not None:
            receiver.kill()
        ledger.stop()
