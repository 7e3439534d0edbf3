"""HTTP message types shared by the core and plugins.

``Headers`` keeps raw ``(name, value)`` byte pairs with lower-case names (the
form ASGI and the upstream client use), and offers a ``str`` API on top.
``Request`` and ``Response`` carry a body that is either ``bytes`` or an async
iterator of byte chunks (a stream). Nothing reads a stream unless a plugin asks
for it with ``read()``, which is bounded.
"""

from __future__ import annotations

import functools
import json
import operator
import string
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, overload

__all__ = [
    "HOP_BY_HOP",
    "TOKEN",
    "TOKEN_CHARS",
    "Body",
    "ClientDisconnected",
    "HTTPError",
    "Headers",
    "Request",
    "Response",
    "problem_body",
]

Body = bytes | AsyncIterable[bytes]

_TCHAR_SYMBOLS = "!#$%&'*+.^_`|~-"  # RFC 9110 5.6.2's tchar besides DIGIT and ALPHA

#: An RFC 9110 token (5.6.2): a field name, a method, an auth-scheme; a regular-expression
#: fragment, anchored where it is used (``rf"^{TOKEN}$"``).
TOKEN = rf"[0-9A-Za-z{_TCHAR_SYMBOLS}]+"  # "-" last: a literal, not a range

#: The bytes a token is made of (``TOKEN``'s, for checks with ``bytes.translate``).
TOKEN_CHARS = (string.digits + string.ascii_letters + _TCHAR_SYMBOLS).encode()

#: Hop-by-hop fields, lower case: they describe one connection (RFC 9110 7.6.1; Proxy-Authenticate
#: and Proxy-Authorization address the proxy, 11.7), so a proxy never forwards them, nor the fields
#: ``Connection`` names, and a cache never stores them (RFC 9111 3.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


#: The bytes no value may hold, as ints: ``13 in value`` is a memchr, where ``b"\r" in value``
#: costs about 170 ns more (CPython first tries the needle as an int, and clears the TypeError).
_CR, _LF, _NUL = b"\r\n\0"


