"""Prometheus metrics, one registry per app (so tests and co-hosted apps never collide)."""

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[object, ...], Any] = {}
        r = self.registry
        self.received = Counter(
            "ledger_events_received", "Webhooks received, by source and outcome "
            "(stored, ignored, rejected_signature, rejected_replay, deferred_replay, rejected_body, unavailable, "
            "not_configured)",
            ["source", "outcome"], registry=r,
        )
        self.applied = Counter("ledger_events_applied", "Events applied to a call record", ["source"], registry=r)
        self.duplicates = Counter(
            "ledger_events_duplicate", "Events whose id was already applied to the call", ["source"], registry=r
        )
        self.failed = Counter(
            "ledger_events_failed", "Apply attempts that failed (the event stays pending)", ["source"], registry=r
        )
        self.dead_lettered = Counter(
            "ledger_events_dead_lettered", "Events moved to the dead-letter stream", ["source"], registry=r
        )
        self.dead_letters_expired = Counter(
            "ledger_dead_letters_expired", "Dead letters dropped from the dead-letter stream after "
            "LEDGER_DLQ_RETENTION_DAYS", registry=r,
        )
        self.new_call_guesses = Counter(
            "ledger_new_call_guesses", "Calls the worker did not know, committed as new without reading them "
            "first, by outcome (right: the call was new; wrong: it existed, the commit was refused and the call "
            "read)", ["outcome"], registry=r,
        )
        self.request_seconds = Histogram(
            "ledger_http_request_duration_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.connections_open = Gauge(
            "ledger_http_connections_open", "HTTP connections open now (counted against LEDGER_MAX_CONNECTIONS)",
            registry=r,
        )
        self.connections_closed = Counter(
            "ledger_http_connections_closed", "HTTP connections the server closed on its own, by reason "
            "(header_timeout: headers incomplete after LEDGER_HEADER_TIMEOUT_S; over_capacity: "
            "LEDGER_MAX_CONNECTIONS reached, answered 503; peer_over_capacity: LEDGER_MAX_CONNECTIONS_PER_PEER "
            "reached by the connection's address, answered 503)",
            ["reason"], registry=r,
        )
        self.connection_peers = Gauge(
            "ledger_http_connection_peers", "Distinct peers (IPv4 addresses, IPv6 /64s) with a connection open now, "
            "tracked for LEDGER_MAX_CONNECTIONS_PER_PEER (0 when it is off)", registry=r,
        )
        self.lag = Gauge("ledger_consumer_lag", "Stream entries not yet delivered to the worker group", registry=r)
        self.pending = Gauge(
            "ledger_consumer_pending", "Stream entries delivered but not yet acknowledged", registry=r
        )
        self.shard_lag = Gauge("ledger_consumer_shard_lag", "Stream entries not yet delivered, by stream shard",
                               ["shard"], registry=r)
        self.shard_pending = Gauge("ledger_consumer_shard_pending",
                                   "Stream entries delivered but not yet acknowledged, by stream shard",
                                   ["shard"], registry=r)
        self.oldest_pending_age = Gauge(
            "ledger_stream_oldest_pending_age_seconds", "Age of the oldest stream entry delivered to a worker "
            "and not yet acknowledged, by stream shard (0: none pending). It holds stream trimming back: one "
            "that keeps growing is a stuck entry", ["shard"], registry=r)
        self.batch_seconds = Histogram(
            "ledger_apply_batch_duration_seconds", "Time to apply one batch read from the stream", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        # Outbound call events (SPEC §15, call_ledger.worker.delivery).
        self.outbound_attempts = Counter(
            "ledger_outbound_attempts", "Outbound webhook attempts, by outcome (delivered, http_error, timeout, "
            "connection_error, refused_address)", ["outcome"], registry=r,
        )
        self.outbound_pending = Gauge(
            "ledger_outbound_pending_messages", "Outbound messages not yet delivered nor failed, by endpoint",
            ["endpoint"], registry=r,
        )
        self.outbound_oldest_pending_age = Gauge(
            "ledger_outbound_oldest_pending_age_seconds", "Age of the oldest outbound message still pending, by "
            "endpoint (0: none pending); one that keeps growing is an endpoint that does not take its messages",
            ["endpoint"], registry=r,
        )
        self._outbound_endpoints: set[str] = set()
        # The archive (SPEC §16, call_ledger.worker.archive).
        self.archived_calls = Counter("ledger_archived_calls", "Calls moved from Redis to the archive", registry=r)
        self.archive_bytes = Counter("ledger_archive_bytes", "Bytes of Parquet written to the archive", registry=r)
        self.archive_passes = Counter(
            "ledger_archive_passes", "Archive passes, by outcome (done, failed)", ["outcome"], registry=r,
        )
        self.archive_due = Gauge(
            "ledger_archive_due_calls", "Finalized calls past retention still in Redis, at the last pass's end "
            "(one that keeps growing is an archive that does not keep up, or cannot be written)", registry=r,
        )

        # The process's garbage collections: each one stops the process (SPEC §13, docs/performance.md).
        self.gc_pause_seconds = Histogram(
            "ledger_gc_pause_seconds", "Garbage collections (each stops the process for its duration), by "
            "generation (2: a full collection)", ["generation"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.gc_pause_longest = Gauge(
            "ledger_gc_pause_longest_seconds", "The longest garbage collection since the process started", registry=r,
        )

    def labelled(self, metric: MetricWrapperBase, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: prometheus_client validates and locks on every
        `labels()` call (~2% of a webhook in a profile). As bounded as the series themselves."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_shards(self, stats: dict[str, tuple[int, int]]) -> None:
        """Set the lag and pending gauges: each shard's, and their sums."""
        for shard, (lag, pending) in stats.items():
            self.shard_lag.labels(shard).set(lag)
            self.shard_pending.labels(shard).set(pending)
        self.lag.set(sum(lag for lag, _ in stats.values()))
        self.pending.set(sum(pending for _, pending in stats.values()))

    def observe_oldest_pending(self, ages: dict[str, float]) -> None:
        for shard, age in ages.items():
            self.oldest_pending_age.labels(shard).set(age)

    def observe_outbound_pending(self, stats: dict[str, tuple[int, float]]) -> None:
        """Set each endpoint's pending count and oldest age; forget the series of endpoints gone since."""
        for endpoint in self._outbound_endpoints - stats.keys():
            self.outbound_pending.remove(endpoint)
            self.outbound_oldest_pending_age.remove(endpoint)
        for endpoint, (count, age) in stats.items():
            self.outbound_pending.labels(endpoint).set(count)
            self.outbound_oldest_pending_age.labels(endpoint).set(age)
        self._outbound_endpoints = set(stats)


class GcPauses:
    """Times every garbage collection of the process into `metrics` (a `gc.callbacks` entry
    between `start()` and `stop()`). Cheap: two clock reads and one observation per collection,
    and a collection happens once per 50,000 net allocations at most (call_ledger.runtime)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = 0.0
        self._longest = 0.0
        self._by_generation = [metrics.gc_pause_seconds.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        self._by_generation[min(info["generation"], 2)].observe(seconds)
        if seconds > self._longest:
            self._longest = seconds
            self._metrics.gc_pause_longest.set(seconds)

    def start(self) -> None:
        gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
