"""Per-route pipelines: hook implementations resolved once, awaited per request.

pluggy registers plugin instances, validates their hook signatures against
``bascule_sdk.hookspecs`` and rejects unknown hook names. pluggy's own call
loop is synchronous, so each phase here is a pre-built tuple of bound async
methods awaited in order (modelled on pluggy's ``_multicall``), a result
checked only after it is awaited.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, cast

import pluggy
import trio
from bascule_sdk import Context, HTTPError, Plugin, Response, hookspecs
from bascule_sdk.hookspecs import HookKind
from bascule_sdk.http import ClientDisconnected

from .registry import PluginLoadError, check_contract

__all__ = ["PHASES", "Hook", "HookReturnError", "Pipeline", "PluginLoadError", "PluginSet"]

log = logging.getLogger("bascule")

#: The hooks of a route's ``Pipeline``: request phases and WebSocket messages, in order.
PHASES = tuple(n for n, kind in hookspecs.HOOKS.items() if kind in (HookKind.REQUEST, HookKind.WEBSOCKET))
_SPEC_ARGS = {name: tuple(inspect.signature(getattr(hookspecs, name)).parameters) for name in hookspecs.HOOKS}


class HookReturnError(TypeError):
    """A hook returned something other than a ``Response`` or ``None``."""


def _returned(hook: Hook, value: Any) -> Response | None:
    """``value`` if a hook may return it, else ``HookReturnError`` naming the hook and the type."""
    if value is None or isinstance(value, Response):
        return value
    kind = type(value)
    raise HookReturnError(
        f"hook {hook.phase} of plugin {hook.instance!r} returned {kind.__module__}.{kind.__qualname__}, "
        "expected a bascule_sdk.Response or None"
    )


@dataclass(frozen=True, slots=True)
class Hook:
    """One implementation of one phase, callable with the phase's full arguments."""

    instance: str
    phase: str
    call: Callable[..., Awaitable[Any]]


def _adapt(fn: Callable[..., Awaitable[Any]], argnames: tuple[str, ...], phase: str):
    """Call ``fn`` with the spec's positional arguments, passing only those it takes."""
    spec = _SPEC_ARGS[phase]
    if argnames == spec:
        return fn
    picks = tuple(spec.index(a) for a in argnames)
    return lambda *args: fn(*(args[i] for i in picks))


