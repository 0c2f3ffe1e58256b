"""What the rules need of the configuration: the ledger currency, its FX rates, the telephony
prices and the per-call bounds. Nothing else.

The core takes this small, frozen object rather than the 44-field `Settings` so that it stays
pure (no environment, no pydantic-settings): `Settings.policy` builds it once per process, and a
test or a benchmark can build one directly.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from call_ledger.core.pricing import EMPTY_TABLE, PriceTable


@dataclass(frozen=True, slots=True)
class Policy:
    currency: str = "USD"
    # currency -> units of the ledger currency per unit of it (LEDGER_FX_RATES)
    fx_rates: Mapping[str, Decimal] = field(default_factory=dict)
    # (provider, direction) -> price per started minute, in the ledger currency (LEDGER_TELEPHONY_RATES)
    telephony_rates: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    # the usage price table (LEDGER_PRICING_FILE); empty without one
    pricing: PriceTable = EMPTY_TABLE
    # SPEC §8 bounds on a call's merged call_meta
    max_call_meta_keys: int = 256
    max_call_meta_bytes: int = 16 * 1024
