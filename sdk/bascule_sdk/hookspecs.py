"""The hook contract: one function per request phase.

Every hook is ``async``. An implementation may accept any subset of a hook's
arguments (pluggy's opt-in arguments), so new arguments can be added later
without breaking plugins. The phases, in the order a request meets them::

    on_request -> on_upstream_request -> handle -> on_response -> on_log

To reject a request, raise ``HTTPError``; any other exception is contained: the
client gets a 500 problem+json carrying the request id, the traceback is logged
with the plugin and hook name, and the gateway keeps serving.

``HOOKS`` lists every hook with its ``HookKind``, in the order of this module:
the one list that the core (contract checks, per-route pipelines) derives from.
Adding a hook is one ``@_spec(kind)`` function here, plus its section in
docs/plugins.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

import pluggy

from .context import Context, Gateway
from .http import Request, Response
from .websocket import WebSocketMessage

__all__ = ["HOOKS", "HookKind", "hookimpl", "hookspec"]

PROJECT = "bascule"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookKind(enum.Enum):
    """When a hook runs: what the core does with it."""

    LIFECYCLE = "lifecycle"  # once per plugin instance, at startup or shutdown
    REQUEST = "request"  # a phase of each HTTP request, in the route's pipeline
    WEBSOCKET = "websocket"  # each message of a proxied WebSocket, in the route's pipeline
    ADMIN = "admin"  # a request to the admin listener, offered to every instance


#: Every hook's name and kind, in the order of this module (a request's phases in order).
HOOKS: dict[str, HookKind] = {}

_F = TypeVar("_F", bound=Callable[..., Any])


def _spec(kind: HookKind) -> Callable[[_F], _F]:
    """``@hookspec``, recording the hook in ``HOOKS`` with its kind."""

    def mark(fn: _F) -> _F:
        HOOKS[fn.__name__] = kind
        return hookspec(fn)

    return mark


@_spec(HookKind.LIFECYCLE)
async def startup(gateway: Gateway) -> None:
    """Open shared resources (connection pools, key sets) before serving.

    Runs once per plugin instance when the gateway (or a reloaded config)
    starts. ``gateway.start_soon`` runs background tasks (e.g. key refresh)
    until shutdown. Raising here stops the gateway from starting, with the
    message shown to the operator.
    """


@_spec(HookKind.LIFECYCLE)
async def shutdown() -> None:
    """Close what ``startup`` opened. Runs once per instance on shutdown."""


@_spec(HookKind.REQUEST)
async def on_request(ctx: Context) -> Response | None:
    """Inspect the client's request before anything is sent upstream.

    Runs in priority order (highest first). Return a ``Response`` (or raise
    ``HTTPError``) to answer at once: the remaining ``on_request`` hooks and
    the upstream call are skipped, but every ``on_response`` and ``on_log``
    hook still runs. Return ``None`` to go on. Typical: auth (401/403), rate
    limiting (429), a cache hit.
    """


@_spec(HookKind.REQUEST)
async def on_upstream_request(ctx: Context, request: Request) -> None:
    """Change ``request`` (in place) before it is sent to a service.

    Runs for every upstream call made through ``ctx.forward``: once for a
    proxied route, once per backend for an aggregated one. Typical: identity
    headers, path or header rewrites.
    """


@_spec(HookKind.REQUEST)
async def handle(ctx: Context) -> Response | None:
    """Produce the response. The first implementation returning one wins.

    The core's default implementation proxies to the route's service and
    runs last; implement this to answer differently (aggregation, mocks).
    """


@_spec(HookKind.REQUEST)
async def on_response(ctx: Context, response: Response) -> Response | None:
    """Change the response before it is sent to the client.

    Runs for every response, including short-circuits and errors, in reverse
    priority order (lowest first: the way middleware unwinds). Modify
    ``response`` in place, or return a new one to replace it. The body may be
    a stream: read it only with ``await response.read(limit)``.
    """


@_spec(HookKind.REQUEST)
async def on_log(ctx: Context, response: Response) -> None:
    """Observe the finished exchange; runs after the response was sent.

    Cannot change the response. ``response.body`` is not available here; use
    ``ctx.tags`` for facts recorded along the way. Keep it fast: never block
    on I/O here (hand lines to a background writer).
    """


@_spec(HookKind.WEBSOCKET)
async def on_websocket_message(ctx: Context, message: WebSocketMessage) -> object:
    """See each message of a proxied WebSocket, either way, before it is relayed.

    Runs in priority order (highest first) on routes with ``[routes.websocket]``,
    for each whole message (fragments joined). ``ctx`` is the handshake's context
    (``consumer``, ``state``...), the same for every message of the socket. Return
    ``None`` to pass the message on (change ``message.data`` in place to rewrite
    it), ``DROP`` to drop it (later hooks do not see it); raise
    ``WebSocketClose(code, reason)`` to close the socket, both ways. Any other
    exception closes it with 1011, logged with the plugin's name. Optional: a
    route where no plugin implements it pays nothing per message.
    """


@_spec(HookKind.ADMIN)
async def on_admin_request(request: Request) -> Response | None:
    """Answer a request made to the admin listener (never the public one).

    Offered to every plugin instance of the running config, highest priority
    first, before the built-in admin pages; the first ``Response`` wins.
    Return ``None`` for paths that are not yours. Typical: ``/metrics``,
    ``/cache/purge``. The admin token, if configured, was already checked.
    """
