"""A delivery process killed (SIGKILL) in the middle of a request: the message is still delivered, by
another process once the dead one's lease runs out, with the same webhook-id; and never by two at once."""

import asyncio
import sys
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook

from call_ledger.core.outbound import OutboxMessage
from call_ledger.core.standard_webhooks import new_secret
from call_ledger.store import Store, open_redis
from call_ledger.worker.delivery import now_ms
from tests.support import service
from tests.support.polling import until
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings


async def test_a_delivery_killed_midway_is_delivered_by_another_process(redis_server: RedisServer,
                                                                        aiohttp_server: Any) -> None:
    secret = new_secret()
    seen: list[tuple[str, float]] = []
    in_flight = 0
    overlap = False

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight, overlap
        body = await request.read()
        Webhook(secret).verify(body, dict(request.headers))
        overlap = overlap or in_flight > 0
        in_flight += 1
        try:
            seen.append((request.headers["webhook-id"], asyncio.get_running_loop().time()))
            if len(seen) == 1:
                await asyncio.sleep(30)  # the first process is killed while it waits for this answer
            return web.Response(status=200)
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    settings = make_settings(redis_url=redis_server.url)
    store = Store(open_redis(settings))
    message = OutboxMessage("msg_" + "ab" * 16, "call.ended", 0, "CAkill", now_ms(), None, b'{"cost":"1"}')
    await store.deliveries.enqueue("ep_kill", message, now_ms())
    env = service.environment(service.ledger_env(
        LEDGER_REDIS_URL=redis_server.url, LEDGER_OUTBOUND_TIMEOUT_S="1",
        LEDGER_TEST_ENDPOINTS=orjson.dumps([{"id": "ep_kill", "url": str(server.make_url("/hook")),
                                              "secret": secret}]).decode()))
    command = [sys.executable, "-m", "tests.support.delivery_process"]
    first = service.start("deliver-1", env, command=command)
    try:
        await until(lambda: len(seen) == 1, 20, "the first process sending", detail=first.tail)
        first.kill()
        second = service.start("deliver-2", env, command=command)
        try:
            # The lease (1 s timeout + 5 s) runs out, then the second process sends it.
            await until(lambda: len(seen) == 2, 20, "the second process sending", detail=second.tail)
            await until(lambda: in_flight == 0, 5, "the answer")
            assert seen[0][0] == seen[1][0] == message.id
            assert seen[1][1] - seen[0][1] >= 5
            await until(lambda: _state(store), 10, "delivered recorded")
        finally:
            second.terminate()
    finally:
        first.kill()
        await store.close()
    assert not overlap


async def _state(store: Store) -> bool:
    page = await store.deliveries.attempts("ep_kill", None, 10)
    return [a["status_code"] for a in page.attempts] == [200]
