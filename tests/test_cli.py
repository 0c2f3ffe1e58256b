"""`call-ledger dlq list` and `call-ledger dlq replay` as real processes against a real redis-server."""

import json
import subprocess

import pytest

from call_ledger.core.events import CallEvent
from call_ledger.core.rules import render_record
from call_ledger.store import Store
from call_ledger.store.keys import NEWEST_LAYOUT
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.cli import run_cli
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import usage

pytestmark = pytest.mark.real_redis

EUR_NANO = 2_500_000_000


@pytest.fixture
def store(real_store: Store) -> Store:
    """The real redis-server's store: the CLI runs as its own process against it."""
    return real_store


async def dead_letter(store: Store, redis_server: RedisServer, sid: str, event_id: str) -> CallEvent:
    """Post a EUR cost to a USD ledger with no FX rate, next to a USD one, and run a worker
    until it gives up on the EUR one (LEDGER_MAX_DELIVERIES=2)."""
    eur = usage(sid, event_id, 60_000_000, "tts", EUR_NANO, currency="EUR")
    await store.append(usage(sid, f"{event_id}-usd", 0, "llm", 100_000_000).model_dump_json().encode())
    await store.append(eur.model_dump_json().encode())
    settings = make_settings(redis_url=redis_server.url, consumer_name="dlq-maker", max_deliveries=2)
    consumer = Consumer(store, settings, Metrics())
    await consumer.run_burst()
    assert await consumer.run_burst(claim_idle_ms=0) == 1
    assert await store.group_stats() == (0, 0)
    return eur


