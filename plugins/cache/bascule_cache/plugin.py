"""The ``cache`` plugin: an RFC 9111 shared cache in front of a route.

``on_request`` looks the request up: a usable entry answers at once (HIT,
STALE); a stale one with validators turns the request into a conditional one
before it goes upstream; concurrent misses for one URI wait for the first
(coalescing). ``on_response`` stores what may be stored, merges a 304 into the
stale entry (REVALIDATED), or serves the stale entry when the upstream failed
and ``stale-if-error`` allows it. Every answer carries ``X-Cache-Status`` and
``ctx.tags["cache"]``. The RFC's rules live in ``entry`` (storing, freshness,
serving stale), ``keys`` and ``variants``, background revalidation in
``refresh``; this module wires them to the hooks and coalesces misses.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import ClassVar

import trio
from bascule_sdk import Context, Gateway, Headers, HTTPError, Plugin, Request, Response, hookimpl

from .control import Directives, parse_cache_control
from .entry import CONDITIONALS, Entry, Use, read_entry, serves_on_error, usable
from .purge import purge
from .refresh import Refresher
from .responses import respond
from .settings import CacheSettings
from .storage import Store, StoreUnavailable, opened, store_key
from .variants import Variants

__all__ = ["Cache", "Status"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MAX_UNCACHEABLE = 10_000


class Status(StrEnum):
    """How the cache answered: the ``X-Cache-Status`` value and ``ctx.tags["cache"]``."""

    HIT = "HIT"  #: a fresh stored response
    STALE = "STALE"  #: a stale stored response (max-stale, stale-while-revalidate, stale-if-error)
    REVALIDATED = "REVALIDATED"  #: a stored response the upstream confirmed (304)
    MISS = "MISS"  #: the upstream's, nothing was stored
    EXPIRED = "EXPIRED"  #: the upstream's, in place of a stale stored response
    BYPASS = "BYPASS"  #: the upstream's, the cache left out (request no-store, store unavailable)


@dataclass
class _Flight:
    """An upstream request other requests for the same URI wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    started: float = field(default_factory=trio.current_time)


@dataclass(slots=True)
class _Forwarded:
    """A request the cache sent upstream: what ``on_response`` needs to store the answer."""

    key: str
    consumer: str
    request_cc: Directives
    request_time: float
    stale: Entry | None  # the stored response the upstream is asked about
    conditionals: Headers | None  # the client's own, while the stale entry's validators are sent
    flight: _Flight | None  # led by this request: others wait for it
    upstream: tuple[str, str, bool] | None = None  # (path, query, host kept): replayable to refresh
    forwards: int = 0


class _Invalidate:
    """An unsafe request: when it succeeds, what is stored for its URIs is dropped."""


_INVALIDATE = _Invalidate()


def _flight_key(key: str, consumer: str) -> str:
    return key + "\0" + consumer


