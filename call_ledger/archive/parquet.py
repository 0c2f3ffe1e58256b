"""The archive's Parquet files (SPEC §16): rows of call_ledger.core.archive in, file bytes out; one
row read back.

Files are zstd-compressed, in row groups of ROW_GROUP_ROWS rows (the last one fewer). Money columns are
decimal128(38, 9) built from the rows' nano-units as they are (the unscaled value of a
decimal128(38, 9) is its nano-units): never through a float, nor even a Decimal. Timestamps are
microseconds UTC. A reader (DuckDB, pandas, Spark) sees ordinary typed columns.

`CallReader` serves `GET /api/v1/calls/sid/{sid}` for an archived call: it reads one row group
(one ranged read, on an object store one GET), with each file's footer kept in a bounded LRU.
"""

import bisect
import io
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from call_ledger.archive.files import ArchiveFiles
from call_ledger.core.archive import CALL_COLUMNS, EVENT_COLUMNS, MAX_MONEY_NANO, Column, nano_of_decimal

# A lookup decodes the whole row group holding its row: on 50,000 small calls (2-core machine), a
# row group of 16,384 rows took 6.4 ms p50 to read one row, 4,096 rows 2.8 ms, for a file no larger
# (1.21 against 1.26 MB); smaller groups gain little more (a fixed cost per column) and grow the file.
ROW_GROUP_ROWS = 4_096
COMPRESSION = "zstd"
MONEY = pa.decimal128(38, 9)
_UNSCALED = pa.decimal128(38, 0)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_TYPES = {"str": pa.string(), "int64": pa.int64(), "timestamp": _TIMESTAMP, "money": MONEY}
# Statistics help a reader skip row groups by value; on JSON texts they would only grow the footer.
_NO_STATISTICS = frozenset({"call_meta", "record_json", "event"})


def _schema(columns: Sequence[Column], kind: str) -> pa.Schema:
    return pa.schema([pa.field(c.name, _TYPES[c.kind], nullable=c.nullable) for c in columns],
                     metadata={"call_ledger": f"{kind}/1"})


CALLS_SCHEMA = _schema(CALL_COLUMNS, "calls")
EVENTS_SCHEMA = _schema(EVENT_COLUMNS, "events")


def _money_array(values: list[int | None]) -> pa.Array:
    """decimal128(38, 9) whose unscaled values are these nano-units: int64 → decimal128(38, 0)
    (exact), then the same 16-byte values read with scale 9. Amounts beyond int64 (past any the
    ledger bounds, SPEC §14, but exact all the same) go through their decimal text."""
    try:
        unscaled = pa.array(values, pa.int64()).cast(_UNSCALED)
    except (OverflowError, pa.ArrowInvalid):
        for nano in values:
            if nano is not None and abs(nano) > MAX_MONEY_NANO:
                raise ValueError("an amount does not fit decimal128(38, 9)") from None
        return pa.array([None if nano is None else Decimal(f"{nano}e-9") for nano in values], MONEY)
    return pa.Array.from_buffers(MONEY, len(unscaled), unscaled.buffers(), unscaled.null_count, unscaled.offset)


def _array(column: Column, values: list[Any]) -> pa.Array:
    if column.kind == "money":
        array = _money_array(values)
    else:
        array = pa.array(values, _TYPES[column.kind])
    if not column.nullable and array.null_count:
        raise ValueError(f"column {column.name} cannot be null")
    return array


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, columns: Sequence[Column]) -> pa.Table:
    return pa.Table.from_arrays([_array(c, [row[c.name] for row in rows]) for c in columns], schema=schema)


def _file(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, columns: Sequence[Column]) -> bytes:
    sink = pa.BufferOutputStream()
    statistics = [c.name for c in columns if c.name not in _NO_STATISTICS]
    with pq.ParquetWriter(sink, schema, compression=COMPRESSION, write_statistics=statistics) as writer:
        # One table per row group: a pass's rows are never all converted at once (call_meta may be
        # 16 KiB a call).
        for start in range(0, len(rows), ROW_GROUP_ROWS):
            writer.write_table(_table(rows[start:start + ROW_GROUP_ROWS], schema, columns),
                               row_group_size=ROW_GROUP_ROWS)
    return bytes(sink.getvalue().to_pybytes())


