"""A receiver of call-ledger's outbound call events: verifies each message's Standard Webhooks signature,
prints what it says, answers 204 (a non-2xx answer makes call-ledger try again later).

    pip install aiohttp standardwebhooks
    CALL_LEDGER_SECRET=whsec_... python examples/receive_call_events.py   # listens on 127.0.0.1:9000
"""

import os

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["CALL_LEDGER_SECRET"])  # the endpoint's secret, as POST /webhook-endpoints gave it


async def receive(request: web.Request) -> web.Response:
    try:
        message = webhook.verify(await request.read(), dict(request.headers))
    except WebhookVerificationError:
        return web.Response(status=401)
    call = message["data"]["call"]
    print(message["type"], call["call_sid"], call["status"], call["total_cost"], message["data"]["revision"],
          request.headers["webhook-id"], flush=True)  # the webhook-id is the same on every retry: dedupe on it
    return web.Response(status=204)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/call-events", receive)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")), print=None)
