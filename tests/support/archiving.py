"""What archive tests share: bring calls to where a pass takes them (finalized, outbox fanned out), run a
pass that is killed at a named step, and read back every row the archive holds."""

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.archive import Archiver
from call_ledger.worker.delivery import EndpointCache, FanOut
from call_ledger.worker.outbound import Finalizer

FAR_FUTURE_MS = 10**13


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
