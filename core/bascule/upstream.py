"""The upstream client: services, their targets, and a connection pool per target.

Built on httpcore's ``AsyncHTTPConnection`` (the layer beneath httpx), with
the gateway's own pool: a LIFO free-list that checks only the connection it
takes, capped by a ``trio.CapacityLimiter``. httpx's default pool scans every
pooled connection on every request (perf-notes.md measured it 2.4x slower),
and an httpx client keeps a cookie jar that would carry one user's upstream
cookies to the next user; this client has no cookie jar.

Responses whose length is known and at most ``buffer_size`` are read whole and
their connection returned at once; others stream, and the connection returns
to the pool when the response is closed.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httpcore
import trio
from bascule_sdk import Headers, HTTPError, Request, Response

from .config import ServiceSettings

__all__ = ["Pool", "PoolFull", "Service", "Upstreams"]

log = logging.getLogger("bascule.upstream")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
# Failures of a reused keep-alive connection that the server closed meanwhile.
_STALE = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)


class PoolFull(Exception):
    """Every connection to a target stayed busy for ``pool_timeout``."""


class Pool:
    """Keep-alive HTTP/1.1 connections to one target, most recently used first."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        keepalive_expiry: float,
        connect_timeout: float,
        read_timeout: float,
        pool_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        scheme = parts.scheme.encode()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin = httpcore.Origin(scheme, parts.hostname.encode(), port)
        self.base_path = parts.path.rstrip("/")
        default_port = port == (443 if parts.scheme == "https" else 80)
        host = parts.hostname if default_port else f"{parts.hostname}:{port}"
        self.host_header = host.encode()
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._pool_timeout = pool_timeout
        self._timeouts = {"connect": connect_timeout, "read": read_timeout,
                          "write": read_timeout, "pool": pool_timeout}

    @property
    def in_use(self) -> int:
        return int(self._limiter.borrowed_tokens)

    async def send(self, request: Request, buffer_size: int) -> Response:
        """Send ``request`` (its ``path`` is the upstream path) and return the response.

        Raises httpcore exceptions, or ``PoolFull`` when no connection frees
        up within ``pool_timeout``.
        """
        token = object()
        with trio.move_on_after(self._pool_timeout) as waited:
            await self._limiter.acquire_on_behalf_of(token)
        if waited.cancelled_caught:
            raise PoolFull(self.url)
        try:
            return await self._send(request, buffer_size, token)
        except BaseException:
            self._limiter.release_on_behalf_of(token)
            raise

    async def _send(self, request: Request, buffer_size: int, token: object) -> Response:
        target = (self.base_path + request.path or "/").encode()
        if request.query:
            target += b"?" + request.query.encode()
        url = httpcore.URL(scheme=self.origin.scheme, host=self.origin.host,
                           port=self.origin.port, target=target)
        replayable = isinstance(request.body, bytes)
        headers = request.headers.raw
        if not any(k == b"host" for k, _ in headers):
            headers = [(b"host", self.host_header), *headers]
        while True:
            conn, reused = await self._checkout()
            core_request = httpcore.Request(
                request.method.encode(), url, headers=headers,
                content=request.body, extensions={"timeout": self._timeouts},
            )
            try:
                response = await conn.handle_async_request(core_request)
            except _STALE:
                await conn.aclose()
                if reused and replayable:
                    continue  # the server closed an idle connection: retry on a new one
                raise
            except BaseException:
                await conn.aclose()
                raise
            return await self._wrap(conn, request.method, response, buffer_size, token)

    async def _checkout(self) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.is_available() and not conn.has_expired():
                return conn, True
            await conn.aclose()
        conn = httpcore.AsyncHTTPConnection(
            self.origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry
        )
        return conn, False

    async def _wrap(
        self,
        conn: httpcore.AsyncHTTPConnection,
        method: str,
        response: httpcore.Response,
        buffer_size: int,
        token: object,
    ) -> Response:
        headers = Headers(response.headers)
        stream = response.stream

        async def release() -> None:
            with trio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[union-attr]
                if conn.is_available():
                    self._idle.append(conn)
                else:
                    await conn.aclose()
                self._limiter.release_on_behalf_of(token)

        length = headers.get("content-length")
        if method == "HEAD" or response.status in _NO_BODY_STATUS or response.status < 200:
            small = True
        else:
            small = length is not None and length.isdigit() and int(length) <= buffer_size
        if small:
            try:
                body = b"".join([chunk async for chunk in stream])  # type: ignore[union-attr]
            finally:
                await release()
            return Response(response.status, headers, body)
        return Response(response.status, headers, _chunks(stream), close=release)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            for conn in idle:
                await conn.aclose()


