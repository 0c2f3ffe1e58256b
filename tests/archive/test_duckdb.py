"""A warehouse reads the archive as it is (SPEC §16): DuckDB over the Hive-partitioned files, money
summed exactly, filtered by organization and day, ordered as the calls API orders calls."""

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson

from call_ledger.archive import calls_file, events_file, open_archive
from call_ledger.core.archive import call_row, calls_path, event_row, events_path, partition
from call_ledger.core.instants import parse_iso
from call_ledger.core.rules import record_json
from tests.support.archive_records import ARCHIVED_AT, a_record
from tests.support.paths import ROOT

PASS = "p20261126T000000-1"
BIG = 123_456_789_012_123_456_789  # 123456789012.123456789: past a double's 17 digits and int64's nano-units


def archived_calls(root: Path) -> list[tuple[int | None, dict[str, Any]]]:
    """24 calls of organizations 7, 8 and none over two UTC days, written as a pass writes them: one
    file per partition. Returns (organization, record) of each."""
    calls = []
    for i in range(24):
        day = "2026-11-24" if i < 12 else "2026-11-25"
        started = f"{day}T{10 + i % 6:02d}:00:00Z"  # ties on started_at: id decides
        ended = f"{day}T{10 + i % 6:02d}:0{i % 10}:00.{i:03d}Z"
        calls.append(([7, 8, None][i % 3], a_record(call_sid=f"CA{i:032x}", id=4503599627370497 + (i * 7) % 24,
                                                   started_at=started, ended_at=ended, total_cost=BIG + i,
                                                   llm_cost=None if i % 4 else i)))
    files = open_archive(str(root))
    partitions: dict[str, list[dict[str, Any]]] = {}
    events: dict[str, list[dict[str, Any]]] = {}
    for organization, record in calls:
        where = partition(organization, parse_iso(record["ended_at"]).us)
        partitions.setdefault(where, []).append(call_row(record_json(record), 1, ARCHIVED_AT))
        events.setdefault(where, []).append(event_row(
            record["call_sid"], "platform:e1", parse_iso(record["started_at"]).us,
            orjson.dumps({"source": "platform", "event_id": "e1", "call_sid": record["call_sid"]}), ARCHIVED_AT))
    for where, rows in partitions.items():
        files.put(calls_path(where, PASS), calls_file(rows))
        files.put(events_path(where, PASS), events_file(events[where]))
    return calls


DOC = ROOT / "docs" / "archive.md"
DOC_ROOT = "/var/lib/call-ledger/archive"


def documented_queries(root: Path) -> list[str]:
    """The SQL statements of docs/archive.md's sql block (each ends with `;`), for this archive's root."""
    text = DOC.read_text()
    block = text.split("```sql\n", 1)[1].split("```", 1)[0]
    return [statement.strip().replace(DOC_ROOT, str(root)) for statement in block.split(";") if statement.strip()]


def test_duckdb_reads_the_archive_as_the_docs_show(tmp_path: Path) -> None:
    """docs/archive.md's queries of the archive (DuckDB): one organization's calls of two days, newest first
    as the calls API lists them, then what each organization spent a day, summed exactly."""
    calls = archived_calls(tmp_path)
    listing, totals = documented_queries(tmp_path)
    connection = duckdb.connect()

    rows = connection.execute(listing).fetchall()
    ours = [record for organization, record in calls if organization == 7]
    expected = sorted(ours, key=lambda r: (parse_iso(r["started_at"]).us, r["id"]), reverse=True)
    assert [row[0] for row in rows] == [record["call_sid"] for record in expected]
    assert [row[1] for row in rows] == [record["id"] for record in expected]
    assert [row[6] for row in rows] == [Decimal(f"{record['total_cost']}e-9") for record in expected]
    assert all(row[2] == "completed" and row[7] == "USD" for row in rows)
    assert rows[0][3].isoformat() == expected[0]["started_at"].replace("Z", "+00:00")  # TIMESTAMPTZ, UTC

    summed = connection.execute(totals).fetchall()
    assert {row[4] for row in summed} == {"DECIMAL(38,9)"}
    want: dict[tuple[str, str], list[int]] = {}
    for organization, record in calls:
        key = ("_none" if organization is None else str(organization), record["ended_at"][:10])
        want.setdefault(key, []).append(record["total_cost"])
    assert [(row[0], row[1].isoformat(), row[2], row[3]) for row in summed] == [
        (org, day, len(amounts), Decimal(f"{sum(amounts)}e-9")) for (org, day), amounts in sorted(want.items())]
    # Exact where a double is not (it holds 17 digits): 4 x 123456789012.123456789 + 18 nano-units.
    assert summed[0][:4] == ("7", summed[0][1], 4, Decimal("493827156048.493827174"))


def test_duckdb_reads_the_events_files_beside_the_calls(tmp_path: Path) -> None:
    archived_calls(tmp_path)
    rows = duckdb.connect().execute(
        f"SELECT organization_id, call_sid, source, event_id, json_extract_string(event, '$.call_sid') "
        f"FROM read_parquet('{tmp_path}/events/*/*/*.parquet', hive_partitioning = true) "
        f"WHERE organization_id = '_none' ORDER BY call_sid").fetchall()
    assert len(rows) == 8
    assert all(row[0] == "_none" and row[2:4] == ("platform", "e1") and row[4] == row[1] for row in rows)


def test_a_partition_directory_holds_only_complete_files(tmp_path: Path) -> None:
    archived_calls(tmp_path)
    names = [path.name for path in tmp_path.rglob("*")]
    assert not [name for name in names if name.startswith(".")]
    assert {re.sub(r"=[^/]*", "=…", str(path.parent.relative_to(tmp_path)))
            for path in tmp_path.rglob("*.parquet")} == {"calls/organization_id=…/date=…",
                                                        "events/organization_id=…/date=…"}
