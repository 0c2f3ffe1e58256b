"""The archive's files (SPEC §16): where they live (`files`) and what is in them (`parquet`).

The I/O adapter for the archive, beside the store in the layers (pyproject.toml's import-linter
contracts): pyarrow and fsspec are imported here and nowhere in the core, whose `core.archive`
turns a served record into a row and back. Callers run these synchronous functions in a thread.
"""

from call_ledger.archive.files import ArchiveConfigError, ArchiveFiles, ArchiveUnavailable, open_archive
from call_ledger.archive.parquet import CALLS_SCHEMA, EVENTS_SCHEMA, CallReader, calls_file, events_file

__all__ = ["CALLS_SCHEMA", "EVENTS_SCHEMA", "ArchiveConfigError", "ArchiveFiles", "ArchiveUnavailable", "CallReader",
           "calls_file", "events_file", "open_archive"]
