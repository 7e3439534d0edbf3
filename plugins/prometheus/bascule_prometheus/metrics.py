"""The gateway's metrics: one set per process, kept across config reloads.

Three sources, every one summed over the workers of ``--workers N``
(prometheus-client's multiprocess mode, see ``multiprocess``):

- per request, in ``on_log``: requests, latencies, bytes, upstream attempts,
  cache and rate-limit outcomes, plugins' own counters (``ctx.count``);
- the gateway's upstream state and reloads (``Gateway.upstreams()``,
  ``Gateway.reloads()``), mirrored into the metrics by ``GatewayState.sync``:
  counters advance by what changed since the last sync, gauges count the
  workers that see a state (``livesum``);
- at scrape time, by the process that answers it: build info, the standard
  process metrics of every live worker (label ``pid`` under several workers),
  and (of that process only, like ``/readyz``) background task health and
  contained connection errors.

Every label is a config name (route, service, target), a small fixed set, or
capped with an ``"other"`` overflow value; never a raw path.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from bascule_sdk import TaskState
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from .multiprocess import live_workers, multiprocess_dir, sweep_dead_workers

__all__ = ["OTHER", "Bounded", "GatewayState", "Metrics", "metrics"]

disable_created_metrics()  # no *_created series: counters' start times are noise to Prometheus

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHE_RESULTS = frozenset({"hit", "miss", "stale", "revalidated", "bypass", "expired"})
RATE_LIMIT_OUTCOMES = frozenset({"allowed", "rejected", "error"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
TARGET_STATES = ("healthy", "ejected", "half-open", "unhealthy")
OTHER = "other"


class Bounded:
    """At most ``limit`` distinct values; later new ones become ``"other"``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class Metrics:
    """Every metric the plugin records (the scrape-time ones are collectors below)."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        # In multiprocess mode values live in files and a fresh registry collects them per scrape.
        self.registry = None if self.multiprocess_dir else CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.requests = Counter(
            "bascule_requests",
            "Requests answered, by route, method, status code and service.",
            ["route", "method", "code", "service"],
            registry=r,
        )
        self.consumer_requests = Counter(
            "bascule_consumer_requests",
            "Requests answered, by route and consumer (consumer_label = true; capped by max_consumers).",
            ["route", "consumer"],
            registry=r,
        )
        self.duration = Histogram(
            "bascule_request_duration_seconds",
            "Time from arrival until the response was sent.",
            ["route", "method", "service"],
            buckets=BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "bascule_request_body_bytes", "Request body bytes received from clients.", ["route"], registry=r
        )
        self.sent = Counter(
            "bascule_response_body_bytes", "Response body bytes sent to clients.", ["route"], registry=r
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
        self.upstream_duration = Histogram(
            "bascule_upstream_duration_seconds",
            "Time of one upstream attempt, until the response head arrived or it failed.",
            ["service", "target"],
            buckets=BUCKETS,
            registry=r,
        )
        self.upstream_attempts = Counter(
            "bascule_upstream_attempts",
            "Upstream attempts (retries included) by outcome: the status code, or "
            "connect, timeout, protocol, busy, cancelled.",
            ["service", "target", "outcome"],
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
        # Mirrored from the gateway's state by GatewayState.sync.
        self.retries = Counter(
            "bascule_upstream_retries", "Retries granted by the service's retry budget.", ["service"], registry=r
        )
        self.retries_refused = Counter(
            "bascule_upstream_retry_budget_exhausted",
            "Retries refused because the service's retry budget was spent.",
            ["service"],
            registry=r,
        )
        self.admission_rejections = Counter(
            "bascule_upstream_admission_rejections",
            "Requests refused with 503 by a service's admission limit (max_requests, max_queue, queue_timeout).",
            ["service"],
            registry=r,
        )
        self.ejections = Counter(
            "bascule_upstream_ejections",
            "Times a target was ejected by its circuit breaker.",
            ["service", "target"],
            registry=r,
        )
        self.target_state = Gauge(
            "bascule_upstream_target_state",
            "Workers that see the target in each state: healthy, ejected (circuit open), "
            "half-open, unhealthy (failing its health checks).",
            ["service", "target", "state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queued = Gauge(
            "bascule_upstream_queued",
            "Requests waiting for admission to a service.",
            ["service"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.panic = Gauge(
            "bascule_upstream_panic",
            "Workers in which the service is in panic mode (too few healthy targets: balanced over all).",
            ["service"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.reloads = Counter(
            "bascule_reloads",
            "Config reloads by result: success, failure (counted per worker).",
            ["result"],
            registry=r,
        )
        self.plugin_counters: dict[str, Counter] = {}  # by metric name, created on first use (ctx.count)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set: prometheus_client checks the
        values and takes a lock on every ``labels`` call. As many entries as the metric's series."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def plugin_counter(self, metric: str, labels: Sequence[str]) -> Counter:
        """The counter ``bascule_plugin_<metric>_total`` with labels ``route`` and ``labels`` (fixed at first use)."""
        counter = self.plugin_counters.get(metric)
        if counter is None:
            counter = self.plugin_counters[metric] = Counter(
                f"bascule_plugin_{metric}",
                f"Counted by a plugin (ctx.count({metric!r}, ...)).",
                ["route", *labels],
                registry=self.registry,
            )
        return counter

    def exposition(
        self, accept: str | None, tasks: Sequence[TaskState] = (), connection_errors: int = 0
    ) -> tuple[bytes, str]:
        """Every metric and its content type, in the format ``accept`` asks for.

        Prometheus text format 0.0.4 unless the scraper asks for a later text
        or OpenMetrics format.
        """
        encode, content_type = choose_encoder(accept or "")
        registry = CollectorRegistry()
        if self.registry is not None:
            registry.register(self.registry)
            registry.register(ProcessCollector(registry=None))
        else:
            assert self.multiprocess_dir is not None
            sweep_dead_workers(self.multiprocess_dir)
            MultiProcessCollector(registry, self.multiprocess_dir)
            registry.register(WorkerProcesses(live_workers(self.multiprocess_dir)))
        registry.register(BuildInfo())
        registry.register(GatewayHealth(tasks, connection_errors))
        return encode(registry), content_type


class GatewayState:
    """Mirrors one gateway's upstream state and reloads into ``Metrics`` (one per gateway process)."""

    def __init__(self, m: Metrics) -> None:
        self.m = m
        self._last: dict[tuple[str, ...], float] = {}  # counter key -> value at the last sync
        self._states: set[tuple[str, str, str]] = set()  # target_state series this process set

    def sync(self, upstreams: Mapping[str, Mapping[str, Any]], reloads: Mapping[str, int]) -> None:
        """Advance the mirrored counters by what changed; set the gauges to now."""
        m = self.m
        states: set[tuple[str, str, str]] = set()
        for service, s in upstreams.items():
            self._advance(m.retries, (service,), s["retries"])
            self._advance(m.retries_refused, (service,), s["retries_refused"])
            self._advance(m.admission_rejections, (service,), s["refused"])
            m.queued.labels(service).set(s["queued"])
            m.panic.labels(service).set(int(s["panic"]))
            for t in s["targets"]:
                self._advance(m.ejections, (service, t["url"]), t["ejections"])
                states.add((service, t["url"], t["state"]))
        for series in self._states | {(s, t, state) for s, t, _ in states for state in TARGET_STATES}:
            m.target_state.labels(*series).set(1 if series in states else 0)
        self._states = states
        for result, n in reloads.items():
            self._advance(m.reloads, (result,), n)

    def _advance(self, counter: Counter, labels: tuple[str, ...], value: float) -> None:
        key = (str(id(counter)), *labels)
        last = self._last.get(key, 0.0)
        delta = value - last if value >= last else value  # smaller: the service was recreated (a reload)
        if delta:
            counter.labels(*labels).inc(delta)
        self._last[key] = value


class BuildInfo:
    """``bascule_build_info``: 1, labelled with the gateway's and Python's versions."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "bascule_build_info", "The gateway's version and Python's (always 1).", labels=["version", "python"]
        )
        info.add_metric([_version(), platform.python_version()], 1)
        yield info


class WorkerProcesses:
    """The standard ``process_*`` metrics of each live worker, with a ``pid`` label."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.pids:
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                out = families.get(family.name)
                if out is None:
                    out = families[family.name] = Metric(family.name, family.documentation, family.type)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
        yield from families.values()


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bascule")
    except PackageNotFoundError:
        return "unknown"


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
