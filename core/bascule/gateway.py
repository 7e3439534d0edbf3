"""The gateway as an ASGI application: the request edge.

A request arrives (``arrive``: headers checked, path normalised), is matched
(``match_route``), runs its route's pipeline and is sent, on the current
``Runtime`` (a config compiled, ``bascule.runtime``). ``Gateway.reload`` swaps
in a new runtime atomically, so a request in flight finishes on the runtime it
started with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any

import trio
from bascule_sdk import Context, Headers, HTTPError, Request, Response, RouteInfo
from bascule_sdk.http import Body, ClientDisconnected

from .asgi import EARLY_HINT, EarlyHints, Receive, Scope, Send, early_hints, receive_chunk, send_response, too_large
from .config import Config, ConfigError
from .configstatus import ConfigStatus
from .headers import (
    InvalidField,
    absolute_form,
    arrival_headers,
    check_framing,
    check_host,
    new_request_id,
    parse_host,
)
from .paths import InvalidPath, normalise
from .registry import InstalledPlugin
from .resources import Resources
from .runtime import CompiledRoute, Runtime, compile_runtime
from .tasks import Backoff, Supervisor
from .websocket import WebSockets

__all__ = ["Gateway"]

log = logging.getLogger("bascule")

_SAFE_ID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class Gateway:
    """ASGI application serving the current ``Runtime``.

    It hosts each runtime it serves (``runtime.RuntimeHost``): ``start_soon`` runs
    background tasks under ``supervisor`` until shutdown (plugins reach it through
    their ``runtime.PluginView``).
    """

    def __init__(
        self, runtime: Runtime, backoff: Backoff | None = None, retired: Callable[[], None] | None = None
    ) -> None:
        self.runtime = runtime
        self.retired = retired  # called once a reload closed the old config (the server settles the heap)
        self.shared: dict[str, Any] = {}  # plugins' state that outlives a config
        self.supervisor = Supervisor(backoff)
        self.resources = Resources(self.supervisor.start_soon)  # plugins' ``acquire``: across reloads
        self.reload_results = {"success": 0, "failure": 0}  # recorded by ``reloaded``
        self.status = ConfigStatus(runtime.config)  # the config in force and the last reload: /config/status
        self.websockets = WebSockets()  # open WebSockets, across reloads
        self._date = (0, b"")

    def describe_upstreams(self) -> dict[str, Any]:
        """The admin listener's ``/upstreams`` document: each service of the current config."""
        return {name: svc.describe() for name, svc in self.runtime.upstreams.services.items()}

    async def reload(self, source: str | Path | Config, available: Mapping[str, InstalledPlugin]) -> Config:
        """Compile and start ``source`` (``runtime.compile_runtime``), then swap it in atomically;
        the config now in force.

        Raises ``ConfigError`` (the current config stays), also when a
        plugin's ``startup`` fails. Requests in flight
        finish on the old runtime, which closes once they are done (or after
        ``graceful_timeout``); pools of unchanged services carry over.
        """
        new = compile_runtime(source, available, previous=self.runtime)
        try:
            await new.startup(self)
        except Exception as e:
            log.exception("reload: a plugin failed to start; the old config stays")
            await new.aclose(keep=self.runtime)
            raise ConfigError([f"{new.config.path}: a plugin failed to start: {e}"]) from e
        old, self.runtime = self.runtime, new
        self.start_soon(self._retire, old, new)
        return new.config

    async def reload_file(
        self, path: str | Path, available: Mapping[str, InstalledPlugin], trigger: str
    ) -> ConfigError | None:
        """The one reload of a config file (``trigger``: ``SIGHUP``, ``POST /reload``, ``config store``):
        swap ``path`` in (``reload``) and record the outcome (``reloaded``). The error that kept
        the old config, or None."""
        try:
            config = await self.reload(path, available)
        except ConfigError as e:
            self.reloaded(trigger, path, error=e)
            return e
        self.reloaded(trigger, path, config=config)
        return None

    def reloaded(
        self, trigger: str, path: object, *, config: Config | None = None, error: ConfigError | None = None
    ) -> None:
        """Record a reload of ``path``: ``config`` now in force, or refused with ``error``. Logged, counted
        (``reload_results``, the metrics) and kept for the admin listener's ``/config/status``."""
        if error is None:
            assert config is not None
            self.reload_results["success"] += 1
            self.status.reloaded(trigger, config)
            log.info("reloaded %s", path)
        else:
            self.reload_results["failure"] += 1
            self.status.rejected(trigger, error.lines)
            log.error("reload rejected, the old config stays:\n%s", error)

    async def _retire(self, old: Runtime, new: Runtime) -> None:
        """Close ``old`` once its requests are done. Supervised, so restarted
        after a failure: closing is not tried twice (no plugin shuts down twice)."""
        if old.retiring:
            return
        old.retiring = True
        if old.active:
            with trio.move_on_after(old.config.gateway.graceful_timeout):
                await old.idle.wait()
        await old.aclose(keep=new)
        if self.retired is not None:
            self.retired()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Run ``fn(*args)`` supervised (``bascule.tasks``) until shutdown; ``RuntimeError`` when not running."""
        self.supervisor.start_soon(fn, *args, name=name)

    # -- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._in_flight(partial(self.websockets.serve, self), scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with self.supervisor.running():  # background tasks are cancelled when it ends
            try:
                await self.runtime.startup(self)
            except Exception as e:
                log.error("startup failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))  # one line
                await send({"type": "lifespan.startup.failed", "message": str(e)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            with trio.CancelScope(shield=True):
                await self.runtime.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._in_flight(self._handle_http, scope, receive, send)

    async def _in_flight(self, handler: Callable[..., Awaitable[None]], scope: Scope, *args: Callable) -> None:
        """``handler(runtime, scope, receive, send)``, counted in flight on the current runtime."""
        rt = self.runtime
        rt.active += 1
        try:
            await handler(rt, scope, *args)
        finally:
            rt.active -= 1
            if rt.retiring and not rt.active:
                rt.idle.set()

    async def _handle_http(self, rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        begun = await begin(rt, scope, receive)
        if begun is None:
            return
        ctx, route, error = begun
        request = ctx.request
        pipeline = route.pipeline if route else rt.fallback
        if error is not None:
            ctx.error = error.detail
            response = await pipeline.finish(ctx, error.to_response(ctx.request_id))
        else:
            try:
                early_hints.set(EarlyHints(send) if EARLY_HINT in (scope.get("extensions") or ()) else None)
                response = await pipeline.respond(ctx, _take_body)
            except ClientDisconnected:  # still logged: nginx's 499, client closed request
                ctx.error = "The client disconnected while sending its request."
                await pipeline.log(ctx, Response(499))
                return
        try:
            await self._send(send, response, ctx, request.method == "HEAD")
        finally:
            await response.aclose()
            await pipeline.log(ctx, response)

    async def _send(self, send: Send, response: Response, ctx: Context, head: bool) -> None:
        hints = early_hints.get()
        if hints is not None:
            hints.send = None  # the final response starts: no more hints
        raw = response.headers.raw
        raw.append((b"x-request-id", ctx.request_id.encode()))
        if not any(k == b"date" for k, _ in raw):
            raw.append((b"date", self._http_date()))
        await send_response(send, response, head=head, tally=ctx)

    def _http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


#: ``ctx.route`` of a request that no route serves (refused on arrival, or 404/405).
NO_ROUTE = RouteInfo("", None)


async def begin(
    rt: Runtime, scope: Scope, receive: Receive
) -> tuple[Context, CompiledRoute | None, HTTPError | None] | None:
    """What every exchange starts with, HTTP request or WebSocket handshake (``bascule.websocket``):
    ``arrive``, ``match_route`` and the request's ``Context``, timed from now. Returns the context, the
    route (None when none matched) and the error that answers the request, if any; None when the
    client left before its request head was read (nothing to answer, nothing to log)."""
    started = time.perf_counter()
    try:
        request, request_id, client_ip, error = await arrive(rt, scope, receive)
    except ClientDisconnected:
        return None
    route, params, matched = None, dict[str, str](), ""
    if error is None:
        route, params, matched, error = match_route(rt, request)
    ctx = Context(
        request,
        request_id=request_id,
        route=route.info if route else NO_ROUTE,
        path_params=params,
        matched_path=matched,
        client_ip=client_ip,
        started=started,
        forward=route.forward if route else None,
    )
    return ctx, route, error


def match_route(rt: Runtime, request: Request) -> tuple[CompiledRoute | None, dict[str, str], str, HTTPError | None]:
    """The route of ``request`` (as ``arrive`` made it), its path parameters and matched prefix;
    or no route and the 404, or the 405 with ``Allow``, that answers it. Sends nothing.
    HTTP requests and WebSocket handshakes (``bascule.websocket``) are routed by it."""
    m = rt.router.match(request.method, request.path, request.host)
    if m.entry is not None:
        return m.target, m.params, _prefix(request.path, m.entry.depth), None
    if m.allowed:
        allow = ", ".join(sorted(m.allowed | ({"HEAD"} if "GET" in m.allowed else set())))
        return None, {}, "", HTTPError(405, f"{request.method} is not allowed here.", {"allow": allow})
    return None, {}, "", HTTPError(404, "No route matches this request.")


def _head_size(scope: Scope) -> int:
    """Bytes of the request head: request line and header fields, as on the wire."""
    size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 12
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


async def arrive(rt: Runtime, scope: Scope, receive: Receive) -> tuple[Request, str, str, HTTPError | None]:
    """The client's request as the gateway sees it, or the error that answers it.

    Returns the request (headers cleaned, Host validated, path normalised,
    body not read yet: a ``PendingBody``), the request id, the client address
    (after trusted proxies) and an error for a request that cannot be served.
    Nothing is received from the client here, so no ``100 Continue`` is sent
    before the route's ``on_request`` accepted the request (``_take_body``).
    ``scope`` is an ASGI ``http`` scope; a WebSocket handshake (``bascule.websocket``)
    arrives through here too, as the GET its ``websocket`` scope describes.
    """
    headers = Headers(scope["headers"])
    peer = scope["client"][0] if scope.get("client") else ""
    trusted = peer in rt.trusted
    given = headers.get("x-request-id") if trusted else None
    request_id = given if given and len(given) <= 200 and set(given) <= _SAFE_ID else new_request_id()
    method, scheme = scope["method"], scope.get("scheme", "http")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    error: HTTPError | None = None
    if _head_size(scope) > rt.max_header_size:
        # hypercorn (h11) itself only limits a head still incomplete after one 64 KiB read.
        error = HTTPError(431, f"The request head is larger than {rt.max_header_size} bytes.", {"connection": "close"})
    if not raw_path.startswith(b"/"):
        raw_path, target_error = absolute_form(headers, raw_path)
        error = error or target_error
    error = check_host(headers, scope.get("http_version", "1.1")) or error
    error = error or check_framing(headers)
    body: Body = b""
    if error is None:
        try:  # decided before hop-by-hop fields (Transfer-Encoding) go; read once accepted
            if _declares_body(headers, rt.max_body_size, scope.get("http_version", "1.1")):
                body = PendingBody(receive, rt.max_body_size, rt.buffer_size)
        except HTTPError as e:
            error = e
    client_ip = rt.trusted.client_ip(peer, headers.get_all("x-forwarded-for")) if trusted else peer
    try:
        arrival_headers(headers, peer=peer, trusted=trusted, client_ip=client_ip, scheme=scheme, request_id=request_id)
    except InvalidField as e:  # a trusted proxy's forwarding fields: none is believed
        error, client_ip, body = error or HTTPError(400, str(e)), peer, b""
        arrival_headers(headers, peer=peer, trusted=False, client_ip=peer, scheme=scheme, request_id=request_id)
    try:
        path = normalise(raw_path)
    except InvalidPath as e:
        path, error = scope["path"], error or HTTPError(400, str(e))
    query = scope.get("query_string", b"").decode("latin-1")
    parsed = parse_host(headers.get("host") or "")
    host = parsed[0] if parsed else ""
    return Request(method, path, query, headers, body, scheme=scheme, host=host), request_id, client_ip, error


def _prefix(path: str, depth: int) -> str:
    """The first ``depth`` segments of a normalised path ("" for none)."""
    if not depth:
        return ""
    segments = [s for s in path.split("/") if s]
    return "/" + "/".join(segments[:depth])


class PendingBody:
    """The client's request body, not received yet: an ``AsyncIterable[bytes]``.

    Nothing is received until someone iterates it (a plugin's
    ``request.read()``) or ``_take_body`` resolves it once ``on_request``
    accepted the request; hypercorn (``bascule.worker``) sends
    ``100 Continue`` then, on the first ``receive()``. Iterating raises
    ``HTTPError(413)`` past ``limit``, ``ClientDisconnected`` if the client goes away.
    """

    __slots__ = ("_receive", "_limit", "_buffer_size", "_chunks")

    def __init__(self, receive: Receive, limit: int, buffer_size: int) -> None:
        self._receive = receive
        self._limit = limit
        self._buffer_size = buffer_size
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = _stream_body([], self._receive, self._limit, 0)
        return self._chunks

    async def resolve(self) -> Body:
        """The body as ``_buffer_body`` reads it (bytes if it ends within ``buffer_size``,
        else a stream), or the rest of the stream when iterating has begun."""
        if self._chunks is not None:
            return self._chunks
        return await _buffer_body(self._receive, self._limit, self._buffer_size)


async def _take_body(ctx: Context) -> None:
    """``on_request`` accepted the request: its body is received now (``Pipeline.respond``)."""
    body = ctx.request.body
    if isinstance(body, PendingBody):
        ctx.request.body = await body.resolve()


def _declares_body(headers: Headers, limit: int, http_version: str = "1.1") -> bool:
    """Whether a body may follow the head; ``HTTPError(413)`` at once if its declared length exceeds ``limit``.

    HTTP/1 declares a body with Content-Length or Transfer-Encoding (RFC 9112 6.3);
    HTTP/2 and 3 may send one with neither, ended by the stream (RFC 9113 8.1).
    """
    length = headers.get("content-length")
    if length is None and "transfer-encoding" not in headers:
        return http_version not in ("1.0", "1.1")
    if length is not None:
        if int(length) == 0:
            return False
        if int(length) > limit:
            raise too_large(limit)
    return True


async def _buffer_body(receive: Receive, limit: int, buffer_size: int) -> Body:
    """The body as bytes if it ends within ``buffer_size``, else a stream of it, its first chunks included."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk, more = await receive_chunk(receive)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)
        if size >= buffer_size:
            return _stream_body(chunks, receive, limit, size)


async def _stream_body(head: list[bytes], receive: Receive, limit: int, size: int) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    more = True
    while more:
        chunk, more = await receive_chunk(receive)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            yield chunk
