"""call_ledger.store.errors: the one mapping of Redis failures to "unavailable", used by every layer.

The API's copies of it caught RedisError and OSError only: a Cluster client's own failure
(RedisClusterException, which is not a RedisError: no master for a slot, no node answers) came out
of a read route as a 500. Through the store's mapping it is a 503, like every other Redis failure.
"""

import asyncio
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from call_ledger.app import create_app
from call_ledger.core.errors import StoreUnavailable
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.store.errors import bounded_request, unavailable
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.settings import make_settings
from tests.support.workers import FailingRead, platform_event

ADMIN = "admin-token"


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=ADMIN)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.mark.parametrize("error", [RedisClusterException("no master for slot"), RedisConnectionError("lost"),
                                   OSError("reset")])
async def test_a_redis_failure_on_a_request_path_is_unavailable(error: BaseException) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        async with bounded_request():
            raise error
    assert str(caught.value) == f"redis: {type(error).__name__}"
    assert caught.value.__cause__ is error


async def test_a_request_path_that_does_not_answer_in_time_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="redis did not answer in time"):
        async with bounded_request(0.01):
            await asyncio.sleep(1)
    assert str(unavailable(TimeoutError())) == "redis did not answer in time"


async def test_a_cluster_failure_in_a_list_route_is_a_503(aiohttp_client: Any, store: Store,
                                                          settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_master(*_: Any) -> Any:
        raise RedisClusterException("no master for slot")

    monkeypatch.setattr(store.indexes, "count", no_master)
    client = await aiohttp_client(create_app(settings, "api", store))
    response = await client.get("/api/v1/calls/count", headers=auth())
    assert response.status == 503, await response.text()


async def test_a_cluster_failure_on_an_exports_first_read_is_a_503(aiohttp_client: Any, store: Store,
                                                                   settings: Settings) -> None:
    event = platform_event("CA-cluster", "s1", int(time.time() * 1e6), status="completed", duration=5)
    await store.append(event.model_dump_json().encode(), event.call_sid)
    await Consumer(store, settings, Metrics()).run_burst()
    store.calls_fields = FailingRead(store, RedisClusterException("no master for slot"), nth=1)  # type: ignore[method-assign]
    client = await aiohttp_client(create_app(settings, "api", store))
    response = await client.get("/api/v1/calls/export", headers=auth(), params={"format": "json"})
    assert response.status == 503, await response.text()


@pytest.mark.parametrize(("reply", "words", "refused"), [
    ("WRONGTYPE Operation against a key holding the wrong kind of value", "WRONGTYPE", True),
    ("ERR DB index is out of range", "no database of the number", True),
    ("ERR something the server says about cl:secret-looking-key", "(ERR)", True),
    ("BUSY Redis is busy running a script", "(BUSY)", False),
    ("MASTERDOWN Link with MASTER is down", "(MASTERDOWN)", False),
])
def test_an_error_reply_is_named_by_its_code_and_stops_waiting_unless_it_passes(
        reply: str, words: str, refused: bool) -> None:
    """A Redis that answers with an error is described in fixed words (never the reply's text, which
    can quote keys), and start-up stops at once unless the error is one of 'not now'."""
    from redis.exceptions import ResponseError

    from call_ledger.store.errors import describe_redis_error

    problem = describe_redis_error(ResponseError(reply))
    assert words in problem.reason and problem.refused is refused
    assert "secret" not in problem.reason and "Operation against" not in problem.reason
