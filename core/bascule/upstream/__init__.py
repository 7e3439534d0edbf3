"""The upstream client: services, their targets, and a connection pool per target.

The one client that proxying, ``ctx.forward`` and health checks use. A
``Service`` picks a target (``balancing``), skips targets its breaker or its
probes hold out unless too few are healthy (panic mode, ``health``), retries
on another target within a budget (``retries``) and bounds the requests it
holds (``admission``). ``Service.call`` is that rule, for HTTP requests and
WebSocket handshakes alike. A probe is only a verdict: whatever goes wrong in it
fails that probe, and the checks go on.

``http://`` targets are spoken to by ``h11conn.H11Connection`` (h11 on a
non-blocking socket that waits on trio: one send per request head and bytes
body); ``https://`` targets by httpcore's ``AsyncHTTPConnection`` (the layer
beneath httpx), which keeps the TLS details. The environment variable
``BASCULE_UPSTREAM_CLIENT=httpcore``, read once at import, puts ``http://``
targets on httpcore too (to compare, or to fall back). Both sit in the
gateway's own pool: a LIFO free-list that checks only the connection it
takes, capped by a ``trio.CapacityLimiter``. httpx's default pool scans every
pooled connection on every request (perf-notes.md measured it 2.4x slower),
and an httpx client keeps a cookie jar that would carry one user's upstream
cookies to the next user; this client has no cookie jar.

Responses whose length is known and at most ``buffer_size`` are read whole and
their connection returned at once; others stream, and the connection returns
to the pool when the response is closed. Interim 1xx responses (103 Early
Hints...) from an ``http://`` target on the h11 client go to the caller's
``informational`` callback; httpcore drops them.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpcore
import trio
from bascule_sdk import Context, Headers, HTTPError, Request, Response, UpstreamCall
from bascule_sdk.tracecontext import new_span_id

from ..config import ServiceSettings
from ..headers import FRAMING, frame_body, set_trace, with_host
from .admission import Admission
from .balancing import make_balancer
from .h11conn import H11Connection, Informational
from .health import ServiceHealth, TargetHealth
from .retries import RetryBudget

__all__ = ["Answer", "Pool", "PoolFull", "Service", "Upstreams"]

log = logging.getLogger("bascule.upstream")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
# Failures of a reused keep-alive connection that the server closed meanwhile.
_STALE = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)
# Seconds a keep-alive connection is reused without asking the socket whether the server
# closed it: a server closing a connection it used within the second is rare, and a
# request that meets one is sent again on a new connection (``_STALE``) if its body is held.
TRUST_IDLE = 1.0
# The client of http:// targets: "h11" (h11conn) or "httpcore".
CLIENT = os.environ.get("BASCULE_UPSTREAM_CLIENT", "h11").strip().lower() or "h11"
if CLIENT not in ("h11", "httpcore"):
    raise RuntimeError(f'BASCULE_UPSTREAM_CLIENT: expected "h11" or "httpcore", got {CLIENT!r}')


class PoolFull(Exception):
    """Every connection to a target stayed busy for ``pool_timeout``."""


class Answer(Protocol):
    """What one attempt of ``Service.call`` returns: a ``Response``, or a WebSocket (status 101)."""

    @property
    def status(self) -> int: ...

    async def aclose(self) -> None: ...


A = TypeVar("A", bound=Answer)


# What a probe of an unreachable or broken target meets (logged at debug level).
_PROBE_FAILURES = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException, OSError, PoolFull)


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
        if not parts.hostname:  # the config accepts no target without a host
            raise ValueError(f"target {url!r} has no host")
        self.url = url
        scheme = parts.scheme.encode()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin = httpcore.Origin(scheme, parts.hostname.encode(), port)
        self.base_path = parts.path.rstrip("/")
        default_port = port == (443 if parts.scheme == "https" else 80)
        host = parts.hostname if default_port else f"{parts.hostname}:{port}"
        self.host_header = host.encode()
        self._host, self._port = parts.hostname, port
        self.client = "h11" if parts.scheme == "http" and CLIENT == "h11" else "httpcore"
        self.weight = 1
        self.health = TargetHealth(url, 0, 0.0)  # a Service sets its own
        self.upgraded = 0  # connections upgraded out of the pool (open WebSockets): counted in ``in_use``
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._idle_h11: list[H11Connection] = []
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._pool_timeout = pool_timeout
        self._timeouts = {"connect": connect_timeout, "read": read_timeout, "write": read_timeout, "pool": pool_timeout}

    @property
    def in_use(self) -> int:
        """Requests in flight to this target, open WebSockets included (``least-requests`` weighs them)."""
        return int(self._limiter.borrowed_tokens) + self.upgraded

    async def send(self, request: Request, buffer_size: int, informational: Informational | None = None) -> Response:
        """Send ``request`` (its ``path`` is the upstream path) and return the response.

        ``informational`` gets each 1xx response before the final one (not
        101; the h11 client only). Raises httpcore exceptions, or ``PoolFull``
        when no connection frees up within ``pool_timeout``.
        """
        token = object()
        try:
            self._limiter.acquire_on_behalf_of_nowait(token)  # the common case: no timer needed
        except trio.WouldBlock:
            with trio.move_on_after(self._pool_timeout) as waited:
                await self._limiter.acquire_on_behalf_of(token)
            if waited.cancelled_caught:
                raise PoolFull(self.url) from None
        try:
            if self.client == "h11":
                return await self._send_h11(request, buffer_size, token, informational)
            return await self._send(request, buffer_size, token)
        except BaseException:
            self._limiter.release_on_behalf_of(token)
            raise

    async def _send(self, request: Request, buffer_size: int, token: object) -> Response:
        target = (self.base_path + request.path or "/").encode()
        if request.query:
            target += b"?" + request.query.encode()
        url = httpcore.URL(scheme=self.origin.scheme, host=self.origin.host, port=self.origin.port, target=target)
        replayable = isinstance(request.body, bytes)
        headers = with_host(request.headers.raw, self.host_header)
        while True:
            conn, reused = await self._checkout()
            core_request = httpcore.Request(
                request.method.encode(),
                url,
                headers=headers,
                content=request.body,
                extensions={"timeout": self._timeouts},
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

    async def _send_h11(
        self, request: Request, buffer_size: int, token: object, informational: Informational | None
    ) -> Response:
        target = (self.base_path + request.path or "/").encode()
        if request.query:
            target += b"?" + request.query.encode()
        body = request.body
        replayable = isinstance(body, bytes)
        headers = with_host(request.headers.raw, self.host_header)
        if not any(k in FRAMING for k, _ in headers):  # a caller that did not frame its body
            headers = [*headers]
            frame_body(headers, request, None)
        method = request.method.encode()
        # A request we can send again on a new connection trusts one used within the second.
        trust_for = TRUST_IDLE if replayable else 0.0
        idle = self._idle_h11
        while True:
            conn: H11Connection | None = None
            while idle:
                conn = idle.pop()
                if conn.is_reusable(trust_for=trust_for):
                    break
                conn.close()
                conn = None
            reused = conn is not None
            if conn is None:
                conn = await H11Connection.connect(
                    self._host,
                    self._port,
                    connect_timeout=self._timeouts["connect"],
                    read_timeout=self._timeouts["read"],
                    write_timeout=self._timeouts["write"],
                    keepalive_expiry=self._keepalive_expiry,
                )
            try:
                status, raw = await conn.request(method, target, headers, body, informational)
            except _STALE:
                conn.close()
                if reused and replayable:
                    continue  # the server closed an idle connection: retry on a new one
                raise
            except BaseException:
                conn.close()
                raise
            return await self._wrap_h11(conn, request.method, status, raw, buffer_size, token)

    async def _wrap_h11(
        self,
        conn: H11Connection,
        method: str,
        status: int,
        raw: list[tuple[bytes, bytes]],
        buffer_size: int,
        token: object,
    ) -> Response:
        headers = Headers(raw)  # h11 lower-cases the names
        if method == "HEAD" or status in _NO_BODY_STATUS:
            small = True
        else:
            length = headers.get("content-length")
            small = length is not None and length.isdigit() and int(length) <= buffer_size
        if small:
            try:
                body = await conn.read_body()
            except BaseException:
                conn.close()
                raise  # send() returns the token
            self._release_h11(conn, token)
            return Response(status, headers, body)

        chunks = conn.body()

        async def release() -> None:
            await chunks.aclose()  # type: ignore[attr-defined]
            self._release_h11(conn, token)

        return Response(status, headers, chunks, close=release)

    def _release_h11(self, conn: H11Connection, token: object) -> None:
        if conn.is_idle():
            self._idle_h11.append(conn)
        else:
            conn.close()  # the body was left unread, or the server keeps no connection alive
        self._limiter.release_on_behalf_of(token)

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
        headers = Headers([(k.lower(), v) for k, v in response.headers])  # h11 keeps the wire's case
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
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                raise  # send() returns the token
            await release()
            return Response(response.status, headers, body)
        return Response(response.status, headers, _chunks(stream), close=release)

    async def aclose(self) -> None:
        idle_h11, self._idle_h11 = self._idle_h11, []
        for h11conn in idle_h11:
            h11conn.close()
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            for conn in idle:
                await conn.aclose()


async def _chunks(stream: object) -> AsyncIterator[bytes]:
    async for chunk in stream:  # type: ignore[attr-defined]
        yield chunk


class Service:
    """A named service: its targets, how one is chosen, retries, health and admission."""

    def __init__(self, name: str, settings: ServiceSettings, buffer_size: int) -> None:
        self.name = name
        self.settings = settings
        self.buffer_size = buffer_size
        self.pools: list[Pool] = []
        self.health = ServiceHealth(name, len(settings.targets), settings.panic_threshold)
        # A lone target is never ejected: there is nowhere else to go (nginx does the same).
        max_failures = settings.max_failures if len(settings.targets) > 1 else 0
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
            pool.weight = weight
            pool.health = TargetHealth(url, max_failures, settings.cool_off, self.health)
            self.pools.append(pool)
        self.balancer = make_balancer(settings.balance, self.pools)
        self.budget = RetryBudget(settings.retry_budget, settings.retry_budget_min)
        self.admission = (
            Admission(name, settings.max_requests, settings.max_queue, settings.queue_timeout)
            if settings.max_requests
            else None
        )
        self._retry_on = frozenset(settings.retry_on)
        self._fail_on = frozenset(settings.fail_on)
        self._checking = False
        self._checks: trio.CancelScope | None = None
        self._closed = False

    async def send(
        self, request: Request, ctx: Context | None = None, informational: Informational | None = None
    ) -> tuple[Response, Pool, float]:
        """Send ``request`` to a target, retrying on others as configured.

        Returns the response, the target's pool and the seconds until the
        response head arrived (every attempt included). ``ctx`` supplies the
        key of ``balance = "hash"``; ``informational`` gets the interim 1xx
        responses (not 101) of targets on the h11 client. Raises ``HTTPError`` 502 (unreachable or
        broken upstream), 503 (no available target, a full queue or pool)
        or 504 (no answer within ``timeout``).
        """
        buffer_size = self.buffer_size

        def attempt(pool: Pool) -> Awaitable[Response]:
            return pool.send(request, buffer_size, informational)

        admission = self.admission
        if admission is None:
            return await self.call(request, ctx, attempt)
        await admission.enter()
        try:
            response, pool, seconds = await self.call(request, ctx, attempt)
        except BaseException:
            admission.leave()
            raise
        if response.close is None:
            admission.leave()
        else:
            response.close = _then(response.close, admission.leave)
        return response, pool, seconds

    async def call(
        self, request: Request, ctx: Context | None, attempt: Callable[[Pool], Awaitable[A]]
    ) -> tuple[A, Pool, float]:
        """Run ``attempt(pool)`` on a target, and on others as the retry rule says.

        The one retry rule of the service's HTTP requests and WebSocket
        handshakes: a target from the balancer (keyed on ``request`` and
        ``ctx`` for ``balance = "hash"``); each attempt within ``timeout``,
        recorded in ``ctx.upstream_calls`` (its ``traceparent`` set on
        ``request.headers`` first) and in the target's health; a failed one
        tried again on another target within ``retries`` and the retry budget.
        ``attempt`` raises ``OSError`` or ``httpcore.ConnectError`` when it
        could not connect and ``httpcore.ConnectTimeout`` when connecting took
        too long (retried: nothing was sent), ``httpcore.ProtocolError`` or
        ``httpcore.NetworkError`` when the exchange broke (retried if
        ``request`` is repeatable: idempotent or ``retry_non_idempotent``, its
        body still held), or ``PoolFull`` (503 at once). An answer whose status
        is in ``retry_on`` is retried likewise (closed first), one in ``fail_on``
        counts as a failure.

        Returns the answer, the target's pool and the seconds until it came
        (every attempt included). Raises ``HTTPError`` 502 (unreachable or
        broken upstream), 503 (no available target, a full pool) or 504 (no
        answer within ``timeout``); anything else ``attempt`` raised, as is.
        """
        settings = self.settings
        start = time.perf_counter()
        now = trio.current_time()
        self.budget.request(now)
        key = self._key(request, ctx) if settings.balance == "hash" else None
        pool = self._pick(now, key, ())
        if pool is None:
            raise self._no_target(now)
        # Safe to repeat once sent: an idempotent method with a body we still hold.
        repeatable = (request.method in IDEMPOTENT or settings.retry_non_idempotent) and isinstance(request.body, bytes)
        tried: list[Pool] = []
        retries = settings.retries
        while True:
            tried.append(pool)
            health = pool.health
            health.begin(now)
            call = self._record(request, ctx, pool, settings.retries - retries)
            answer: A | None = None
            try:
                with trio.CancelScope(deadline=trio.current_time() + settings.timeout):
                    answer = await attempt(pool)
                if answer is None:  # the deadline passed
                    raise trio.TooSlowError
            except (httpcore.ConnectError, OSError) as e:
                log.warning("service %s: cannot connect to %s: %s", self.name, pool.url, e)
                _end(call, error="connect")
                health.failed(trio.current_time())
                error = HTTPError(502, f"The service {self.name!r} is unreachable.")
                retry = True  # nothing was sent
            except httpcore.ConnectTimeout:
                log.warning("service %s: connecting to %s timed out", self.name, pool.url)
                _end(call, error="timeout")
                health.failed(trio.current_time())
                error = HTTPError(504, f"The service {self.name!r} did not answer in time.")
                retry = True  # nothing was sent
            except PoolFull:
                _end(call, error="busy")
                health.abandoned()
                raise HTTPError(503, f"The service {self.name!r} is busy.", {"retry-after": "1"}) from None
            except (trio.TooSlowError, httpcore.TimeoutException):
                _end(call, error="timeout")
                health.failed(trio.current_time())
                raise HTTPError(504, f"The service {self.name!r} did not answer in time.") from None
            except httpcore.LocalProtocolError as e:  # the request itself (a plugin's field): not the service's fault
                log.error("service %s: the request is not valid HTTP, not sent: %s", self.name, e)
                _end(call, error="request")
                health.abandoned()
                raise HTTPError(500, "The gateway could not send this request upstream.") from None
            except (httpcore.ProtocolError, httpcore.NetworkError) as e:
                log.warning("service %s: %s failed: %r", self.name, pool.url, e)
                _end(call, error="protocol")
                health.failed(trio.current_time())
                error = HTTPError(502, f"The service {self.name!r} sent an invalid response.")
                retry = repeatable
            except BaseException:
                _end(call, error="cancelled")
                health.abandoned()
                raise
            else:
                status = answer.status
                _end(call, status=status)
                if status in self._fail_on:
                    health.failed(trio.current_time())
                else:
                    health.succeeded()
                retry = status in self._retry_on and repeatable
            if retry and retries and self.budget.allows(now := trio.current_time()):
                following = self._pick(now, key, tried)
                if following is not None:
                    self.budget.spend(now)
                    if answer is not None:
                        await answer.aclose()
                    retries -= 1
                    pool = following
                    continue
            if answer is None:
                raise error
            return answer, pool, time.perf_counter() - start

    def _record(self, request: Request, ctx: Context | None, pool: Pool, attempt: int) -> UpstreamCall | None:
        """Record the attempt in ``ctx.upstream_calls``; with ``ctx.trace``, send a
        ``traceparent`` naming the attempt's own span (every retry is a new span)."""
        if ctx is None:
            return None
        call = UpstreamCall(self.name, pool.url, request.method, request.path, attempt, time.perf_counter())
        ctx.upstream_calls.append(call)
        if (trace := ctx.trace) is not None:
            call.span_id = new_span_id()
            set_trace(request.headers, trace, call.span_id)
        return call

    def _pick(self, now: float, key: str | None, tried: Collection[Pool]) -> Pool | None:
        panic = self.health.panic
        pool = self.balancer.pick(now, key, tried, panic)
        if panic and pool is not None:
            self.health.panic_requests += 1
        return pool

    def _key(self, request: Request, ctx: Context | None) -> str | None:
        on = self.settings.hash_on
        if on.startswith("header:"):
            value = request.headers.get(on[7:])
            if value:
                return value
        elif on == "consumer" and ctx is not None and ctx.consumer is not None:
            return ctx.consumer.id
        return ctx.client_ip if ctx is not None else request.headers.get("x-real-ip")

    def _no_target(self, now: float) -> HTTPError:
        waits = [p.health.ejected_until - now for p in self.pools if not p.health.probe_down]
        retry_after = max(1, math.ceil(min(waits))) if waits else 1
        return HTTPError(503, f"The service {self.name!r} has no healthy target.", {"retry-after": str(retry_after)})

    def ready(self) -> bool:
        """Whether some target may take a request now."""
        now = trio.current_time()
        return any(p.health.available(now) for p in self.pools)

    def describe(self) -> dict[str, Any]:
        """Counters, panic mode and each target's health state, for the admin listener."""
        now = trio.current_time()
        admission = self.admission
        return {
            "balance": self.settings.balance,
            "in_flight": sum(p.in_use for p in self.pools),
            "queued": admission.queued if admission else 0,
            "refused": admission.refused if admission else 0,
            "retries": self.budget.spent,
            "retries_refused": self.budget.refused,
            "panic": self.health.panic,
            "panic_requests": self.health.panic_requests,
            "targets": [
                {"url": p.url, "weight": p.weight, "in_use": p.in_use, **p.health.describe(now)} for p in self.pools
            ],
        }

    # -- active health checks ----------------------------------------------

    def start(self, start_soon: Callable[..., Any]) -> None:
        """Start active health checks (if ``health_path`` is set); idempotent."""
        if self.settings.health_path is not None and not self._checking:
            self._checking = True
            start_soon(self._check_forever, name=f"health checks of {self.name}")

    async def _check_forever(self) -> None:
        """Probe every target each ``health_interval`` until ``aclose``."""
        with trio.CancelScope() as self._checks:  # a fresh scope each run: the task may be restarted
            while not self._closed:
                async with trio.open_nursery() as nursery:
                    for pool in self.pools:
                        nursery.start_soon(self._probe, pool)
                await trio.sleep(self.settings.health_interval)

    async def _probe(self, pool: Pool) -> None:
        """Probe ``pool`` once and record the verdict; raises nothing but ``trio.Cancelled``.

        Passed: a 2xx/3xx answer within ``health_timeout``. Anything else
        fails, an unexpected exception included (logged as a warning).
        """
        s = self.settings
        request = Request("GET", s.health_path or "/", "", Headers.of({"user-agent": "bascule-health-check"}), b"")
        passed = False
        with trio.move_on_after(s.health_timeout):
            try:
                response = await pool.send(request, self.buffer_size)
                await response.aclose()
                passed = 200 <= response.status < 400
            except _PROBE_FAILURES as e:
                log.debug("service %s: probe of %s failed: %r", self.name, pool.url, e)
            except Exception:
                log.warning("service %s: probe of %s failed unexpectedly", self.name, pool.url, exc_info=True)
        pool.health.probed(passed, s.healthy_threshold, s.unhealthy_threshold)

    async def aclose(self) -> None:
        self._closed = True
        if self._checks is not None:
            self._checks.cancel()
        for pool in self.pools:
            await pool.aclose()


def _end(call: UpstreamCall | None, status: int | None = None, error: str | None = None) -> None:
    if call is not None:
        call.end(status, error)


def _then(close: Callable[[], Awaitable[None]], after: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def closing() -> None:
        try:
            await close()
        finally:
            after()

    return closing


class Upstreams:
    """All services of a config, by name."""

    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        buffer_size: int,
        previous: Upstreams | None = None,
    ) -> None:
        old = previous.services if previous else {}
        self.services: dict[str, Service] = {}
        for name, settings in services.items():
            kept = old.get(name)
            if kept is None or kept.settings != settings or kept.buffer_size != buffer_size:
                kept = Service(name, settings, buffer_size)
            self.services[name] = kept

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def start(self, start_soon: Callable[..., Any]) -> None:
        """Start the services' active health checks (idempotent: kept services go on)."""
        for service in self.services.values():
            service.start(start_soon)

    async def aclose(self, keep: Upstreams | None = None) -> None:
        """Close every service's pools, except services that ``keep`` shares."""
        kept = {id(s) for s in keep.services.values()} if keep else set()
        for service in self.services.values():
            if id(service) not in kept:
                await service.aclose()
