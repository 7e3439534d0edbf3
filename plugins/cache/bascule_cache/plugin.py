"""The ``cache`` plugin: an RFC 9111 shared cache in front of a route.

``on_request`` looks the request up: a usable entry answers at once (HIT,
STALE); a stale one with validators turns the request into a conditional one
before it goes upstream; concurrent misses for one URI wait for the first
(coalescing). ``on_response`` stores what may be stored, merges a 304 into the
stale entry (REVALIDATED), or serves the stale entry when the upstream failed
and ``stale-if-error`` allows it. Every answer carries ``X-Cache-Status`` and
``ctx.tags["cache"]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import trio
from bascule_sdk import Context, Gateway, Headers, HTTPError, Plugin, Request, Response, hookimpl

from .control import (
    HEURISTIC_STATUSES,
    UNDERSTOOD_STATUSES,
    delta_seconds,
    parse_cache_control,
    parse_vary,
    select_directives,
)
from .entry import Entry, Policy
from .responses import respond, shareable
from .settings import CacheSettings
from .storage import MemoryStore, RedisStore, Store, StoreUnavailable

__all__ = ["Cache"]

log = logging.getLogger("bascule.cache")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_CONDITIONALS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range")


@dataclass
class _Flight:
    """An upstream request other requests for the same URI wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    started: float = field(default_factory=trio.current_time)


@dataclass
class _State:
    """What ``on_request`` decided, for ``on_response``."""

    key: str = ""
    consumer: str = ""
    status: str | None = None  # set: the response is final (served from cache or bypassed)
    entry: Entry | None = None  # a stale entry the upstream is asked about
    request_time: float = 0.0
    conditionals: Headers | None = None  # the client's own, while ours revalidate
    flight: _Flight | None = None
    invalidate: bool = False
    upstream: tuple[str, str, bool] | None = None
    forwards: int = 0
    rcc: dict[str, str | None] = field(default_factory=dict)


@dataclass
class _SharedStore:
    store: Store
    users: int = 0
    redis: RedisStore | None = None


