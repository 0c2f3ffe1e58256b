"""A platform webhook as PlatformSource receives it (no HTTP), signed by the reference library."""

import json
import time
from datetime import datetime
from typing import Any

from multidict import CIMultiDict

from call_ledger.worker.sources.base import WebhookRequest
from call_ledger.worker.sources.platform import PlatformSource
from tests.support.settings import PLATFORM_SECRET, make_settings
from tests.support.signing import sign_platform

SOURCE = PlatformSource.from_settings(make_settings())
assert SOURCE is not None


def request(payload: Any, webhook_id: str = "msg_1", when: datetime | None = None,
            secret: str = PLATFORM_SECRET, raw: bytes | None = None,
            header_changes: dict[str, str | None] | None = None) -> WebhookRequest:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = CIMultiDict(sign_platform(body, webhook_id, when, secret=secret))
    for name, value in (header_changes or {}).items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return WebhookRequest("POST", "http://ledger.test/webhooks/platform", headers, body, time.time())
