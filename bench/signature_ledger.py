"""What the signature ledger costs: latency per webhook and Redis memory per remembered signature.

    python bench/signature_ledger.py [--requests 2000] [--keys 10000]

Starts its own redis-server on a free port (no persistence). Measures, on that server:

- the `SET … NX GET EX` round trip itself (`SignatureLedger.remember`, a new signature each time);
- a whole signed Twilio webhook through the intake route (in-process aiohttp client, every request
  a different call so a different signature), with the ledger and with it bypassed, alternating
  in blocks so that drift on a shared machine hits both alike;
- `MEMORY USAGE` of one key, and the `used_memory` delta over `--keys` remembered signatures.
"""

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"median {statistics.median(ms):.3f} ms, p99 {p99:.3f} ms (n={len(ms)})"


async def remember_round_trips(url: str, n: int) -> list[float]:
    import redis.asyncio as aioredis

    from call_ledger.core.replay import signature_use
    from call_ledger.store.signatures import SignatureLedger

    client = aioredis.Redis.from_url(url)
    ledger = SignatureLedger(client, "bench", ttl_s=7 * 86_400)
    uses = [signature_use("twilio", i.to_bytes(20, "big"), "POST", [], [("CallSid", str(i))]) for i in range(n)]
    for use in uses[:100]:  # warm the connection
        await ledger.remember(use)
    samples = []
    for use in uses[100:]:
        started = time.perf_counter()
        await ledger.remember(use)
        samples.append(time.perf_counter() - started)
    await client.aclose()
    return samples


async def webhook_latencies(url: str, n: int) -> tuple[list[float], list[float]]:
    """(with the ledger, with it bypassed): seconds per signed Twilio webhook, 2xx each."""
    from aiohttp.test_utils import TestClient, TestServer

    from call_ledger.app import create_app
    from call_ledger.settings import Settings
    from call_ledger.store import Store
    from call_ledger.worker.intake import SIGNATURES
    from tests.support import payloads_twilio as tw

    settings = Settings(redis_url=url, twilio_auth_token=tw.AUTH_TOKEN, public_url=tw.PUBLIC_URL,
                        key_prefix="benchsig", consumer_name="bench", log_level="error")
    store = Store.from_settings(settings)
    app = create_app(settings, "worker", store, run_consumer=False)
    signer = tw.TwilioSigner()
    requests = []
    for i in range(n + 200):
        sid = f"CA{i:032x}"
        signed = signer.sign("POST", tw.PUBLIC_URL + tw.PATH, tw.completed(call_sid=sid))
        requests.append((signed.headers, signed.body))

    async def bypass(use: Any) -> bool:
        return True

    with_ledger: list[float] = []
    without: list[float] = []
    async with TestClient(TestServer(app)) as client:
        ledger = app[SIGNATURES]
        for i, (headers, body) in enumerate(requests):
            block = (i // 100) % 2  # alternate in blocks of 100
            if block == 0:
                ledger.__dict__.pop("remember", None)
            else:
                ledger.remember = bypass  # type: ignore[method-assign]
            started = time.perf_counter()
            response = await client.post(tw.PATH, data=body, headers=headers)
            elapsed = time.perf_counter() - started
            assert response.status == 200, await response.text()
            if i >= 200:  # the first two blocks warm up
                (with_ledger if block == 0 else without).append(elapsed)
    return with_ledger, without


def memory(port: int, keys: int) -> tuple[int, float]:
    import redis

    from call_ledger.core.replay import signature_use
    from call_ledger.store.signatures import SignatureLedger

    client = redis.Redis(port=port)
    client.flushall()
    ledger = SignatureLedger(client, "cl")
    before = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        use = signature_use("twilio", i.to_bytes(20, "big"), "POST", [], [("CallSid", str(i))])
        pipe.set(ledger.key(use.identity), use.params_digest, nx=True, get=True, ex=7 * 86_400)
    pipe.execute()
    after = int(client.info("memory")["used_memory"])
    one = client.memory_usage(ledger.key(use.identity))
    client.close()
    return int(one or 0), (after - before) / keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    from call_ledger.web.logs import configure_logging

    configure_logging("json", "error")  # one log line per webhook would be measured too
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{port}/0"
            version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
            version = version.split()[2].removeprefix("v=")
            print(f"redis-server {version}")
            print("SET NX GET round trip (remember):", summary(asyncio.run(remember_round_trips(url, args.requests))))
            with_ledger, without = asyncio.run(webhook_latencies(url, args.requests))
            print("POST /webhooks/twilio with the ledger:   ", summary(with_ledger))
            print("POST /webhooks/twilio ledger bypassed:   ", summary(without))
            extra = statistics.median(with_ledger) - statistics.median(without)
            print(f"extra per webhook (difference of medians): {extra * 1000:.3f} ms")
            one, per_key = memory(port, args.keys)
            print(f"MEMORY USAGE of one key: {one} bytes; used_memory delta over {args.keys} keys: "
                  f"{per_key:.1f} bytes/key")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
