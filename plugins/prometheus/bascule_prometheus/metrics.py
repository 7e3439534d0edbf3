"""The gateway's metrics: one set per process, kept across config reloads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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
        self.requests = Counter("bascule_requests", "Requests answered, by route and status class (2xx...).",
                                ["route", "status_class"], registry=r)
        self.duration = Histogram("bascule_request_duration_seconds",
                                  "Time from arrival until the response was sent.", ["route"],
                                  buckets=BUCKETS, registry=r)
        self.upstream_duration = Histogram("bascule_upstream_duration_seconds",
                                           "Time waiting for upstream response heads (summed over a request's calls).",
                                           ["route"], buckets=BUCKETS, registry=r)
        self.upstream_errors = Counter("bascule_upstream_errors",
                                       "Requests failed by their upstream: 502 unreachable or invalid, 503 busy, "
                                       "504 timed out.", ["route", "status"], registry=r)
        self.rate_limit = Counter("bascule_rate_limit", "Rate-limit decisions: allowed, rejected, error.",
                                  ["route", "outcome"], registry=r)
        self.cache = Counter("bascule_cache", "Cache lookups by result: hit, miss, stale, revalidated, bypass, "
                             "expired.", ["route", "result"], registry=r)
        self.in_flight = Gauge("bascule_requests_in_flight", "Requests being processed.",
                               multiprocess_mode="livesum", registry=r)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric (summed over workers) and its content type, in the format ``accept`` asks for.

        Prometheus text format 0.0.4 unless the scraper asks for a later text
        or OpenMetrics format.
        """
        encode, content_type = choose_encoder(accept or "")
        registry = self.registry
        if registry is None:
            assert self.multiprocess_dir is not None
            sweep_dead_workers(self.multiprocess_dir)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.multiprocess_dir)
        return encode(registry), content_type


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
