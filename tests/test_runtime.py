"""Process tuning every service role gets at start (call_ledger/runtime.py)."""

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from call_ledger import cli
from call_ledger.runtime import GC_THRESHOLDS
from call_ledger.web import serving
from tests.support.settings import make_settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.parametrize("role", ["serve", "worker", "api", "intake"])
def test_every_service_role_collects_cycles_rarely_and_freezes_its_start_up(
        role: str, restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: Any, settings: Any) -> None:  # what the running service would see
        seen["threshold"], seen["frozen"] = gc.get_threshold(), gc.get_freeze_count()

    monkeypatch.setattr(serving, "run", fake_run)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    cli.run_service(role, make_settings())  # type: ignore[arg-type]
    assert seen["threshold"] == GC_THRESHOLDS
    assert seen["frozen"] > 10_000  # modules, schemas and the app built at start-up