def _b(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("latin-1")


_name = operator.itemgetter(0)  # a field's name


@functools.lru_cache(maxsize=1024)  # a gateway asks for few names, many times a request
def _key(name: str | bytes) -> bytes:
    """``name`` lower-cased, as bytes: how ``Headers.raw`` holds names."""
    return _b(name.lower())


class Headers:
    """An ordered multi-map of header fields, names case-insensitive.

    Values set through this API must not contain CR, LF or NUL: a value that
    does raises ``ValueError`` (a header can never be split by its content).
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        self.raw: list[tuple[bytes, bytes]] = list(raw) if raw is not None else []

    @classmethod
    def of(cls, items: dict[str, str] | Iterable[tuple[str, str]] | None = None) -> Headers:
        """Build from a dict or ``(name, value)`` pairs of ``str``."""
        h = cls()
        if items:
            for name, value in items.items() if isinstance(items, dict) else items:
                h.add(name, value)
        return h

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: str | None) -> str | None: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = _key(name)
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = _key(name)
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def __contains__(self, name: str) -> bool:
        key = _key(name)
        for k, _ in self.raw:
            if k == key:
                return True
        return False

    def has_any(self, keys: frozenset[bytes]) -> bool:
        """Whether a field of ``keys`` is present: names as ``raw`` holds them (lower-case bytes, a
        frozenset made once). One pass in C, for checking several names before rewriting the list."""
        return not keys.isdisjoint(map(_name, self.raw))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def add(self, name: str, value: str | bytes) -> None:
        """Append a field, keeping existing ones of the same name."""
        v = _b(value)
        if _CR in v or _LF in v or _NUL in v:
            raise ValueError(f"header {name!r}: value contains CR, LF or NUL")
        self.raw.append((_key(name), v))

    def set(self, name: str, value: str | bytes) -> None:
        """Replace every field of ``name`` with one."""
        self.remove(name)
        self.add(name, value)

    def setdefault(self, name: str, value: str | bytes) -> None:
        """Set ``name`` only when it is absent."""
        if name not in self:
            self.add(name, value)

    def remove(self, *names: str) -> None:
        """Drop every field with one of ``names`` (absent names are fine)."""
        keys = {_key(n) for n in names}
        self.raw = [(k, v) for k, v in self.raw if k not in keys]

    def copy(self) -> Headers:
        return Headers(self.raw)


async def _read(body: Body, limit: int | None) -> bytes:
    if isinstance(body, bytes):
        if limit is not None and len(body) > limit:
            raise HTTPError(413, f"Body larger than {limit} bytes.")
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if limit is not None and size > limit:
            raise HTTPError(413, f"Body larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class Request:
    """A request: what the client sent, or what will be sent upstream.

    ``path`` is percent-encoded and, for the client's request, already
    normalised (the path the route was matched on). ``query`` is the raw query
    string without ``?``. ``body`` is ``bytes`` or a stream.
    """

    __slots__ = ("method", "path", "query", "headers", "body", "scheme", "host")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Headers | None = None,
        body: Body = b"",
        *,
        scheme: str = "http",
        host: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.scheme = scheme
        self.host = host

    @property
    def target(self) -> str:
        """``path`` plus ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path

    async def read(self, limit: int | None = 1 << 20) -> bytes:
        """Read the whole body (at most ``limit`` bytes, else ``HTTPError(413)``).

        The stream is consumed: the bytes read become ``body``, so the request
        can still be forwarded afterwards.
        """
        self.body = await _read(self.body, limit)
        return self.body

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class Response:
    """A response on its way to the client.

    ``close`` (optional) is awaited once the body has been sent or dropped; the
    upstream client uses it to return a connection to its pool.
    """

    __slots__ = ("status", "headers", "body", "close")

    def __init__(
        self,
        status: int = 200,
        headers: Headers | dict[str, str] | None = None,
        body: Body = b"",
        *,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers.of(headers)
        self.body = body
        self.close = close

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response (``application/json``)."""
        body = json.dumps(data, separators=(",", ":")).encode()
        response = cls(status, headers, body)
        response.headers.set("content-type", "application/json")
        response.headers.set("content-length", str(len(body)))
        return response

    async def read(self, limit: int | None = 1 << 20) -> bytes:
        """Read the whole body (bounded like ``Request.read``); it becomes ``body``."""
        try:
            self.body = await _read(self.body, limit)
        finally:
            await self.aclose()
        return self.body

    async def aclose(self) -> None:
        """Release what the body holds (an upstream connection). Idempotent."""
        close, self.close = self.close, None
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HTTPError(Exception):
    """Raise from any hook to answer with ``status`` as RFC 9457 problem+json.

    ``detail`` is shown to the client: never put secrets or internal addresses
    in it. ``headers`` are added to the response (e.g. ``Retry-After``,
    ``WWW-Authenticate``). ``extra`` adds members to the problem object.
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.title = title or _REASONS.get(status, "Error")
        self.type = type
        self.extra = extra or {}
        super().__init__(f"{status} {self.title}: {detail or ''}")

    def to_response(self, request_id: str | None = None) -> Response:
        """The problem+json response for this error."""
        body = problem_body(self.status, self.title, self.detail, request_id, self.type, self.extra)
        response = Response(self.status, dict(self.headers), body)
        response.headers.set("content-type", "application/problem+json")
        response.headers.set("content-length", str(len(body)))
        return response


def problem_body(
    status: int,
    title: str,
    detail: str | None = None,
    request_id: str | None = None,
    type: str = "about:blank",
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Serialise an RFC 9457 problem object; ``request_id`` is an extension member."""
    problem: dict[str, Any] = {"type": type, "title": title, "status": status}
    if detail:
        problem["detail"] = detail
    if request_id:
        problem["request_id"] = request_id
    if extra:
        problem.update(extra)
    return json.dumps(problem, separators=(",", ":")).encode()


async def iterate(body: Body) -> AsyncIterator[bytes]:
    """Yield the body as chunks whether it is ``bytes`` or a stream."""
    if isinstance(body, bytes):
        if body:
            yield body
        return
    async for chunk in body:
        if chunk:
            yield chunk
