"""Sign and post one platform event to a running call-ledger (stdlib only).

    LEDGER_PLATFORM_WEBHOOK_SECRET=whsec_... python examples/send_platform_event.py \
        '{"type": "call.status", "call_sid": "CA1", "data": {"status": "ongoing"}}'

Signs with Standard Webhooks (HMAC-SHA256 over "{id}.{timestamp}.{body}") exactly as
the platform's services do, posts to $LEDGER_URL (default http://127.0.0.1:8080), and
prints the answer. The webhook id (the event's idempotency key) is random unless
--id is given: post twice with the same --id to see a redelivery applied once.
"""

import argparse
import base64
import hashlib
import hmac
import os
import sys
import time
import urllib.error
import urllib.request
import uuid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("body", help="the event as JSON")
    parser.add_argument("--id", default=None, help="webhook-id (default: random)")
    args = parser.parse_args()
    secret = os.environ.get("LEDGER_PLATFORM_WEBHOOK_SECRET")
    if not secret:
        print("set LEDGER_PLATFORM_WEBHOOK_SECRET (whsec_...) to the service's secret", file=sys.stderr)
        return 2
    key = base64.b64decode(secret.removeprefix("whsec_"))
    webhook_id = args.id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    body = args.body.encode()
    signature = base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body,
                                          hashlib.sha256).digest()).decode()
    url = os.environ.get("LEDGER_URL", "http://127.0.0.1:8080") + "/webhooks/platform"
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "webhook-id": webhook_id,
        "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"})
    try:
        with urllib.request.urlopen(request) as response:
            print(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode())
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
