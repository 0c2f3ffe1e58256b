"""Where the time of one event goes: CPU per applied event and per webhook, product and floor.

    python bench/costs.py                 # apply costs, then HTTP costs (needs wrk)
    python bench/costs.py --skip-http
    python bench/costs.py --skip-http --layouts 4,5   # the apply path on a store of each layout, alternating

The ratios of bench/run.py say how far each path is from its floor; this says why, in CPU
microseconds, which drift less than throughput on a shared machine:

- apply: the worker's own CPU per event (this process, around `run_burst`), Redis's CPU per
  event (`INFO cpu`) and Redis's time per event by command (`INFO commandstats`: the scripts,
  and inside them the commands they call), against floor_worker.py's wall time per event;
- HTTP: the server process's CPU per request (`/proc/<pid>/stat`) under wrk, for signed
  Twilio and platform webhooks on `serve` and `intake`, GET by SID on `api`, and the floor's
  POST (its XADD) and GET (its HGETALL).

For the same run's Python profile, attach py-spy to a role (`py-spy record -p <pid>`).
"""

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402

redis_info, redis_cpu, own_cpu, process_cpu = run.redis_info, run.redis_cpu, run.own_cpu, run.process_cpu


def command_usec(port: int) -> dict[str, float]:
    """Redis's microseconds per command name so far (scripts include the commands they call)."""
    usec = {}
    for name, stats in redis_info(port, "commandstats").items():
        fields = dict(item.split("=") for item in stats.split(","))
        usec[name.removeprefix("cmdstat_")] = float(fields["usec"])
    return usec


def received_bytes(port: int) -> int:
    return int(redis_info(port, "stats")["total_net_input_bytes"])


async def product_costs(redis: run.RedisServer, events: list[bytes], batch: int, layout: str = "") -> dict[str, Any]:
    await run.fill_stream(redis.url, events)
    subprocess.run(["redis-cli", "-p", str(redis.port), "CONFIG", "RESETSTAT"], check=True, stdout=subprocess.DEVNULL)
    cpu, server, received = own_cpu(), redis_cpu(redis.port), received_bytes(redis.port)
    rate = await run.product_apply(redis.url, events, batch, fill=False, layout=layout)
    n = len(events)
    return {"rate": rate, "worker_us": 1e6 * (own_cpu() - cpu) / n,
            "redis_us": 1e6 * (redis_cpu(redis.port) - server) / n, "layout": layout or "newest",
            "bytes_in": (received_bytes(redis.port) - received) / n,
            "commands": {name: usec / n for name, usec in command_usec(redis.port).items()}}


def apply_costs(args: argparse.Namespace) -> None:
    calls = max(1, args.events // 10)
    random.seed(7)
    events = run.call_events(calls, 10)
    redis = run.RedisServer()
    try:
        rounds = []
        for _ in range(args.rounds):
            for layout in args.layouts.split(","):
                redis.flush()
                rounds.append(asyncio.run(product_costs(redis, events, args.batch, layout)))
            redis.flush()
            floor = run.floor_apply(redis.url, len(events), calls, args.batch)
            rounds[-1]["floor_us"] = 1e6 / floor if floor else None
    finally:
        redis.stop()
    print(f"apply: {len(events):,} events over {calls:,} calls, batch {args.batch}, per event:")
    for r in rounds:
        floor = f" | floor_worker.py {r['floor_us']:.1f} µs wall" if r.get("floor_us") else ""
        print(f"  product (layout {r['layout']}) {r['rate']:,.0f}/s = {1e6 / r['rate']:.1f} µs wall: worker CPU "
              f"{r['worker_us']:.1f} µs, Redis CPU {r['redis_us']:.1f} µs, {r['bytes_in']:,.0f} B to Redis{floor}")
    last = rounds[-1]["commands"]
    top = sorted(last.items(), key=lambda item: -item[1])[:12]
    print("  Redis time per event by command (last round; evalsha includes the commands the scripts call):")
    print("    " + ", ".join(f"{name} {usec:.2f}" for name, usec in top))


def measured(pid: int, url: str, seconds: int, connections: int, script: str | None) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) of one wrk run against the process `pid`."""
    run.wrk(url, 1, connections, script)  # warm up
    before = process_cpu(pid)
    result = run.wrk(url, seconds, connections, script)
    return result["rps"], 1e6 * (process_cpu(pid) - before) / (result["rps"] * seconds)


def http_costs(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        print("http: skipped, wrk is not installed (apt-get install wrk)")
        return
    redis = run.RedisServer()
    rows = []
    env = run.service_env(redis.url)
    cli = [sys.executable, "-m", "call_ledger.cli"]
    try:
        with tempfile.TemporaryDirectory() as workdir:
            floor_script = run.FLOOR_DIR / "floor_api.py"
            floor_port = run.free_port()
            floor = run.start([sys.executable, str(floor_script), str(floor_port)], {"REDIS_URL": redis.url},
                              floor_port) if floor_script.exists() else None
            if floor is not None:
                rows.append(("floor POST /webhooks/twilio (XADD)", *measured(
                    floor.pid, f"http://127.0.0.1:{floor_port}/webhooks/twilio", args.seconds, args.connections,
                    str(run.FLOOR_DIR / "post_twilio.lua"))))
            for role in ("serve", "intake"):
                port = run.free_port()
                proc = run.start([*cli, role], {**env, "LEDGER_PORT": str(port),
                                                "LEDGER_PUBLIC_URL": f"http://127.0.0.1:{port}"}, port)
                try:
                    for route in ("twilio", "platform"):
                        url = f"http://127.0.0.1:{port}/webhooks/{route}"
                        script = run.webhook_script(Path(workdir), route, url)
                        rows.append((f"{role} POST /webhooks/{route}",
                                     *measured(proc.pid, url, args.seconds, args.connections, script)))
                finally:
                    run.stop(proc)
            port = run.free_port()
            api = run.start([*cli, "api"], {**env, "LEDGER_PORT": str(port)}, port)
            get_lua = Path(workdir) / "get.lua"
            get_lua.write_text(f'wrk.headers["Authorization"] = "Bearer {run.API_TOKEN}"\n')
            try:
                rows.append(("api GET /api/v1/calls/sid", *measured(
                    api.pid, f"http://127.0.0.1:{port}/api/v1/calls/sid/CA0123456789abcdef0123456789abcdef",
                    args.seconds, args.connections, str(get_lua))))
            finally:
                run.stop(api)
            if floor is not None:
                import redis as sync_redis

                sid = "CA0123456789abcdef0123456789abcdef"
                sync_redis.Redis.from_url(redis.url).hset(f"floor:call:{sid}", mapping={"call_sid": sid})
                rows.append(("floor GET (HGETALL)", *measured(
                    floor.pid, f"http://127.0.0.1:{floor_port}/api/v1/calls/sid/{sid}", args.seconds,
                    args.connections, None)))
                run.stop(floor)
    finally:
        redis.stop()
    print(f"http: wrk -t1 -c{args.connections} -d{args.seconds}s, server CPU per request:")
    for name, rps, cpu in rows:
        print(f"  {name:40} {rps:8,.0f} req/s  {cpu:6.0f} µs CPU per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--layouts", default="", help="the store's layout mark to start each product run from, "
                        "comma-separated, alternating in each round (default: a fresh store, the newest layout)")
    parser.add_argument("--skip-apply", action="store_true")
    args = parser.parse_args()
    if not args.skip_apply:
        apply_costs(args)
    if not args.skip_http:
        http_costs(args)


if __name__ == "__main__":
    main()
