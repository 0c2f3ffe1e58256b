"""The settings every test starts from: the API token, the platform's signing secret, and the
overrides the tests share (a fixed consumer name, a long claim idle time, three deliveries)."""

import base64
from typing import Any

from call_ledger.settings import Settings

API_TOKEN = "test-api-token"
PLATFORM_SECRET = "whsec_" + base64.b64encode(b"platform-test-signing-key-32byte").decode()
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": API_TOKEN,
        "platform_webhook_secret": PLATFORM_SECRET,
        "consumer_name": "test-consumer",
        "claim_idle_ms": 60_000,
        "max_deliveries": 3,
    }
    values.update(overrides)
    return Settings(**values)
