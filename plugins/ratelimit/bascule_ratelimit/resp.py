"""One plain connection to one Redis server, for the rate limiter's batches (RESP2 on trio).

A batch of commands leaves in one write and its replies are read in order:
nothing more. coredis (``bascule_sdk.redis``) does all else: start-up, Sentinel,
Cluster, TLS, single commands and their recovery. It is the better client, but
each pipeline passes through its pool, its writer and reader tasks and a
request object per command. On a 2-core VM (``bench/redis_batches.py``) a batch
of 20 decisions costs this process about 540 CPU µs through coredis and 190
here; a batch of one, 260 and 85. A busy gateway sends batches of about 25: the
rate-limited request costs 30-40 µs less.

``Pipe.for_url`` speaks ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` and
``unix://[[USER]:PASSWORD@]/PATH``; for any other URL (TLS, Sentinel, Cluster,
query options) it returns ``None`` and coredis sends the batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import trio

__all__ = ["Address", "Pipe", "ReplyError"]

Arg = bytes | str | int


class ReplyError(Exception):
    """An error reply of the server (``-ERR ...``, ``-NOSCRIPT ...``): the command failed, the
    connection is still good."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


@dataclass(frozen=True)
class Address:
    """A server and how to log in: ``host`` and ``port``, or the Unix socket ``path``."""

    host: str | None
    port: int
    path: str | None
    username: str | None
    password: str | None
    db: int

    @classmethod
    def parse(cls, url: str) -> Address | None:
        """The address of a plain ``redis://`` or ``unix://`` URL, else ``None``."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix") or parts.query or parts.fragment:
            return None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if parts.scheme == "unix":
            return cls(None, 0, unquote(parts.path), username, password, 0)
        db = parts.path.strip("/")
        try:
            port = parts.port or 6379
        except ValueError:  # not a port: coredis says so
            return None
        if not (db == "" or db.isdigit()) or parts.hostname is None:
            return None
        return cls(parts.hostname, port, None, username, password, int(db or 0))


class Pipe:
    """Batches of commands to the server at ``address``. The connection opens on the first
    ``send`` and again after any failure: it never outlives an error, a timeout or a cancel."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._conn: _Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> Pipe | None:
        """A pipe for a plain ``redis://`` or ``unix://`` URL, else ``None`` (coredis speaks it)."""
        address = Address.parse(url)
        return cls(address) if address is not None else None

    async def send(self, commands: Sequence[Sequence[Arg]]) -> list[object]:
        """Each command's reply, in order; an error reply as a ``ReplyError`` in its place.

        Raises ``OSError`` or ``ConnectionError`` when the connection fails. Bound it with a
        cancel scope: a send that is cancelled or fails closes the connection (the replies
        still to come would otherwise answer the next batch)."""
        try:
            if self._conn is None:
                self._conn = await self._connect()
            return await self._conn.send(commands)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, if open (a later ``send`` opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stream.socket.close()

    async def _connect(self) -> _Connection:
        a = self.address
        if a.path is not None:
            stream = await trio.open_unix_socket(a.path)
        else:
            assert a.host is not None  # Address.parse: a host, or a path
            stream = await trio.open_tcp_stream(a.host, a.port)
        conn = _Connection(stream)
        setup: list[list[Arg]] = []
        if a.password is not None:
            setup.append(["AUTH", a.password] if a.username is None else ["AUTH", a.username, a.password])
        if a.db:
            setup.append(["SELECT", a.db])
        try:
            for reply in await conn.send(setup) if setup else ():
                if isinstance(reply, ReplyError):
                    raise ConnectionError(f"Redis refused the connection's set-up: {reply}")
        except BaseException:
            stream.socket.close()
            raise
        return conn


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, commands: Sequence[Sequence[Arg]]) -> list[object]:
        await self.stream.send_all(b"".join(_command(c) for c in commands))
        replies: list[object] = []
        pos = 0
        while len(replies) < len(commands):
            try:
                reply, pos = _reply(self.buffer, pos)
            except _Incomplete:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection") from None
                self.buffer = self.buffer[pos:] + data
                pos = 0
                continue
            replies.append(reply)
        self.buffer = self.buffer[pos:]
        return replies


def _command(args: Sequence[Arg]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _reply(buffer: bytes, pos: int) -> tuple[object, int]:
    """The RESP2 reply starting at ``pos`` and the position after it; ``_Incomplete`` if the
    buffer ends first. Bulk strings are bytes, nil is ``None``."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buffer[pos : pos + 1], buffer[pos + 1 : end], end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _reply(buffer, pos)
            items.append(item)
        return items, pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        return buffer[pos : pos + size], pos + size + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    raise ConnectionError(f"not a RESP2 reply (it starts with {kind!r})")
