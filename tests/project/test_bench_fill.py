"""The calls benchmark's bulk fill (bench/calls_api.py) writes what the worker writes.

`make bench-calls` fills its store without the worker's scripts, in several processes; its
numbers mean something only if the calls API then reads the store a worker would have made.
So the same calls are written twice on one real redis-server, in two databases (one server:
the id counter's fence, its replication id, is the same in both): by the bench's fill, and by
intake's stored form on the stream applied by a burst-mode worker with the default batch size
(which splits some calls over two commits). Every key, type, value and TTL must be the same,
but for:

- the commit token `t` of each call hash: random per worker (call_ledger/store/lua/commit.lua), `bench-<id>`
  in the fill; only its presence is compared;
- the keys only the worker path has, its stream bookkeeping: the stream `cl:events` (the
  events as intake appended them, with the consumer group inside it) and the set `cl:streams`
  (the stream shards workers consume). The calls API reads neither;
- the outbound messages the worker's commits announce (SPEC §15: each call's `call.ended` in its outbox
  `cl:out:{<sid>}`, the call hash's `fe`, `lc` and `ob`, the schedules `cl:ob:{n}` and `cl:fin:{n}`):
  stamped with the time of the commit, so a fill made at another moment cannot match them byte for
  byte, and a filled store has announced nothing (the calls API reads none of it). Their presence and
  shape are checked instead.

Both stores are given the same id permutation key first, and both hand out ids in call order,
so the record ids are compared as they are.
"""

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from bench import calls_api
from call_ledger.core.instants import parse_iso
from call_ledger.store import Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from call_ledger.worker.intake import stored_form
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings

CALLS = 300
NOW_US = parse_iso("2026-11-24T10:00:00Z").us
ID_KEY = "5a" * 32
TOKEN = b"<commit token>"
WORKER_ONLY = {b"cl:events": b"stream", b"cl:streams": b"set"}
OUTBOUND_KEYS = (b"cl:out:", b"cl:ob:", b"cl:fin:")
OUTBOUND_FIELDS = (b"fe", b"lc", b"ob")


async def contents(client: Any) -> dict[bytes, tuple[bytes, Any, int]]:
    """Every key: (type, value, PTTL)."""
    out: dict[bytes, tuple[bytes, Any, int]] = {}
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        if kind == b"string":
            value: Any = await client.get(key)
        elif kind == b"hash":
            value = await client.hgetall(key)
        elif kind == b"zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = await client.smembers(key)
        elif kind == b"stream":
            value = await client.xlen(key)
        else:
            raise AssertionError(f"unexpected {kind!r} at {key!r}")
        out[key] = (kind, value, await client.pttl(key))
    return out


def without_outbound(store: dict[bytes, tuple[bytes, Any, int]]) -> dict[bytes, tuple[bytes, Any, int]]:
    """The worker's store without what its commits announced (after checking that each call that ended
    announced it once: one `call.ended` in its outbox, `fe`, `lc` and `ob` set, the call on both
    schedules; and that the others announced nothing)."""
    out, outboxes, ended, scheduled = {}, set(), set(), set()
    for key, (kind, value, ttl) in store.items():
        if key.startswith(b"cl:out:"):
            [message] = value.values()
            assert orjson.loads(message)["type"] == "call.ended", key
            outboxes.add(key.removeprefix(b"cl:out:"))
        elif key.startswith((b"cl:ob:", b"cl:fin:")):
            scheduled.update((key.split(b":")[1], b"{%s}" % sid) for sid, _ in value)
        else:
            if key.startswith(b"cl:call:"):
                announced = [name for name in OUTBOUND_FIELDS if value.get(name)]
                assert announced in ([], list(OUTBOUND_FIELDS)), key
                if announced:
                    ended.add(key.removeprefix(b"cl:call:"))
                value = {name: field for name, field in value.items() if name not in OUTBOUND_FIELDS}
            out[key] = (kind, value, ttl)
    assert ended and outboxes == ended
    assert scheduled == {(schedule, sid) for schedule in (b"ob", b"fin") for sid in ended}
    return out


def without_tokens(store: dict[bytes, tuple[bytes, Any, int]]) -> dict[bytes, tuple[bytes, Any, int]]:
    """The store with each call hash's commit token replaced by TOKEN (after checking there is one)."""
    out = {}
    for key, (kind, value, ttl) in store.items():
        if key.startswith(b"cl:call:"):
            assert value.get(b"t"), key
            value = {**value, b"t": TOKEN}
        out[key] = (kind, value, ttl)
    return out


@pytest.mark.real_redis
async def test_bench_fill_writes_byte_for_byte_what_the_worker_writes(redis_server: RedisServer) -> None:
    bench_url, worker_url = redis_server.url, redis_server.url.removesuffix("/0") + "/1"
    settings = make_settings(redis_url=worker_url)
    bench_client, worker_store = aioredis.Redis.from_url(bench_url), Store(open_redis(settings))
    try:
        for client in (bench_client, worker_store.redis):
            await client.set(worker_store.ids_key, ID_KEY)

        await calls_api.fill(bench_url, settings, CALLS, NOW_US, processes=2)

        await worker_store.check_layout()  # as the service does at start-up
        for i in range(CALLS):
            for event in calls_api.call_events(i, NOW_US):
                await worker_store.append(stored_form(event, settings), event.call_sid)
        assert await Consumer(worker_store, settings, Metrics()).run_burst() == 3 * CALLS

        bench, worker = await contents(bench_client), await contents(worker_store.redis)
    finally:
        await bench_client.aclose()
        await worker_store.close()

    # Not a comparison of two empty stores: every call, its journal and its index entry are there.
    assert sum(key.startswith(b"cl:call:") for key in bench) == CALLS
    assert sum(key.startswith(b"cl:journal:") for key in bench) == CALLS
    assert sum(len(value) for key, (_, value, _) in bench.items() if key.endswith(b":e")) == CALLS
    worker = without_outbound(worker)
    assert {key: kind for key, (kind, _, _) in worker.items() if key not in bench} == WORKER_ONLY
    assert set(bench) <= set(worker)
    bench, worker = without_tokens(bench), without_tokens(worker)
    differing = sorted(key for key in bench if bench[key] != worker[key])
    assert not differing, [(key, bench[key], worker[key]) for key in differing[:3]]
