"""A usage price file (LEDGER_PRICES_FILE) and call.usage payloads that need it priced."""

from pathlib import Path
from typing import Any

import yaml

SID = "CA0123456789abcdef0123456789abc0de"


def price(unit_price: str, usage_type: str = "input_tokens", model: str = "gpt-4o-mini",
          **fields: Any) -> dict[str, Any]:
    return {"component": "llm", "provider": "openai", "model": model, "usage_type": usage_type,
            "unit_price": unit_price, "unit_quantity": 1000, **fields}


def write_prices(path: Path, *entries: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({"prices": list(entries)}))
    return str(path)


def usage_payload(at: str = "2026-11-24T10:02:00Z", **data: Any) -> dict[str, Any]:
    body = {"component": "llm", "provider": "openai", "model": "gpt-4o-mini"}
    body.update(data)
    return {"type": "call.usage", "call_sid": SID, "occurred_at": at, "data": body}
