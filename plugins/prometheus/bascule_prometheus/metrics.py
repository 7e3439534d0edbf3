"""The gateway's metrics: one set per process, kept across config reloads.

Request metrics are recorded as requests are logged (summed over workers in
multiprocess mode). Background task health and contained connection errors
are read from the gateway at scrape time: they describe the process that
answers the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from bascule_sdk import TaskState
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from .multiprocess import multiprocess_dir, sweep_dead_workers

__all__ = ["Metrics", "metrics"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHE_RESULTS = frozenset({"hit", "miss", "stale", "revalidated", "bypass", "expired"})
RATE_LIMIT_OUTCOMES = frozenset({"allowed", "rejected", "error"})


class Metrics:
    """Every metric the plugin exports. Labels are route names and small fixed sets only."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        # In multiprocess mode values live in files and a fresh registry collects them per scrape.
        self.registry = None if self.multiprocess_dir else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bascule_requests",
            "Requests answered, by route and status class (2xx...).",
            ["route", "status_class"],
            registry=r,
        )
        self.duration = Histogram(
            "bascule_request_duration_seconds",
            "Time from arrival until the response was sent.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "bascule_upstream_duration_seconds",
            "Time waiting for upstream response heads (summed over a request's calls).",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "bascule_upstream_errors",
            "Requests failed by their upstream: 502 unreachable or invalid, 503 busy, 504 timed out.",
            ["route", "status"],
            registry=r,
        )
        self.rate_limit = Counter(
            "bascule_rate_limit", "Rate-limit decisions: allowed, rejected, error.", ["route", "outcome"], registry=r
        )
        self.cache = Counter(
            "bascule_cache",
            "Cache lookups by result: hit, miss, stale, revalidated, bypass, expired.",
            ["route", "result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bascule_requests_in_flight", "Requests being processed.", multiprocess_mode="livesum", registry=r
        )
        self.websockets_open = Gauge(
            "bascule_websockets_open",
            "WebSockets open (or in their handshake); each is also in flight.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.websocket_messages = Counter(
            "bascule_websocket_messages",
            "WebSocket messages relayed, by route and direction (in: from clients), counted when a socket closes.",
            ["route", "direction"],
            registry=r,
        )

    def exposition(
        self, accept: str | None, tasks: Sequence[TaskState] = (), connection_errors: int = 0
    ) -> tuple[bytes, str]:
        """Every metric (requests summed over workers, then this process's ``tasks``
        and ``connection_errors``) and its content type, in the format ``accept`` asks for.

        Prometheus text format 0.0.4 unless the scraper asks for a later text
        or OpenMetrics format.
        """
        encode, content_type = choose_encoder(accept or "")
        registry = CollectorRegistry()
        if self.registry is not None:
            registry.register(self.registry)
        else:
            assert self.multiprocess_dir is not None
            sweep_dead_workers(self.multiprocess_dir)
            MultiProcessCollector(registry, self.multiprocess_dir)
        registry.register(GatewayHealth(tasks, connection_errors))
        return encode(registry), content_type


class GatewayHealth:
    """The gateway's supervised background tasks, by name and plugin instance
    (``""``: the gateway's own), and the connections it closed on an error.

    Tasks sharing a name and plugin (e.g. one per request) make one series:
    failures summed, failing if any is. The counter covers the tasks running
    now: it restarts from 0 (a counter reset to Prometheus) when a task ends,
    e.g. when a reload replaces a plugin's task.
    """

    def __init__(self, tasks: Sequence[TaskState], connection_errors: int) -> None:
        self.tasks = tasks
        self.connection_errors = connection_errors

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "bascule_background_task_failures",
            "Exceptions raised by supervised background tasks (each was restarted).",
            labels=["task", "plugin"],
        )
        failing = GaugeMetricFamily(
            "bascule_background_task_failing",
            "1 while a background task fails: it failed and has not run long enough since to count as recovered.",
            labels=["task", "plugin"],
        )
        by_series: dict[tuple[str, str], tuple[int, bool]] = {}
        for t in self.tasks:
            key = (t.name, t.plugin or "")
            total, any_failing = by_series.get(key, (0, False))
            by_series[key] = (total + t.failures, any_failing or t.failing)
        for key, (total, any_failing) in sorted(by_series.items()):
            failures.add_metric(key, total)
            failing.add_metric(key, int(any_failing))
        yield failures
        yield failing
        yield CounterMetricFamily(
            "bascule_connection_errors",
            "Client connections closed on an error that escaped them (logged as "
            "'connection error from PEER'); each ended that connection only.",
            value=self.connection_errors,
        )


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
