"""The archive's Parquet files (SPEC §16): rows written and read back exact, in a local directory and
in an S3 bucket, one row read without the rest of the file."""

import concurrent.futures
import random
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from call_ledger.archive import parquet
from call_ledger.archive.files import ArchiveFiles, open_archive
from call_ledger.archive.parquet import CALLS_SCHEMA, EVENTS_SCHEMA, CallReader, calls_file, events_file
from call_ledger.core.archive import CALL_COLUMNS, call_row, event_row, served_of, time_text
from call_ledger.core.rules import CallState, record_json
from tests.support.archive_records import ARCHIVED_AT, a_record, calls, served
from tests.support.s3 import S3

REL = "calls/organization_id=7/date=2026-11-24/p1.parquet"


def record_bodies(count: int, seed: int = 1) -> list[bytes]:
    """`count` records as GET serves them: times of each provider's precision (a few that need
    record_json), money of every size, call_meta of any shape."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        digits = rng.choice([0, 0, 3, 6])
        ended = 1_795_514_706_000_000 + i * 1_000_123
        ended -= ended % 10 ** (6 - digits) if digits else ended % 1_000_000
        bodies.append(record_json(a_record(
            call_sid=f"CA{i:032x}", id=4503599627370497 + i, customer_phone_number=f"+1555{i % 10_000_000:07d}",
            call_meta={"campaign": rng.choice(["spring", "été", "夏"]), "n": i, "tags": ["a", {"b": i % 3 == 0}]}
            if i % 4 else {},
            ended_at=time_text(ended) if i % 50 else "2026-11-24T10:05:06.000Z",
            total_cost=rng.choice([None, 0, rng.randrange(10**12), 123_456_789_012_123_456_789]),
            assistant_name=None if i % 7 == 0 else f'Bot "{i % 5}"')))
    return bodies


def assert_read_back(files: ArchiveFiles, rel: str, bodies: list[bytes], reader: CallReader) -> None:
    for index, body in enumerate(bodies):
        assert served_of(reader.read_row(files, rel, index)) == body, index


@pytest.fixture
def small_row_groups(monkeypatch: pytest.MonkeyPatch) -> int:
    """Row groups of 7 rows: a few dozen rows make several, the last one short."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 7)
    return 7


def test_a_calls_file_in_a_directory_serves_every_record_back(tmp_path: Path, small_row_groups: int) -> None:
    bodies = record_bodies(60)
    rows = [call_row(body, 1, ARCHIVED_AT) for body in bodies]
    assert 0 < sum(row["record_json"] is not None for row in rows) < 5
    files = open_archive(str(tmp_path))
    files.put(REL, calls_file(rows))
    assert pq.ParquetFile(tmp_path / REL).metadata.num_row_groups == 9
    assert_read_back(files, REL, bodies, CallReader())


def test_a_calls_file_in_an_s3_bucket_serves_every_record_back(s3: S3, small_row_groups: int) -> None:
    bodies = record_bodies(30)
    files = open_archive(s3.url())
    files.put(REL, calls_file([call_row(body, 2, ARCHIVED_AT) for body in bodies]))
    reader = CallReader()
    assert_read_back(files, REL, bodies, reader)
    assert reader.read_row(files, REL, 29)["revision"] == 2


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_list=st.lists(calls(), min_size=1, max_size=12))
def test_any_records_rendered_by_the_ledger_come_back_from_a_file(tmp_path_factory: pytest.TempPathFactory,
                                                                   call_list: list[tuple[str, int, CallState]]) -> None:
    bodies = [served(*call) for call in call_list]
    files = open_archive(str(tmp_path_factory.mktemp("archive")))
    files.put(REL, calls_file([call_row(body, 1, ARCHIVED_AT) for body in bodies]))
    assert_read_back(files, REL, bodies, CallReader())


@pytest.mark.parametrize("nano", [0, 1, -1, 123_456_789_012_123_456_789, 10**38 - 1, -(10**38 - 1), 2**63 - 1, 2**63])
def test_money_is_exact_in_the_file_as_decimal128(tmp_path: Path, nano: int) -> None:
    body = record_json(a_record(total_cost=nano, llm_cost=None))
    row = call_row(body, 1, ARCHIVED_AT)
    assert row["total_cost"] == nano and row["record_json"] is None
    files = open_archive(str(tmp_path))
    files.put(REL, calls_file([row, call_row(record_json(a_record(total_cost=5)), 1, ARCHIVED_AT)]))
    table = pq.read_table(tmp_path / REL)
    assert table.schema.field("total_cost").type == pa.decimal128(38, 9)
    assert table.column("total_cost").to_pylist() == [Decimal(f"{nano}e-9"), Decimal("5e-9")]  # exact, no context
    assert table.column("llm_cost").to_pylist()[0] is None
    read = CallReader().read_row(files, REL, 0)
    assert read["total_cost"] == nano and served_of(read) == body


