"""The repository's root: the services run from it (`python -m call_ledger.cli`) and read files under it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