async def _chunks(stream: object) -> AsyncIterator[bytes]:
    async for chunk in stream:  # type: ignore[attr-defined]
        yield chunk


class Service:
    """A named service: its targets, chosen by weighted round-robin."""

    def __init__(self, name: str, settings: ServiceSettings, buffer_size: int) -> None:
        self.name = name
        self.settings = settings
        self.buffer_size = buffer_size
        self.pools: list[Pool] = []
        order: list[Pool] = []
        for t in settings.targets:
            url, weight = (t, 1) if isinstance(t, str) else (t.url, t.weight)
            pool = Pool(
                url,
                max_connections=settings.max_connections,
                keepalive_expiry=settings.keepalive_expiry,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                pool_timeout=settings.pool_timeout,
            )
            self.pools.append(pool)
            order += [pool] * weight
        self._cycle = itertools.cycle(_interleave(order))

    def pick(self) -> Pool:
        return next(self._cycle)

    async def send(self, request: Request) -> tuple[Response, Pool, float]:
        """Send to the next target; on a connect failure of an idempotent request,
        try each other target once. Returns the response, the target's pool
        and the seconds until the response head arrived.

        Raises ``HTTPError`` 502 (unreachable or broken upstream), 503 (no
        free connection in time) or 504 (no answer within ``timeout``).
        """
        attempts = len(self.pools) if request.method in IDEMPOTENT else 1
        start = time.perf_counter()
        for attempt in range(attempts):
            pool = self.pick()
            try:
                with trio.fail_after(self.settings.timeout):
                    response = await pool.send(request, self.buffer_size)
                return response, pool, time.perf_counter() - start
            except (httpcore.ConnectError, OSError) as e:
                log.warning("service %s: cannot connect to %s: %s", self.name, pool.url, e)
                if attempt + 1 == attempts:
                    raise HTTPError(502, f"The service {self.name!r} is unreachable.") from None
            except PoolFull:
                raise HTTPError(503, f"The service {self.name!r} is busy.",
                                {"retry-after": "1"}) from None
            except (trio.TooSlowError, httpcore.TimeoutException):
                raise HTTPError(504, f"The service {self.name!r} did not answer in time.") from None
            except (httpcore.ProtocolError, httpcore.NetworkError) as e:
                log.warning("service %s: %s failed: %r", self.name, pool.url, e)
                raise HTTPError(502, f"The service {self.name!r} sent an invalid response.") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


def _interleave(order: list[Pool]) -> list[Pool]:
    """Spread each target's slots evenly (smooth weighted round-robin)."""
    weights: dict[int, int] = {}
    pools: dict[int, Pool] = {}
    for p in order:
        weights[id(p)] = weights.get(id(p), 0) + 1
        pools[id(p)] = p
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    result = []
    for _ in range(total):
        for k, w in weights.items():
            current[k] += w
        best = max(current, key=current.__getitem__)
        current[best] -= total
        result.append(pools[best])
    return result


class Upstreams:
    """All services of a config, by name."""

    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        buffer_size: int,
        previous: Upstreams | None = None,
    ) -> None:
        old = previous.services if previous else {}
        self.services = {}
        for name, settings in services.items():
            kept = old.get(name)
            same = kept is not None and kept.settings == settings and kept.buffer_size == buffer_size
            self.services[name] = kept if same else Service(name, settings, buffer_size)

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    async def aclose(self, keep: Upstreams | None = None) -> None:
        """Close every service's pools, except services that ``keep`` shares."""
        kept = {id(s) for s in keep.services.values()} if keep else set()
        for service in self.services.values():
            if id(service) not in kept:
                await service.aclose()
