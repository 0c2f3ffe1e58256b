"""A receiver of outbound call events for tests: an aiohttp server that verifies each message with the
`standardwebhooks` library (never with the code under test) and keeps (webhook-id, body) in arrival order."""

from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook


async def verifying_receiver(aiohttp_server: Any, secret: str, path: str = "/hook") -> tuple[Any, list[Any]]:
    """(the running server, the list the messages arrive in); an unverifiable message fails the request."""
    got: list[tuple[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(secret).verify(body, dict(request.headers))
        got.append((request.headers["webhook-id"], orjson.loads(body)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(path, handle)
    return await aiohttp_server(app), got
