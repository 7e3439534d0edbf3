"""One HTTP/1.1 client connection on a trio TCP stream, parsed with h11.

What ``upstream.Pool`` uses for ``http://`` targets (``https://`` ones keep
httpcore). It does one thing per call and holds no pool: ``request`` writes a
request (head and a bytes body in one send; an async-iterable body chunk by
chunk) and reads up to the final response head, ``body`` yields that
response's body, and after its end the connection is either ready for the
next request (h11 says both sides are ``DONE``) or closed.

Reads and writes go straight to the non-blocking socket and wait on trio
(``wait_readable``/``wait_writable``, under a cancel scope for the timeout)
only when the socket is not ready: trio's ``SocketStream`` adds two
checkpoints and a conflict check to every call, which is most of a proxied
request's client cost on loopback.

Failures are raised as httpcore's exception classes (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``ReadError``,
``WriteError``, ``RemoteProtocolError``, ``LocalProtocolError``) so that the
caller handles both clients alike. Response header names come lower-cased
(h11 normalises them).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import h11
import httpcore
import trio

from ..headers import for_h11, with_lines

__all__ = ["H11Connection", "Informational"]

# As httpcore: a response head larger than this is a protocol error.
MAX_HEAD = 100 * 1024
READ_SIZE = 64 * 1024

Header = tuple[bytes, bytes]
# Called with each interim (1xx, not 101) response: its status and headers.
Informational = Callable[[int, list[Header]], Awaitable[None]]

_NETWORK = (OSError, trio.ClosedResourceError)


class H11Connection:
    """An HTTP/1.1 connection to one origin; one request at a time."""

    __slots__ = (
        "_sock",
        "_h11",
        "_read_timeout",
        "_write_timeout",
        "_keepalive_expiry",
        "_expires",
        "closed",
    )

    def __init__(
        self, sock: socket.socket, *, read_timeout: float, write_timeout: float, keepalive_expiry: float
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._keepalive_expiry = keepalive_expiry
        self._expires = 0.0
        self.closed = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        keepalive_expiry: float,
    ) -> H11Connection:
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        # trio connected it (happy eyeballs, TCP_NODELAY); from here on, the plain socket.
        sock = socket.socket(fileno=stream.socket.detach())
        return cls(sock, read_timeout=read_timeout, write_timeout=write_timeout, keepalive_expiry=keepalive_expiry)

    def is_idle(self) -> bool:
        """Between two requests: the last response ended and both sides may go on."""
        return not self.closed and self._h11.our_state is h11.IDLE

    def is_reusable(self, *, trust_for: float = 0.0) -> bool:
        """Idle, not expired, and the server has neither closed it nor sent anything since.

        The last takes a system call; it is skipped for a connection idle for less than
        ``trust_for`` seconds (a caller that can send the request again on a new
        connection if this one turns out closed)."""
        if self.closed or self._h11.our_state is not h11.IDLE:
            return False
        now = trio.current_time()
        if now >= self._expires:
            return False
        idle_since = self._expires - self._keepalive_expiry
        return now - idle_since < trust_for or self._quiet()

    def _quiet(self) -> bool:
        """Nothing to read: the server neither closed the connection nor sent anything."""
        try:
            self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # end of stream, or bytes nobody asked for

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[Header],
        body: bytes | AsyncIterable[bytes],
        informational: Informational | None = None,
    ) -> tuple[int, list[Header]]:
        """Send a request; return the final response's status and headers.

        The headers must frame the body (``content-length`` or
        ``transfer-encoding: chunked``) unless it is empty. 1xx responses
        other than 101 go to ``informational`` (dropped without one); a 101
        is a protocol error (this client proposes no upgrade).
        """
        h = self._h11
        given, lines, parsed = for_h11(headers)
        try:
            head = with_lines(h.send(h11.Request(method=method, target=target, headers=given, _parsed=parsed)), lines)
            if isinstance(body, bytes):
                data = h.send(h11.Data(data=body)) if body else None
                await self._write(b"".join((head, data or b"", h.send(h11.EndOfMessage()) or b"")))
            else:
                await self._write(head)
                try:
                    async for chunk in body:
                        if chunk:
                            await self._write(h.send(h11.Data(data=chunk)) or b"")
                    await self._write(h.send(h11.EndOfMessage()) or b"")
                except httpcore.WriteError:
                    # The server may have answered early (a 413, say) and closed
                    # its side: read that answer rather than fail (as httpcore).
                    pass
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    return event.status_code, list(event.headers)
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        raise httpcore.RemoteProtocolError("the upstream switched protocols unasked (101)")
                    if informational is not None:
                        await informational(event.status_code, list(event.headers))
                    continue
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
        except h11.RemoteProtocolError as e:
            raise httpcore.RemoteProtocolError(str(e)) from e
        except h11.LocalProtocolError as e:
            raise httpcore.LocalProtocolError(str(e)) from e

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk; at its end the connection is
        ready for another request or closed. Raises ``RemoteProtocolError``
        if the server closes the connection before the body's end."""
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as e:
                raise httpcore.RemoteProtocolError(str(e)) from e
            if type(event) is h11.Data:  # h11's events are ABCs: isinstance costs more (worker._H11)
                yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                self._finish()
                return
            else:
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} in the response body")

    async def read_body(self) -> bytes:
        """The whole response body (see ``body``)."""
        chunks = [chunk async for chunk in self.body()]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _finish(self) -> None:
        h = self._h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self._expires = trio.current_time() + self._keepalive_expiry
        else:
            self.close()

    async def _next_event(self) -> object:
        h = self._h11
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            h.receive_data(await self._receive())

    async def _receive(self) -> bytes:
        sock = self._sock
        while True:
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as e:
                raise httpcore.ReadError(str(e) or type(e).__name__) from e
            await self._ready(trio.lowlevel.wait_readable, self._read_timeout, httpcore.ReadError, httpcore.ReadTimeout)

    async def _write(self, data: bytes) -> None:
        sock = self._sock
        view = memoryview(data)
        while True:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                pass
            except OSError as e:
                raise httpcore.WriteError(str(e) or type(e).__name__) from e
            if not view:
                return
            await self._ready(
                trio.lowlevel.wait_writable, self._write_timeout, httpcore.WriteError, httpcore.WriteTimeout
            )

    async def _ready(
        self,
        wait: Callable[[socket.socket], Awaitable[None]],
        seconds: float,
        failed: type[httpcore.NetworkError],
        too_slow: type[httpcore.TimeoutException],
    ) -> None:
        """``wait`` (``wait_readable``/``wait_writable``) on the socket for at most ``seconds``:
        ``failed`` if the socket fails meanwhile, ``too_slow`` when the time is up.

        Under an enclosing deadline that comes first (the call's ``timeout`` while the head is
        awaited: by default both are 30 s), no scope of its own: it could never fire, and a
        cancel scope costs trio about 7 µs."""
        deadline = trio.current_time() + seconds
        if deadline >= trio.current_effective_deadline():
            await self._wait(wait, failed)
            return
        with trio.CancelScope(deadline=deadline) as scope:
            await self._wait(wait, failed)
        if scope.cancelled_caught:
            raise too_slow(f"the upstream was not ready within {seconds:g} s")

    async def _wait(
        self, wait: Callable[[socket.socket], Awaitable[None]], failed: type[httpcore.NetworkError]
    ) -> None:
        try:
            await wait(self._sock)
        except _NETWORK as e:
            raise failed(str(e) or type(e).__name__) from e

    def close(self) -> None:
        """Close the socket now (no checkpoint: safe in a cancelled scope)."""
        if not self.closed:
            self.closed = True
            sock = self._sock
            try:  # take what already arrived (a bounded amount): unread bytes make close() reset the connection
                for _ in range(4):
                    if not sock.recv(READ_SIZE):
                        break
            except OSError:  # BlockingIOError included: nothing more for now
                pass
            trio.lowlevel.notify_closing(sock)
            sock.close()
