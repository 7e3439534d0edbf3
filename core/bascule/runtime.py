"""A config, compiled: the ``Runtime`` that serves it, and the one way to get one.

``config`` validates plugins.toml into a ``Config``; here it is compiled into a
``Runtime``: plugin instances, per-route pipelines (the default proxy last),
the router ("GET implies HEAD"), the pipeline of requests no route matches, the
upstream pools. ``compile_runtime`` is the one entry point, from a file or a
``Config``, and ``check_config`` is that same call for "can this config run here?"
(``bascule validate``, ``routes``, ``schema`` and ``run``, a reload, a config
store's version). Nothing here opens a socket or starts a task:
``Runtime.startup`` does, once the gateway (``bascule.gateway``) serves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio
from bascule_sdk import Consumer, Context, HTTPError, Plugin, Request, Response, RouteInfo, TaskState
from bascule_sdk.settings import SettingsError

from . import rundir
from .asgi import early_hints
from .config import Config, ConfigError, ConfigProblem, ConfiguredPlugin, ConfiguredRoute, RouteSettings, load_config
from .headers import TrustedProxies, departure_headers, frame_body, response_headers
from .pipeline import Pipeline, PluginLoadError, PluginSet
from .proxy import Proxy, ProxySettings
from .registry import InstalledPlugin
from .resources import Resources
from .routing import Router, RouterEntry
from .tasks import Supervisor
from .upstream import Upstreams
from .worker import contained_errors

T = TypeVar("T")

__all__ = ["CompiledRoute", "PluginView", "Runtime", "RuntimeHost", "check_config", "compile_runtime"]


def compile_runtime(
    source: str | Path | Config, available: Mapping[str, InstalledPlugin], *, previous: Runtime | None = None
) -> Runtime:
    """The ``Runtime`` of ``source``: the config file at that path, read and validated against the
    ``available`` plugins (``config.load_config``), or a ``Config`` validated already; then compiled.

    Raises ``ConfigError`` naming every problem, found validating or compiling alike (a plugin
    that refuses its settings, or breaks the hook contract). ``previous``: the runtime this one
    replaces (a reload), whose pools of unchanged services carry over.
    """
    config = source if isinstance(source, Config) else load_config(source, available)
    return Runtime(config, previous)


def check_config(
    source: str | Path | Config, available: Mapping[str, InstalledPlugin], *, offline: bool = False
) -> Config:
    """The ``Config`` of ``source`` if it can run here, as ``compile_runtime`` decides (the
    runtime is dropped: nothing was started); ``ConfigError`` naming every problem if not.

    ``offline``: ``env:``/``file:`` secrets are not read (``load_config(offline=True)``); the
    routes whose plugins' checks needed one are not compiled (``Config.unchecked`` lists them).
    """
    config = source if isinstance(source, Config) else load_config(source, available, offline=offline)
    compile_runtime(_checkable(config), available)
    return config


def _checkable(config: Config) -> Config:
    """``config`` without the routes whose plugins' checks needed a secret ``offline`` did not read.

    Their settings were built unchecked, so their plugins are not instantiated.
    """
    skipped = {p.where for p in config.unchecked}
    if not skipped:
        return config
    routes = tuple(
        r
        for r in config.routes
        if f'route "{r.name}"' not in skipped and not any(f"plugins.{s.instance}" in skipped for s in r.plugins)
    )
    return dataclasses.replace(config, routes=routes)


@dataclass(frozen=True)
class CompiledRoute:
    """A route ready to serve: what plugins see of it, its pipeline, and its way upstream (``ctx.forward``)."""

    info: RouteInfo
    pipeline: Pipeline
    forward: Callable[[Context, Request, str | None], Awaitable[Response]]
    settings: RouteSettings | None = None  # WebSockets are proxied from these (bascule.websocket)


class RuntimeHost(Protocol):
    """What a runtime starts in: the gateway process's state that outlives one config
    (``bascule.gateway.Gateway``, the ASGI app, is the host)."""

    #: Plugins' state kept across reloads (``bascule_sdk.Gateway.shared``).
    shared: dict[str, Any]
    #: Runs background tasks until shutdown: plugins' and active health checks (``bascule.tasks``).
    supervisor: Supervisor
    #: What plugins ``acquire``, shared across reloads (``bascule.resources``).
    resources: Resources

    @property
    def reload_results(self) -> Mapping[str, int]:
        """Reloads attempted, by result: ``{"success": n, "failure": m}``."""
        ...

    def describe_upstreams(self) -> dict[str, Any]:
        """The services of the config in force, as the admin listener's ``/upstreams`` shows them."""
        ...