class Cache(Plugin[CacheSettings]):
    """RFC 9111 shared cache: in-process or Redis, with coalescing and stale serving.

    Counters: ``counts[status]`` for each ``Status``, ``hits`` and ``misses``;
    ``waiting`` is the number of requests currently waiting for a coalesced
    upstream request.
    """

    name = "cache"
    priority = 100
    Settings = CacheSettings

    #: Wall clock (stored times must agree across gateways); tests may override it.
    clock: ClassVar = staticmethod(time.time)

    def __init__(self, settings: CacheSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.settings: CacheSettings = settings
        self.policy = settings.policy()
        self.keys = settings.keys()
        self.variants = Variants()
        self.refresher = Refresher(self.policy, self.clock, self._store)
        self.counts: Counter[str] = Counter()
        self.waiting = 0
        self._flights: dict[str, _Flight] = {}
        self._uncacheable: dict[str, float] = {}  # flight key -> until when misses skip coalescing
        self._stores: set[Store] = set()  # every open store of the gateway (in ``gateway.shared``)
        self._store_in_use: Store | None = None
        self.gateway: Gateway | None = None

    # -- lifecycle --------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store_in_use is None:
            raise StoreUnavailable("the cache has not started")
        return self._store_in_use

    @property
    def hits(self) -> int:
        return self.counts[Status.HIT] + self.counts[Status.STALE] + self.counts[Status.REVALIDATED]

    @property
    def misses(self) -> int:
        return self.counts[Status.MISS] + self.counts[Status.EXPIRED]

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Instances with the same backend settings share one store, across routes and reloads.
        self._stores = gateway.shared.setdefault("cache.stores", set())
        opener = partial(opened, self.settings, type(self).clock, self._stores)
        self._store_in_use = await gateway.acquire(store_key(self.settings), opener)

    @hookimpl
    async def shutdown(self) -> None:
        self._store_in_use = None  # the gateway closes the store once no config uses it

    # -- request ------------------------------------------------------------------

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        request = ctx.request
        if request.method not in self.settings.methods:
            if request.method not in SAFE_METHODS:
                ctx.state[self.instance] = _INVALIDATE
            return None
        request_cc = (
            parse_cache_control(request.headers.get_all("cache-control")) if self.settings.request_cache_control else {}
        )
        if "no-store" in request_cc:
            ctx.state[self.instance] = Status.BYPASS
            return None
        key = self.keys.primary(request.scheme, request.host, request.path, request.query)
        try:
            return await self._answer(ctx, key, self._consumer(ctx), request_cc)
        except StoreUnavailable:
            ctx.state[self.instance] = Status.BYPASS
            return None

    def _consumer(self, ctx: Context) -> str:
        """Whose entries the request reads: the consumer's own with ``per_consumer``, else everyone's."""
        if not self.settings.per_consumer or ctx.consumer is None:
            return ""
        return ctx.consumer.id or ctx.consumer.name

    async def _answer(self, ctx: Context, key: str, consumer: str, request_cc: Directives) -> Response | None:
        """Serve a usable stored response, or prepare the request to go upstream."""
        request = ctx.request
        entry = await self._find(key, consumer, request)
        use = usable(entry, request_cc, self.clock())
        flight = None
        fkey = _flight_key(key, consumer)
        if use is Use.FORWARD and self._coalescing(request, fkey):
            flight = await self._coalesce(fkey)
            if flight is None and (again := await self._find(key, consumer, request)) is not None:
                entry, use = again, usable(again, request_cc, self.clock())
        if entry is not None and use is not Use.FORWARD:
            if use is Use.STALE_REFRESH:
                self.refresher.soon(self.gateway, ctx, key, consumer, entry)
            ctx.state[self.instance] = Status.HIT if use is Use.FRESH else Status.STALE
            return respond(entry, self.clock(), request.headers, request.headers.get("range"))
        if "only-if-cached" in request_cc:
            if flight is not None:
                self._land(fkey, flight)
            ctx.state[self.instance] = Status.MISS
            raise HTTPError(504, "No usable response is stored for this request (only-if-cached).")
        request_time = self.clock()
        conditionals = None
        if entry is not None and entry.validators:
            conditionals = Headers([(k, v) for k, v in request.headers.raw if k.decode() in CONDITIONALS])
            entry.validate_with(request.headers)
        ctx.state[self.instance] = _Forwarded(key, consumer, request_cc, request_time, entry, conditionals, flight)
        return None

    async def _find(self, key: str, consumer: str, request: Request) -> Entry | None:
        return await self.variants.get(self.store, key, consumer, request.headers, self.clock())

    # -- coalescing ---------------------------------------------------------------

    def _coalescing(self, request: Request, fkey: str) -> bool:
        """Is waiting for another request's upstream answer worth it for this miss?"""
        return (
            self.settings.coalesce
            and request.method == "GET"
            and self._uncacheable.get(fkey, 0.0) <= trio.current_time()
        )

    async def _coalesce(self, fkey: str) -> _Flight | None:
        """Lead the upstream request for ``fkey`` (its new flight returned) or wait for the running one."""
        flight = self._flights.get(fkey)
        if flight is None or trio.current_time() - flight.started > self.settings.coalesce_timeout:
            flight = self._flights[fkey] = _Flight()
            return flight
        self.waiting += 1
        try:
            with trio.move_on_after(self.settings.coalesce_timeout):
                await flight.done.wait()
        finally:
            self.waiting -= 1
        return None

    def _land(self, fkey: str, flight: _Flight) -> None:
        flight.done.set()
        if self._flights.get(fkey) is flight:
            del self._flights[fkey]

    def _remember(self, fkey: str, stored: bool) -> None:
        """Remember whether waiting for ``fkey`` pays off: not for a while after a response that was not stored."""
        if stored:
            self._uncacheable.pop(fkey, None)
            return
        if len(self._uncacheable) > _MAX_UNCACHEABLE:
            self._uncacheable.clear()
        self._uncacheable[fkey] = trio.current_time() + self.settings.uncacheable_ttl

    # -- upstream and response ---------------------------------------------------

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        forwarded = ctx.state.get(self.instance)
        if isinstance(forwarded, _Forwarded):
            # One upstream request made the response: it can be replayed to refresh it.
            # Several (an aggregating route) cannot: such entries are refreshed in the foreground.
            forwarded.forwards += 1
            forwarded.upstream = (
                (request.path, request.query, "host" in request.headers) if forwarded.forwards == 1 else None
            )

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> Response | None:
        state = ctx.state.get(self.instance)
        if state is None:
            return None
        if isinstance(state, _Invalidate):
            if 200 <= response.status < 400:
                await self._invalidate(ctx.request, response)
            return None
        if isinstance(state, _Forwarded):
            try:
                response, status = await self._from_upstream(ctx.request, state, response)
            finally:
                if state.flight is not None:
                    self._land(_flight_key(state.key, state.consumer), state.flight)
        else:
            status = state
        headers = response.headers
        if "x-cache-status" in headers:  # from an upstream cache
            headers.remove("x-cache-status")
        value = status.value  # an Enum's value is a descriptor: read once
        headers.raw.append((b"x-cache-status", value.encode()))
        ctx.tags["cache"] = value
        self.counts[value] += 1
        return response

    async def _from_upstream(
        self, request: Request, forwarded: _Forwarded, response: Response
    ) -> tuple[Response, Status]:
        """The answer to a forwarded request, and its status; stores what may be stored."""
        now = self.clock()
        stale = forwarded.stale
        if stale is not None and forwarded.conditionals is not None and response.status == 304:
            merged = stale.merged(response.headers, forwarded.request_time, now, self.policy)
            merged.upstream = forwarded.upstream or stale.upstream
            await self._store(forwarded.key, forwarded.consumer, merged, request.headers)
            return respond(merged, now, forwarded.conditionals, request.headers.get("range")), Status.REVALIDATED
        if stale is not None and response.status >= 500 and serves_on_error(stale, forwarded.request_cc, now):
            conditionals = forwarded.conditionals if forwarded.conditionals is not None else request.headers
            return respond(stale, now, conditionals, request.headers.get("range")), Status.STALE
        new = None
        if request.method == "GET":
            new = await read_entry(request.headers, response, forwarded.request_time, now, self.policy)
            if new is not None:
                new.upstream = forwarded.upstream
                await self._store(forwarded.key, forwarded.consumer, new, request.headers)
        if forwarded.flight is not None:
            self._remember(_flight_key(forwarded.key, forwarded.consumer), new is not None)
        return response, Status.EXPIRED if stale is not None else Status.MISS

    async def _store(self, key: str, consumer: str, entry: Entry, request_headers: Headers) -> None:
        """Store ``entry``; a store failure only loses it."""
        try:
            await self.variants.put(self.store, key, consumer, entry, request_headers, self.clock(), self.policy)
        except StoreUnavailable:
            pass

    # -- invalidation and purge --------------------------------------------------

    async def _invalidate(self, request: Request, response: Response) -> None:
        """Drop ``Keys.invalidated`` from every store of the gateway."""
        keys = self.keys.invalidated(request, response.headers)
        for store in list(self._stores):
            try:
                await store.delete(keys)
            except StoreUnavailable:
                pass

    @hookimpl
    async def on_admin_request(self, request: Request) -> Response | None:
        """``POST {purge_path}``: see ``purge``."""
        if request.path != self.settings.purge_path:
            return None
        return await purge(request, list(self._stores))
