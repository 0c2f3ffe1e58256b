"""What every call-ledger HTTP app shares: the store's lifecycle, the error
middleware, request metrics, and /healthz, /readyz, /metrics (/openapi.json is api.openapi's)."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from call_ledger.core.errors import LedgerError, StoreRefused, StoreUnreachable
from call_ledger.settings import Settings, redis_urls
from call_ledger.store import Store
from call_ledger.store.errors import AclRefused, describe_redis_error
from call_ledger.web.metrics import GcPauses, Metrics

log = structlog.get_logger("ledger.http")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)

# SPEC §3: 413 above 64 KiB. aiohttp enforces it while reading; intake checks
# Content-Length first, before anything else is read or checked.
MAX_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": code, "detail": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where failures become HTTP answers, always with a JSON body."""
    try:
        return await handler(request)
    except LedgerError as exc:
        response = error_response(exc.status, exc.code, str(exc))
        response.headers.update(exc.headers())
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception as exc:
        log.exception("unhandled_error", path=request.path, error=type(exc).__name__)
        return error_response(500, "internal_error", "internal error")


# The method label comes from the client: anything else would be a new series per invented method.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Time every request and count it under the status it was answered with.

    It sits outside `error_middleware`, so it sees the JSON answer a `LedgerError` became (a 401 is
    `401`, not the `500` it looked like from inside). What still escapes is labelled with its own status
    (`web.HTTPException`, `LedgerError`), else 500; a cancelled request got no answer and is not counted.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except (web.HTTPException, LedgerError) as exc:
            _observe(metrics, request, exc.status, started)
            raise
        except Exception:
            _observe(metrics, request, 500, started)
            raise
        _observe(metrics, request, response.status, started)
        return response

    return middleware


def _observe(metrics: Metrics, request: web.Request, status: int, started: float) -> None:
    # The route's pattern, not the path: one series per route, not per SID.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    metrics.labelled(metrics.request_seconds, route, method, str(status)).observe(time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if await request.app[STORE].ping():
        return json_response({"status": "ready"})
    return error_response(503, "not_ready", "redis is not reachable")


async def metrics_view(request: web.Request) -> web.Response:
    return await render_metrics(request.app)


async def render_metrics(app: web.Application) -> web.Response:
    """The app's metrics in Prometheus text format, on its own port or on LEDGER_METRICS_PORT."""
    metrics = app[METRICS]
    try:  # lag and pending straight from Redis, so the API process reports them too
        await app[STORE].refresh_shards()
        metrics.observe_shards(await app[STORE].shard_stats())
        metrics.observe_oldest_pending(await app[STORE].oldest_pending_ages())
    except Exception as exc:
        log.warning("metrics_stats_unavailable", error=type(exc).__name__)
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(app: web.Application) -> web.Application:
    """What LEDGER_METRICS_PORT serves: `app`'s /metrics, and nothing else."""

    async def view(request: web.Request) -> web.Response:
        return await render_metrics(app)

    served = web.Application()
    served.router.add_get("/metrics", view)
    return served


def redis_nodes(settings: Settings) -> str:
    """The `host:port` of each node of LEDGER_REDIS_URL, for messages: never the userinfo (a
    password) nor the query."""
    return ", ".join(urlsplit(url).netloc.rpartition("@")[2] for url in redis_urls(settings.redis_url or ""))


async def wait_for_redis(store: Store, settings: Settings) -> None:
    """Start-up waits up to LEDGER_REDIS_STARTUP_TIMEOUT_S for Redis (a Cluster: any listed node),
    then stops with StoreUnreachable, which the CLI prints as one line with the last reason. A Redis
    that refuses the credentials stops it at once (StoreRefused): waiting would not change its answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.redis_startup_timeout_s
    while (error := await store.ping_error()) is not None:
        problem = describe_redis_error(error)
        if problem.refused:
            raise StoreRefused(f"the Redis of LEDGER_REDIS_URL ({redis_nodes(settings)}) answers, but {problem.reason}")
        if loop.time() >= deadline:
            raise StoreUnreachable(f"no Redis of LEDGER_REDIS_URL answers ({redis_nodes(settings)}) after "
                                   f"{settings.redis_startup_timeout_s:g} s: {problem.reason}")
        await asyncio.sleep(0.5)


async def start_up_checks(store: Store, settings: Settings) -> None:
    """What start-up checks once Redis answers (an unreachable Redis: lookups answer 503 until it is
    back, checked then)."""
    if await store.ping():
        await store.check_layout()  # data of an older layout stops start-up
        await store.register_shards()  # every worker drains the shards this K writes
    if settings.durable_ack == "replica" and await store.ping() and not await store.replicas_in_sync():
        log.warning("no_replica", detail="LEDGER_DURABLE_ACK=replica and the Redis primary has no replica "
                    "connected: webhooks answer 503 until one is in sync")
    if settings.durable_ack == "aof":
        if await store.ping():
            await store.check_durability()  # a Redis that cannot confirm AOF writes stops start-up
        else:
            log.warning("durability_unchecked", detail="redis unreachable at start-up; WAITAOF not checked")


def base_app(settings: Settings, store: Store | None = None) -> web.Application:
    """An app with the shared middlewares, probes and the store's lifecycle.

    `store` may be given (tests pass one on fakeredis); otherwise one is opened
    from the settings when the app starts and closed when it stops.
    """
    metrics = Metrics()
    app = web.Application(
        # Metrics outermost: it must see the status error_middleware answered with.
        middlewares=[metrics_middleware(metrics), error_middleware], client_max_size=MAX_BODY
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        own = store is None
        app[STORE] = store if store is not None else Store.from_settings(settings)
        if settings.redis_url is None and own:
            log.warning("embedded_store", detail="LEDGER_REDIS_URL is not set: using the in-memory store; "
                        "nothing survives a restart")
        if own and settings.redis_url is not None:
            await wait_for_redis(app[STORE], settings)  # none of the nodes answers: one line, exit 2
        try:
            await start_up_checks(app[STORE], settings)
        except AclRefused as exc:  # an ACL user without a command the ledger needs: one line, exit 2
            # Redis's message names the command, never a password.
            raise StoreRefused(f"the ACL user of LEDGER_REDIS_URL lacks a command the ledger runs: {exc}") from None
        yield
        if own:
            await app[STORE].close()

    async def gc_ctx(app: web.Application) -> AsyncIterator[None]:
        pauses = GcPauses(metrics)
        pauses.start()
        yield
        pauses.stop()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(gc_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.metrics_port is None:  # else only on that port (call_ledger.web.serving)
        app.router.add_get("/metrics", metrics_view)
    return app
