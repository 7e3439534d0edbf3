"""WebSocket proxying: the handshake through the route's plugins, then a relay to the service.

A route with ``[routes.websocket]`` proxies WebSocket upgrades, over HTTP/1.1
and over HTTP/2's extended CONNECT (RFC 8441): hypercorn speaks both to the
client and hands the gateway an ASGI ``websocket`` scope. ``WebSockets.serve``:

1. **Handshake.** A request like any other: the arrival checks (Host,
   forwarded fields, path), routing, and the route's ``on_request`` hooks (auth,
   ACL, rate limit, CORS). Any refusal, the limits' included (open sockets
   per route: 503, per consumer: 429), is an HTTP answer sent before any
   upgrade (ASGI's websocket denial response): problem+json with the request id.
2. **Service.** A target chosen by the service's balancer; the request's
   fields as a proxied request's (``proxy.upstream_request``, the
   ``on_upstream_request`` hooks, ``headers.handshake_headers``); the client's
   subprotocols and its permessage-deflate offer. wsproto speaks the client
   side over a trio stream (TLS for ``https://`` targets). Targets are tried
   by ``Service.call``, the retry rule of HTTP requests: nothing is retried
   once the service accepted. The service's own refusal is passed on as its
   answer. An open socket is a request in flight to the service: it holds one
   of the service's ``max_requests`` (a handshake beyond them and
   ``max_queue`` is refused 503 with Retry-After) and counts in its target's
   requests for ``balance = "least-requests"``.
3. **Accept.** The client gets the subprotocol the service chose, and
   permessage-deflate only if the service took it.
4. **Relay.** Whole messages (fragments joined, at most ``max_message_size``:
   close 1009 to the sender, 1011 to the client for the service's), one at a time each way, each written before the
   next is read: a slow reader slows its writer down to TCP, and a socket
   holds at most a message per direction plus hypercorn's queue of received
   client messages (``max_app_queue_size``). The route's
   ``on_websocket_message`` hooks see each message when there are any.
5. **Close.** A close code goes on to the other side (1000 for a code that
   cannot be sent, 1001 for a client that vanished); 1011 to the client when
   the service fails (its connection lost or its protocol broken: 1014 is not
   used, wsproto-based clients take it for a protocol error); 1001 both ways
   after ``idle_timeout`` without a message, and at shutdown once
   ``graceful_timeout`` has passed. One access-log line per socket through
   ``on_log``, its facts in ``ctx.tags["websocket"]``. A config reload does not
   touch an open socket: it stays on the runtime it started on, its close
   logged through the current config's route of that name.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpcore
import trio
from bascule_sdk import DROP, Context, Headers, HTTPError, Request, Response, WebSocketClose, WebSocketMessage
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as WebSocketState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as Handshake
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import ProtocolError

from . import gateway as _gateway
from .config import WebSocketSettings
from .headers import handshake_headers, host_for, response_headers
from .proxy import upstream_request
from .upstream import Pool, Service
from .upstream.admission import Admission
from .worker import WEBSOCKET_OPTIONS

if TYPE_CHECKING:
    from .gateway import Gateway
    from .pipeline import Pipeline
    from .runtime import CompiledRoute, Runtime

__all__ = ["WebSockets"]

log = logging.getLogger("bascule")

K = TypeVar("K")
_RECEIVE = 64 * 1024
_HTTP_SCHEME = {"ws": "http", "wss": "https"}
_GOING_AWAY, _INTERNAL_ERROR, _TOO_BIG = 1001, 1011, 1009
_NOT_SENDABLE = frozenset({1004, 1005, 1006, 1015})  # reserved, or only ever reported locally (RFC 6455 7.4.1)


class WebSockets:
    """The WebSockets of one gateway process (kept across reloads): open sockets
    per route and per consumer, for the limits of ``[routes.websocket]``."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}  # by route name
        self.by_consumer: dict[tuple[str, str], int] = {}

    def _enter(self, route: str, who: str, limits: WebSocketSettings) -> HTTPError | None:
        """Count one more socket, or the refusal when a limit is reached."""
        if self.open.get(route, 0) >= limits.max_connections:
            return HTTPError(503, "This route has as many WebSockets open as it allows.", {"retry-after": "1"})
        per = limits.max_connections_per_consumer
        if per and self.by_consumer.get((route, who), 0) >= per:
            return HTTPError(429, f"You have {per} WebSockets open on this route, as many as it allows.")
        self.open[route] = self.open.get(route, 0) + 1
        self.by_consumer[(route, who)] = self.by_consumer.get((route, who), 0) + 1
        return None

    def _leave(self, route: str, who: str) -> None:
        _count_out(self.open, route)
        _count_out(self.by_consumer, (route, who))

    async def serve(self, gateway: Gateway, rt: Runtime, scope: dict, receive: Callable, send: Callable) -> None:
        """Serve one ASGI ``websocket`` scope on runtime ``rt``."""
        if (await receive())["type"] != "websocket.connect":
            return
        # The handshake as the HTTP request it is: a GET (RFC 8441's CONNECT too), http(s) (ASGI says ws(s)).
        http = {**scope, "method": "GET", "scheme": _HTTP_SCHEME.get(scope.get("scheme", "ws"), "http")}
        begun = await _gateway.begin(rt, http, receive)
        if begun is None:
            return
        ctx, route, error = begun
        request, request_id = ctx.request, ctx.request_id
        request.body = b""
        settings = route.settings if route else None
        if error is None and (settings is None or settings.websocket is None):
            error = HTTPError(403, f"The route {route.info.name if route else ''!r} does not accept WebSockets.")
        ctx.tags["websocket"] = {}  # a WebSocket handshake; the socket's facts once it closed
        pipeline = route.pipeline if route else rt.fallback
        if error is not None:
            ctx.error = error.detail
            await _deny(send, ctx, pipeline, await pipeline.finish(ctx, error.to_response(request_id)))
            return
        assert route is not None and settings is not None and settings.websocket is not None
        limits = settings.websocket
        refusal = await pipeline.admit(ctx)
        if refusal is not None:
            await _deny(send, ctx, pipeline, refusal)
            return
        who = f"consumer:{ctx.consumer.id}" if ctx.consumer else f"ip:{ctx.client_ip}"
        full = self._enter(route.info.name, who, limits)
        if full is not None:
            await _deny(send, ctx, pipeline, await pipeline.finish(ctx, full.to_response(request_id)))
            return
        try:
            await self._proxy(gateway, rt, route, ctx, limits, scope, receive, send)
        finally:
            self._leave(route.info.name, who)

    async def _proxy(
        self,
        gateway: Gateway,
        rt: Runtime,
        route: CompiledRoute,
        ctx: Context,
        limits: WebSocketSettings,
        scope: dict,
        receive: Callable,
        send: Callable,
    ) -> None:
        settings = route.settings
        assert settings is not None and settings.service is not None
        pipeline = route.pipeline
        offered = Headers(scope["headers"]).get_all("sec-websocket-extensions")
        deflate = any(e.split(";")[0].strip().lower() == "permessage-deflate" for v in offered for e in v.split(","))
        try:
            request = upstream_request(ctx, settings.strip_path, settings.preserve_host)
            try:
                await pipeline.upstream_request(ctx, request)
            except HTTPError:
                raise
            except Exception:
                log.exception("a plugin failed in on_upstream_request (request %s)", ctx.request_id)
                raise HTTPError(500, "The gateway failed to process this request.") from None
            service = rt.upstreams[settings.service]
            upstream = await _connect(service, ctx, request, list(scope.get("subprotocols") or ()), deflate)
        except HTTPError as e:
            if e.status >= 500:
                ctx.error = e.detail
            await _deny(send, ctx, pipeline, await pipeline.finish(ctx, e.to_response(ctx.request_id)))
            return
        if isinstance(upstream, Response):  # the service's refusal, passed on
            await _deny(send, ctx, pipeline, await pipeline.finish(ctx, upstream))
            return
        relay = _Relay(ctx, pipeline, limits, upstream, receive, send)
        try:
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": upstream.subprotocol,
                    "headers": [(b"x-request-id", ctx.request_id.encode())],
                    WEBSOCKET_OPTIONS: {
                        "max_message_size": limits.max_message_size,
                        "permessage_deflate": upstream.deflate,
                        "ping_interval": limits.ping_interval,
                    },
                }
            )
            await relay.run()
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()
                ctx.tags["websocket"].update(relay.facts())
                current = gateway.runtime.routes.get(route.info.name) if rt.retiring else None
                await (current.pipeline if current else pipeline).log(ctx, Response(101))


