"""What archive tests share: bring calls to where a pass takes them (finalized, outbox fanned out), run a
pass that is killed at a named step, and read back every row the archive holds."""

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from call_ledger.archive import ArchiveFiles, CallReader
from call_ledger.core.archive import served_of
from call_ledger.core.served import StoredCall
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.archive import is_tombstone, placement
from call_ledger.web.metrics import Metrics
from call_ledger.worker.archive import Archiver
from call_ledger.worker.delivery import EndpointCache, FanOut
from call_ledger.worker.outbound import Finalizer

FAR_FUTURE_MS = 10**13
S = 1_000_000
SIDS = [f"CA{i:03d}" for i in range(23)]


async def settle(store: Store, settings: Settings) -> None:
    """Finalize every ended call and fan its messages out, as the quiet period and the fan-out would."""
    await Finalizer(store, settings, Metrics()).run_once(FAR_FUTURE_MS)
    await FanOut(store.outbox, store.deliveries, EndpointCache(store.endpoints), settings.policy).run_once(
        FAR_FUTURE_MS)


class Killed(BaseException):
    """The archiver stopped dead at a step (as SIGKILL would stop it: nothing after runs, no cleanup
    that reaches Redis or the files: BaseException passes every `except Exception`)."""


class KilledAt(Archiver):
    """An archiver that dies the `nth` time it reaches `at`."""

    def __init__(self, *args: Any, at: str, nth: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.left = at, nth

    async def step(self, name: str, state: Any) -> None:
        if name == self.at:
            self.left -= 1
            if self.left == 0:
                raise Killed(name)
        await super().step(name, state)


def archived_rows(root: Path, kind: str = "calls") -> list[dict[str, Any]]:
    """Every row of every complete file under `root/<kind>`, with its partition and file."""
    rows = []
    for path in sorted((root / kind).glob("*/*/*.parquet")):
        org, day = path.parent.parent.name, path.parent.name
        for row in pq.read_table(path).to_pylist():
            rows.append({**row, "_partition": f"{org}/{day}", "_file": path.name})
    return rows


def archived_rows_in(files: ArchiveFiles, kind: str = "calls") -> list[dict[str, Any]]:
    """`archived_rows` for any archive (a directory or a bucket), through its filesystem."""
    rows = []
    files.fs.invalidate_cache()  # another process wrote them: an object store's listing may be cached
    for path in sorted(files.fs.glob(f"{files.root}/{kind}/*/*/*.parquet")):
        with files.fs.open(path, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


async def fill_calls(store: Store, settings: Settings, sids: list[str] = SIDS) -> None:
    """Finalized calls (their outbox fanned out) in three organizations (one call in three has none) and
    two days, each with a status, a cost, call_meta and an end; applied by the real consumer."""
    from call_ledger.worker.consumer import Consumer
    from tests.support.workers import make_event, usage

    for i, sid in enumerate(sids):
        day = (i % 2) * 86_400 * S
        events = [make_event(sid, "ringing", day + i * S, status="ringing"),
                  usage(sid, "llm", day + (i + 5) * S, "llm", 1_000_000 * i + 7),
                  make_event(sid, "meta", day + (i + 6) * S, call_meta={"n": i, "é": "ü"}),
                  make_event(sid, "completed", day + (i + 60) * S, status="completed", duration=50 + i)]
        if i % 3:
            events.append(make_event(sid, "org", day + (i + 7) * S, organization_id=i % 3))
        for event in events:
            await store.append(event.model_dump_json().encode())
    await Consumer(store, settings, Metrics()).run_burst()
    await settle(store, settings)


async def served_now(store: Store, settings: Settings, files: ArchiveFiles, sid: str) -> bytes | None:
    """What GET serves for the call now, from Redis or from its file (as api/archived.py reads it)."""
    fields = await store.redis.hgetall(store.keys.call(sid))
    if is_tombstone(fields):
        file_no, row = placement(fields[b"a"])
        path = await store.archive.file_path(file_no)
        assert path is not None
        return served_of(CallReader().read_row(files, path, row))
    if b"id" not in fields:
        return None
    return StoredCall(sid, fields).served(settings.policy)


async def check_never_lost(store: Store, settings: Settings, files: ArchiveFiles, served: dict[str, bytes],
                           done: bool, sids: list[str] = SIDS) -> None:
    """No call in two rows; every call whole in Redis, or tombstoned with its row (never neither), and
    served as before; `done` (the pass finished): every call tombstoned, in exactly one row."""
    archived = [row["call_sid"] for row in archived_rows_in(files)]
    assert sorted(archived) == sorted(set(archived)), "a call in two rows"
    for sid in sids:
        fields = await store.redis.hgetall(store.keys.call(sid))
        if is_tombstone(fields):
            assert sid in archived, f"{sid}: tombstoned, and in no row"
        else:
            assert b"id" in fields and not done, f"{sid}: neither in Redis nor archived"
        assert await served_now(store, settings, files, sid) == served[sid]
    if done:
        assert sorted(archived) == sorted(sids)