def test_123456789012_point_123456789_survives_exactly(tmp_path: Path) -> None:
    body = record_json(a_record(total_cost=123_456_789_012_123_456_789))
    assert b'"total_cost":123456789012.123456789' in body
    files = open_archive(str(tmp_path))
    files.put(REL, calls_file([call_row(body, 1, ARCHIVED_AT)]))
    assert pq.read_table(tmp_path / REL).column("total_cost")[0].as_py() == Decimal("123456789012.123456789")
    assert served_of(CallReader().read_row(files, REL, 0)) == body


def test_the_file_has_the_columns_of_the_design_and_no_partition_column(tmp_path: Path) -> None:
    data = calls_file([call_row(body, 1, ARCHIVED_AT) for body in record_bodies(3)])
    schema = pq.read_schema(pa.BufferReader(data))
    assert schema.names == [column.name for column in CALL_COLUMNS]
    assert "organization_id" not in schema.names and "date" not in schema.names
    for column in CALL_COLUMNS:
        field = schema.field(column.name)
        assert field.type == CALLS_SCHEMA.field(column.name).type and field.nullable == column.nullable, column
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_row_missing_a_value_its_column_must_have_is_refused() -> None:
    row = call_row(record_json(a_record()), 1, ARCHIVED_AT)
    with pytest.raises(ValueError, match="call_sid"):
        calls_file([{**row, "call_sid": None}])


def test_an_events_file_keeps_each_event_as_served(tmp_path: Path) -> None:
    events = [orjson.dumps({"source": "twilio", "event_id": f"e{i}", "type": "call.status", "note": "é\"\\"})
              for i in range(5)]
    rows = [event_row("CA1", f"twilio:e{i}", 1_795_514_400_000_000 + i, event, ARCHIVED_AT)
            for i, event in enumerate(events)]
    files = open_archive(str(tmp_path))
    files.put("events/organization_id=7/date=2026-11-24/p1.parquet", events_file(rows))
    table = pq.read_table(tmp_path / "events/organization_id=7/date=2026-11-24/p1.parquet")
    assert table.schema == EVENTS_SCHEMA
    assert [event.encode() for event in table.column("event").to_pylist()] == events
    assert table.column("occurred_at").cast(pa.int64()).to_pylist() == [row["occurred_at"] for row in rows]
    assert table.column("event_id").to_pylist() == [f"e{i}" for i in range(5)]


def test_the_reader_keeps_a_bounded_number_of_footers_and_reads_from_threads(tmp_path: Path,
                                                                             small_row_groups: int) -> None:
    files = open_archive(str(tmp_path))
    bodies = record_bodies(40)
    paths = [f"calls/organization_id=7/date=2026-11-24/p{i}.parquet" for i in range(4)]
    for path in paths:
        files.put(path, calls_file([call_row(body, 1, ARCHIVED_AT) for body in bodies]))
    reader = CallReader(files=2)
    jobs = [(path, index) for path in paths for index in range(len(bodies))] * 2
    random.Random(3).shuffle(jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        read = list(pool.map(lambda job: served_of(reader.read_row(files, *job)), jobs))
    assert read == [bodies[index] for _, index in jobs]
    assert len(reader._footers) == 2
    with pytest.raises(IndexError):
        reader.read_row(files, paths[0], 40)


def test_a_file_written_again_is_read_with_its_new_footer(tmp_path: Path, small_row_groups: int) -> None:
    files = open_archive(str(tmp_path))
    first, second = record_bodies(30, seed=1), record_bodies(45, seed=2)
    files.put(REL, calls_file([call_row(body, 1, ARCHIVED_AT) for body in first]))
    reader = CallReader()
    assert served_of(reader.read_row(files, REL, 3)) == first[3]
    files.put(REL, calls_file([call_row(body, 1, ARCHIVED_AT + 1) for body in second]))
    assert served_of(reader.read_row(files, REL, 40)) == second[40]  # past the rows the old footer knew
    assert_read_back(files, REL, second, reader)


def test_fifty_thousand_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: how long a pass's file takes to build, and a lookup's latency."""
    bodies = record_bodies(50_000)
    start = time.perf_counter()
    rows = [call_row(body, 1, ARCHIVED_AT) for body in bodies]
    made = time.perf_counter() - start
    start = time.perf_counter()
    data = calls_file(rows)
    written = time.perf_counter() - start
    files = open_archive(str(tmp_path))
    files.put(REL, data)
    reader = CallReader()
    rng = random.Random(5)
    latencies = []
    for _ in range(400):
        index = rng.randrange(len(bodies))
        start = time.perf_counter()
        row = reader.read_row(files, REL, index)
        latencies.append(time.perf_counter() - start)
        assert served_of(row) == bodies[index]
    latencies.sort()
    with capsys.disabled():
        print(f"\n50,000 calls: call_row {made:.2f} s ({made / 50_000 * 1e6:.1f} µs a call), calls_file "
              f"{written:.2f} s ({written / 50_000 * 1e6:.1f} µs a row), {len(data) / 1e6:.2f} MB "
              f"({len(data) / 50_000:.0f} B a call); read_row p50 {latencies[200] * 1e3:.2f} ms, "
              f"p99 {latencies[396] * 1e3:.2f} ms")