def _count_out(counts: dict[K, int], key: K) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]


def _close_code(code: int) -> int:
    """``code`` as it may go on the wire to the other side."""
    return 1000 if code in _NOT_SENDABLE else code


class _Relay:
    """Both directions of one accepted WebSocket, and what they carried."""

    def __init__(
        self,
        ctx: Context,
        pipeline: Pipeline,
        limits: WebSocketSettings,
        upstream: _ServiceSocket,
        receive: Callable,
        send: Callable,
    ) -> None:
        self.ctx = ctx
        self.hooks = pipeline.on_websocket_message
        self.limits = limits
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self.counts = {"messages_in": 0, "bytes_in": 0, "messages_out": 0, "bytes_out": 0}
        self.close_code: int | None = None
        self.closed_by: str | None = None
        self.started = time.perf_counter()
        self._idle = trio.CancelScope()

    def facts(self) -> dict[str, Any]:
        """What the access log and metrics record of this socket."""
        return {
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
            **self.counts,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
            "subprotocol": self.upstream.subprotocol,
        }

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._done = nursery.cancel_scope
                nursery.start_soon(self._from_client)
                nursery.start_soon(self._from_service)
                nursery.start_soon(self._watch_idle)
        except BaseException as e:  # cancelled: shutdown, once graceful_timeout has passed; or a bug
            if self.close_code is None:
                cancelled = isinstance(e, trio.Cancelled) or (
                    isinstance(e, BaseExceptionGroup) and e.split(trio.Cancelled)[1] is None
                )
                code, reason = (_GOING_AWAY, "The gateway is shutting down.") if cancelled else (_INTERNAL_ERROR, "")
                with trio.CancelScope(shield=True) as shielded:
                    shielded.deadline = trio.current_time() + 1.0
                    await self._close_both(code, reason, "gateway")
            raise

    def _touch(self) -> None:
        self._idle.deadline = trio.current_time() + self.limits.idle_timeout

    async def _watch_idle(self) -> None:
        self._touch()
        with self._idle:
            await trio.sleep_forever()
        await self._close_both(_GOING_AWAY, "Idle for too long.", "gateway")

    async def _close_both(self, code: int, reason: str, by: str) -> None:
        if self.close_code is None:
            self.close_code, self.closed_by = code, by
        await self._close_client(code, reason)
        await self.upstream.close(code, reason)
        self._done.cancel()

    async def _close_client(self, code: int, reason: str = "") -> None:
        try:
            await self.send({"type": "websocket.close", "code": _close_code(code), "reason": reason})
        except Exception:  # the client is gone already
            log.debug("websocket %s: could not close the client side", self.ctx.request_id, exc_info=True)

    async def _from_client(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] != "websocket.receive":  # websocket.disconnect
                code = int(message.get("code", 1005))
                self.close_code, self.closed_by = code, message.get("bascule.closed_by", "client")
                await self.upstream.close(_GOING_AWAY if code == 1006 else code, "")
                self._done.cancel()
                return
            text = message.get("text")
            data = await self._pass("client", text if text is not None else (message.get("bytes") or b""))
            if data is not None and not await self.upstream.send_message(data):
                return  # the service is gone: _from_service closes the client

    async def _from_service(self) -> None:
        while True:
            try:
                event = await self.upstream.receive_message(self.limits.max_message_size)
            except _TooBig:  # 1009 to the sender; the client sees a failing service
                await self.upstream.close(_TOO_BIG, "")
                await self._service_failed("The service sent a message larger than max_message_size.")
                return
            except _Lost:
                await self._service_failed("The service's connection was lost.")
                return
            if isinstance(event, CloseConnection):  # the service closed: the same code to the client
                self.close_code, self.closed_by = event.code, "service"
                await self._close_client(event.code, event.reason or "")
                self._done.cancel()
                return
            data = await self._pass("service", event)
            if data is not None:
                await self.send({"type": "websocket.send", "text" if isinstance(data, str) else "bytes": data})

    async def _service_failed(self, why: str) -> None:
        self.ctx.error = why
        self.close_code, self.closed_by = _INTERNAL_ERROR, "service"
        await self._close_client(_INTERNAL_ERROR, why)
        self._done.cancel()

    async def _pass(self, sender: Literal["client", "service"], data: str | bytes) -> str | bytes | None:
        """Count a message from ``sender``; what to relay after the route's
        ``on_websocket_message`` hooks (None: dropped, or the socket closed)."""
        self._touch()
        size = len(data.encode()) if isinstance(data, str) else len(data)
        way = "in" if sender == "client" else "out"
        self.counts[f"messages_{way}"] += 1
        self.counts[f"bytes_{way}"] += size
        if not self.hooks:
            return data
        message = WebSocketMessage(sender, data, size)
        hook = None
        try:
            for hook in self.hooks:
                if await hook.call(self.ctx, message) is DROP:
                    return None
        except WebSocketClose as e:
            await self._close_both(e.code, e.reason, "gateway")
            return None
        except Exception as e:
            log.error(
                "plugin %r failed in on_websocket_message (request %s)",
                hook.instance if hook else "?",
                self.ctx.request_id,
                exc_info=e,
            )
            self.ctx.error = f"plugin {hook.instance if hook else '?'!r} failed in on_websocket_message"
            await self._close_both(_INTERNAL_ERROR, "The gateway failed to process a message.", "gateway")
            return None
        return message.data


