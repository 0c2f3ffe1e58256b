"""The one mapping of Redis failures to "the store is unavailable" (HTTP 503, a retry, exit 2).

Everything above the store imports these names rather than redis-py's exceptions: which
failures mean "Redis is away, busy or refused us" is decided here once, for the request paths
(`unavailable_on_error`, `bounded_request`), intake's batched writes (`unavailable`), the
apply loop (`of_one_call`, `transient`), start-up (`describe_redis_error`) and the CLI
(`REDIS_FAILURES`).
"""

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NamedTuple, ParamSpec, TypeVar

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterError,
    DataError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from call_ledger.core.errors import StoreUnavailable

__all__ = ["REDIS_FAILURES", "REQUEST_TIMEOUT_S", "AclRefused", "CommandRefused", "RedisProblem", "bounded_request",
           "describe_redis_error", "of_one_call", "redis_failure", "script_refused_for_good", "transient",
           "unavailable", "unavailable_on_error"]

# How long a request path waits for Redis before answering 503.
REQUEST_TIMEOUT_S = 5.0

# What a Redis that is away or refuses us raises: redis-py's errors, the Cluster client's own
# (RedisClusterException is not a RedisError), and the socket's.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

# The server's error reply to one command (WRONGTYPE, OOM, a script error, a syntax error).
CommandRefused = ResponseError
# An ACL user without a command the ledger runs (NOPERM).
AclRefused = NoPermissionError

P = ParamSpec("P")
T = TypeVar("T")


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable (503) a Redis failure or a timeout is answered with, in words fixed here."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, TimeoutError):
        return StoreUnavailable("redis did not answer in time")
    return redis_failure(exc)


def redis_failure(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable of a failure named by its class only (its text could quote more than we know)."""
    return StoreUnavailable(f"redis: {type(exc).__name__}")


@asynccontextmanager
async def bounded_request(timeout_s: float = REQUEST_TIMEOUT_S) -> AsyncIterator[None]:
    """Bound a request path's Redis work in time, and turn any failure into StoreUnavailable
    (HTTP 503: the client or the provider retries), never a 500."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise unavailable(exc) from exc
    except REDIS_FAILURES as exc:
        raise unavailable(exc) from exc


def unavailable_on_error(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`bounded_request` around each call of a store method."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        async with bounded_request():
            return await fn(*args, **kwargs)

    return wrapper


class RedisProblem(NamedTuple):
    """Why a Redis did not answer, in words fixed here (never an exception's text, which could
    quote more than we know), and whether trying again can help."""

    reason: str
    refused: bool  # credentials or ACL refused: the same answer every time


def describe_redis_error(error: BaseException) -> RedisProblem:
    """What went wrong, from the exception and those it was raised from (redis-py wraps an
    OSError in its ConnectionError, the Cluster client wraps that in RedisClusterException)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for exc in chain:
        if isinstance(exc, AuthenticationError | AuthorizationError):
            return RedisProblem("it refused the credentials: wrong password or ACL user, or none given", True)
        if isinstance(exc, NoPermissionError):
            return RedisProblem("its ACL user may not run PING (Redis answered NOPERM)", True)
        if isinstance(exc, ResponseError):
            return _error_reply(exc)
    for exc in chain:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return RedisProblem(f"TLS: the server's certificate was not accepted ({exc.verify_message}); "
                                "the CA is given as ?ssl_ca_certs=/path on the rediss:// URL", False)
        if isinstance(exc, ssl.SSLError):
            return RedisProblem(f"TLS handshake failed ({exc.reason or type(exc).__name__}): "
                                "a rediss:// URL to a port without TLS?", False)
        if isinstance(exc, ConnectionRefusedError):
            return RedisProblem("connection refused", False)
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return RedisProblem("timed out", False)
        # A TLS port resets a connection that starts in plain text (redis-py may also say it its way).
        if isinstance(exc, ConnectionResetError | BrokenPipeError) or (
                isinstance(exc, RedisConnectionError) and "closed by server" in " ".join(map(str, exc.args))):
            return RedisProblem("the server closed the connection: a redis:// URL to a TLS port (that needs "
                                "rediss://)?", False)
    return RedisProblem(type(error).__name__, False)


def _error_reply(exc: ResponseError) -> RedisProblem:
    """A Redis that answered with an error: named by the reply's code, not its text (which can quote
    keys and arguments); waiting helps only for the 'not now' codes."""
    text = " ".join(map(str, exc.args))
    if "DB index is out of range" in text:
        return RedisProblem("it has no database of the number in LEDGER_REDIS_URL (DB index is out of range)", True)
    code = text.split(" ", 1)[0]
    if code == "WRONGTYPE":
        return RedisProblem("a key under LEDGER_KEY_PREFIX holds another type than call-ledger keeps there "
                            "(WRONGTYPE): another program's data?", True)
    if not (code.isupper() and code.isalpha()):
        code = "ERR"
    return RedisProblem(f"it answered an error ({code[:20]})", not transient(exc))


# -- the apply loop: one call's failure, or the store's ------------------------------------------

# Error replies that say "not now" rather than "never": Redis out of memory, a replica, loading,
# busy with a script, refusing writes after a failed save, a cluster slot moving.
_TRANSIENT = ("OOM", "READONLY", "LOADING", "BUSY", "MISCONF", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
              "NOREPLICAS")


def transient(exc: ResponseError) -> bool:
    if isinstance(exc, OutOfMemoryError | ReadOnlyError | BusyLoadingError):  # redis-py drops their code
        return True
    return str(exc).split(" ", 1)[0] in _TRANSIENT or "OOM command not allowed" in str(exc)


def of_one_call(exc: BaseException) -> bool:
    """Whether a failure may be of the call being handled rather than of Redis as a whole: a bug,
    data no encoder takes, a script error. Redis away, busy or full (and cancellation) is not:
    the whole batch then stays pending and is retried (SPEC §14)."""
    if not isinstance(exc, Exception) or isinstance(exc, OSError | TimeoutError | StoreUnavailable):
        return False
    # A cluster without a slot's master, a redirect not followed, an ACL refusing a command: the
    # store's state, whatever the call.
    if isinstance(exc, RedisClusterException | ClusterError | AskError | NoPermissionError):
        return False
    if isinstance(exc, ResponseError):
        return not transient(exc)
    return not isinstance(exc, RedisError) or isinstance(exc, DataError)


def script_refused_for_good(exc: BaseException) -> bool:
    """Whether a script's failure is an error reply no retry can fix. Out of memory, read-only,
    loading... are not (the batch stays pending and is retried); nor is anything but an error reply."""
    return isinstance(exc, ResponseError) and not transient(exc)
