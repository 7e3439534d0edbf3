"""The ``prometheus`` plugin: request metrics, served on the admin listener."""

from __future__ import annotations

import time

from bascule_sdk import Context, Gateway, HTTPError, Plugin, Request, Response, hookimpl

from .metrics import CACHE_RESULTS, RATE_LIMIT_OUTCOMES, metrics
from .settings import PrometheusSettings

__all__ = ["Prometheus"]

_UPSTREAM_FAILURES = frozenset({502, 503, 504})
_COUNTED = "prometheus"  # ctx.state key: this request is counted in bascule_requests_in_flight


class Prometheus(Plugin):
    """Counts every request of the routes it is enabled on; answers ``GET /metrics`` on the admin port.

    The metrics belong to the process, not to the plugin instance: they keep
    counting across config reloads (and are created on first use, so merely
    validating a config creates none). Under ``--workers N`` they are summed over
    the workers (see ``bascule_prometheus.multiprocess``), except the health of
    background tasks, read from the gateway at each scrape: the tasks of the
    process answering it.
    """

    name = "prometheus"
    priority = 2000  # first in on_request, so a request counts as in flight from its first hook
    Settings = PrometheusSettings
    settings: PrometheusSettings
    gateway: Gateway | None = None

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.gateway = gateway  # background tasks' health, read at each scrape

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
            m.websocket_messages.labels(route, "in").inc(websocket["messages_in"])
            m.websocket_messages.labels(route, "out").inc(websocket["messages_out"])
        status = response.status
        m.requests.labels(route, f"{status // 100}xx").inc()
        m.duration.labels(route).observe(time.perf_counter() - ctx.started)
        if ctx.upstream_seconds is not None:
            m.upstream_duration.labels(route).observe(ctx.upstream_seconds)
        if status in _UPSTREAM_FAILURES and ctx.error is not None:
            m.upstream_errors.labels(route, str(status)).inc()
        if (outcome := ctx.tags.get("rate_limit")) is not None:
            outcome = str(outcome).lower()
            m.rate_limit.labels(route, outcome if outcome in RATE_LIMIT_OUTCOMES else "other").inc()
        if (result := ctx.tags.get("cache")) is not None:
            result = str(result).lower()
            m.cache.labels(route, result if result in CACHE_RESULTS else "other").inc()

    @hookimpl
    async def on_admin_request(self, request: Request) -> Response | None:
        if request.path != self.settings.path:
            return None
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "Use GET.", {"allow": "GET, HEAD"})
        gw = self.gateway
        body, content_type = metrics().exposition(
            request.headers.get("accept"), gw.tasks() if gw else (), gw.connection_errors() if gw else 0
        )
        return Response(
            200,
            {"content-type": content_type, "content-length": str(len(body))},
            b"" if request.method == "HEAD" else body,
        )
