"""Archived calls on the read API (SPEC §16): GET by SID serves an archived call from its file, byte for
byte what it served before. A tombstone (call_ledger.store.archive) names the file and row; the row renders
the record (call_ledger.core.archive.served_of), and its partition says whose call it is.

Only GET by SID reads the archive: lists, search and export cover the calls in Redis, and count, stats and
analytics keep counting archived calls from what the indexes kept (docs/archive.md).
"""

import asyncio

import structlog
from aiohttp import web

from call_ledger.api.auth import may_see
from call_ledger.archive import ArchiveFiles, CallReader
from call_ledger.core.archive import organization_of, served_of
from call_ledger.core.errors import ArchiveUnavailable
from call_ledger.store.archive import placement
from call_ledger.web.base import STORE

ARCHIVE = web.AppKey("archive", ArchiveFiles)
READER = web.AppKey("archive_reader", CallReader)
# How long a lookup waits for the archive's store (an object store that does not answer): then 503.
READ_TIMEOUT_S = 5.0
# What a client is told when the archive cannot be read: the why (paths, endpoints) goes to the log only.
UNREADABLE = "this call is archived, and the archive cannot be read now"

log = structlog.get_logger("ledger.api")


async def archived_record(request: web.Request, call_sid: str, scope: int | None) -> bytes | None:
    """The served record of an archived call the caller may see; None when the SID names no archived call
    (or one of another tenant: the same answer)."""
    store = request.app[STORE]
    mark = await store.archive.mark(call_sid)
    if mark is None or mark.startswith(b"@"):  # not archived; or held by a pass: Redis still has it whole
        return None
    file_no, row = placement(mark)
    path = await store.archive.file_path(file_no)
    if path is None or not may_see(organization_of(path), scope):
        return None
    if ARCHIVE not in request.app:
        log.error("archive_not_configured", call_sid=call_sid, detail="an archived call, and no LEDGER_ARCHIVE_URL")
        raise ArchiveUnavailable(UNREADABLE)
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            found = await asyncio.to_thread(request.app[READER].read_row, request.app[ARCHIVE], path, row)
    except (ArchiveUnavailable, OSError, TimeoutError, ValueError) as exc:
        log.error("archive_read_failed", call_sid=call_sid, file=path, error=f"{type(exc).__name__}: {exc}"[:300])
        raise ArchiveUnavailable(UNREADABLE) from None
    if found.get("call_sid") != call_sid:  # never serve another call's row
        log.error("archive_row_mismatch", call_sid=call_sid, file=path, row=row)
        raise ArchiveUnavailable(UNREADABLE)
    return served_of(found)
