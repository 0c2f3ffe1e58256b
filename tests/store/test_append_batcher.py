"""Intake's writes coalesced per event-loop tick (call_ledger.store.append_batcher), the faster form and
digest encodings that must equal the originals, and the `intake` role."""

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from call_ledger.app import create_app
from call_ledger.cli import parser
from call_ledger.core.errors import StoreUnavailable
from call_ledger.core.replay import SignatureUse, params_digest, params_digest_reference
from call_ledger.store import Store
from call_ledger.store.append_batcher import AppendBatcher
from call_ledger.store.signatures import SignatureLedger
from call_ledger.worker.sources.fields import _parse_qsl, decode_form
from tests.support.redis_server import RedisServer
from tests.support.settings import AUTH, make_settings
from tests.support.signing import post_platform


def usage(sid: str) -> dict[str, Any]:
    return {"type": "call.usage", "call_sid": sid, "occurred_at": "2026-11-24T10:00:00Z",
            "data": {"component": "llm", "cost": "0.001"}}


async def test_appends_of_one_tick_share_one_pipeline_and_each_gets_its_own_entry(
        fake_redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(fake_redis, "cl", stream_shards=4)
    events = [json.dumps({"call_sid": f"CA{i}", "n": i}).encode() for i in range(20)]
    ids = await asyncio.gather(*(store.append(e, f"CA{i}") for i, e in enumerate(events)))
    assert store.batcher.batches == 1
    stored: dict[bytes, tuple[str, str]] = {}
    for shard in store.shards:
        for entry_id, fields in await fake_redis.xrange(shard.stream):
            stored[fields[b"e"]] = (shard.stream, entry_id.decode())
    # Each caller got the id of its own event, in the shard of its own call (ids are per shard).
    assert stored == {e: (store.shard_for(f"CA{i}").stream, ids[i]) for i, e in enumerate(events)}


async def test_a_failed_command_fails_its_own_caller_only(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(fake_redis, "cl")
    wrong = Store(fake_redis, "wrong")
    await fake_redis.set(wrong.stream, "a string, not a stream")  # XADD there: WRONGTYPE
    good, bad = await asyncio.gather(store.append(b'{"call_sid":"CA1"}', "CA1"),
                                     wrong.append(b'{"call_sid":"CA2"}', "CA2"), return_exceptions=True)
    assert isinstance(good, str) and isinstance(bad, StoreUnavailable)
    assert await fake_redis.xlen(store.stream) == 1


class _BrokenPipeline:
    def execute_command(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        raise RedisConnectionError("connection lost")


class _BrokenRedis:
    def pipeline(self, transaction: bool = True) -> _BrokenPipeline:
        return _BrokenPipeline()


async def test_a_failed_batch_fails_every_waiting_caller_with_store_unavailable() -> None:
    batcher = AppendBatcher(_BrokenRedis())
    results = await asyncio.gather(*(batcher.xadd("cl:events", b"{}") for _ in range(5)),
                                   batcher.set_nx_get("cl:sig:x", b"d", 60), return_exceptions=True)
    assert batcher.batches == 1
    assert all(isinstance(r, StoreUnavailable) for r in results), results


async def test_a_batch_that_does_not_answer_in_time_is_store_unavailable() -> None:
    class _Hanging(_BrokenPipeline):
        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            await asyncio.Event().wait()
            return []

    class _HangingRedis:
        def pipeline(self, transaction: bool = True) -> _Hanging:
            return _Hanging()

    batcher = AppendBatcher(_HangingRedis(), timeout_s=0.05)
    with pytest.raises(StoreUnavailable, match="in time"):
        await batcher.xadd("cl:events", b"{}")


async def test_signatures_of_one_tick_share_one_round_trip(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(fake_redis, "cl")
    ledger = SignatureLedger(fake_redis, "cl", ttl_s=60, batcher=store.batcher)
    uses = [SignatureUse(f"id{i}", bytes([i]) * 32) for i in range(5)]
    assert all(await asyncio.gather(*(ledger.remember(u) for u in uses)))
    assert store.batcher.batches == 1
    assert await ledger.remember(uses[0])  # the same request again
    assert not await ledger.remember(SignatureUse("id0", b"\xff" * 32))  # other parameters
    assert 0 < await fake_redis.ttl(ledger.key("id0")) <= 60


@pytest.mark.real_redis
async def test_replica_mode_confirms_a_whole_tick_with_one_wait_or_fails_all_of_it(
        redis_server: RedisServer, tmp_path: Any) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    store = Store(client, "cl", durable_ack="replica", durable_ack_timeout_ms=200)
    try:
        # No replica: WAIT 1 counts 0, so every XADD of the tick fails, none is answered as stored.
        results = await asyncio.gather(*(store.append(b'{"call_sid":"CA%d"}' % i, f"CA{i}") for i in range(8)),
                                       return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        replica = RedisServer(tmp_path, extra_args=("--replicaof", "127.0.0.1", str(redis_server.port)))
        replica.start()
        replica_client = aioredis.Redis.from_url(replica.url)
        try:
            # In sync on both sides: the replica's link is up and the primary counts it online.
            deadline = asyncio.get_running_loop().time() + 20
            while (await replica_client.info("replication")).get("master_link_status") != "up" or "online" not in str(
                    (await client.info("replication")).get("slave0", "")):
                assert asyncio.get_running_loop().time() < deadline, "the replica did not sync"
                await asyncio.sleep(0.05)
            # A loaded machine can take longer than 200 ms to relay an ACK: this part is about
            # one WAIT confirming the tick, not about how fast.
            store.batcher.durable_ack_timeout_ms = 5000
            before = store.batcher.batches
            ids = await asyncio.gather(*(store.append(b'{"call_sid":"CB%d"}' % i, f"CB{i}") for i in range(8)))
            assert store.batcher.batches == before + 1
            # The moment the tick was answered, the replica holds every entry of it.
            on_replica = {entry_id.decode() for entry_id, _ in await replica_client.xrange(store.stream)}
            assert set(ids) <= on_replica
        finally:
            await replica_client.aclose()
            replica.stop()
    finally:
        await store.close()


# -- faster encodings, equal to the originals ---------------------------------------------------

_FORM_TEXT = st.text(alphabet=st.sampled_from("ab=&+%2B%zz%e2%82%ac%ff%41é;"), max_size=30)


@given(_FORM_TEXT)
def test_form_decoding_equals_parse_qsl(text: str) -> None:
    _assert_form_decoding_equals_parse_qsl(text)


def _assert_form_decoding_equals_parse_qsl(text: str) -> None:
    try:
        expected: Any = parse_qsl(text, keep_blank_values=True, errors="strict")
    except ValueError:
        expected = ValueError
    try:
        got: Any = _parse_qsl(text)
    except ValueError:
        got = ValueError
    assert got == expected


# Escapes that decode to the separators, and a literal non-ASCII letter between escapes: the
# whole-text path must stand aside for the first and fail UTF-8 exactly as per piece for the second.
_FORM_TEXT_SEPARATORS = st.lists(st.sampled_from(["a", "=", "&", "+", "%", "%26", "%3D", "%3d", "%2B", "%C3", "%A9",
                                                   "%e2%82%ac", "%ff", "%2", "6", "é", "\ud800"]),
                                  max_size=15).map("".join)


@given(_FORM_TEXT_SEPARATORS)
def test_form_decoding_equals_parse_qsl_with_escaped_separators(text: str) -> None:
    _assert_form_decoding_equals_parse_qsl(text)


_TIMES = st.tuples(st.integers(1, 9999), st.integers(1, 12), st.integers(0, 31), st.integers(0, 99),
                   st.integers(0, 99), st.integers(0, 99), st.sampled_from(["+0000", "-0000", "+0530", "-2400"]))


@given(_TIMES, st.booleans())
def test_twilio_timestamp_equals_the_email_parser(parts: tuple[int, ...], right_weekday: bool) -> None:
    from datetime import datetime

    from call_ledger.core.errors import InvalidEvent
    from call_ledger.core.instants import parse_rfc2822
    from call_ledger.worker.sources.twilio import MONTHS, WEEKDAYS, parse_timestamp

    year, month, day, hour, minute, second, offset = parts
    try:
        weekday = WEEKDAYS[datetime(year, month, day).weekday()]  # type: ignore[arg-type]
    except ValueError:
        weekday = "Mon"
    if not right_weekday:
        weekday = WEEKDAYS[(WEEKDAYS.index(weekday) + 1) % 7]
    value = f"{weekday}, {day} {MONTHS[month - 1]} {year:04d} {hour:02d}:{minute:02d}:{second:02d} {offset}"
    try:  # what parse_timestamp did before its fast path: the weekday check, then email.utils
        if WEEKDAYS[datetime(year, month, day).weekday()] != weekday:  # type: ignore[arg-type]
            expected: Any = "weekday"
        else:
            expected = parse_rfc2822(value)
    except ValueError:
        expected = "invalid"
    try:
        got: Any = parse_timestamp(value)
    except InvalidEvent as exc:
        got = "weekday" if "weekday" in str(exc) else "invalid"
    assert got == expected


_NUMBERS = st.one_of(st.lists(st.sampled_from([*"+0123456789 ()-.\t", "\u0663", "\u00b2", "\uff11", "sip:", "a"]),
                              max_size=18).map("".join),
                     st.text(alphabet=st.sampled_from(list("0123456789\u0663\u00b2\uff11")),
                             max_size=17).map(lambda s: "+" + s))


@given(_NUMBERS)
def test_e164_fast_path_equals_the_general_rules(raw: str) -> None:
    import re

    from call_ledger.core.phones import to_e164

    value = raw.strip()  # the rules as they were before the fast path for numbers already in E.164
    expected: str | None = None
    if value:
        expected = value
        if not value.lower().startswith(("sip:", "sips:", "client:")):
            compact = re.sub(r"[\s().-]", "", value)
            if compact.startswith("00") and compact[2:].isdigit():
                compact = "+" + compact[2:]
            if re.match(r"^\+?\d{3,15}$", compact):
                expected = compact if compact.startswith("+") else "+" + compact
    assert to_e164(raw) == expected


def test_json_bodies_with_a_byte_order_mark_are_refused_as_json_loads_refuses_them() -> None:
    from call_ledger.core.errors import MalformedBody
    from call_ledger.worker.sources.fields import load_json_object

    assert load_json_object(b'{"a": 1.5}') == {"a": __import__("decimal").Decimal("1.5")}
    with pytest.raises(MalformedBody):
        load_json_object(b'\xef\xbb\xbf{"a": 1}')
    with pytest.raises(MalformedBody):
        load_json_object(b'{"a": NaN}')


def test_form_decoding_keeps_blanks_order_and_refuses_bad_utf8() -> None:
    assert decode_form(b"a=1&b=&c&&a=%2B+x") == [("a", "1"), ("b", ""), ("c", ""), ("a", "+ x")]
    with pytest.raises(Exception, match="UTF-8"):
        decode_form(b"a=%ff")


_PAIRS = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5)


@given(st.sampled_from(["GET", "post"]), _PAIRS, _PAIRS)
def test_params_digest_equals_its_first_definition(method: str, query: Any, form: Any) -> None:
    # Digests are stored for days: a redelivery after an upgrade must still match.
    assert params_digest(method, query, form) == params_digest_reference(method, query, form)


# -- the intake role -------------------------------------------------------------------------------

async def test_intake_role_stores_webhooks_and_serves_no_read_api_and_applies_nothing(
        aiohttp_client: Any, fake_redis: fakeredis.FakeAsyncRedis) -> None:
    settings = make_settings()
    store = Store(fake_redis, settings.key_prefix)
    app = create_app(settings, "intake", store)  # run_consumer left on: the role still has no apply loop
    client = await aiohttp_client(app)
    response = await post_platform(client, usage("CA-intake"), "wh-intake-1")
    assert response.status == 200
    assert (await response.json())["outcome"] == "stored"
    entries = await fake_redis.xrange(store.stream)
    assert [json.loads(fields[b"e"])["call_sid"] for _, fields in entries] == ["CA-intake"]
    assert (await client.get("/api/v1/calls/sid/x", headers=AUTH)).status == 404
    assert (await client.get("/api/v1/calls/sid/CA-intake", headers=AUTH)).status == 404
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    # Nothing applied it: no record, no consumer group reading the stream.
    assert await store.get_call("CA-intake") is None
    assert await fake_redis.xinfo_groups(store.stream) == []


def test_intake_is_a_command() -> None:
    assert parser().parse_args(["intake"]).command == "intake"


@pytest.mark.real_redis
async def test_on_a_cluster_a_moved_tick_is_503_and_the_next_tick_finds_the_right_node(tmp_path: Any) -> None:
    import redis
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode

    from tests.support.cluster import Cluster
    from tests.support.redis_server import require_redis

    require_redis()
    cluster = Cluster(tmp_path, masters=3).start()
    client = aioredis.RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
    try:
        store = Store(client, "cl", stream_shards=3)
        await client.initialize()
        stream = store.shard_for("CA-moved").stream
        # The client's slot map goes stale (as after a failover or a resharding): the stream's
        # slot points at a node that does not own it, which answers MOVED.
        slot = client.keyslot(stream)
        owner = client.nodes_manager.slots_cache[slot][0]
        other = next(n for n in client.get_primaries() if n.name != owner.name)
        client.nodes_manager.slots_cache[slot] = [other]
        # Read on the owner directly: a command of the cluster client itself would repair the map.
        on_owner = redis.Redis(host="127.0.0.1", port=int(owner.port))
        with pytest.raises(StoreUnavailable):
            await store.append(b'{"call_sid":"CA-moved","n":1}', "CA-moved")
        assert on_owner.xlen(stream) == 0  # refused, not stored: the provider retries
        entry_id = await store.append(b'{"call_sid":"CA-moved","n":2}', "CA-moved")  # the next tick
        assert [e.decode() for e, _ in on_owner.xrange(stream)] == [entry_id]
        assert client.get_node_from_key(stream).name == owner.name
        on_owner.close()
    finally:
        await store.close()
        cluster.stop()
