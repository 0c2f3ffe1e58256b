"""Intake's Redis writes, coalesced per event-loop tick: one pipeline, one round trip.

Every webhook costs one XADD (and, signed Twilio/Plivo, one `SET NX GET` in the signature
ledger). Sent one by one, redis-py's per-command cost and a round trip each dominate intake
(profile: ~40 µs of ~200 per request). Here each caller queues its command and awaits its own
future; the first command of a tick schedules a flush for the next loop iteration, which sends
everything queued by then in one pipeline and hands each caller its own reply or exception.

Durability rides in the same round trip, on the same connection: with `aof` the pipeline ends
with `WAITAOF 1 0 t`, with `replica` with `WAIT 1 t`. Both count what *this connection* wrote,
so one confirms the whole tick's entries; unconfirmed, every XADD of the tick fails (503, the
provider retries; a redelivery is a harmless duplicate). Never a 2xx for an unconfirmed entry.

On a Redis Cluster the tick's commands are grouped by the node that owns each key's slot and
each group is sent, with its own WAIT, on one connection to that node (`ClusterNode.
execute_pipeline`): redis-py's cluster client would send a keyless WAIT on another connection,
where it confirms nothing. A node that fails (connection refused after a failover, MOVED,
CLUSTERDOWN) fails only its group's commands, and the topology is read again before the next
tick is sent, so traffic follows the promoted replica by itself.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from call_ledger.core.errors import StoreUnavailable
from call_ledger.store.errors import REDIS_FAILURES, unavailable
from call_ledger.store.scripts import Lua

log = structlog.get_logger("ledger.append_batcher")

Command = tuple[tuple[Any, ...], dict[str, Any]]  # (args, options) as execute_command takes them
Sender = Callable[[list[Command]], Awaitable[list[Any]]]


# The signature ledger's check and the XADD in one step (one server only).
CLAIM_AND_XADD = Lua("claim_and_xadd.lua")


@dataclass(slots=True)
class _Op:
    key: str
    args: tuple[Any, ...]
    options: dict[str, Any]
    future: "asyncio.Future[Any]"
    acked: bool  # an XADD: needs the durability confirmation of its tick
    result: Any = field(default=None)


class AppendBatcher:
    """`xadd` and `set_nx_get` for request paths, one pipeline per event-loop tick.

    Failures come back as StoreUnavailable (HTTP 503), except a command's own error reply
    (a ResponseError other than a redirection), which comes back as it is: the signature
    ledger reads "syntax error" to fall back to Lua on Redis < 7.0.
    """

    def __init__(self, redis: Any, *, durable_ack: str = "none", durable_ack_timeout_ms: int = 1000,
                 timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.durable_ack = durable_ack
        self.durable_ack_timeout_ms = durable_ack_timeout_ms
        self.timeout_s = timeout_s
        self._cluster = isinstance(redis, RedisCluster)
        self._pending: list[_Op] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stale = False  # cluster: the topology must be read again before the next send
        self._refreshing: asyncio.Task[None] | None = None
        self.batches = 0  # ticks flushed (tests and benchmarks)

    # -- what callers await -------------------------------------------------------------------

    async def xadd(self, stream: str, event_json: bytes) -> str:
        """XADD `{"e": event_json}` to `stream` (no MAXLEN); the entry id, once confirmed."""
        entry_id = await self._submit(stream, ("XADD", stream, "*", "e", event_json), {}, acked=True)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def claim_and_xadd(self, signature_key: str, digest: bytes, ttl_s: int, stream: str,
                             event_json: bytes) -> str | None:
        """Remember a signature with its parameters' digest and XADD the event, in one script on
        one server (call_ledger/store/signatures.py); None, and nothing stored, when the signature is
        known with other parameters."""
        command = CLAIM_AND_XADD.eval_command([signature_key, stream], [digest, ttl_s, event_json])
        entry_id = await self._submit(stream, command, {}, acked=True)
        if not entry_id:
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def set_nx_get(self, key: str, value: bytes, ttl_s: int) -> Any:
        """`SET key value NX GET EX ttl_s`: the previous value, or None if this set it."""
        # A claim is confirmed like an XADD (LEDGER_DURABLE_ACK): a request answered after it (a
        # refusal, an "ignored") must not leave a claim that a failover can lose.
        return await self._submit(key, ("SET", key, value, "NX", "GET", "EX", ttl_s), {"get": True}, acked=True)

    def _submit(self, key: str, args: tuple[Any, ...], options: dict[str, Any], *, acked: bool) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            # A task's first step runs on the loop's next iteration, after every callback that
            # is ready now: what this tick's other requests submit meanwhile goes with it.
            task = loop.create_task(self._send_tick())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Op(key, args, options, future, acked))
        return future

    # -- one tick -----------------------------------------------------------------------------

    async def _send_tick(self) -> None:
        # Every tick sends at once, even while an earlier one is in flight (measured: making
        # later ticks wait for it, to grow the batches, did not raise throughput; and on a
        # cluster one node's slow WAIT would hold up the others' answers).
        batch, self._pending = self._pending, []
        self.batches += 1
        await self._send(batch)

    async def _send(self, batch: list[_Op]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._cluster:
                    await self._send_cluster(batch)
                else:
                    await self._send_group(batch, self._pipeline_sender())
        except BaseException as exc:  # timeout, connection lost, cancelled at shutdown: all of it 503
            if self._cluster:
                self._stale = True
            error = unavailable(exc)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for op in batch:
                if op.future.done():  # its request was cancelled meanwhile
                    continue
                if isinstance(op.result, BaseException):
                    op.future.set_exception(op.result)
                else:
                    op.future.set_result(op.result)
        if self._stale:  # after the answers: the 503s go out first, the next tick waits for it
            self._start_refresh()

    def _durability_command(self) -> tuple[Any, ...] | None:
        if self.durable_ack == "aof":
            return ("WAITAOF", 1, 0, self.durable_ack_timeout_ms)
        if self.durable_ack == "replica":
            return ("WAIT", 1, self.durable_ack_timeout_ms)
        return None

    async def _send_group(self, ops: list[_Op], send: Sender) -> bool:
        """Send `ops` (plus the durability check if one of them is an XADD) through `send`, on
        one connection, and store each op's reply (or error) on it. True if a reply says the
        topology moved or the connection broke (a cluster then reads its topology again)."""
        commands = [(op.args, op.options) for op in ops]
        durability = self._durability_command() if any(op.acked for op in ops) else None
        if durability is not None:
            commands.append((durability, {}))
        replies = await send(commands)
        trouble = False
        unconfirmed: StoreUnavailable | None = None
        if durability is not None:
            confirmed = replies[-1]
            if isinstance(confirmed, BaseException):
                trouble = trouble or _retryable(confirmed)
                unconfirmed = unavailable(confirmed)
            else:
                count = confirmed[0] if self.durable_ack == "aof" else confirmed
                if int(count) < 1:
                    where = "on disk (WAITAOF)" if self.durable_ack == "aof" else "by a replica (WAIT)"
                    unconfirmed = StoreUnavailable(f"event not confirmed {where} in time")
        for op, reply in zip(ops, replies, strict=False):
            if isinstance(reply, BaseException):
                if _retryable(reply):
                    trouble = True
                    op.result = unavailable(reply)
                else:  # the server refused this command itself (WRONGTYPE, OOM, syntax): as it is
                    op.result = reply
            elif op.acked and unconfirmed is not None:
                op.result = unconfirmed
            else:
                op.result = reply
        return trouble

    def _pipeline_sender(self) -> Sender:
        if isinstance(self.redis, Redis):
            return self._send_on_connection

        async def send(commands: list[Command]) -> list[Any]:  # another client (a test's double)
            pipe = self.redis.pipeline(transaction=False)
            for args, options in commands:
                pipe.execute_command(*args, **options)
            return list(await pipe.execute(raise_on_error=False))

        return send

    async def _send_on_connection(self, commands: list[Command]) -> list[Any]:
        """What `pipeline(transaction=False).execute(raise_on_error=False)` does for these commands,
        without its per-pipeline machinery (a profile put it at half the cost of a tick): one pooled
        connection, the commands packed and written at once, each reply read and parsed by the
        client (its response callbacks) or kept as the command's own error; on a connection error
        the connection is dropped and the whole tick sent again, as far as the client's `Retry` goes."""
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            replies: list[Any] = await connection.retry.call_with_retry(
                lambda: self._exchange(connection, commands), lambda error: connection.disconnect())
            return replies
        finally:
            await pool.release(connection)

    async def _exchange(self, connection: Any, commands: list[Command]) -> list[Any]:
        await connection.send_packed_command(connection.pack_commands([args for args, _ in commands]))
        parse = self.redis.parse_response
        replies: list[Any] = []
        for args, options in commands:
            try:
                replies.append(await parse(connection, args[0], **options))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    # -- a cluster: one connection per node ------------------------------------------------------

    async def _send_cluster(self, batch: list[_Op]) -> None:
        cluster: RedisCluster = self.redis
        await cluster.initialize()  # a no-op once the client knows the cluster
        if self._stale:
            await self._start_refresh()  # failing (no node answers): the old map, and this tick fails
        groups: dict[str, tuple[ClusterNode, list[_Op]]] = {}
        for op in batch:
            try:
                node = cluster.get_node_from_key(op.key)
            except (RedisError, RedisClusterException) as exc:  # slot not covered: no master for it now
                self._stale = True
                op.result = unavailable(exc)
                continue
            assert node is not None  # a primary is always returned for a covered slot
            groups.setdefault(node.name, (node, []))[1].append(op)
        results = await asyncio.gather(*(self._send_group(ops, self._node_sender(node))
                                         for node, ops in groups.values()), return_exceptions=True)
        for (node, ops), result in zip(groups.values(), results, strict=True):
            if isinstance(result, BaseException):
                self._stale = True
                log.warning("cluster_node_unavailable", node=node.name, error=type(result).__name__,
                            commands=len(ops))
                for op in ops:
                    op.result = unavailable(result)
            elif result:
                self._stale = True

    def _node_sender(self, node: ClusterNode) -> Sender:
        async def send(commands: list[Command]) -> list[Any]:
            pipeline = [PipelineCommand(i, *args, **options) for i, (args, options) in enumerate(commands)]
            try:
                await node.execute_pipeline(pipeline)
            except (ConnectionError, OSError, RedisError):
                # As redis-py's own cluster client does: drop this node's pooled connections,
                # which a failover left pointing at a dead or demoted server.
                node.update_active_connections_for_reconnect()
                await node.disconnect_free_connections()
                raise
            return [command.result for command in pipeline]

        return send

    def _start_refresh(self) -> "asyncio.Task[None]":
        """Read the cluster's topology again (one refresh at a time; awaitable)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        try:
            await self.redis.nodes_manager.initialize()
            self._stale = False
        except REDIS_FAILURES as exc:
            log.info("cluster_refresh_failed", error=type(exc).__name__)  # the next tick tries again

    async def close(self) -> None:
        """Let the ticks in flight finish (their callers are waiting for them)."""
        tasks = [*self._tasks, *([self._refreshing] if self._refreshing is not None else [])]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _retryable(exc: BaseException) -> bool:
    """Anything but the server's own refusal of a command: a broken connection, a timeout, a
    redirection (MOVED/ASK), CLUSTERDOWN, TRYAGAIN, a write to a demoted master."""
    return not isinstance(exc, ResponseError) or isinstance(
        exc, MovedError | AskError | ClusterDownError | TryAgainError | ReadOnlyError)
