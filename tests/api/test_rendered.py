"""Records rendered for lookups (api/rendered.py): one render per commit of a call, never a stale record,
bounded by bytes; on the real route, a GET after a commit shows that commit."""

from typing import Any

import fakeredis
import orjson

from call_ledger.api.rendered import RenderedRecords
from call_ledger.core.served import StoredCall, stored_record
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import AUTH, make_settings
from tests.support.workers import make_event, usage

POLICY = make_settings().policy
SID = "CA-rendered"


def plain_call(sid: str = SID, token: bytes | None = b"w.1", version: bytes = b"1", llm: int = 5,
               meta: bytes = b"") -> StoredCall:
    fields = {b"id": b"1", b"v": version, b"fs": b"1795500000000000", b"c:llm": str(llm).encode()}
    if token is not None:
        fields[b"t"] = token
    if meta:
        fields[b"m:note"] = b'[1,".-1","0",' + orjson.dumps(meta.decode()) + b"]"
    return StoredCall(sid, fields)


def test_a_call_is_rendered_once_per_commit_and_never_served_stale() -> None:
    cache = RenderedRecords()
    first = cache.served(plain_call(), POLICY)
    assert first == plain_call().served(POLICY) and orjson.loads(first)["llm_cost"] == 0.000000005
    assert cache.served(plain_call(), POLICY) is first  # the same commit: what was rendered
    changed = cache.served(plain_call(token=b"w.2", version=b"2", llm=7), POLICY)  # another commit
    assert orjson.loads(changed)["llm_cost"] == 0.000000007
    # A Redis that lost a commit and took another at the same version has another token: rendered again.
    other = cache.served(plain_call(token=b"x.9", version=b"2", llm=9), POLICY)
    assert orjson.loads(other)["llm_cost"] == 0.000000009
    assert len(cache) == 1


def test_without_a_token_or_with_a_stored_copy_nothing_is_kept() -> None:
    cache = RenderedRecords()
    assert cache.served(plain_call(token=None), POLICY) == plain_call(token=None).served(POLICY)
    record = plain_call().record(POLICY)
    stored = {b"id": b"1", b"v": b"3", b"t": b"w.3", b"s": b"{}", b"j": stored_record(record, 3)}
    assert cache.served(StoredCall(SID, stored), POLICY) == stored[b"j"].partition(b"\n")[2]
    assert len(cache) == 0


def test_the_cache_is_bounded_by_the_bytes_it_keeps_oldest_out_first() -> None:
    one = len(plain_call("CA-0").served(POLICY))
    cache = RenderedRecords(capacity_bytes=3 * one + 10)
    for n in range(5):
        cache.served(plain_call(f"CA-{n}"), POLICY)
    assert len(cache) == 3 and cache._bytes <= cache.capacity_bytes
    assert set(cache._kept) == {"CA-2", "CA-3", "CA-4"}
    big = plain_call("CA-big", meta=b"x" * (4 * one))
    assert cache.served(big, POLICY) == big.served(POLICY)  # served, not kept: larger than the whole cache
    assert "CA-big" not in cache._kept and cache._bytes <= cache.capacity_bytes


async def test_a_get_after_a_commit_shows_that_commit(aiohttp_client: Any) -> None:
    from call_ledger.app import create_app

    settings = make_settings()
    store = Store(fakeredis.FakeAsyncRedis(), settings.key_prefix)
    consumer = Consumer(store, settings, Metrics())
    client = await aiohttp_client(create_app(settings, "api", store))
    seen = []
    for n, event in enumerate([make_event(SID, "s1", 0, status="ongoing", call_meta={"k": 0}),
                               usage(SID, "u1", 1, "llm", 5_000_000), make_event(SID, "m1", 2, call_meta={"k": 1}),
                               make_event(SID, "s2", 3, status="completed", duration=3)]):
        await store.append(event.model_dump_json().encode())
        await consumer.run_burst()
        for _ in range(2):  # the second read is served from what the first rendered
            response = await client.get(f"/api/v1/calls/sid/{SID}", headers=AUTH)
            assert response.status == 200
            record = orjson.loads(await response.read())
            seen.append((record["status"], record["llm_cost"], record["call_meta"]))
        by_id = await client.get(f"/api/v1/calls/{record['id']}", headers=AUTH)
        assert orjson.loads(await by_id.read()) == record, n
    assert seen[::2] == seen[1::2] == [("ongoing", None, {"k": 0}), ("ongoing", 0.005, {"k": 0}),
                                       ("ongoing", 0.005, {"k": 1}), ("completed", 0.005, {"k": 1})]