class _TooBig(Exception):
    """The service sent a message over the limit."""


class _Lost(Exception):
    """The service's connection broke, or it broke the protocol."""


@dataclass(eq=False)
class _ServiceSocket:
    """An accepted WebSocket to a service: wsproto's client side over a trio stream.

    Writes (the relay's messages, answers to pings, the close) are serialised
    by a lock: they come from both directions' tasks. Until ``aclose`` the
    socket counts in ``pool.in_use`` and holds ``admission``'s slot, if given.
    """

    stream: trio.abc.Stream
    ws: WSConnection
    subprotocol: str | None
    deflate: bool
    pool: Pool
    admission: Admission | None = None

    def __post_init__(self) -> None:
        self._lock = trio.Lock()
        self._closing = False
        self._open = True
        self.pool.upgraded += 1

    @property
    def status(self) -> int:
        """The handshake's answer (``upstream.Answer``): 101 Switching Protocols."""
        return 101

    async def _write(self, event: Any) -> bool:
        """Send ``event``; False when the connection is gone or closed."""
        try:
            data = self.ws.send(event)
            async with self._lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, OSError):
            return False
        return True

    async def send_message(self, data: str | bytes) -> bool:
        return await self._write(TextMessage(data) if isinstance(data, str) else BytesMessage(data))

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (once), and wait a moment for the service's."""
        if self._closing:
            return
        self._closing = True
        await self._write(CloseConnection(code=_close_code(code), reason=reason or None))

    async def receive_message(self, limit: int) -> str | bytes | CloseConnection:
        """The next whole message (at most ``limit`` bytes), or the service's close; pings answered.

        Raises ``_TooBig`` past ``limit`` and ``_Lost`` when the connection breaks.
        """
        parts: list[Any] = []
        size = 0
        while True:
            for event in self.ws.events():
                if isinstance(event, Message):
                    parts.append(event.data)
                    size += len(event.data.encode()) if isinstance(event.data, str) else len(event.data)
                    if size > limit:
                        raise _TooBig()
                    if event.message_finished:
                        return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                elif isinstance(event, Ping):
                    await self._write(event.response())
                elif isinstance(event, CloseConnection):
                    if event.code == 1006:
                        raise _Lost()
                    await self._write(event.response())
                    return event
            try:
                data = await self.stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                raise _Lost() from None
            try:
                self.ws.receive_data(bytes(data) or None)
            except ProtocolError:
                raise _Lost() from None

    async def aclose(self) -> None:
        """Close the connection; after a close frame of ours, once the service answered
        it (RFC 6455 7.1.1), or a second passed. Idempotent."""
        if not self._open:
            return
        self._open = False
        self.pool.upgraded -= 1
        if self.admission is not None:
            self.admission.leave()
        with trio.move_on_after(1.0):
            try:
                while self.ws.state is WebSocketState.LOCAL_CLOSING:
                    self.ws.receive_data(bytes(await self.stream.receive_some(_RECEIVE)) or None)
                    for _ in self.ws.events():
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, OSError):
                pass
        await trio.aclose_forcefully(self.stream)