class Runtime:
    """One configuration, compiled once: nothing is looked up per request
    that could be resolved here. Made by ``compile_runtime``."""

    def __init__(self, config: Config, previous: Runtime | None = None) -> None:
        self.config = config
        gw = config.gateway
        self.active = 0  # requests in flight on this runtime
        self.retiring = False
        self.idle = trio.Event()  # set once retiring and no request is in flight
        self.trusted = TrustedProxies(gw.trusted_proxies)
        self.max_body_size = gw.max_body_size
        self.max_header_size = gw.max_header_size
        self.buffer_size = gw.buffer_size
        self.upstreams: Upstreams = Upstreams(config.services, gw.buffer_size, previous.upstreams if previous else None)
        self.plugins = PluginSet()
        self.routes: dict[str, CompiledRoute] = {}
        self.resources: Resources | None = None  # the host's, once started: this config's acquisitions
        errors: list[ConfigProblem] = []
        entries: list[RouterEntry[CompiledRoute]] = []
        for order, route in enumerate(config.routes):
            try:
                compiled = self._compile(route)
            except (PluginLoadError, SettingsError, ValueError) as e:
                errors.append(ConfigProblem(config.path, f'route "{route.name}"', None, str(e), route.name))
                continue
            self.routes[route.name] = compiled
            s = route.settings
            methods = set(s.methods)
            if "GET" in methods:
                methods.add("HEAD")
            for path in s.paths:
                entries.append(
                    RouterEntry(
                        path,
                        compiled,
                        exact=s.match == "exact",
                        methods=frozenset(methods),
                        hosts=tuple(h.lower() for h in s.hosts),
                        order=order,
                    )
                )
        if errors:
            raise ConfigError.of(errors)
        self.router: Router[CompiledRoute] = Router(entries)
        # Requests that match no route still meet the global plugins' on_response/on_log.
        globals_ = [self._instance(p) for r in config.routes for p in r.plugins if p.instance in config.global_plugins]
        unique = list({id(p): p for p in globals_}.values())
        full = Pipeline.build(self.plugins, unique, None)
        self.fallback = Pipeline(on_response=full.on_response, on_log=full.on_log)

    def _instance(self, configured: ConfiguredPlugin) -> Plugin:
        plugin = self.plugins.instances.get(configured.key)
        if plugin is None:
            plugin = configured.plugin.cls(configured.settings, instance=configured.instance)
            self.plugins.add(configured.key, plugin)
        return plugin

    def _compile(self, route: ConfiguredRoute) -> CompiledRoute:
        s = route.settings
        ordered = [self._instance(p) for p in route.plugins]
        default_handle = None
        if s.service is not None:
            proxy = Proxy(ProxySettings(s.strip_path, s.preserve_host), instance="proxy")
            key = f"_proxy:{s.strip_path}:{s.preserve_host}"
            if key not in self.plugins.instances:
                self.plugins.add(key, proxy)
            default_handle = self.plugins.hook(self.plugins.instances[key], "handle")
        pipeline = Pipeline.build(self.plugins, ordered, default_handle)
        info = RouteInfo(route.name, s.service, tuple(p.instance for p in route.plugins))
        forward = partial(self._forward, pipeline, s.service)
        return CompiledRoute(info, pipeline, forward, s)

    async def _forward(
        self,
        pipeline: Pipeline,
        default_service: str | None,
        ctx: Context,
        request: Request,
        service: str | None,
    ) -> Response:
        name = service or default_service
        if name is None or name not in self.upstreams.services:
            raise HTTPError(500, "The route names no service to forward to.")
        await pipeline.upstream_request(ctx, request)
        headers = request.headers
        raw = departure_headers(ctx, request)
        frame_body(raw, request, headers.get("content-length"))
        headers.raw = raw
        response, pool, seconds = await self.upstreams[name].send(request, ctx, early_hints.get())
        ctx.upstream = pool.url
        ctx.upstream_seconds = (ctx.upstream_seconds or 0.0) + seconds
        response_headers(response.headers)
        return response

    async def startup(self, gateway: RuntimeHost) -> None:
        """Start this runtime's plugins, then its active health checks, in ``gateway``. The plugins
        see this runtime's consumers even when it is started for a reload, before it is swapped in."""

        def view(plugin: Plugin) -> PluginView:
            return PluginView(self.config.consumers, plugin.instance, gateway, self)

        self.resources = gateway.resources
        await self.plugins.startup(view)
        self.upstreams.start(gateway.supervisor.start_soon)  # active health checks; kept services go on

    async def aclose(self, keep: Runtime | None = None) -> None:
        """Shut plugins down and close pools (those ``keep`` took over stay open)."""
        await self.plugins.shutdown()
        if self.resources is not None:
            await self.resources.release(self)  # closes those no other config holds
        await self.upstreams.aclose(keep.upstreams if keep else None)


@dataclass(frozen=True, eq=False)
class PluginView:
    """The gateway as one plugin instance sees it: the ``bascule_sdk.Gateway`` its ``startup``
    gets. The tasks it starts are tagged with its instance name."""

    consumers: Mapping[str, Consumer]
    plugin: str
    gateway: RuntimeHost
    holder: object = None  # whose acquisitions ``acquire`` makes: the Runtime, which releases them

    @property
    def shared(self) -> dict[str, Any]:
        return self.gateway.shared

    @property
    def run_dir(self) -> Path | None:
        return rundir.current()

    async def acquire(self, key: Hashable, open: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        return await self.gateway.resources.acquire(key, open, self.holder)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        self.gateway.supervisor.start_soon(fn, *args, name=name, plugin=self.plugin)

    def tasks(self) -> Sequence[TaskState]:
        return self.gateway.supervisor.states()

    def connection_errors(self) -> int:
        return contained_errors()

    def upstreams(self) -> Mapping[str, Mapping[str, Any]]:
        return self.gateway.describe_upstreams()

    def reloads(self) -> Mapping[str, int]:
        return self.gateway.reload_results