async def test_dlq_list_json_shows_the_call_sid_event_id_and_reason(
    store: Store, redis_server: RedisServer
) -> None:
    eur = await dead_letter(store, redis_server, "CA-dlq-list", "evt-eur-1")
    [dead] = await store.dead_letters()

    result = run_cli("dlq", "list", "--json", LEDGER_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    row = json.loads(line)
    assert row["id"] == dead["id"]
    assert row["event"]["call_sid"] == "CA-dlq-list"
    assert row["event"]["event_id"] == "evt-eur-1"
    assert CallEvent.model_validate(row["event"]) == eur
    assert "EUR" in row["reason"] and "LEDGER_FX_RATES" in row["reason"]
    assert row["deliveries"] == "2"
    assert "Traceback" not in result.stderr


async def test_dlq_list_text_and_limit(store: Store, redis_server: RedisServer) -> None:
    await dead_letter(store, redis_server, "CA-dlq-a", "evt-a")
    await dead_letter(store, redis_server, "CA-dlq-b", "evt-b")

    result = run_cli("dlq", "list", LEDGER_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "call_sid=CA-dlq-a" in lines[0] and "event_id=evt-a" in lines[0] and "EUR" in lines[0]
    assert "call_sid=CA-dlq-b" in lines[1] and "event_id=evt-b" in lines[1]
    assert result.stderr.strip() == "2 dead-lettered event(s)"

    limited = run_cli("dlq", "list", "--json", "--limit", "1", LEDGER_REDIS_URL=redis_server.url)
    assert limited.returncode == 0, limited.stderr
    assert [json.loads(x)["event"]["call_sid"] for x in limited.stdout.splitlines()] == ["CA-dlq-a"]


async def test_dlq_replay_moves_the_dead_letter_back_to_the_main_stream(
    store: Store, redis_server: RedisServer
) -> None:
    eur = await dead_letter(store, redis_server, "CA-dlq-replay", "evt-eur-2")
    [dead] = await store.dead_letters()
    before = await store.redis.xlen(store.stream)

    result = run_cli("dlq", "replay", LEDGER_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"replayed {dead['id']} as ")
    new_id = line.rsplit(" ", 1)[1]
    assert await store.dead_letters() == []
    assert await store.redis.xlen(store.dead) == 0
    assert await store.redis.xlen(store.stream) == before + 1
    [(_, fields)] = await store.redis.xrange(store.stream, min=new_id, max=new_id)
    assert CallEvent.model_validate_json(fields[b"e"]) == eur

    # Once a rate is configured, the replayed event is applied: 2.5 EUR at 1.08 = 2.7 USD.
    settings = make_settings(redis_url=redis_server.url, consumer_name="fixed", fx_rates="EUR=1.08")
    assert await Consumer(store, settings, Metrics()).run_burst() == 1
    found = await store.get_call("CA-dlq-replay")
    assert found is not None
    record = render_record("CA-dlq-replay", found[0], found[1], settings.policy)
    assert (record["tts_cost"], record["llm_cost"]) == (2_700_000_000, 100_000_000)
    assert await store.group_stats() == (0, 0)


async def test_dlq_replay_with_id_requeues_only_that_dead_letter(
    store: Store, redis_server: RedisServer
) -> None:
    await dead_letter(store, redis_server, "CA-dlq-one", "evt-one")
    await dead_letter(store, redis_server, "CA-dlq-two", "evt-two")
    first, second = await store.dead_letters()

    result = run_cli("dlq", "replay", "--id", second["id"], LEDGER_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == [second["id"]]
    assert [row["id"] for row in await store.dead_letters()] == [first["id"]]
    [(_, fields)] = await store.redis.xrevrange(store.stream, count=1)
    assert CallEvent.model_validate_json(fields[b"e"]).call_sid == "CA-dlq-two"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_dlq_without_a_redis_url_exits_2_with_one_line() -> None:
    line = one_line_error(run_cli("dlq", "list"))
    assert "LEDGER_REDIS_URL" in line


@pytest.mark.parametrize("value", ["zero", "0"])
def test_an_invalid_setting_exits_2_with_one_line_naming_it(redis_server: RedisServer, value: str) -> None:
    result = run_cli("dlq", "list", LEDGER_REDIS_URL=redis_server.url, LEDGER_MAX_DELIVERIES=value)
    line = one_line_error(result)
    assert "LEDGER_MAX_DELIVERIES" in line


async def test_layout_shows_the_mark_and_upgrade_moves_a_layout_2_store(store: Store,
                                                                       redis_server: RedisServer) -> None:
    await store.redis.set(store.keys.layout, "2")  # a store an earlier version started
    shown = run_cli("layout", LEDGER_REDIS_URL=redis_server.url)
    assert (shown.returncode, shown.stdout) == (0, "layout 2\n"), shown.stderr
    moved = run_cli("layout", "--upgrade", LEDGER_REDIS_URL=redis_server.url)
    assert (moved.returncode, moved.stdout) == (0, "layout 2 -> 5\n"), moved.stderr
    assert await store.redis.get(store.keys.layout) == b"5"
    again = run_cli("layout", "--upgrade", LEDGER_REDIS_URL=redis_server.url)
    assert (again.returncode, again.stdout) == (0, "layout 5 already\n"), again.stderr


async def test_layout_upgrade_is_refused_while_an_unnamed_worker_is_connected(store: Store,
                                                                               redis_server: RedisServer) -> None:
    await store.redis.set(store.keys.layout, "2")
    await store.ensure_group()
    old = redis_server.client()  # not named: what an earlier version's connection looks like
    old.xreadgroup("ledger", "old-worker", {store.stream: ">"}, count=1)
    try:
        refused = run_cli("layout", "--upgrade", LEDGER_REDIS_URL=redis_server.url)
        assert refused.returncode == 1
        assert "unnamed, last command xreadgroup" in refused.stderr and "layout stays 2" in refused.stderr
        assert await store.redis.get(store.keys.layout) == b"2"
        forced = run_cli("layout", "--upgrade", "--force", LEDGER_REDIS_URL=redis_server.url)
        assert (forced.returncode, forced.stdout) == (0, "layout 2 -> 5\n"), forced.stderr
    finally:
        old.close()


async def test_layout_of_a_store_this_version_does_not_read_is_one_line_exit_2(store: Store,
                                                                               redis_server: RedisServer) -> None:
    await store.redis.set(store.keys.layout, "6")
    result = run_cli("layout", "--upgrade", LEDGER_REDIS_URL=redis_server.url)
    assert result.returncode == 2 and "key layout '6'" in result.stderr and "Traceback" not in result.stderr
    assert await store.redis.get(store.keys.layout) == b"6"


def test_layout_without_a_redis_url_exits_2_with_one_line() -> None:
    result = run_cli("layout")
    assert result.returncode == 2 and result.stderr.strip() == (
        "call-ledger: layout needs LEDGER_REDIS_URL (the embedded store lives inside `serve`)")


async def test_layout_shows_a_store_without_a_mark_and_writes_nothing(store: Store, redis_server: RedisServer) -> None:
    shown = run_cli("layout", LEDGER_REDIS_URL=redis_server.url)
    assert shown.returncode == 0 and shown.stdout.startswith("layout none yet"), shown.stderr
    assert await store.redis.get(store.keys.layout) is None


async def test_layout_refuses_a_store_without_a_mark_that_holds_data_as_start_up_does(
        store: Store, redis_server: RedisServer) -> None:
    """Record ids without a mark are a version before marks: `layout` must neither say the first
    process will mark the store nor let --upgrade mark it (the services would then start on it)."""
    await store.redis.set(store.keys.ids, 5)
    for args in (("layout",), ("layout", "--upgrade"), ("layout", "--upgrade", "--force")):
        line = one_line_error(run_cli(*args, LEDGER_REDIS_URL=redis_server.url))
        assert "older key layout" in line, args
    assert await store.redis.get(store.keys.layout) is None


async def test_layout_upgrade_marks_an_empty_store_without_naming_a_layout_it_never_had(
        store: Store, redis_server: RedisServer) -> None:
    moved = run_cli("layout", "--upgrade", LEDGER_REDIS_URL=redis_server.url)
    assert (moved.returncode, moved.stdout) == (0, f"layout none -> {NEWEST_LAYOUT}\n"), moved.stderr
    assert await store.redis.get(store.keys.layout) == NEWEST_LAYOUT.encode()


def test_layout_force_without_upgrade_is_a_usage_error_and_the_help_names_the_newest_layout() -> None:
    result = run_cli("layout", "--force")
    assert result.returncode == 2 and "--force" in result.stderr and "--upgrade" in result.stderr
    shown = run_cli("layout", "--help")
    assert f"layout {NEWEST_LAYOUT}" in shown.stdout and "layout 3" not in shown.stdout


async def test_layout_on_a_key_of_another_type_or_a_missing_database_is_one_line_at_once(
        store: Store, redis_server: RedisServer) -> None:
    await store.redis.hset(store.keys.layout, "a", "b")  # another program's key under the prefix
    line = one_line_error(run_cli("layout", LEDGER_REDIS_URL=redis_server.url))
    assert "WRONGTYPE" in line
    # Refused at once: waiting out the start-up timeout would outlast run_cli's (30 s) and fail here.
    line = one_line_error(run_cli("layout", LEDGER_REDIS_URL=redis_server.url.replace("/0", "/99"),
                                  LEDGER_REDIS_STARTUP_TIMEOUT_S="300"))
    assert "no database of the number" in line
