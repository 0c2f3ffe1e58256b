"""`call-ledger <args>` run as a real process, with only the LEDGER_* variables a test gives it."""

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def run_cli(*args: str, timeout: float = 30, cwd: Path = ROOT, **ledger_vars: str) -> subprocess.CompletedProcess[str]:
    """`call-ledger <args>` to its end (output captured as text), with only the given LEDGER_* variables
    set (and any other variable given here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_vars)
    return subprocess.run([sys.executable, "-m", "call_ledger.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