class Cache(Plugin[CacheSettings]):
    """RFC 9111 shared cache: in-process or Redis, with coalescing and stale serving.

    Counters: ``counts[status]`` for each ``X-Cache-Status`` value, ``hits``
    and ``misses``; ``waiting`` is the number of requests currently waiting
    for a coalesced upstream request.
    """

    name = "cache"
    priority = 100
    Settings = CacheSettings

    #: Wall clock (stored times must agree across gateways); tests may override it.
    clock: ClassVar = staticmethod(time.time)

    def __init__(self, settings: CacheSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.settings: CacheSettings = settings
        self.policy = Policy(settings.default_ttl, settings.heuristic_max, settings.targets())
        self.counts: Counter[str] = Counter()
        self.waiting = 0
        self._flights: dict[str, _Flight] = {}
        self._refreshing: set[str] = set()
        self._uncacheable: dict[str, float] = {}  # URI -> until when misses skip coalescing
        self._vary_hint: dict[str, tuple[str, ...]] = {}
        self._shared: _SharedStore | None = None
        self._store_id: tuple = ()
        self._registry: dict[tuple, _SharedStore] = {}
        self.gateway: Gateway | None = None

    # -- lifecycle --------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._shared is None:
            raise StoreUnavailable("the cache has not started")
        return self._shared.store

    @property
    def hits(self) -> int:
        return self.counts["HIT"] + self.counts["STALE"] + self.counts["REVALIDATED"]

    @property
    def misses(self) -> int:
        return self.counts["MISS"] + self.counts["EXPIRED"]

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        s = self.settings
        self.gateway = gateway
        if s.backend == "redis":
            self._store_id = ("redis", s.redis_url, s.key_prefix, s.redis_timeout)
        else:
            self._store_id = ("memory", s.max_size)
        # Instances of one gateway share stores, across routes and config reloads.
        stores = self._registry = gateway.shared.setdefault("cache.stores", {})
        shared = stores.get(self._store_id)
        if shared is None:
            if s.backend == "redis":
                redis = RedisStore(s.redis_url or "", s.key_prefix, s.redis_timeout)
                shared = _SharedStore(redis, redis=redis)
                gateway.start_soon(redis.run)
            else:
                shared = _SharedStore(MemoryStore(s.max_size, type(self).clock))
            stores[self._store_id] = shared
        shared.users += 1
        self._shared = shared

    @hookimpl
    async def shutdown(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.users -= 1
            if shared.users == 0:
                self._registry.pop(self._store_id, None)
                if shared.redis is not None:
                    shared.redis.close()

    # -- keys ---------------------------------------------------------------------

    def primary_key(self, scheme: str, host: str, path: str, query: str) -> str:
        """``scheme://host/path?query`` with the configured query parameter selection."""
        s = self.settings
        if s.query_params is not None or s.ignore_query_params:
            pairs = parse_qsl(query, keep_blank_values=True)
            if s.query_params is not None:
                pairs = [p for p in pairs if p[0] in s.query_params]
            pairs = sorted(p for p in pairs if p[0] not in s.ignore_query_params)
            query = urlencode(pairs)
        return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")

    def _consumer(self, ctx: Context) -> str:
        if not self.settings.per_consumer or ctx.consumer is None:
            return ""
        return ctx.consumer.id or ctx.consumer.name

    @staticmethod
    def _variant(consumer: str, names: tuple[str, ...], headers: Headers) -> str:
        # Normalised: lines combined, whitespace around list members dropped ("1,2" == " 1, 2 ").
        values = [",".join(v.strip() for line in headers.get_all(n) for v in line.split(",")) for n in names]
        return "e" + consumer + "\0" + "\0".join(values)

    async def lookup(self, key: str, consumer: str, headers: Headers) -> Entry | None:
        """The stored variant of ``key`` matching ``headers`` (its Vary fields), if any."""
        hint = self._vary_hint.get(key, ())
        vary, entry = await self.store.get(key, ["v" + consumer, self._variant(consumer, hint, headers)])
        if not isinstance(vary, str):
            return None
        names = tuple(vary.split(",")) if vary else ()
        if names != hint:
            if len(self._vary_hint) > 10_000:
                self._vary_hint.clear()
            self._vary_hint[key] = names
            (entry,) = await self.store.get(key, [self._variant(consumer, names, headers)])
        if not isinstance(entry, Entry) or entry.keep_until <= self.clock():
            return None
        return entry

    # -- request ------------------------------------------------------------------

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        request = ctx.request
        st = _State()
        ctx.state[self.instance] = st
        if request.method not in self.settings.methods:
            st.invalidate = request.method not in SAFE_METHODS
            return None
        st.key = self.primary_key(request.scheme, request.host, request.path, request.query)
        st.consumer = self._consumer(ctx)
        rcc = (
            parse_cache_control(request.headers.get_all("cache-control")) if self.settings.request_cache_control else {}
        )
        if "no-store" in rcc:
            st.status = "BYPASS"
            return None
        try:
            return await self._answer(ctx, st, rcc)
        except StoreUnavailable:
            self._land(st)
            st.status, st.entry = "BYPASS", None
            return None

    async def _answer(self, ctx: Context, st: _State, rcc: dict[str, str | None]) -> Response | None:
        request = ctx.request
        entry = await self._find(ctx, st)
        verdict = self._verdict(entry, rcc)
        if verdict == "FETCH" and self.settings.coalesce and request.method == "GET":
            if await self._wait_for_flight(st):
                again = await self._find(ctx, st)
                if again is not None:
                    entry = again
                    verdict = self._verdict(entry, rcc)
        if verdict == "HIT" and entry is not None:  # _verdict answers FETCH when there is no entry
            return self._serve(st, entry, "HIT", request.headers)
        if verdict in ("STALE", "REFRESH") and entry is not None:
            if verdict == "REFRESH":
                self._refresh_soon(ctx, st, entry)
            return self._serve(st, entry, "STALE", request.headers)
        if "only-if-cached" in rcc:
            st.status = "MISS"
            raise HTTPError(504, "No usable response is stored for this request (only-if-cached).")
        st.rcc = rcc
        st.request_time = self.clock()
        st.entry = entry
        if entry is not None and (validators := entry.validators):
            headers = request.headers
            st.conditionals = Headers([(k, v) for k, v in headers.raw if k.decode() in _CONDITIONALS])
            headers.remove(*_CONDITIONALS)
            for name, value in validators.items():
                headers.set(name, value)
        return None

    async def _find(self, ctx: Context, st: _State) -> Entry | None:
        entry = await self.lookup(st.key, st.consumer, ctx.request.headers)
        if entry is not None and "authorization" in ctx.request.headers and not shareable(entry):
            return None
        return entry

    def _verdict(self, entry: Entry | None, rcc: dict[str, str | None]) -> str:
        """HIT, STALE (serve stale), REFRESH (serve stale, revalidate in the background) or FETCH."""
        if entry is None:
            return "FETCH"
        age = entry.age(self.clock())
        validate = "no-cache" in rcc or entry.no_cache
        if "max-age" in rcc:
            max_age = delta_seconds(rcc["max-age"])
            validate = validate or max_age is None or age > max_age
        if "min-fresh" in rcc:
            min_fresh = delta_seconds(rcc["min-fresh"])
            validate = validate or min_fresh is None or entry.lifetime - age < min_fresh
        if validate:
            return "FETCH"
        if entry.lifetime > age:
            return "HIT"
        if not entry.may_serve_stale:
            return "FETCH"
        staleness = age - entry.lifetime
        if "max-stale" in rcc:
            allowed = delta_seconds(rcc["max-stale"])
            if rcc["max-stale"] is None or (allowed is not None and staleness <= allowed):
                return "STALE"
        if staleness <= entry.stale_window("stale-while-revalidate"):
            return "REFRESH"
        return "FETCH"

    def _serve(self, st: _State, entry: Entry, status: str, request_headers: Headers) -> Response:
        st.status = status
        return respond(entry, self.clock(), request_headers, request_headers.get("range"))

    # -- coalescing ---------------------------------------------------------------

    async def _wait_for_flight(self, st: _State) -> bool:
        """Wait for a running upstream request for this URI (True), or lead one (False)."""
        fkey = st.key + "\0" + st.consumer
        now = trio.current_time()
        if self._uncacheable.get(fkey, 0.0) > now:  # waiting would not help: go upstream now
            return False
        flight = self._flights.get(fkey)
        if flight is None or now - flight.started > self.settings.coalesce_timeout:
            st.flight = self._flights[fkey] = _Flight()
            return False
        self.waiting += 1
        try:
            with trio.move_on_after(self.settings.coalesce_timeout):
                await flight.done.wait()
        finally:
            self.waiting -= 1
        return True

    def _land(self, st: _State) -> None:
        flight, st.flight = st.flight, None
        if flight is not None:
            flight.done.set()
            fkey = st.key + "\0" + st.consumer
            if self._flights.get(fkey) is flight:
                del self._flights[fkey]

    # -- upstream and response ---------------------------------------------------

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        st = ctx.state.get(self.instance)
        if st is not None and st.key:
            # One upstream request made the response: it can be replayed to refresh it.
            # Several (an aggregating route) cannot: such entries are refreshed in the foreground.
            st.forwards += 1
            st.upstream = (request.path, request.query, "host" in request.headers) if st.forwards == 1 else None

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> Response | None:
        st: _State | None = ctx.state.get(self.instance)
        if st is None:
            return None
        if st.invalidate:
            if 200 <= response.status < 400:
                await self._invalidate(ctx, response)
            return None
        if not st.key:
            return None
        try:
            if st.status is None:
                response = await self._from_upstream(ctx, st, response)
        finally:
            self._land(st)
        status = st.status or "MISS"
        headers = response.headers
        if b"x-cache-status" in (k for k, _ in headers.raw):  # from an upstream cache
            headers.remove("x-cache-status")
        headers.raw.append((b"x-cache-status", status.encode()))
        ctx.tags["cache"] = status
        self.counts[status] += 1
        return response

    async def _from_upstream(self, ctx: Context, st: _State, response: Response) -> Response:
        now = self.clock()
        entry = st.entry
        request = ctx.request
        if entry is not None and st.conditionals is not None and response.status == 304:
            merged = entry.merged(response.headers, st.request_time, now, self.policy)
            merged.upstream = st.upstream or entry.upstream
            await self._put(st.key, st.consumer, merged, request.headers)
            st.status = "REVALIDATED"
            return respond(merged, now, st.conditionals, request.headers.get("range"))
        if entry is not None and response.status >= 500 and self._stale_if_error(entry, st.rcc, now):
            st.status = "STALE"
            conditionals = st.conditionals if st.conditionals is not None else request.headers
            return respond(entry, now, conditionals, request.headers.get("range"))
        st.status = "EXPIRED" if entry is not None else "MISS"
        new = None
        if request.method == "GET" and "no-store" not in st.rcc:
            new = await self._to_entry(request.headers, response, st.request_time, now)
            if new is not None:
                new.upstream = st.upstream
                await self._put(st.key, st.consumer, new, request.headers)
        if st.flight is not None:  # remember whether waiting for this URI pays off
            fkey = st.key + "\0" + st.consumer
            if new is None:
                if len(self._uncacheable) > 10_000:
                    self._uncacheable.clear()
                self._uncacheable[fkey] = trio.current_time() + self.settings.uncacheable_ttl
            else:
                self._uncacheable.pop(fkey, None)
        return response

    def _stale_if_error(self, entry: Entry, rcc: dict[str, str | None], now: float) -> bool:
        if not entry.may_serve_stale:
            return False
        staleness = entry.age(now) - entry.lifetime
        window = max(entry.stale_window("stale-if-error"), float(delta_seconds(rcc.get("stale-if-error")) or 0))
        return staleness <= window

    async def _to_entry(self, headers: Headers, response: Response, request_time: float, now: float) -> Entry | None:
        """The response as an entry when RFC 9111 section 3 and the settings let it be stored.

        Reads the body only when its length is known and within ``max_object_size``.
        """
        s = self.settings
        control, cc = select_directives(response.headers, self.policy.targets)
        status = response.status
        if status in (206, 304) or status < 200 or (s.statuses is not None and status not in s.statuses):
            return None
        if "must-understand" in cc:
            # RFC 9111 section 3: stored only if the cache understands the status; then
            # section 5.2.2.3: no-store is ignored, as the status's own rules apply.
            if status not in UNDERSTOOD_STATUSES:
                return None
        elif "no-store" in cc:
            return None
        if "private" in cc and cc["private"] is None:  # qualified private: the fields are left out
            return None
        if "authorization" in headers and not ({"public", "s-maxage", "must-revalidate"} & cc.keys()):
            return None
        if "set-cookie" in response.headers and not s.store_set_cookie:
            return None
        if parse_vary(response.headers.get_all("vary")) == ("*",):
            return None
        if s.content_types:
            media = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
            if media not in {t.lower() for t in s.content_types}:
                return None
        explicit = {"max-age", "s-maxage", "public"} & cc.keys() or (
            control == "cache-control" and "expires" in response.headers
        )
        if not explicit and status not in HEURISTIC_STATUSES:
            return None
        body = response.body
        if not isinstance(body, bytes):
            length = response.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > s.max_object_size:
                return None
            try:
                body = await response.read(s.max_object_size)
            except Exception:
                raise HTTPError(502, "The upstream response was cut short.") from None
        elif len(body) > s.max_object_size:
            return None
        return Entry.from_response(status, response.headers, body, request_time, now, self.policy)

    async def _put(self, key: str, consumer: str, entry: Entry, request_headers: Headers) -> None:
        now = self.clock()
        extra = max(entry.stale_window("stale-while-revalidate"), entry.stale_window("stale-if-error"))
        if entry.validators:
            extra = max(extra, self.settings.keep_stale)
        ttl = max(0.0, entry.lifetime - entry.age(now)) + extra
        if ttl <= 0:
            return
        entry.keep_until = now + ttl
        names = parse_vary(entry.view.get_all("vary"))
        self._vary_hint[key] = names
        items: dict[str, str | Entry] = {
            "v" + consumer: ",".join(names),
            self._variant(consumer, names, request_headers): entry,
        }
        try:
            await self.store.put(key, items, ttl)
        except StoreUnavailable:
            pass

    # -- background refresh ------------------------------------------------------

    def _refresh_soon(self, ctx: Context, st: _State, entry: Entry) -> None:
        fkey = st.key + "\0" + st.consumer
        if entry.upstream is None or self.gateway is None or fkey in self._refreshing:
            return
        self._refreshing.add(fkey)
        self.gateway.start_soon(self._refresh, ctx, st.key, st.consumer, entry, ctx.request.headers.copy())

    async def _refresh(self, ctx: Context, key: str, consumer: str, entry: Entry, headers: Headers) -> None:
        """Revalidate ``entry`` in the background (stale-while-revalidate)."""
        try:
            path, query, keep_host = entry.upstream or ("", "", False)
            headers.remove(*_CONDITIONALS)
            if not keep_host:
                headers.remove("host")
            for name, value in entry.validators.items():
                headers.set(name, value)
            request_time = self.clock()
            response = await ctx.forward(Request("GET", path, query, headers))
            try:
                now = self.clock()
                if response.status == 304:
                    new: Entry | None = entry.merged(response.headers, request_time, now, self.policy)
                else:
                    new = await self._to_entry(headers, response, request_time, now)
                if new is not None:
                    new.upstream = entry.upstream
                    await self._put(key, consumer, new, headers)
            finally:
                await response.aclose()
        except Exception as e:
            log.warning("cache: background refresh of %s failed: %r", key, e)
        finally:
            self._refreshing.discard(key + "\0" + consumer)

    # -- invalidation and purge --------------------------------------------------

    def _all_stores(self) -> list[Store]:
        """Every store of this gateway: invalidation and purges reach all routes' caches."""
        return [shared.store for shared in list(self._registry.values())]

    async def _invalidate(self, ctx: Context, response: Response) -> None:
        """RFC 9111 section 4.4: drop the target URI, and Location / Content-Location on the same origin."""
        request = ctx.request
        keys = [self.primary_key(request.scheme, request.host, request.path, request.query)]
        base = f"{request.scheme}://{request.host}{request.path}"
        for name in ("location", "content-location"):
            if value := response.headers.get(name):
                url = urlsplit(urljoin(base, value.strip()))
                if url.scheme == request.scheme and (url.hostname or "") == request.host:
                    keys.append(self.primary_key(url.scheme, request.host, url.path or "/", url.query))
        for store in self._all_stores():
            try:
                await store.delete(keys)
            except StoreUnavailable:
                pass

    @hookimpl
    async def on_admin_request(self, request: Request) -> Response | None:
        """``POST {purge_path}`` with ``{"key": URL}``, ``{"prefix": "/path"}`` or ``{"all": true}``."""
        if request.path != self.settings.purge_path:
            return None
        if request.method != "POST":
            raise HTTPError(405, "Use POST.", {"allow": "POST"})
        try:
            data = json.loads(await request.read(None) or b"null")
        except (ValueError, TypeError):
            raise HTTPError(400, "The body must be JSON.") from None
        if (
            not isinstance(data, dict)
            or len(data) != 1
            or not (isinstance(data.get("key"), str) or isinstance(data.get("prefix"), str) or data.get("all") is True)
        ):
            raise HTTPError(400, 'Send one of {"key": "http://host/path?query"}, {"prefix": "/path"} or {"all": true}.')
        purged = 0
        try:
            for store in self._all_stores():
                if "key" in data:
                    purged += await store.delete([data["key"]])
                elif "prefix" in data:
                    purged += await store.purge_prefix(data["prefix"])
                else:
                    purged += await store.clear()
        except StoreUnavailable:
            raise HTTPError(503, "The cache store is unavailable.") from None
        return Response.json({"purged": purged})
