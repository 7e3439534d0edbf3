"""The admin listener: health, introspection and reload, off the public port.

    GET  /healthz    the process is alive (200, with its pid)
    GET  /readyz     200 while a config is loaded and served; lists the
                     services without an available target and the failing
                     background tasks (see ``readiness``)
    GET  /routes     each route: matcher, service, plugin pipeline in order
                     with each instance's effective settings (secrets masked)
    GET  /plugins    installed plugins: name, version, distribution, hooks
    GET  /upstreams  services: balancing, retries, admission, and each target
                     with its health state and counters
    GET  /config/status  the config in force (path, SHA-256, when loaded),
                     the last reload's outcome, and each worker's (see
                     ``bascule.configstatus``)
    POST /reload     re-read the config file; 400 with the errors if invalid
                     (with several workers: validated here, then every
                     worker reloads on the SIGHUP the supervisor forwards)
    GET  /dashboard  the live dashboard page (``bascule.dashboard``)
    GET  /fleet      with ``bascule run --config-store``: this gateway's node
                     id, the store's version it serves and since when, the
                     newest one (``behind``), its last error, its heartbeat
                     (404 without a config store)

With ``admin_token`` set, every request needs ``Authorization: Bearer TOKEN``,
except the dashboard's static files (they hold no data; the page sends the
token on its requests for the JSON pages).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bascule_sdk import Headers, HTTPError, Request, Response, TaskState
from bascule_sdk.http import ClientDisconnected
from bascule_sdk.settings import masked

from .asgi import Receive, Scope, Send, accept_lifespan, read_body, send_response
from .config import Config
from .configstatus import iso
from .dashboard import dashboard_page
from .gateway import Gateway
from .registry import InstalledPlugin
from .runtime import Runtime

if TYPE_CHECKING:
    from .fleet import FleetAgent

__all__ = ["Admin", "describe_plugins", "describe_routes", "readiness"]


def _version() -> str:
    from .server import _version

    return _version()


def describe_routes(config: Config) -> list[dict[str, Any]]:
    """Each route with its matcher and its plugin pipeline, highest priority first
    (the order of ``on_request``), each instance with its effective settings, secrets
    masked (``bascule_sdk.settings.masked``)."""
    return [
        {
            "name": r.name,
            "paths": r.settings.paths,
            "match": r.settings.match,
            "methods": r.settings.methods or ["*"],
            "hosts": r.settings.hosts or ["*"],
            "service": r.settings.service,
            "plugins": [
                {
                    "instance": p.instance,
                    "plugin": p.plugin.name,
                    "priority": p.priority,
                    "global": p.instance in config.global_plugins,
                    "settings": masked(p.settings),
                }
                for p in r.plugins
            ],
        }
        for r in config.routes
    ]


def describe_plugins(available: Mapping[str, InstalledPlugin]) -> list[dict[str, Any]]:
    """Installed plugins: name, version, distribution, hooks implemented."""
    return [
        {
            "name": a.name,
            "version": a.version,
            "distribution": a.distribution,
            "priority": a.cls.priority,
            "hooks": a.hooks,
        }
        for a in sorted(available.values(), key=lambda a: a.name)
    ]


def readiness(rt: Runtime, tasks: Sequence[TaskState]) -> tuple[int, dict[str, Any]]:
    """``/readyz``: status and body.

    200 while a config is loaded and served, as Kong's and Envoy's readiness:
    what is wrong behind the gateway is listed, not answered with 503. A
    service without an available target (``without_healthy_target``) is down
    for every instance alike, and a failing background task (see
    ``bascule.tasks``: a JWKS URL that cannot be fetched) is shared by every
    instance too; a 503 for either would take every instance out of the load
    balancer at once, failing the routes to healthy services with them. Alert
    on ``degraded`` (or the prometheus plugin's metrics) instead. The tasks are
    this process's (with several workers: the first's).
    """
    degraded = [
        {
            "task": t.name,
            "plugin": t.plugin,
            "consecutive_failures": t.consecutive_failures,
            "failures": t.failures,
            "last_error": t.last_error,
            "failing_since": iso(t.failing_since),
        }
        for t in tasks
        if t.failing
    ]
    down = sorted(name for name, svc in rt.upstreams.services.items() if not svc.ready())
    body = {"status": "ready", "config": str(rt.config.path), "without_healthy_target": down, "degraded": degraded}
    return 200, body


class Admin:
    """ASGI app of the admin listener."""

    def __init__(
        self,
        gateway: Gateway,
        path: str | Path,
        available: Mapping[str, InstalledPlugin],
        *,
        signal_supervisor: bool = False,
        fleet: FleetAgent | None = None,
    ) -> None:
        self.gateway = gateway
        self.fleet = fleet  # the config store this gateway follows, if any
        self.path = path
        self.available = available
        self.signal_supervisor = signal_supervisor  # a worker: every worker must reload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await accept_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            # The dashboard's static files hold no data: a browser loads them without the
            # token, and the page sends it on each fetch of the JSON pages (bascule.dashboard).
            response = dashboard_page(scope["method"], scope["path"])
            if response is None:
                self._authorise(scope)
                response = await self._plugin_page(scope, receive)
            if response is None:
                status, body = await self._route(scope)
        except HTTPError as e:
            response = e.to_response()
        except ClientDisconnected:
            return
        if response is None:
            data = json.dumps(body, indent=2).encode()
            headers = {"content-type": "application/json", "content-length": str(len(data))}
            response = Response(status, headers, data)
        await send_response(send, response)

    def _authorise(self, scope: Scope) -> None:
        token = self.gateway.runtime.config.gateway.admin_token
        if token:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + token.encode()):
                raise HTTPError(401, "Admin token required.", {"www-authenticate": "Bearer"})

    async def _plugin_page(self, scope: Scope, receive: Receive) -> Response | None:
        """A plugin's answer (``on_admin_request``), the request body read up to
        ``[gateway] max_body_size`` (413 past it)."""
        limit = self.gateway.runtime.config.gateway.max_body_size
        request = Request(
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            Headers(scope["headers"]),
            await read_body(receive, limit),
        )
        return await self.gateway.runtime.plugins.admin_request(request)

    async def _route(self, scope: Scope) -> tuple[int, Any]:
        method, path = scope["method"], scope["path"]
        rt = self.gateway.runtime
        pages: dict[str, Callable[[], Any]] = {
            "/healthz": lambda: {"status": "ok", "pid": os.getpid()},
            "/routes": lambda: describe_routes(rt.config),
            "/plugins": lambda: describe_plugins(self.available),
            "/upstreams": self.gateway.describe_upstreams,
            "/config/status": lambda: self.gateway.status.describe(rt.config, _version()),
        }
        if self.fleet is not None:
            pages["/fleet"] = self.fleet.describe
        if path == "/reload":
            if method != "POST":
                raise HTTPError(405, "Use POST.", {"allow": "POST"})
            return await self._reload()
        if path != "/readyz" and path not in pages:
            raise HTTPError(404, "No such admin resource.")
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "Use GET.", {"allow": "GET, HEAD"})
        if path == "/readyz":
            return readiness(rt, self.gateway.supervisor.states())
        return 200, pages[path]()

    async def _reload(self) -> tuple[int, Any]:
        if self.signal_supervisor:
            from .server import signal_workers  # the server imports this module: not at import time

            error = signal_workers(self.gateway, self.path, self.available, "POST /reload")
        else:
            error = await self.gateway.reload_file(self.path, self.available, "POST /reload")
        if error is not None:
            raise HTTPError(400, "The new config is invalid; the old one stays.", extra={"errors": error.lines})
        if self.signal_supervisor:
            return 202, {"reloaded": True, "workers": "signalled"}
        return 200, {"reloaded": True}
