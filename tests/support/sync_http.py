"""Blocking HTTP to a service process on a port: a signed platform webhook, a record by SID."""

import json
import urllib.error
import urllib.request
from typing import Any

from tests.support.settings import API_TOKEN
from tests.support.signing import sign_platform


def post(port: int, payload: dict[str, Any], webhook_id: str) -> int:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/platform", data=body,
                                     headers=sign_platform(body, webhook_id), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def get_record(port: int, sid: str) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/calls/sid/{sid}",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
