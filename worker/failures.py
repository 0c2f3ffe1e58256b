"""How the apply loop classifies a failure: of one call (isolate it), or of Redis (retry the batch).

Pure: it reads exception types and Redis's error codes, and does no I/O. It is the only module
of the worker that names Redis's exceptions (import-linter's "Only the store talks to Redis"
lists it until the store owns one mapping of Redis errors).
"""

from redis.exceptions import (
    AskError,
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

from call_ledger.core.errors import StoreUnavailable

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


def failure_text(what: str, exc: BaseException) -> str:
    """A failure reason for logs and dead letters: what failed and the exception, bounded."""
    return f"{what}: {type(exc).__name__}: {exc}"[:500]
