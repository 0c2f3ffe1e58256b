"""The acknowledgement waits for the index update's answer. With both in one pipeline, an index
EVAL refused out of memory could be followed by an ack that Redis ran once memory was freed in
between (here a `CONFIG SET maxmemory 0` on another connection, sent while a TCP proxy holds back
the bytes after the index scripts): entries acknowledged whose calls were never indexed. Failure
reasons of acknowledged redeliveries are cleared."""

import asyncio
import functools
from typing import Any

import pytest
import redis.asyncio as aioredis

from call_ledger.store import Store
from call_ledger.store.indexes import INDEX
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.polling import until
from tests.support.redis_server import RedisServer, free_port
from tests.support.settings import make_settings
from tests.support.workers import make_event

INDEX_SHA = INDEX.sha.encode()


class SplittingProxy:
    """Forwards client → Redis; once armed, `between()` runs right after a write holding the index
    scripts has reached Redis (before anything the worker sends next)."""

    def __init__(self, upstream_port: int, between: Any, observer: aioredis.Redis) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.between = between
        self.observer = observer  # a direct connection, to see what Redis has run
        self.armed = False
        self.split = 0

    async def scripts_run(self) -> int:
        """EVALSHA calls Redis has run (an OOM refusal inside a script counts) or rejected so far."""
        row = (await self.observer.info("commandstats")).get("cmdstat_evalsha", {})
        return int(row.get("calls", 0)) + int(row.get("rejected_calls", 0))

    async def _ran(self, count: int) -> bool:
        return await self.scripts_run() >= count

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(down())
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                if not buffer.endswith(b"\r\n"):
                    continue
                splitting = self.armed and INDEX_SHA in buffer
                before = await self.scripts_run() if splitting else 0
                up_writer.write(buffer)
                await up_writer.drain()
                if splitting:
                    self.armed = False
                    self.split += 1
                    # Redis runs the index scripts (refused: OOM): wait until it has run every one in the write
                    await until(functools.partial(self._ran, before + buffer.count(b"EVALSHA")), 10,
                                "Redis to run the index scripts")
                    await self.between()
                buffer = b""
        except (ConnectionError, OSError):
            pass
        finally:
            up_writer.close()
            task.cancel()
            writer.close()


@pytest.mark.parametrize("freed", [False, True], ids=["control-still-full", "memory-freed-between"])
async def test_an_ack_after_a_refused_index_update_runs_if_memory_was_freed_in_between(
        redis_server: RedisServer, freed: bool) -> None:
    direct = aioredis.Redis.from_url(redis_server.url)

    async def memory_freed() -> None:
        if freed:
            await direct.config_set("maxmemory", "0")

    proxy = SplittingProxy(redis_server.port, memory_freed, direct)
    await proxy.start()
    settings = make_settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    store = Store.from_settings(settings)
    consumer = Consumer(store, settings, Metrics())
    commit = store.commit

    async def commit_then_memory_full(writes: Any) -> Any:
        result = await commit(writes)
        await direct.config_set("maxmemory", "1")  # the commit's writes passed the limit
        proxy.armed = True
        return result

    store.commit = commit_then_memory_full  # type: ignore[method-assign]
    sids = [f"CA-oom-{i}" for i in range(4)]
    for i, sid in enumerate(sids):
        await store.append(make_event(sid, f"s{i}", i, status="completed", duration=30).model_dump_json().encode())
    raised = None
    try:
        await consumer.run_burst()
    except Exception as exc:
        raised = exc
    store.commit = commit  # type: ignore[method-assign]
    await direct.config_set("maxmemory", "0")
    _lag, pending = await store.group_stats()
    await consumer.run_burst(claim_idle_ms=0)  # anything left pending is retried now
    versions = {}
    for key in await direct.keys("cl:ix:*"):
        if await direct.type(key) == b"hash":
            versions[key] = len(await direct.hkeys(key))
    committed = [sid for sid in sids if await store.get_call(sid) is not None]
    indexed_members = sum(versions.values())
    await store.close()
    await direct.aclose()
    proxy.server.close()
    await proxy.server.wait_closed()
    assert proxy.split == 1, "the proxy never saw the index scripts"
    assert pending == len(sids) or raised is None, (
        f"index update refused ({type(raised).__name__}: {str(raised)[:60]}) yet pending={pending}: "
        f"acknowledged anyway; committed {len(committed)} calls, index hashes {versions}")
    assert indexed_members, "calls committed but in no index"


@pytest.mark.parametrize("shards,count", [(1, 3), (3, 1200)])
async def test_failure_reasons_of_acked_redeliveries_are_cleared_and_no_dash_field_is_left(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, shards: int, count: int) -> None:
    from call_ledger.worker import apply as apply_module

    settings = make_settings(redis_url=redis_server.url, stream_shards=shards, batch_size=2000, max_deliveries=5)
    store = Store.from_settings(settings)
    consumer = Consumer(store, settings, Metrics())
    real = apply_module.apply_event
    failing = {"on": True}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failing["on"]:
            raise RuntimeError("transient apply failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(apply_module, "apply_event", flaky)
    sids = [f"CA-f-{i}" for i in range(count)]
    for i, sid in enumerate(sids):
        await store.append(make_event(sid, f"e{i}", i, status="completed", duration=30).model_dump_json().encode(),
                           sid)
    await consumer.run_burst()
    direct = aioredis.Redis.from_url(redis_server.url)
    keys = await direct.keys("cl:failures*")
    recorded = sum([await direct.hlen(k) for k in keys])
    failing["on"] = False
    await consumer.run_burst(claim_idle_ms=0)
    left = {k: await direct.hgetall(k) for k in await direct.keys("cl:failures*")}
    lag, pending = await store.group_stats()
    applied = [sid for sid in sids if await store.get_call(sid) is not None]
    await store.close()
    await direct.aclose()
    assert recorded == count, f"reasons recorded {recorded} of {count} in {keys}"
    assert (lag, pending, len(applied)) == (0, 0, count)
    assert not left, f"failure reasons left after the acked redeliveries: { {k: len(v) for k, v in left.items()} }"
