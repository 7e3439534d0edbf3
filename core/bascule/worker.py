"""hypercorn's trio worker, with connection handling that cannot stop the process.

``listen(app, config)`` serves an ASGI app as ``hypercorn.trio.run.worker_serve``
does, with these changes, all here and nowhere else:

- **Containment.** Whatever escapes one connection (a protocol error, a send
  conflict, a bug) is logged once with the peer address, counted
  (``contained_errors()``), and ends that connection only. Stock hypercorn
  lets it out of the serve nursery, which stops the process.
- **hypercorn issue #203** (open): when h11 rejects bytes that follow a
  request while the app is still answering, the reader task writes hypercorn's
  error response or half-closes the socket while the app task is writing its
  own: ``trio.BusyResourceError``. Every write and the close are serialised
  behind one lock, and bytes after a request that closes the connection are
  discarded (RFC 9112 9.6), so the client gets the app's whole answer and a
  close, every time. hypercorn's own error answers are problem+json.
- **Lingering close** (nginx's): a closing connection half-closes, then reads
  and discards for ``lingering_timeout``, so the kernel does not answer late
  client bytes with a reset that destroys the response in flight.
- **WebSockets** (``_WSStream``): what the gateway's ASGI app asks in its
  ``websocket.accept`` applies to that socket (a message size limit, no
  permessage-deflate the service did not take, keepalive pings), its
  ``websocket.disconnect`` carries the close code that ended the socket, and
  ``read_timeout`` does not end a connection carrying an open WebSocket (the
  route's ``idle_timeout`` does, in ``bascule.websocket``).
- **Cost per request** (the repository's docs/upstream/hypercorn-0.18.patch offers all
  but the fifth upstream, with measurements; docs/upstream/h11-0.16.patch the fifth,
  to h11): one keep-alive task per connection whose deadline moves, instead of a task
  spawned and cancelled per request; a plain cancel scope per read; the head of a
  response of known length written with its first body bytes (one write, not two); a
  write the socket takes at once made without the lock and the stream's extra
  checkpoints (``_write_now``); a final response's fields checked in one pass, and h11
  given only those it acts on (``headers.for_h11``).

This reaches into hypercorn's trio internals, so it is used only on the
version it was written against (``HYPERCORN``); on another version a warning
is logged and stock connections run, still contained. A test fails when the
installed hypercorn is not ``HYPERCORN``: read the new version's
``trio/tcp_server.py`` and ``protocol/h11.py`` before moving it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from typing import Any, cast

import h2.events
import h11
import trio
from bascule_sdk import HTTPError
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, Data, EndBody, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import STREAM_ID, H2ProtocolAssumedError, H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WebsocketBuffer, WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, H11SendableEvent, LifespanState
from hypercorn.utils import ShutdownError, parse_socket_addr, raise_shutdown, repr_socket_addr, wrap_app
from wsproto.connection import ConnectionState as WebSocketState
from wsproto.events import CloseConnection, Ping

from .headers import for_h11, new_request_id, with_lines

__all__ = ["HYPERCORN", "WEBSOCKET_OPTIONS", "contained_errors", "listen"]

log = logging.getLogger("bascule")

#: The hypercorn release (major.minor) whose internals ``_Connection`` overrides.
HYPERCORN = "0.18"

_contained = 0


def lingering_timeout(config: Config) -> float:
    """Seconds a closing connection still reads (and discards) what its client sends."""
    return float(getattr(config, "lingering_timeout", 2.0))


def contained_errors() -> int:
    """Connections of this process that ended on an error contained here."""
    return _contained


async def listen(
    app: Callable[..., Awaitable[None]],
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` (or ``sockets``) until ``shutdown_trigger`` returns.

    Runs the app's lifespan first; reports the bound URLs through
    ``task_status``; after shutdown, connections get ``config.graceful_timeout``
    to finish. TCP only (no QUIC).
    """
    wrapped = wrap_app(cast(Any, app), cast(Any, None), "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connection = _connection_class()
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in sockets.secure_sockets + sockets.insecure_sockets:
                    sock.listen(config.backlog)
            ssl_context = config.create_ssl_context()
            listeners: list[trio.abc.Listener[Any]] = []
            binds = []
            for sock in sockets.secure_sockets:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(trio.SSLListener(listener, cast(Any, ssl_context), https_compatible=True))
                binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            handler = partial(
                _contain, partial(connection, wrapped, config, context, ConnectionState(lifespan_state.copy()))
            )
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _contain(connection: Callable[[trio.abc.Stream], Awaitable[None]], stream: trio.abc.Stream) -> None:
    """Run one connection; what escapes it is logged and counted, and goes no further."""
    global _contained
    peer = _peer(stream)  # now: the socket may be gone when the error comes
    try:
        await connection(stream)
    except* Exception as group:
        _contained += 1
        errors = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(group))
        log.warning(
            "connection error from %s, connection closed: %s",
            peer,
            errors,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    leaves: list[Exception] = []
    for e in group.exceptions:
        leaves.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return leaves


def _peer(stream: trio.abc.Stream) -> str:
    transport: Any = getattr(stream, "transport_stream", stream)  # duck-typed: no .socket is AttributeError
    try:
        host, port = parse_socket_addr(transport.socket.family, transport.socket.getpeername()) or ("?", 0)
    except (AttributeError, OSError):
        return "an unknown peer"
    return f"{host}:{port}"


def _connection_class() -> type[TCPServer]:
    installed = version("hypercorn")
    if installed == HYPERCORN or installed.startswith(HYPERCORN + "."):
        return _Connection
    log.warning(
        "hypercorn %s is not %s, which bascule.worker was written for: connections run "
        "stock (hypercorn #203 unfixed, contained)",
        installed,
        HYPERCORN,
    )
    return TCPServer


class _Connection(TCPServer):
    """hypercorn's ``TCPServer`` with every write and the close behind ``send_lock``."""

    async def run(self) -> None:  # hypercorn 0.18's, with _Protocols for ProtocolWrapper
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            socket = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # not TLS
            alpn_protocol = "http/1.1"
            socket = cast(Any, self.stream).socket
            ssl = False
        self._plain = None if ssl else socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            self._idle = trio.CancelScope(deadline=trio.current_time() + self.config.keep_alive_timeout)
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _Protocols(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                )
                await self.protocol.initiate()
                task_group.spawn(self._keep_alive)
                await self._read_data()
                self._ended = True  # the client is gone: nothing to keep alive
                self._idle.cancel()
        except OSError:
            pass
        finally:
            await self._close()

    _closing = False  # the response is complete: what the client still sends is discarded
    _plain: Any = None  # the trio socket of a connection without TLS (``_write_now`` writes to it)
    _reading: trio.CancelScope | None = None
    _busy = False  # a request is in flight
    _ended = False  # the client closed its side, or stopped sending in time

    async def _read_data(self) -> None:  # hypercorn 0.18's, with the lingering close, and no contextlib
        timeout = self.config.read_timeout
        with trio.CancelScope() as self._reading:
            while True:
                try:
                    if timeout:
                        with trio.CancelScope(deadline=trio.current_time() + timeout) as read:
                            data = await self.stream.receive_some(MAX_RECV)
                        if read.cancelled_caught:
                            if self._carries_websocket():
                                continue  # a quiet socket: its route's idle_timeout decides
                            break
                    else:
                        data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if not self._closing:
                    await self.protocol.handle(RawData(bytes(data)))
                if not data:
                    break
        await self.protocol.handle(Closed())

    def _carries_websocket(self) -> bool:
        protocol = getattr(self.protocol, "protocol", None)
        streams = protocol.streams.values() if isinstance(protocol, H2Protocol) else [getattr(protocol, "stream", None)]
        return any(isinstance(s, WSStream) and s.state is ASGIWebsocketState.CONNECTED for s in streams)

    async def _keep_alive(self) -> None:
        """Close the connection once idle for ``keep_alive_timeout``, or at shutdown while idle.

        One task per connection, whose deadline ``protocol_send(Updated)``
        moves; hypercorn cancels and spawns a task per request instead.
        """
        with self._idle:
            await self.context.terminated.wait()
            if self._busy:
                await trio.sleep_forever()  # the end of the request moves the deadline to now
        if not self._ended:
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()

    async def protocol_send(self, event: Event) -> None:
        if type(event) is RawData:  # not isinstance: see _H11._handle_events
            data: bytes | memoryview = event.data
            if not self.send_lock.locked():  # no write or close in flight: this one may go first
                written = self._write_now(data)
                if written == len(data):
                    # Still a checkpoint, as every trio write is: without one the other connections'
                    # requests waited longer (the bare route's p99 at c=50 went from 38 to 60 ms).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
                data = memoryview(data)[written:]
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await self.protocol.handle(Closed())
        elif type(event) is Closed:
            async with self.send_lock:  # hypercorn #203: a write in flight ends before the close
                await self._linger() if await self._send_eof() else await self._close()
            await self.protocol.handle(Closed())
        elif type(event) is Updated:
            self._busy = not event.idle
            if self._busy:
                self._idle.deadline = math.inf
            elif self.context.terminated.is_set():
                self._idle.deadline = trio.current_time()
            else:
                self._idle.deadline = trio.current_time() + self.config.keep_alive_timeout

    def _write_now(self, data: bytes | memoryview) -> int:
        """How much of ``data`` the socket took at once, without waiting: 0 on TLS, once
        half-closed, when the socket is full or failed (``send_all`` then meets what is wrong).

        A response's one write usually fits the socket buffer. Through ``send_all`` it also took
        the lock (a checkpoint), a shielded cancel scope and the stream's checkpoints:
        ``bench/run --cases hypercorn,hypercorn-bascule`` (3b), 299 -> 256-272 CPU µs/request."""
        sock = self._plain
        if sock is None or sock.did_shutdown_SHUT_WR or (fd := sock.fileno()) < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0

    async def _send_eof(self) -> bool:
        """Half-close: whether the stream could (a TLS stream cannot)."""
        try:
            await cast(trio.SocketStream, self.stream).send_eof()
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _linger(self) -> None:
        """Read and discard for up to ``lingering_timeout`` before closing (nginx's lingering close).

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the response still in flight to the client.
        """
        self._closing = True
        reading = self._reading
        if reading is not None:
            reading.deadline = min(reading.deadline, trio.current_time() + lingering_timeout(self.config))


class _Protocols(ProtocolWrapper):
    """hypercorn's ``ProtocolWrapper`` with ``_H11`` for HTTP/1.1 and ``_H2`` for HTTP/2."""

    def __init__(self, *args: Any) -> None:  # hypercorn 0.18's, without building a protocol to replace
        app, config, context, task_group, state, ssl, client, server, send, alpn_protocol = args
        self.app, self.config, self.context, self.task_group, self.state = app, config, context, task_group, state
        self.ssl, self.client, self.server, self.send = ssl, client, server, send
        protocol = _H2 if alpn_protocol == "h2" else _H11
        self.protocol = protocol(app, config, context, task_group, state, ssl, client, server, send)

    async def handle(self, event: Event) -> None:
        await super().handle(event)
        if type(self.protocol) is H2Protocol:  # just upgraded from HTTP/1.1 (h2c, or the h2 preface)
            self.protocol.__class__ = _H2


class _H2(H2Protocol):
    """hypercorn's HTTP/2 protocol; DATA for a stream already answered is dropped;
    its WebSockets (RFC 8441) are ``_WSStream``.

    hypercorn 0.18 looks such a stream up without a guard: the ``KeyError``
    ends the connection and every request on it. A client sends such DATA
    whenever the gateway answers before the request body has ended (an
    early 413, or an empty DATA frame that carries END_STREAM).
    """

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        if not any(type(e) is h2.events.DataReceived for e in events):
            await super()._handle_events(events)
            return
        for event in events:  # one at a time: an earlier event may open or close a stream
            if type(event) is h2.events.DataReceived and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                await super()._handle_events([event])

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        await super()._create_stream(request)
        _own_websocket(self.streams.get(request.stream_id))


#: The key of a ``websocket.accept`` message that ``_WSStream`` reads.
WEBSOCKET_OPTIONS = "bascule.websocket"


class _WSStream(WSStream):
    """hypercorn's WebSocket stream, with what the app asks when it accepts.

    ``websocket.accept`` may carry ``WEBSOCKET_OPTIONS``: ``max_message_size``
    (this socket's limit, close 1009 beyond: hypercorn has one per process),
    ``permessage_deflate`` (False: not negotiated with the client, since the
    service did not take it; hypercorn always negotiates it) and
    ``ping_interval`` (seconds between pings to the client, 0 for none).
    ``websocket.disconnect`` carries the code that closed the socket and, under
    ``"bascule.closed_by"``, ``"client"`` or ``"gateway"`` (this stream's 1009);
    hypercorn's says 1000 or 1006 whatever the code was.
    """

    _close: tuple[int, str] | None = None  # the first close frame: code, who sent it
    _pinging: trio.CancelScope | None = None  # ended with the stream: its connection need not wait

    async def _accept(self, message: Any) -> None:
        options = message.get(WEBSOCKET_OPTIONS) or {}
        if "max_message_size" in options:
            self.buffer = _Buffer(int(options["max_message_size"]))
        if options.get("permessage_deflate") is False:
            self.handshake.extensions = None
        await super()._accept(message)
        if options.get("ping_interval"):
            self.task_group.spawn(self._ping_every, float(options["ping_interval"]))

    async def _ping_every(self, interval: float) -> None:
        with trio.CancelScope() as self._pinging:
            while not self.closed:
                await trio.sleep(interval)
                if self.state is ASGIWebsocketState.CONNECTED and not self.closed:
                    await self._send_wsproto_event(Ping())

    async def _send_wsproto_event(self, event: Any) -> None:
        if type(event) is CloseConnection and self._close is None and self.state is ASGIWebsocketState.CONNECTED:
            # Sent while the app has not closed: an answer to the client's close, or the 1009 here.
            by = "client" if self.connection.state is WebSocketState.REMOTE_CLOSING else "gateway"
            self._close = (event.code, by)
        await super()._send_wsproto_event(event)

    async def handle(self, event: Any) -> None:
        if type(event) is StreamClosed and self._pinging is not None:
            self._pinging.cancel()
        if (
            type(event) is StreamClosed
            and self._close is not None
            and not self.closed
            and self.app_put is not None
            and self.state is ASGIWebsocketState.CONNECTED
        ):
            self.closed = True
            code, by = self._close
            await self.app_put({"type": "websocket.disconnect", "code": code, "bascule.closed_by": by})
            return
        await super().handle(event)


class _Buffer(WebsocketBuffer):
    """hypercorn's message buffer, its limit in bytes for text too (hypercorn counts characters)."""

    def extend(self, event: Any) -> None:
        super().extend(event)
        if isinstance(event.data, str):
            self.length += len(event.data.encode()) - len(event.data)
            if self.length > self.max_length:
                raise FrameTooLargeError()


def _own_websocket(stream: object) -> None:
    """Make hypercorn's new WebSocket stream a ``_WSStream``. Done right after the stream is
    made and handed its request: the gateway accepts a WebSocket only once the service did,
    after network round trips, so no ``websocket.accept`` can come first."""
    if type(stream) is WSStream:
        stream.__class__ = _WSStream


class _ContinueOnReceive:
    """The app, whose first ``receive()`` sends the ``100 Continue`` a client waits for.

    hypercorn sends it as soon as the request head is parsed, before the app
    ran: a client was told to send its body before the gateway knew the route,
    or ran auth and rate limiting. Now the body is asked for only when the app
    wants it (RFC 9110 10.1.1); an app that answers first never sends it.
    """

    def __init__(self, app: Any, protocol: H11Protocol) -> None:
        self.app = app
        self.protocol = protocol

    async def __call__(self, scope: Any, receive: Callable, send: Callable, *args: Any) -> None:
        protocol = self.protocol

        async def receive_continued() -> Any:
            if getattr(protocol.connection, "they_are_waiting_for_100_continue", False):
                await protocol._send_h11_event(
                    h11.InformationalResponse(status_code=100, headers=protocol.config.response_headers("h11"))
                )
            return await receive()

        await self.app(scope, receive_continued, send, *args)


_ANSWERING = frozenset({h11.IDLE, h11.SEND_RESPONSE, h11.SEND_BODY})
_ERROR_DETAIL = {  # else: not valid HTTP/1.1
    413: "The request body is larger than the gateway accepts (max_body_size).",
    431: "The request head is too large.",
}


def max_body_size(config: Config) -> int | None:
    """The largest request body accepted (``[gateway] max_body_size``), None for no limit."""
    limit = getattr(config, "max_body_size", None)
    return None if limit is None else int(limit)


def declared_body_size(connection: Any, received: int) -> int:
    """The body size the client has committed to: ``received`` bytes plus what the chunk
    being read still declares (h11 0.16's ``ChunkedReader._bytes_in_chunk``, known as
    soon as the chunk header is parsed, before any of its bytes arrive)."""
    reader = getattr(connection, "_reader", None)
    remaining = getattr(reader, "_bytes_in_chunk", 0)
    return received + (remaining if isinstance(remaining, int) else 0)


class _H11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, with two changes to its error handling.

    Bytes after a request on a connection that must close (HTTP/1.0, or
    ``Connection: close``) no longer cut off the app's answer: they are
    discarded and the connection closes after the response (RFC 9112 9.6).
    hypercorn's own error answers (unparseable requests) are problem+json.

    A chunked body is refused as soon as its declared sizes (the bytes received
    plus the size the current chunk header announced) exceed ``max_body_size``:
    413 with ``Connection: close`` if the app has not begun its answer, then a
    (lingering) close either way; the app sees a disconnect, so a request being
    streamed upstream is aborted mid-body. None of the chunk is passed on.
    """

    _discarding = False
    _received = 0  # request body bytes received so far (for max_body_size)
    _head = b""  # a response head waiting for its first body bytes

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.app = cast(Any, _ContinueOnReceive(self.app, self))

    async def handle(self, event: Event) -> None:
        if not (self._discarding and isinstance(event, RawData)):
            await super().handle(event)

    async def _handle_events(self) -> None:  # hypercorn 0.18's, with the error branch above
        connection = cast(h11.Connection, self.connection)
        while True:  # no 100 Continue here: it waits for the app to receive (_ContinueOnReceive)
            complete = self.connection.their_state is h11.MUST_CLOSE
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                if complete and self.stream is not None:
                    self._discarding = True  # the close follows the app's response
                    break
                if connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(error.error_status_hint)
                await self.send(Closed())
                break
            # h11's and hypercorn's event classes are ABCs: isinstance costs about 150 ns where the
            # class does not match, ``type(event) is`` 30. About 20 such checks a request.
            if type(event) is h11.Data:
                self._received += len(event.data)
            if (event is h11.NEED_DATA or type(event) is h11.Data) and self._over_limit():
                await self._refuse_body()
                break
            if type(event) is h11.Request:
                self._received = 0
                await self.send(Updated(idle=False))
                if not event.method.isupper():  # hypercorn would upper-case it: "head" is not HEAD
                    await self._send_error_response(400)
                    await self.send(Closed())
                    break
                await self._check_protocol(event)
                await self._create_stream(event)
                _own_websocket(self.stream)
            elif event is h11.PAUSED:
                await self.can_read.clear()
                await self.can_read.wait()
            elif type(event) is h11.ConnectionClosed or event is h11.NEED_DATA or self.stream is None:
                break
            elif type(event) is h11.Data:
                await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))
            elif type(event) is h11.EndOfMessage:
                await self.stream.handle(EndBody(stream_id=STREAM_ID))
            elif isinstance(event, Data):  # WebSocket pass-through
                await self.stream.handle(event)

    def _over_limit(self) -> bool:
        limit = max_body_size(self.config)
        connection = self.connection
        if limit is None or self.stream is None or not isinstance(connection, h11.Connection):
            return False  # no request (or a WebSocket): no request body to limit
        return connection.their_state is h11.SEND_BODY and declared_body_size(connection, self._received) > limit

    async def _refuse_body(self) -> None:
        """The declared body exceeds ``max_body_size``: 413 unless the app is answering, then close."""
        self._discarding = True  # nothing more of this request is parsed
        if cast(h11.Connection, self.connection).our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            await self._send_error_response(413)
        await self.send(Closed())

    async def _check_protocol(self, event: h11.Request) -> None:
        """hypercorn's, less the h2c upgrade unless ``[gateway] h2c`` enables it: ``Upgrade: h2c``
        is ignored and the request answered over HTTP/1.1 (RFC 9113 3.1 deprecates it; RFC 9110
        7.8 lets a server ignore Upgrade). HTTP/2 comes by TLS ALPN, or the HTTP/2 preface (prior knowledge)."""
        if getattr(self.config, "h2c", False):
            await super()._check_protocol(event)
            return
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            raise H2ProtocolAssumedError(b"PRI * HTTP/2.0\r\n\r\n" + self.connection.trailing_data[0])

    async def stream_send(self, event: StreamEvent) -> None:
        """hypercorn's, but a final response's fields are checked all at once, and h11 writes only
        those it acts on (``headers.for_h11``)."""
        if type(event) is not Response or event.status_code < 200:
            await super().stream_send(event)
            return
        headers = [*event.headers, *self.config.response_headers("h11")]
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        given, lines, parsed = for_h11(headers)
        await self._send_h11_event(
            h11.Response(status_code=int(event.status_code), headers=given, _parsed=parsed), lines
        )

    async def _send_h11_event(self, event: H11SendableEvent, lines: bytes = b"") -> None:
        """hypercorn's, but the head of a response of known length waits for its first
        body bytes (one write, not two) and nothing empty is written. A head without
        Content-Length (a stream: server-sent events, long polls) leaves at once.
        What comes after a request's whole answer is dropped, not raised in the app.
        ``lines``: a response's fields that h11 was not given (``headers.for_h11``)."""
        if (
            type(event) is h11.Response
            and self.connection.their_state is h11.SEND_BODY
            and not any(name == b"connection" for name, _ in event.headers)
        ):
            # Answered before the request body was received (a refusal, an early 413): the
            # connection closes after, and says so (RFC 9110 10.1.1, RFC 9112 9.6).
            event = h11.Response(
                status_code=event.status_code,
                headers=[*event.headers, (b"connection", b"close")],
                reason=event.reason,
            )
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            state = getattr(self.connection, "h11_connection", self.connection).our_state  # also past a WebSocket
            if self.connection.their_state != h11.ERROR and state in _ANSWERING:
                raise
            return  # the request failed, or was answered already (hypercorn's own 400 beat the app's answer)
        if lines and data is not None:
            data = with_lines(data, lines)
        if type(event) is h11.Response and any(name == b"content-length" for name, _ in event.headers):
            self._head = data
            return
        if self._head:
            data, self._head = self._head + data, b""
        if data:
            await self.send(RawData(data=data))

    async def _send_error_response(self, status_code: int) -> None:
        request_id = new_request_id()
        detail = _ERROR_DETAIL.get(status_code, "The request is not valid HTTP/1.1.")
        problem = HTTPError(status_code, detail).to_response(request_id)
        headers = [
            *problem.headers.raw,
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=cast(bytes, problem.body)))
        await self._send_h11_event(h11.EndOfMessage())
