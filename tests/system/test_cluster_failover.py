"""A Redis Cluster that loses a node (SPEC §12): several nodes in LEDGER_REDIS_URL, start-up
while one is down, one line when none answers, and a master SIGKILLed under load."""

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from tests.support.cli import run_cli
from tests.support.cluster import Cluster, cluster_port, lookup, start_on_cluster
from tests.support.redis_server import free_port
from tests.support.service import Service
from tests.support.settings import API_TOKEN, make_settings
from tests.support.signing import sign_platform

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def test_several_nodes_need_cluster_mode() -> None:
    with pytest.raises(ValidationError, match="needs LEDGER_REDIS_CLUSTER=true"):
        make_settings(redis_url="redis://127.0.0.1:7000,redis://127.0.0.1:7001")
    with pytest.raises(ValidationError, match="redis://host:port"):
        make_settings(redis_url="127.0.0.1:7000", redis_cluster=True)
    assert make_settings(redis_url="redis://a:1, redis://b:2", redis_cluster=True).redis_url


def cli(role: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(role, timeout=timeout, **{"LEDGER_PORT": str(free_port()), "LEDGER_LOG_FORMAT": "json", **env})


@pytest.mark.parametrize("cluster", [False, True])
def test_start_up_with_no_redis_answering_stops_with_one_line(cluster: bool) -> None:
    dead = [cluster_port(), cluster_port()]
    url = ",".join(f"redis://127.0.0.1:{p}" for p in (dead if cluster else dead[:1]))
    result = cli("serve", LEDGER_REDIS_URL=url, LEDGER_REDIS_CLUSTER=str(cluster).lower(),
                 LEDGER_REDIS_STARTUP_TIMEOUT_S="0.5")
    assert result.returncode == 2, result.stderr
    nodes = ", ".join(f"127.0.0.1:{p}" for p in (dead if cluster else dead[:1]))
    assert result.stderr.strip().splitlines() == [
        f"call-ledger: no Redis of LEDGER_REDIS_URL answers ({nodes}) after 0.5 s: connection refused"]


async def post(session: aiohttp.ClientSession, serve: Service, sid: str, webhook_id: str) -> int:
    body = (b'{"type":"call.usage","call_sid":"%s","occurred_at":"2026-11-24T10:00:00Z",'
            b'"data":{"component":"llm","cost":"0.001"}}' % sid.encode())
    try:
        async with session.post(serve.url("/webhooks/platform"), data=body,
                                headers=sign_platform(body, webhook_id)) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


@pytest.mark.real_redis
async def test_a_master_killed_under_load_fails_over_and_everything_resumes_by_itself(
        cluster: Cluster, tmp_path: Path, guarantees: Any) -> None:
    # The first listed node does not exist: start-up takes any node that answers.
    url = f"redis://127.0.0.1:{cluster_port()}," + cluster.url
    serve = start_on_cluster(url, tmp_path / "serve.log")
    sids = [f"CA-fo-{i}" for i in range(24)]
    answers: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await serve.wait_ready("/readyz", timeout=30, interval=0.1)
            for n in range(5):  # before: every call has events, every lookup answers
                for sid in sids:
                    answers[f"{sid}-{n}"] = await post(session, serve, sid, f"{sid}-{n}")
            assert set(answers.values()) == {200}
            victim = cluster.master_of(f"cl:call:{{{sids[0]}}}")
            cluster.kill(victim)
            killed_at = time.monotonic()
            recovered_at = None
            n = 5
            while time.monotonic() - killed_at < 40:  # webhooks keep coming while it fails over
                statuses = [await post(session, serve, sid, f"{sid}-{n}") for sid in sids]
                answers.update({f"{sid}-{n}": s for sid, s in zip(sids, statuses, strict=True)})
                assert set(statuses) <= {200, 503, 0}  # never anything else, never a 5xx of another kind
                lookups = [(await lookup(session, serve, sid))[0] for sid in sids]
                n += 1
                if set(statuses) == {200} and set(lookups) == {200}:
                    recovered_at = time.monotonic()
                    break
                await asyncio.sleep(0.2)
            assert recovered_at is not None, serve.tail()
            recovery = recovered_at - killed_at
            print(f"\nfailover: intake and lookups of every call back {recovery:.1f} s after the master's SIGKILL")
            assert recovery < 20
            # The provider retries what got no 2xx; then every event is applied exactly once.
            for webhook_id, status in list(answers.items()):
                if status != 200:
                    answers[webhook_id] = await post(session, serve, webhook_id.rsplit("-", 1)[0], webhook_id)
            assert set(answers.values()) == {200}
            per_call = {sid: sum(1 for w in answers if w.rsplit("-", 1)[0] == sid) for sid in sids}
            deadline = time.monotonic() + 30
            while True:
                records = {sid: (await lookup(session, serve, sid))[1] for sid in sids}
                counts = {sid: round((r or {}).get("llm_cost") or 0, 6) for sid, r in records.items()}
                if all(abs(counts[sid] - per_call[sid] * 0.001) < 1e-9 for sid in sids):
                    break
                assert time.monotonic() < deadline, (counts, per_call)
                await asyncio.sleep(0.2)
    finally:
        assert serve.terminate() == 0
    guarantees.record("cluster: master SIGKILLed, replica promoted; retried webhooks, exact records",
                      sent=len(answers), answered_2xx=len(answers), applied=sum(per_call.values()),
                      duplicates_suppressed=0, lost=0)
