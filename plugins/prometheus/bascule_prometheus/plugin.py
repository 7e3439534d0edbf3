"""The ``prometheus`` plugin: the gateway's metrics, served on the admin listener."""

from __future__ import annotations

import logging
import time

import trio
from bascule_sdk import Context, Gateway, HTTPError, Plugin, Request, Response, hookimpl

from .metrics import CACHE_RESULTS, METHODS, OTHER, RATE_LIMIT_OUTCOMES, Bounded, GatewayState, Metrics, metrics
from .settings import PrometheusSettings

__all__ = ["Prometheus"]

log = logging.getLogger("bascule.prometheus")

_UPSTREAM_FAILURES = frozenset({502, 503, 504})
_COUNTED = "prometheus"  # ctx.state key: this request is counted in bascule_requests_in_flight


class Prometheus(Plugin[PrometheusSettings]):
    """Counts every request of the routes it is enabled on; answers ``GET /metrics`` on the admin port.

    The metrics belong to the process, not to the plugin instance: they keep
    counting across config reloads (and are created at start-up, so merely
    validating a config creates none). Under ``--workers N`` they are summed
    over the workers (see ``bascule_prometheus.multiprocess``). Each gateway
    process runs one task that mirrors its upstream state and reloads into
    the metrics every ``sync_interval`` (and the scraped process at each scrape).
    """

    name = "prometheus"
    priority = 2000  # first in on_request, so a request counts as in flight from its first hook
    Settings = PrometheusSettings
    gateway: Gateway | None = None

    def __init__(self, settings: PrometheusSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.consumers = Bounded(settings.max_consumers)
        self.plugin_series: dict[str, Bounded] = {}
        self.plugin_labels: dict[str, tuple[str, ...]] = {}

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.gateway = gateway  # upstream state, reloads and background tasks' health, read from it
        shared = gateway.shared.setdefault(self.name, {})
        if "state" not in shared:  # one mirror per gateway process, kept across reloads
            shared["state"] = GatewayState(metrics())
            gateway.start_soon(self._mirror, shared["state"], name="prometheus: upstream state")
        # Per process: the cap holds in each worker. Across reloads, the consumers already seen stay counted.
        self.consumers = shared.setdefault("consumers", self.consumers)
        self.plugin_series = shared.setdefault("plugin_series", self.plugin_series)
        self.plugin_labels = shared.setdefault("plugin_labels", self.plugin_labels)

    async def _mirror(self, state: GatewayState) -> None:
        while True:
            self._sync(state)
            await trio.sleep(self.settings.sync_interval)

    def _sync(self, state: GatewayState) -> None:
        if self.gateway is not None:
            state.sync(self.gateway.upstreams(), self.gateway.reloads())

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if _COUNTED not in ctx.state:
            ctx.state[_COUNTED] = True
            metrics().in_flight.inc()
            if "websocket" in ctx.tags:  # a WebSocket handshake: open until logged
                metrics().websockets_open.inc()

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        m = metrics()
        route = ctx.route.name or "(none)"
        websocket = ctx.tags.get("websocket")
        if ctx.state.pop(_COUNTED, False):
            m.in_flight.dec()
            if websocket is not None:
                m.websockets_open.dec()
        if websocket:  # the socket closed: what it carried
            m.child(m.websocket_messages, route, "in").inc(websocket["messages_in"])
            m.child(m.websocket_messages, route, "out").inc(websocket["messages_out"])
        status = response.status
        method = ctx.request.method if ctx.request.method in METHODS else OTHER
        service = ctx.route.service or ""
        m.child(m.requests, route, method, str(status), service).inc()
        m.child(m.duration, route, method, service).observe(time.perf_counter() - ctx.started)
        if self.settings.consumer_label:
            m.child(m.consumer_requests, route, self.consumers(ctx.consumer.name) if ctx.consumer else "").inc()
        if received := _received(ctx):
            m.child(m.received, route).inc(received)
        if ctx.bytes_sent:
            m.child(m.sent, route).inc(ctx.bytes_sent)
        for call in ctx.upstream_calls:
            if call.seconds is not None:
                m.child(m.upstream_duration, call.service, call.target).observe(call.seconds)
            m.child(m.upstream_attempts, call.service, call.target, call.error or str(call.status)).inc()
        if status in _UPSTREAM_FAILURES and ctx.error is not None:
            m.child(m.upstream_errors, route, str(status)).inc()
        if (outcome := ctx.tags.get("rate_limit")) is not None:
            outcome = str(outcome).lower()
            m.child(m.rate_limit, route, outcome if outcome in RATE_LIMIT_OUTCOMES else OTHER).inc()
        if (result := ctx.tags.get("cache")) is not None:
            result = str(result).lower()
            m.child(m.cache, route, result if result in CACHE_RESULTS else OTHER).inc()
        for metric, labels in ctx.counts:
            self._count(m, route, metric, labels)

    def _count(self, m: Metrics, route: str, metric: str, labels: tuple[tuple[str, str], ...]) -> None:
        """One ``ctx.count``: label names fixed by the first use, label sets capped per metric."""
        names = tuple(k for k, _ in labels)
        expected = self.plugin_labels.setdefault(metric, names)
        if names != expected:
            log.warning("ctx.count(%r): labels %s, expected %s; not counted", metric, names, expected)
            return
        series = self.plugin_series.setdefault(metric, Bounded(self.settings.max_plugin_series))
        values = [v for _, v in labels]
        if values and series("\0".join([route, *values])) == OTHER:
            values = [OTHER] * len(values)
        m.child(m.plugin_counter(metric, names), route, *values).inc()

    @hookimpl
    async def on_admin_request(self, request: Request) -> Response | None:
        if request.path != self.settings.path:
            return None
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "Use GET.", {"allow": "GET, HEAD"})
        gw = self.gateway
        if gw is not None and (state := gw.shared.get(self.name, {}).get("state")) is not None:
            self._sync(state)  # the scraped process: its state as of now
        body, content_type = metrics().exposition(
            request.headers.get("accept"), gw.tasks() if gw else (), gw.connection_errors() if gw else 0
        )
        return Response(
            200,
            {"content-type": content_type, "content-length": str(len(body))},
            b"" if request.method == "HEAD" else body,
        )


def _received(ctx: Context) -> int:
    """Request body bytes: a read body's size, else its ``Content-Length``."""
    body = ctx.request.body
    if isinstance(body, bytes):
        return len(body)
    length = ctx.request.headers.get("content-length")
    return int(length) if length and length.isdigit() else 0
