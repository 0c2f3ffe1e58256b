"""The one place a Redis client is built from Settings: a server (TCP, TLS or a unix socket),
a Cluster, or the embedded store (fakeredis, when LEDGER_REDIS_URL is not set)."""

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from call_ledger.settings import Settings, redis_options
from call_ledger.store.keys import LAYOUTS
from call_ledger.store.wire import FastConnection, FastSSLConnection

__all__ = ["CLIENT_NAME", "CLIENT_NAME_PREFIX", "is_cluster", "open_redis"]

# Every connection's name (CLIENT SETNAME): what it is and the layouts it reads, so that a store moves
# to a layout only while every connected call-ledger reads it (call_ledger.store.layout).
CLIENT_NAME_PREFIX = "call-ledger/reads-"  # what every version's name starts with, whatever it reads
CLIENT_NAME = CLIENT_NAME_PREFIX + ".".join(LAYOUTS)


def open_redis(settings: Settings) -> Any:
    """The Redis client for these settings: a server, a cluster, or the embedded store."""
    # No per-command socket timeout: redis-py would arm one per reply, a real cost in the
    # apply loop's pipelines. Request paths bound each call instead (REQUEST_TIMEOUT_S), and
    # the worker bounds each batch.
    # A pooled connection that Redis closed (restart, failover) fails its next command once:
    # retry that on a fresh connection rather than answer 503 for nothing.
    common: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": 2.0,
                              "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                              "retry_on_error": [RedisConnectionError], "redis_connect_func": _named}
    if settings.redis_url is None:
        import fakeredis  # the embedded store is only imported when it is used

        return fakeredis.FakeAsyncRedis()
    if settings.redis_cluster:
        # Every listed node is a way in: the client needs one that answers to learn the rest. The
        # credentials and TLS options (ssl_ca_certs, ...) apply to every node it finds.
        options = redis_options(settings.redis_url)
        common.pop("redis_connect_func")  # the cluster client takes none: set on its nodes' connections below
        cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in options.nodes],
                               username=options.username, password=options.password, ssl=options.tls,
                               **options.tls_options, **common)
        # The nodes it finds are made from `connection_kwargs`; the ones given were made already.
        for kwargs in (cluster.connection_kwargs, *(node.connection_kwargs for node in cluster.startup_nodes)):
            kwargs["redis_connect_func"] = _named
        return cluster
    # Commands packed in C (call_ledger/store/wire.py). The cluster client keeps redis-py's packer:
    # it takes no connection class, and there every script carries one call's arguments only.
    # from_url reads the credentials and the TLS query parameters (the same ones: Settings refuses others).
    if settings.redis_url.startswith("unix:"):  # a local socket: redis-py's own connection class for it
        return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, **common)
    connection_class = FastSSLConnection if settings.redis_url.startswith("rediss:") else FastConnection
    return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, connection_class=connection_class,
                                   **common)


async def _named(connection: Any) -> None:
    """A new connection's set-up (redis-py's: credentials, database), then its name. Best effort: an ACL
    user that may not run CLIENT SETNAME keeps the connection unnamed (`call-ledger layout` then counts
    its connections as an earlier version's, and --force is the way to move the store)."""
    await connection.on_connect()
    try:
        await connection.send_command("CLIENT", "SETNAME", CLIENT_NAME)
        await connection.read_response()
    except ResponseError:
        pass


def is_cluster(redis: Any) -> bool:
    """Whether this client talks to a Redis Cluster (one script, one pipeline command: one slot)."""
    return isinstance(redis, RedisCluster)


def text(value: object, errors: str = "strict") -> str:
    """A reply as text, whichever way the client was built (decode_responses or not): bytes decoded, a
    number or a str as its text."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)