def calls_file(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """A calls file of these rows (`core.archive.call_row`'s), in this order."""
    return _file(rows, CALLS_SCHEMA, CALL_COLUMNS)


def events_file(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """An events file of these rows (`core.archive.event_row`'s), in this order."""
    return _file(rows, EVENTS_SCHEMA, EVENT_COLUMNS)


class _Footer(NamedTuple):
    """What a reader needs of one file to read one row: its metadata and size, and each row
    group's first row and byte range."""

    metadata: pq.FileMetaData
    size: int
    first_rows: list[int]
    ranges: list[tuple[int, int]]


def _footer(metadata: pq.FileMetaData, size: int) -> _Footer:
    first_rows, ranges, row = [], [], 0
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        first_rows.append(row)
        row += group.num_rows
        starts, ends = [], []
        for j in range(group.num_columns):
            chunk = group.column(j)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            starts.append(start)
            ends.append(start + chunk.total_compressed_size)
        ranges.append((min(starts), max(ends)))
    return _Footer(metadata, size, first_rows, ranges)


class _RangeFile(io.RawIOBase):
    """A file of `size` bytes of which only [offset, offset + len(data)) is at hand: what
    ParquetFile reads of one row group, given the file's metadata."""

    def __init__(self, data: bytes, offset: int, size: int) -> None:
        self._data, self._offset, self._size, self._at = memoryview(data), offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, at: int, whence: int = io.SEEK_SET) -> int:
        self._at = at if whence == io.SEEK_SET else self._at + at if whence == io.SEEK_CUR else self._size + at
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, buffer: Any) -> int:
        start = self._at - self._offset
        size = min(len(buffer), self._size - self._at)
        if size <= 0:
            return 0
        if start < 0 or start + size > len(self._data):
            raise OSError("read outside the row group at hand")
        buffer[:size] = self._data[start:start + size]
        self._at += size
        return size


class CallReader:
    """Reads one archived call's row; keeps the footers of the last `files` files read.

    Safe to call from several threads at once (asyncio.to_thread): the LRU is locked, and each
    read has its own file objects."""

    def __init__(self, files: int = 128) -> None:
        self._capacity = files
        self._footers: OrderedDict[str, _Footer] = OrderedDict()
        self._lock = threading.Lock()

    def _footer_of(self, files: ArchiveFiles, rel: str) -> _Footer:
        url = files.url_of(rel)
        with self._lock:
            footer = self._footers.get(url)
            if footer is not None:
                self._footers.move_to_end(url)
                return footer
        with files.get_parquet(rel) as source:
            metadata = pq.read_metadata(source)
            size = source.seek(0, io.SEEK_END)
        footer = _footer(metadata, size)
        with self._lock:
            self._footers[url] = footer
            while len(self._footers) > self._capacity:
                self._footers.popitem(last=False)
        return footer

    def read_row(self, files: ArchiveFiles, rel: str, row_index: int) -> dict[str, Any]:
        """Row `row_index` of the calls file `rel`, as `core.archive.call_row` made it (money in
        nano-units, times in µs), so `core.archive.served_of` gives its record."""
        try:
            return self._read_row(files, rel, row_index)
        except (OSError, pa.ArrowException, IndexError):
            # A file is never changed once written (a pass skips the files it finds), but should one be
            # written again, the footer kept of it no longer fits it: read it afresh, once.
            with self._lock:
                self._footers.pop(files.url_of(rel), None)
            return self._read_row(files, rel, row_index)

    def _read_row(self, files: ArchiveFiles, rel: str, row_index: int) -> dict[str, Any]:
        footer = self._footer_of(files, rel)
        if not 0 <= row_index < footer.metadata.num_rows:
            raise IndexError(f"{rel} has no row {row_index}")
        group = bisect.bisect_right(footer.first_rows, row_index) - 1
        start, end = footer.ranges[group]
        data = files.read_range(rel, start, end)
        parquet = pq.ParquetFile(_RangeFile(data, start, footer.size), metadata=footer.metadata)
        table = parquet.read_row_group(group, use_threads=False).slice(row_index - footer.first_rows[group], 1)
        return _row(table)


def _row(table: pa.Table) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in CALL_COLUMNS:
        values = table.column(column.name)
        if column.kind == "timestamp":
            values = values.cast(pa.int64())
        value = values[0].as_py()
        if column.kind == "money" and value is not None:
            value = nano_of_decimal(value)
        row[column.name] = value
    return row