async def _connect(
    service: Service, ctx: Context, request: Request, subprotocols: list[str], deflate: bool
) -> _ServiceSocket | Response:
    """A WebSocket to one of ``service``'s targets, or the service's refusal (an HTTP response).

    Admitted as any request to ``service`` (the socket holds its slot until
    ``aclose``), then targets are tried by ``Service.call``. Raises
    ``HTTPError`` 502 (unreachable or broken), 503 (no available target,
    ``max_requests`` and ``max_queue`` full) or 504 (no answer within
    ``timeout``).
    """
    fields = request.headers.raw  # the Host in them, if preserve_host kept it
    request.headers.raw = handshake_headers(ctx, request)
    query = f"?{request.query}" if request.query else ""
    settings = service.settings

    def attempt(pool: Pool) -> Awaitable[_ServiceSocket | Response]:
        handshake = Handshake(
            host=host_for(fields, pool.host_header).decode("latin-1"),
            target=((pool.base_path + request.path) or "/") + query,
            extra_headers=request.headers.raw,  # the attempt's traceparent included
            subprotocols=subprotocols,
            extensions=[PerMessageDeflate()] if deflate else [],
        )
        return _open(pool, settings.connect_timeout, handshake, service.buffer_size)

    admission = service.admission
    if admission is not None:
        await admission.enter()
    try:
        outcome, pool, seconds = await service.call(request, ctx, attempt)
    except BaseException:
        if admission is not None:
            admission.leave()
        raise
    ctx.upstream = pool.url
    ctx.upstream_seconds = seconds
    if isinstance(outcome, _ServiceSocket):
        outcome.admission = admission
    elif admission is not None:
        admission.leave()
    return outcome


