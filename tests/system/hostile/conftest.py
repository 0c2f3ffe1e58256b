"""The hostile-input tests run the whole service with every source configured."""

import pytest

from call_ledger.settings import Settings
from tests.support.hostile import ALL_SOURCES
from tests.support.settings import make_settings


@pytest.fixture
def settings() -> Settings:
    """Overrides conftest's: `client`, `store` and `consumer` then run with every source configured."""
    return make_settings(**ALL_SOURCES)