class PluginSet:
    """Plugin instances of one config, registered with one pluggy manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.instances: dict[str, Plugin] = {}  # by spec key
        self._hooks: dict[int, dict[str, Hook]] = {}

    def add(self, key: str, plugin: Plugin) -> None:
        """Register ``plugin``; raise ``PluginLoadError`` if it breaks the contract (``registry.check_contract``)."""
        check_contract(type(plugin), plugin.instance)
        self.pm.register(plugin, name=f"{plugin.instance}#{len(self.instances)}")
        hooks: dict[str, Hook] = {}
        for caller in self.pm.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                call = cast(Callable[..., Awaitable[Any]], impl.function)  # async: check_contract
                hooks[caller.name] = Hook(plugin.instance, caller.name, _adapt(call, tuple(impl.argnames), caller.name))
        self.instances[key] = plugin
        self._hooks[id(plugin)] = hooks

    def hook(self, plugin: Plugin, phase: str) -> Hook | None:
        """``plugin``'s implementation of ``phase``, or None."""
        return self._hooks[id(plugin)].get(phase)

    async def startup(self, gateway_for: Callable[[Plugin], Any]) -> None:
        """Call each instance's ``startup`` with its own view of the gateway, ``gateway_for(plugin)``."""
        for plugin in self.instances.values():
            if hook := self.hook(plugin, "startup"):
                await hook.call(gateway_for(plugin))

    async def admin_request(self, request: Any) -> Response | None:
        """Offer an admin-listener request to each instance; the first response wins."""
        ordered = sorted(self.instances.values(), key=lambda p: -p.priority)
        for plugin in ordered:
            if hook := self.hook(plugin, "on_admin_request"):
                response = _returned(hook, await hook.call(request))
                if response is not None:
                    return response
        return None

    async def shutdown(self) -> None:
        for plugin in self.instances.values():
            if hook := self.hook(plugin, "shutdown"):
                try:
                    await hook.call()
                except Exception:
                    log.exception("plugin %r failed in shutdown", plugin.instance)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The hooks of one route, per phase, in the order they run: one field per hook of ``PHASES``."""

    on_request: tuple[Hook, ...] = ()
    on_upstream_request: tuple[Hook, ...] = ()
    handle: tuple[Hook, ...] = ()
    on_response: tuple[Hook, ...] = ()  # lowest priority first
    on_log: tuple[Hook, ...] = ()
    on_websocket_message: tuple[Hook, ...] = ()  # empty on most routes: nothing per message then

    @classmethod
    def build(cls, plugins: PluginSet, ordered: Iterable[Plugin], default_handle: Hook | None) -> Pipeline:
        """``ordered``: the route's instances, highest priority first."""
        ordered = list(ordered)

        def phase(name: str) -> tuple[Hook, ...]:
            return tuple(h for p in ordered if (h := plugins.hook(p, name)) is not None)

        hooks = {name: phase(name) for name in PHASES}
        hooks["handle"] += (default_handle,) if default_handle else ()
        hooks["on_response"] = tuple(reversed(hooks["on_response"]))
        return cls(**hooks)

    async def respond(self, ctx: Context, accepted: Callable[[Context], Awaitable[None]] | None = None) -> Response:
        """Run ``on_request``, ``handle`` and ``on_response`` for ``ctx``.

        ``accepted`` is awaited once every ``on_request`` hook let the request
        through, before ``handle`` (the gateway receives the request body
        then); its ``HTTPError`` answers like a hook's. Never raises for a
        plugin's failure: an ``HTTPError`` becomes its problem response, any
        other exception a 500 (logged with its traceback). Cancellation propagates.
        """
        response = None
        hook = None
        try:
            for hook in self.on_request:
                response = _returned(hook, await hook.call(ctx))
                if response is not None:
                    break
            else:
                hook = None
                if accepted is not None:
                    await accepted(ctx)
                for hook in self.handle:
                    response = _returned(hook, await hook.call(ctx))
                    if response is not None:
                        break
                else:
                    raise HTTPError(404, "No handler answered this request.")
        except HTTPError as e:
            response = _error_response(ctx, e)
        except ClientDisconnected:
            raise
        except Exception as e:
            response = _crash_response(ctx, hook, e)
        return await self.finish(ctx, response)

    async def admit(self, ctx: Context) -> Response | None:
        """Run ``on_request`` only (a WebSocket handshake): ``None`` when every hook let
        the request through, else the refusal, after ``on_response``. Fails as ``respond`` does."""
        hook = None
        try:
            for hook in self.on_request:
                response = await hook.call(ctx)
                if response is not None:
                    return await self.finish(ctx, response)
            return None
        except HTTPError as e:
            response = _error_response(ctx, e)
        except ClientDisconnected:
            raise
        except Exception as e:
            response = _crash_response(ctx, hook, e)
        return await self.finish(ctx, response)

    async def finish(self, ctx: Context, response: Response) -> Response:
        """Run ``on_response`` (lowest priority first) on ``response``."""
        for hook in self.on_response:
            try:
                replaced = _returned(hook, await hook.call(ctx, response))
            except HTTPError as e:
                replaced = _error_response(ctx, e)
            except Exception as e:
                replaced = _crash_response(ctx, hook, e)
            if replaced is not None and replaced is not response:
                await response.aclose()
                response = replaced
        return response

    async def upstream_request(self, ctx: Context, request: Any) -> None:
        """Run ``on_upstream_request``; errors propagate to the caller of ``forward``."""
        for hook in self.on_upstream_request:
            await hook.call(ctx, request)

    async def log(self, ctx: Context, response: Response) -> None:
        """Run ``on_log``; a failing hook is logged and the others still run."""
        for hook in self.on_log:
            try:
                await hook.call(ctx, response)
            except trio.Cancelled:
                raise
            except Exception:
                log.exception("plugin %r failed in on_log (request %s)", hook.instance, ctx.request_id)


if tuple(f.name for f in fields(Pipeline)) != PHASES:  # a hook added to hookspecs needs its field here
    raise TypeError(f"Pipeline's fields must be the pipeline hooks of bascule_sdk.hookspecs, in order: {PHASES}")


def _error_response(ctx: Context, e: HTTPError) -> Response:
    if e.status >= 500 and ctx.error is None:
        ctx.error = e.detail or e.title
    return e.to_response(ctx.request_id)


def _crash_response(ctx: Context, hook: Hook | None, e: Exception) -> Response:
    where = f"plugin {hook.instance!r} failed in {hook.phase}" if hook else "request failed"
    log.error("%s (request %s)", where, ctx.request_id, exc_info=e)
    ctx.error = f"{where}: {type(e).__name__}"
    return HTTPError(500, "The gateway failed to process this request.").to_response(ctx.request_id)
