"""Platform webhooks signed by the reference Standard Webhooks library (never by the code under test)."""

import json
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.support.settings import PLATFORM_SECRET


def sign_platform(body: bytes, webhook_id: str, when: datetime | None = None,
                  secret: str = PLATFORM_SECRET) -> dict[str, str]:
    """Standard Webhooks headers, signed by the reference library (not our code)."""
    when = when or datetime.now(UTC)
    # (A body that is not UTF-8 cannot be signed by the library; its tests only parse.)
    signature = Webhook(secret).sign(webhook_id, when, body.decode("utf-8", "replace"))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def post_platform(client: Any, payload: dict[str, Any], webhook_id: str, **kwargs: Any) -> Any:
    body = json.dumps(payload).encode()
    return await client.post("/webhooks/platform", data=body, headers=sign_platform(body, webhook_id, **kwargs))
