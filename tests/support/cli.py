"""`call-ledger <args>` run as a real process, with only the LEDGER_* variables a test gives it."""

import os
import subprocess
import sys

from tests.support.paths import ROOT


def run_cli(*args: str, **ledger_vars: str) -> subprocess.CompletedProcess[str]:
    """`call-ledger <args>` with only the given LEDGER_* variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_vars)
    return subprocess.run([sys.executable, "-m", "call_ledger.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
