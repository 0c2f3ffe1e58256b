"""`call-ledger archive` as a real process that SIGKILLs itself when its pass reaches a step.

    ARCHIVE_KILL_AT=<step>[:<nth>] ARCHIVE_BATCH=<calls> python tests/support/archive_process.py

`step` is one of worker/archive.py's step names (held, placed, file_written, files_written, tombstoned,
unindexed); the process dies at the `nth` time it gets there, before the step's lock renewal, with no
cleanup of any kind: exactly as a kill -9 from outside at that point. Without ARCHIVE_KILL_AT it is the
command itself.
"""

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from call_ledger.cli import main
from call_ledger.worker import archive

kill_at = os.environ.get("ARCHIVE_KILL_AT")
if kill_at:
    step_name, _, nth = kill_at.partition(":")
    left = [int(nth or 1)]
    original = archive.Archiver.step

    async def step(self: archive.Archiver, name: str, state: Any) -> None:
        if name == step_name:
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        await original(self, name, state)

    archive.Archiver.step = step  # type: ignore[method-assign]
if os.environ.get("ARCHIVE_BATCH"):
    archive.BATCH = int(os.environ["ARCHIVE_BATCH"])

raise SystemExit(main(["archive"]))