# What breaks a handshake once connected: as the HTTP clients report it to ``Service.call``.
_BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, _Lost)


async def _open(
    pool: Pool, connect_timeout: float, handshake: Handshake, buffer_size: int
) -> _ServiceSocket | Response:
    """One handshake with ``pool``'s target: the accepted socket, or its refusal
    (an HTTP response, its body at most ``buffer_size`` bytes). Fails as an
    attempt of ``Service.call`` does."""
    stream = await _dial(pool, connect_timeout)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(handshake))
        return await _answer(stream, ws, buffer_size, pool)
    except _BROKEN as e:
        await trio.aclose_forcefully(stream)
        raise httpcore.RemoteProtocolError(str(e) or type(e).__name__) from e
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _dial(pool: Pool, connect_timeout: float) -> trio.abc.Stream:
    """A connection to ``pool``'s target (TLS for ``https://``). Raises ``httpcore.ConnectError``
    or ``httpcore.ConnectTimeout``, as the HTTP clients do."""
    origin = pool.origin
    host = origin.host.decode()
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, origin.port)
            if origin.scheme == b"https":
                stream = trio.SSLStream(stream, _tls(), server_hostname=host, https_compatible=True)
                await stream.do_handshake()
            return stream
    except BaseException as e:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(e, trio.TooSlowError):
            raise httpcore.ConnectTimeout(f"connecting to {pool.url} timed out") from None
        if isinstance(e, OSError | trio.BrokenResourceError):
            raise httpcore.ConnectError(str(e) or type(e).__name__) from e
        raise


async def _answer(stream: trio.abc.Stream, ws: WSConnection, buffer_size: int, pool: Pool) -> _ServiceSocket | Response:
    refusal: Response | None = None
    body = bytearray()
    while True:
        data = await stream.receive_some(_RECEIVE)
        ws.receive_data(bytes(data) or None)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                deflate = any(isinstance(e, PerMessageDeflate) for e in event.extensions)
                return _ServiceSocket(stream, ws, event.subprotocol, deflate, pool)
            if isinstance(event, RejectConnection):
                headers = Headers(event.headers)
                response_headers(headers)
                headers.remove("content-length")  # _deny writes the body's
                refusal = Response(event.status_code, headers)
                if not event.has_body:
                    await trio.aclose_forcefully(stream)
                    return refusal
            elif isinstance(event, RejectData) and refusal is not None:
                body += event.data
                if len(body) > buffer_size:
                    raise _Lost()
                if event.body_finished:
                    await trio.aclose_forcefully(stream)
                    refusal.body = bytes(body)
                    return refusal
            elif isinstance(event, CloseConnection):  # the connection ended before an answer
                raise _Lost()


_TLS: list[ssl.SSLContext] = []


def _tls() -> ssl.SSLContext:
    """The TLS context of ``wss://`` (https:// targets): httpcore's, as the upstream pool's, for HTTP/1.1."""
    if not _TLS:
        context = httpcore.default_ssl_context()
        context.set_alpn_protocols(["http/1.1"])
        _TLS.append(context)
    return _TLS[0]


async def _deny(send: Callable, ctx: Context, pipeline: Pipeline, response: Response) -> None:
    """Answer the handshake with ``response`` instead of an upgrade (ASGI's websocket
    denial response), then run ``on_log``."""
    try:
        body = response.body if isinstance(response.body, bytes) else await response.read()
        headers = response.headers
        headers.set("content-length", str(len(body)))
        headers.set("x-request-id", ctx.request_id)
        await send({"type": "websocket.http.response.start", "status": response.status, "headers": headers.raw})
        await send({"type": "websocket.http.response.body", "body": body})
        ctx.bytes_sent = len(body)
    finally:
        await response.aclose()
        await pipeline.log(ctx, response)
