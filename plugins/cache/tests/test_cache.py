"""The cache plugin against real upstreams the tests control and count."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from bascule_cache import Cache
from bascule_sdk import Consumer, Plugin, Response, hookimpl


async def until(predicate, timeout: float = 10) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def until_closed(url: str) -> None:
    """Wait until nothing accepts connections at ``url`` any more."""
    host, port = url.removeprefix("http://").split(":")
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                return
            await stream.aclose()
            await trio.sleep(0.05)


def responder(headers: dict[str, str] | None = None, body: bytes = b"body {n}", status: int = 200):
    """An upstream handler: ``status``, ``headers``, ``body`` with ``{n}`` = call number."""
    calls = 0

    async def handler(request):
        nonlocal calls
        calls += 1
        payload = body.replace(b"{n}", str(calls).encode())
        h = {"content-type": "text/plain", "content-length": str(len(payload)), **(headers or {})}
        return Response(status, h, payload)

    return handler


def config(url: str, **settings: object) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return f"""
        [services.api]
        targets = ["{url}"]
        retries = 0
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.cache]
        """ + "\n        ".join(lines)


async def setup(nursery, cache_cls, handler, *, plugins=(), **settings):
    async def dated(request):  # the upstream's Date follows the test's clock
        response = await handler(request)
        response.headers.setdefault("date", formatdate(cache_cls.clock(), usegmt=True))
        return response

    upstream = await start_upstream(nursery, dated)
    gw = await start_gateway(nursery, config(upstream.url, **settings), plugins=[cache_cls, *plugins], admin=True)
    return upstream, gw


def plugin_of(gw) -> Cache:
    return next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, Cache))


def status(r) -> str:
    return r.headers["x-cache-status"]


# -- freshness, Age, expiry ----------------------------------------------------------------------------


async def test_fresh_response_is_served_from_cache_until_it_expires(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=10"}))
    async with gw.client() as c:
        first = await c.get("/api/a")
        clock.advance(5)
        second = await c.get("/api/a")
        clock.advance(6)
        third = await c.get("/api/a")
    # expired and without a validator, the entry was dropped: a plain miss
    assert (status(first), status(second), status(third)) == ("MISS", "HIT", "MISS")
    assert second.text == first.text == "body 1"
    assert third.text == "body 2"
    assert 5 <= int(second.headers["age"]) <= 6
    assert len(upstream.requests) == 2
    assert plugin_of(gw).hits == 1 and plugin_of(gw).misses == 2


async def test_age_includes_the_age_the_upstream_reported(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=10", "age": "8"}))
    async with gw.client() as c:
        await c.get("/api/a")
        hit = await c.get("/api/a")
        clock.advance(3)  # age 11 > max-age 10
        after = await c.get("/api/a")
    assert status(hit) == "HIT" and int(hit.headers["age"]) >= 8
    assert status(after) == "MISS"
    assert len(upstream.requests) == 2


async def test_s_maxage_wins_over_max_age_and_expires_is_used_without_them(nursery, cache_cls, clock):
    async def handler(request):
        h = (
            {"cache-control": "max-age=100, s-maxage=2"}
            if request.path.endswith("/s")
            else {"expires": "Thu, 01 Jan 1970 00:00:00 GMT"}
        )
        return Response(200, {"content-length": "2", **h}, b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        await c.get("/api/s")
        clock.advance(3)
        s = await c.get("/api/s")
        await c.get("/api/e")
        e = await c.get("/api/e")
    assert status(s) == "MISS"  # s-maxage=2 applied, not max-age=100
    assert status(e) == "MISS"  # an Expires in the past: never fresh, and no validator to keep it for
    assert len(upstream.requests) == 4


async def test_heuristic_freshness_from_last_modified_and_default_ttl(nursery, cache_cls, clock):
    async def handler(request):
        h = {"content-length": "2"}
        if request.path.endswith("/lm"):
            h["last-modified"] = "Thu, 01 Jan 2015 00:00:00 GMT"
        return Response(201 if request.path.endswith("/created") else 200, h, b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler, default_ttl="10s")
    async with gw.client() as c:
        await c.get("/api/lm")
        lm = await c.get("/api/lm")
        await c.get("/api/plain")
        plain = await c.get("/api/plain")
        clock.advance(11)
        plain_later = await c.get("/api/plain")
        await c.get("/api/created")
        created = await c.get("/api/created")
    assert status(lm) == "HIT"
    assert status(plain) == "HIT" and status(plain_later) == "MISS"
    assert status(created) == "MISS"  # 201 is not cacheable by default
    assert len(upstream.requests) == 5


async def test_nothing_stored_without_freshness_or_validator(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder())
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a")
    assert status(r) == "MISS"
    assert len(upstream.requests) == 2


# -- response directives -----------------------------------------------------------------------------


@pytest.mark.parametrize("cc", ["no-store", "private", "private, max-age=60", "max-age=60, no-store"])
async def test_no_store_and_private_are_not_stored(nursery, cache_cls, cc):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": cc}))
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a")
    assert status(r) == "MISS"
    assert len(upstream.requests) == 2


async def test_no_cache_response_is_stored_but_revalidated_every_time(nursery, cache_cls):
    async def handler(request):
        if request.header("if-none-match") == '"v1"':
            return Response(304, {"etag": '"v1"'}, b"")
        return Response(200, {"cache-control": "no-cache, max-age=60", "etag": '"v1"', "content-length": "4"}, b"data")

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a")
    assert status(r) == "REVALIDATED" and r.text == "data"
    assert [q.header("if-none-match") for q in upstream.requests] == [None, '"v1"']


async def test_vary_stores_one_variant_per_request_header_value(nursery, cache_cls):
    async def handler(request):
        lang = request.header("accept-language") or "none"
        return Response(
            200,
            {"cache-control": "max-age=60", "vary": "Accept-Language", "content-length": str(len(lang))},
            lang.encode(),
        )

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        en = await c.get("/api/a", headers={"accept-language": "en"})
        fr = await c.get("/api/a", headers={"accept-language": "fr"})
        en2 = await c.get("/api/a", headers={"accept-language": "en"})
        fr2 = await c.get("/api/a", headers={"accept-language": "fr"})
        none = await c.get("/api/a")
    assert [r.text for r in (en, fr, en2, fr2, none)] == ["en", "fr", "en", "fr", "none"]
    assert [status(r) for r in (en, fr, en2, fr2, none)] == ["MISS", "MISS", "HIT", "HIT", "MISS"]
    assert len(upstream.requests) == 3


async def test_vary_star_never_matches(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60", "vary": "*"}))
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a")
    assert status(r) == "MISS"
    assert len(upstream.requests) == 2


# -- revalidation ------------------------------------------------------------------------------------


async def test_stale_entry_is_revalidated_and_a_304_refreshes_it(nursery, cache_cls, clock):
    async def handler(request):
        if request.header("if-none-match") == '"v1"':
            return Response(304, {"etag": '"v1"', "cache-control": "max-age=10", "x-extra": "new"}, b"")
        return Response(
            200,
            {
                "etag": '"v1"',
                "cache-control": "max-age=10",
                "x-extra": "old",
                "last-modified": "Thu, 01 Jan 2015 00:00:00 GMT",
                "content-length": "7",
            },
            b"payload",
        )

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(11)
        revalidated = await c.get("/api/a", headers={"if-none-match": '"other"'})
        hit = await c.get("/api/a")
        client_304 = await c.get("/api/a", headers={"if-none-match": '"v1"'})
    assert status(revalidated) == "REVALIDATED"
    assert revalidated.status_code == 200 and revalidated.text == "payload"
    assert revalidated.headers["x-extra"] == "new"  # stored header fields updated from the 304
    assert status(hit) == "HIT" and hit.headers["x-extra"] == "new"
    assert client_304.status_code == 304 and status(client_304) == "HIT"
    assert len(upstream.requests) == 2
    conditional = upstream.requests[1]
    assert conditional.header("if-none-match") == '"v1"'  # ours, not the client's
    assert conditional.header("if-modified-since") == "Thu, 01 Jan 2015 00:00:00 GMT"


async def test_full_response_to_a_revalidation_replaces_the_entry(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=10", "etag": '"x"'}))
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(11)
        expired = await c.get("/api/a")
        hit = await c.get("/api/a")
    assert status(expired) == "EXPIRED" and expired.text == "body 2"
    assert status(hit) == "HIT" and hit.text == "body 2"
    assert len(upstream.requests) == 2


# -- request directives ------------------------------------------------------------------------------


async def test_request_cache_control_is_honoured(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}))
    async with gw.client() as c:
        missing = await c.get("/api/a", headers={"cache-control": "only-if-cached"})
        await c.get("/api/a")
        cached = await c.get("/api/a", headers={"cache-control": "only-if-cached"})
        no_cache = await c.get("/api/a", headers={"cache-control": "no-cache"})
        max_age_0 = await c.get("/api/a", headers={"cache-control": "max-age=0"})
        no_store = await c.get("/api/a", headers={"cache-control": "no-store"})
    assert missing.status_code == 504
    assert missing.headers["content-type"] == "application/problem+json"
    assert status(cached) == "HIT"
    assert (status(no_cache), status(max_age_0), status(no_store)) == ("EXPIRED", "EXPIRED", "BYPASS")
    assert len(upstream.requests) == 4


async def test_request_max_stale_and_min_fresh(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=10", "etag": '"e"'}))
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(8)
        min_fresh = await c.get("/api/a", headers={"cache-control": "min-fresh=5"})
        clock.advance(20)  # the refreshed entry is 20 s old: 10 s stale
        within = await c.get("/api/a", headers={"cache-control": "max-stale=20"})
        beyond = await c.get("/api/a", headers={"cache-control": "max-stale=5"})
    assert status(min_fresh) == "EXPIRED"  # 2 s of freshness left, 5 wanted
    assert status(within) == "STALE" and within.text == "body 2"
    assert status(beyond) == "EXPIRED"
    assert len(upstream.requests) == 3


async def test_request_cache_control_can_be_ignored_by_config(nursery, cache_cls):
    upstream, gw = await setup(
        nursery, cache_cls, responder({"cache-control": "max-age=60"}), request_cache_control=False
    )
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a", headers={"cache-control": "no-cache"})
    assert status(r) == "HIT"
    assert len(upstream.requests) == 1


# -- coalescing --------------------------------------------------------------------------------------


async def test_concurrent_misses_cause_one_upstream_request(nursery, cache_cls):
    release = trio.Event()

    async def handler(request):
        await release.wait()
        return Response(200, {"cache-control": "max-age=60", "content-length": "6"}, b"shared")

    upstream, gw = await setup(nursery, cache_cls, handler)
    cache = plugin_of(gw)
    results = []

    async def get(c):
        results.append(await c.get("/api/hot"))

    async with gw.client(timeout=30) as c, trio.open_nursery() as n:
        for _ in range(100):
            n.start_soon(get, c)
        await until(lambda: cache.waiting == 99, 20)
        release.set()
    assert len(upstream.requests) == 1
    assert len(results) == 100 and all(r.status_code == 200 and r.text == "shared" for r in results)
    assert sorted(status(r) for r in results) == ["HIT"] * 99 + ["MISS"]


async def test_coalesced_requests_wait_at_most_coalesce_timeout(nursery, cache_cls):
    release = trio.Event()

    async def handler(request):
        await release.wait()
        return Response(200, {"cache-control": "max-age=60", "content-length": "2"}, b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler, coalesce_timeout="100ms")
    results = []

    async def get(c):
        results.append(await c.get("/api/slow"))

    async with gw.client(timeout=30) as c, trio.open_nursery() as n:
        n.start_soon(get, c)
        await until(lambda: len(upstream.requests) == 1)
        n.start_soon(get, c)
        await until(lambda: len(upstream.requests) == 2)  # the waiter gave up and went upstream itself
        release.set()
    assert [r.status_code for r in results] == [200, 200]


# -- stale serving -----------------------------------------------------------------------------------


async def test_stale_while_revalidate_serves_stale_and_refreshes_in_background(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=1, stale-while-revalidate=30"}))
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(5)
        stale = await c.get("/api/a")
        await until(lambda: len(upstream.requests) == 2)
        await trio.testing.wait_all_tasks_blocked()
        fresh = await c.get("/api/a")
    assert status(stale) == "STALE" and stale.text == "body 1" and int(stale.headers["age"]) >= 5
    assert status(fresh) == "HIT" and fresh.text == "body 2"
    assert len(upstream.requests) == 2


async def test_stale_if_error_serves_stale_when_the_upstream_is_gone(nursery, cache_cls, clock):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=1, stale-if-error=60"}))
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(5)
        upstream.stop.set()
        await until_closed(upstream.url)
        stale = await c.get("/api/a")
        other = await c.get("/api/b")
    assert stale.status_code == 200 and stale.text == "body 1" and status(stale) == "STALE"
    assert other.status_code == 502


async def test_stale_if_error_on_5xx_but_not_with_must_revalidate(nursery, cache_cls, clock):
    state = {"fail": False}

    async def handler(request):
        if state["fail"]:
            return Response(503, {"content-length": "4"}, b"down")
        cc = "max-age=1, stale-if-error=60" + (", must-revalidate" if "strict" in request.path else "")
        return Response(200, {"cache-control": cc, "content-length": "2"}, b"ok")

    _, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        await c.get("/api/lax")
        await c.get("/api/strict")
        clock.advance(5)
        state["fail"] = True
        lax = await c.get("/api/lax")
        strict = await c.get("/api/strict")
    assert (lax.status_code, lax.text, status(lax)) == (200, "ok", "STALE")
    assert (strict.status_code, status(strict)) == (503, "EXPIRED")


# -- safety ------------------------------------------------------------------------------------------


async def test_authorization_requests_need_a_response_that_allows_sharing(nursery, cache_cls):
    async def handler(request):
        cc = "public, max-age=60" if request.path.endswith("/public") else "max-age=60"
        return Response(200, {"cache-control": cc, "content-length": "1"}, b"x")

    upstream, gw = await setup(nursery, cache_cls, handler)
    auth = {"authorization": "Bearer alice"}
    async with gw.client() as c:
        await c.get("/api/private", headers=auth)
        mine = await c.get("/api/private", headers=auth)
        await c.get("/api/public", headers=auth)
        shared = await c.get("/api/public", headers={"authorization": "Bearer bob"})
        await c.get("/api/anon")
        anon_to_auth = await c.get("/api/anon", headers=auth)
    assert status(mine) == "MISS"
    assert status(shared) == "HIT"
    assert status(anon_to_auth) == "MISS"
    assert len(upstream.requests) == 5


async def test_set_cookie_responses_are_not_stored_by_default(nursery, cache_cls):
    headers = {"cache-control": "max-age=60", "set-cookie": "session=alice-secret"}
    upstream, gw = await setup(nursery, cache_cls, responder(headers))
    async with gw.client() as c:
        await c.get("/api/a")
        r = await c.get("/api/a")
    assert status(r) == "MISS"
    assert len(upstream.requests) == 2


async def test_set_cookie_is_never_replayed_when_storing_is_allowed(nursery, cache_cls):
    headers = {"cache-control": "max-age=60", "set-cookie": "session=alice-secret"}
    upstream, gw = await setup(nursery, cache_cls, responder(headers), store_set_cookie=True)
    async with gw.client() as c:
        first = await c.get("/api/a")
        second = await c.get("/api/a")
    assert first.headers["set-cookie"] == "session=alice-secret"
    assert status(second) == "HIT" and "set-cookie" not in second.headers
    assert len(upstream.requests) == 1


class HeaderAuth(Plugin):
    """Test auth: the consumer is named by X-User."""

    name = "header-auth"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx):
        if user := ctx.request.headers.get("x-user"):
            ctx.consumer = Consumer(user, id=user)


async def test_per_consumer_key_keeps_consumers_apart(nursery, cache_cls):
    upstream = await start_upstream(nursery, responder({"cache-control": "max-age=60"}))
    gw = await start_gateway(
        nursery,
        config(upstream.url, per_consumer=True)
        + """
        [routes.plugins.header-auth]
        """,
        plugins=[cache_cls, HeaderAuth],
    )
    async with gw.client() as c:
        a1 = await c.get("/api/me", headers={"x-user": "alice"})
        b1 = await c.get("/api/me", headers={"x-user": "bob"})
        a2 = await c.get("/api/me", headers={"x-user": "alice"})
    assert (a1.text, b1.text, a2.text) == ("body 1", "body 2", "body 1")
    assert status(a2) == "HIT"
    assert len(upstream.requests) == 2


async def test_key_uses_the_configured_query_parameters(nursery, cache_cls):
    upstream, gw = await setup(
        nursery, cache_cls, responder({"cache-control": "max-age=60"}), ignore_query_params=["utm_source"]
    )
    async with gw.client() as c:
        await c.get("/api/a?page=1&utm_source=mail")
        same = await c.get("/api/a?utm_source=web&page=1")
        other = await c.get("/api/a?page=2")
    assert status(same) == "HIT" and status(other) == "MISS"
    assert len(upstream.requests) == 2


async def test_host_is_part_of_the_key(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}))
    async with gw.client() as c:
        await c.get("/api/a", headers={"host": "one.example"})
        other = await c.get("/api/a", headers={"host": "two.example"})
    assert status(other) == "MISS"
    assert len(upstream.requests) == 2


# -- invalidation ------------------------------------------------------------------------------------


async def test_unsafe_method_invalidates_uri_and_location(nursery, cache_cls):
    async def handler(request):
        if request.method == "POST":
            return Response(
                201,
                {"location": "/api/items/1", "content-location": "http://elsewhere/api/x", "content-length": "0"},
                b"",
            )
        if request.method == "DELETE":
            return Response(404, {"content-length": "0"}, b"")
        return Response(200, {"cache-control": "max-age=60", "content-length": "2"}, b"ok")

    _, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        for path in ("/api/items", "/api/items/1", "/api/other"):
            await c.get(path)
        posted = await c.post("/api/items", content=b"{}")
        after = [status(await c.get(p)) for p in ("/api/items", "/api/items/1", "/api/other")]
        await c.delete("/api/other")  # an error status invalidates nothing
        kept = await c.get("/api/other")
    assert posted.status_code == 201 and "x-cache-status" not in posted.headers
    assert after == ["MISS", "MISS", "HIT"]
    assert status(kept) == "HIT"


# -- size bounds --------------------------------------------------------------------------------------


async def test_bodies_up_to_max_object_size_are_stored_larger_ones_stream_through(nursery, cache_cls):
    async def handler(request):
        size = int(request.path.rsplit("/", 1)[1])
        return Response(200, {"cache-control": "max-age=60", "content-length": str(size)}, b"x" * size)

    upstream = await start_upstream(nursery, handler)
    gw = await start_gateway(
        nursery,
        """
        [gateway]
        buffer_size = 1000
        """
        + config(upstream.url, max_object_size=2048),
        plugins=[cache_cls],
    )
    async with gw.client() as c:
        for size in (2048, 2049, 500):
            await c.get(f"/api/{size}")
        hits = [await c.get(f"/api/{size}") for size in (2048, 2049, 500)]
    assert [status(r) for r in hits] == ["HIT", "MISS", "HIT"]
    assert [len(r.content) for r in hits] == [2048, 2049, 500]
    assert len(upstream.requests) == 4


async def test_unknown_length_bodies_are_not_stored(nursery, cache_cls):
    async def chunks():
        yield b"a"
        yield b"b"

    async def handler(request):
        return Response(200, {"cache-control": "max-age=60"}, chunks())

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        first = await c.get("/api/a")
        second = await c.get("/api/a")
    assert first.text == second.text == "ab"
    assert status(second) == "MISS"
    assert len(upstream.requests) == 2


async def test_in_process_cache_is_bounded_by_total_bytes(nursery, cache_cls):
    upstream, gw = await setup(
        nursery,
        cache_cls,
        responder({"cache-control": "max-age=60"}, b"x" * 1000),
        max_size="4000",
        max_object_size="1500",
    )
    async with gw.client() as c:
        for name in "abc":
            await c.get(f"/api/{name}")
        store = plugin_of(gw).store
        c_hit = await c.get("/api/c")
        b_hit = await c.get("/api/b")
        a_again = await c.get("/api/a")  # evicted to make room for c
    assert 0 < store.size <= 4000
    assert (status(c_hit), status(b_hit), status(a_again)) == ("HIT", "HIT", "MISS")
    assert len(upstream.requests) == 4


# -- HEAD, methods, statuses --------------------------------------------------------------------------


async def test_head_is_answered_from_a_stored_get(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}))
    async with gw.client() as c:
        await c.get("/api/a")
        head = await c.head("/api/a")
    assert head.status_code == 200 and status(head) == "HIT" and head.content == b""
    assert head.headers["content-length"] == "6"
    assert len(upstream.requests) == 1


async def test_statuses_and_content_types_are_configurable(nursery, cache_cls):
    async def handler(request):
        kind = "application/json" if "json" in request.path else "text/html"
        code = 404 if "missing" in request.path else 200
        return Response(code, {"cache-control": "max-age=60", "content-type": kind, "content-length": "2"}, b"{}")

    _, gw = await setup(nursery, cache_cls, handler, statuses=[200], content_types=["application/json"])
    async with gw.client() as c:
        for path in ("/api/json", "/api/html", "/api/missing-json"):
            await c.get(path)
        again = [status(await c.get(p)) for p in ("/api/json", "/api/html", "/api/missing-json")]
    assert again == ["HIT", "MISS", "MISS"]


async def test_invalid_settings_are_config_errors(nursery):
    upstream = await start_upstream(nursery)
    with pytest.raises(
        ConfigError, match=r"methods\[0\]: expected GET or HEAD \(only their responses can be cached\), got 'POST'"
    ):
        await start_gateway(nursery, config(upstream.url, methods=["POST"]), plugins=[Cache])
    with pytest.raises(ConfigError, match="redis_url is required"):
        await start_gateway(nursery, config(upstream.url, backend="redis"), plugins=[Cache])
    with pytest.raises(ConfigError, match="redis_url: expected a URL starting with redis://"):
        await start_gateway(nursery, config(upstream.url, backend="redis", redis_url="localhost:6379"), plugins=[Cache])
    with pytest.raises(ConfigError, match="max_object_size cannot exceed max_size"):
        await start_gateway(nursery, config(upstream.url, max_size="1KiB", max_object_size="2KiB"), plugins=[Cache])


# -- purge on the admin listener ---------------------------------------------------------------------


async def test_purge_by_key_prefix_and_all(nursery, cache_cls):
    import httpx

    _, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}))
    admin = gw.admin_url
    paths = ["/api/products/1", "/api/products/2", "/api/users/1"]

    async def statuses(c):
        return [status(await c.get(p)) for p in paths]

    async with gw.client() as c, httpx.AsyncClient(base_url=admin) as a:
        await statuses(c)
        host = httpx.URL(gw.url).host
        by_key = await a.post("/cache/purge", json={"key": f"http://{host}/api/products/1"})
        after_key = await statuses(c)
        by_prefix = await a.post("/cache/purge", json={"prefix": "/api/products"})
        after_prefix = await statuses(c)
        everything = await a.post("/cache/purge", json={"all": True})
        after_all = await statuses(c)
        bad = await a.post("/cache/purge", json={"everything": "please"})
        wrong_method = await a.get("/cache/purge")
    assert by_key.json() == {"purged": 1} and after_key == ["MISS", "HIT", "HIT"]
    assert by_prefix.json() == {"purged": 2} and after_prefix == ["MISS", "MISS", "HIT"]
    assert everything.json() == {"purged": 3} and after_all == ["MISS", "MISS", "MISS"]
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert wrong_method.status_code == 405


async def test_cache_status_is_tagged_for_logs_and_metrics(nursery, cache_cls):
    seen = []

    class Recorder(Plugin):
        name = "recorder"

        @hookimpl
        async def on_log(self, ctx, response):
            seen.append(ctx.tags.get("cache"))

    upstream = await start_upstream(nursery, responder({"cache-control": "max-age=60"}))
    gw = await start_gateway(
        nursery,
        config(upstream.url)
        + """
        [routes.plugins.recorder]
        """,
        plugins=[cache_cls, Recorder],
    )
    async with gw.client() as c:
        await c.get("/api/a")
        await c.get("/api/a")
    await until(lambda: len(seen) == 2)  # on_log runs after the response was sent
    assert seen == ["MISS", "HIT"]


async def test_byte_ranges_are_served_from_a_stored_response(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}, b"0123456789A"))
    async with gw.client() as c:
        await c.get("/api/a")
        head = await c.get("/api/a", headers={"range": "bytes=0-1"})
        tail = await c.get("/api/a", headers={"range": "bytes=-1"})
        if_range = await c.get("/api/a", headers={"range": "bytes=0-1", "if-range": '"x"'})
    assert (head.status_code, head.text, head.headers["content-range"]) == (206, "01", "bytes 0-1/11")
    assert (tail.status_code, tail.text) == (206, "A")
    assert (if_range.status_code, if_range.text) == (200, "0123456789A")
    assert len(upstream.requests) == 1


async def test_vary_values_are_normalised(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60", "vary": "foo"}))
    async with gw.client() as c:
        await c.get("/api/a", headers={"foo": "1,2"})
        spaced = await c.get("/api/a", headers={"foo": "1 ,  2"})
        split = await c.get("/api/a", headers=[("foo", "1"), ("foo", "2")])
    assert (status(spaced), status(split)) == ("HIT", "HIT")
    assert len(upstream.requests) == 1


async def test_qualified_no_cache_stores_without_the_listed_fields(nursery, cache_cls):
    headers = {"cache-control": 'no-cache="x-secret", max-age=60', "x-secret": "s", "x-public": "p"}
    upstream, gw = await setup(nursery, cache_cls, responder(headers))
    async with gw.client() as c:
        first = await c.get("/api/a")
        hit = await c.get("/api/a")
    assert first.headers["x-secret"] == "s"
    assert status(hit) == "HIT" and "x-secret" not in hit.headers and hit.headers["x-public"] == "p"
    assert len(upstream.requests) == 1


async def test_stale_entries_with_validators_are_kept_for_keep_stale(nursery, cache_cls, clock):
    async def handler(request):
        if request.header("if-none-match") == '"v"':
            return Response(304, {"etag": '"v"', "cache-control": "max-age=1"}, b"")
        return Response(200, {"etag": '"v"', "cache-control": "max-age=1", "content-length": "2"}, b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler, keep_stale="10s")
    async with gw.client() as c:
        await c.get("/api/a")
        clock.advance(9)  # 1 s fresh + 10 s kept: still there at 9 s
        kept = await c.get("/api/a")
        clock.advance(12)  # revalidated at 9 s; 12 s later it is past 1 + 10 s
        dropped = await c.get("/api/a")
    assert (status(kept), status(dropped)) == ("REVALIDATED", "MISS")
    assert [r.header("if-none-match") for r in upstream.requests] == [None, '"v"', None]


async def test_entries_survive_a_config_reload(nursery, cache_cls):
    upstream, gw = await setup(nursery, cache_cls, responder({"cache-control": "max-age=60"}))
    async with gw.client() as c:
        await c.get("/api/a")
        await gw.reload(config(upstream.url))
        after = await c.get("/api/a")
    assert status(after) == "HIT"
    assert len(upstream.requests) == 1


async def test_uncacheable_uris_are_not_coalesced(nursery, cache_cls):
    both_arrived = trio.Event()

    async def handler(request):
        if len(upstream.requests) == 3:
            both_arrived.set()
        if len(upstream.requests) > 1:
            await both_arrived.wait()  # answers only once two requests are in flight together
        return Response(200, {"cache-control": "no-store", "content-length": "2"}, b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler, coalesce_timeout="30s")
    results = []

    async def get(c):
        results.append(await c.get("/api/a"))

    async with gw.client(timeout=30) as c:
        await c.get("/api/a")  # not storable: the URI is remembered as such
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(get, c)
                n.start_soon(get, c)
    assert [r.status_code for r in results] == [200, 200]
    assert len(upstream.requests) == 3


# -- standards: Age lists, must-understand, targeted fields (RFC 9111 §5.1, §5.2.2.3; RFC 9213) -------------


@pytest.mark.parametrize(
    "age_fields, stored_age",
    [
        ([("age", "8, 1")], 8),  # a list: the first member (RFC 9111 §5.1)
        ([("age", "8"), ("age", "1")], 8),  # two field lines: the first
        ([("age", " 8 ,x")], 8),
        ([("age", "soon, 8")], 0),  # the first member is invalid: the field is ignored
    ],
)
async def test_a_list_valued_age_uses_its_first_member(nursery, cache_cls, clock, age_fields, stored_age):
    from bascule_sdk import Headers

    async def handler(request):
        fields = [("cache-control", "max-age=10"), ("content-length", "2"), *age_fields]
        return Response(200, Headers([(k.encode(), v.encode()) for k, v in fields]), b"ok")

    upstream, gw = await setup(nursery, cache_cls, handler)
    async with gw.client() as c:
        await c.get("/api/a")
        hit = await c.get("/api/a")
        clock.advance(3)  # 8 + 3 > max-age 10 when the first member counted
        after = await c.get("/api/a")
    assert status(hit) == "HIT" and stored_age <= int(hit.headers["age"]) <= stored_age + 1
    assert status(after) == ("MISS" if stored_age else "HIT")
    assert len(upstream.requests) == (2 if stored_age else 1)


async def test_must_understand_overrides_no_store_only_for_understood_statuses(nursery, cache_cls):
    async def handler(request):
        code = int(request.path.rsplit("/", 1)[1])
        no_store = ", no-store" if request.query != "plain" else ""
        h = {"cache-control": f"max-age=60, must-understand{no_store}", "content-length": "2"}
        return Response(code, h, b"ok")

    _, gw = await setup(nursery, cache_cls, handler, statuses=[200, 404, 299, 429])
    async with gw.client() as c:
        results = {}
        for path in ("/api/200", "/api/404", "/api/299", "/api/429", "/api/299?plain"):
            await c.get(path)
            results[path] = status(await c.get(path))
    assert results == {
        "/api/200": "HIT",  # RFC 9110 statuses: the cache knows their caching rules, no-store is ignored
        "/api/404": "HIT",
        "/api/299": "MISS",  # unknown status: must-understand means "do not store" (RFC 9111 §3)
        "/api/429": "MISS",  # RFC 6585: never stored, whatever statuses says
        "/api/299?plain": "MISS",  # must-understand without no-store: still not stored
    }


def _targeted_handler():
    fields = {
        "/api/cdn-only": {"cache-control": "no-store", "cdn-cache-control": "max-age=60"},
        "/api/cdn-no-store": {"cache-control": "max-age=60", "cdn-cache-control": "no-store"},
        "/api/cdn-private": {"cache-control": "public, max-age=60", "cdn-cache-control": "private"},
        "/api/cdn-shorter": {"cache-control": "max-age=600", "cdn-cache-control": "max-age=5"},
        "/api/cdn-expires": {"expires": "Thu, 01 Jan 1970 00:00:00 GMT", "cdn-cache-control": "max-age=60"},
        # Not a valid Structured Field Dictionary (RFC 8941 §3.2): ignored, Cache-Control applies.
        "/api/cdn-invalid": {"cache-control": "max-age=60", "cdn-cache-control": "max-age=(5"},
        "/api/cdn-uppercase": {"cache-control": "max-age=60", "cdn-cache-control": "Max-Age=5"},
        "/api/cdn-empty": {"cache-control": "max-age=60", "cdn-cache-control": ""},
        "/api/cdn-decimal": {"cache-control": "max-age=600", "cdn-cache-control": "max-age=1.5"},
        "/api/other": {"cache-control": "no-store", "acme-cache-control": "max-age=60"},
    }

    async def handler(request):
        return Response(200, {"content-length": "2", **fields[request.path]}, b"ok")

    return handler


async def test_targeted_cache_control_takes_precedence_when_configured(nursery, cache_cls, clock):
    _, gw = await setup(nursery, cache_cls, _targeted_handler(), targeted_cache_control="CDN-Cache-Control")
    paths = [
        "/api/cdn-only",
        "/api/cdn-no-store",
        "/api/cdn-private",
        "/api/cdn-shorter",
        "/api/cdn-expires",
        "/api/cdn-invalid",
        "/api/cdn-uppercase",
        "/api/cdn-empty",
        "/api/cdn-decimal",
        "/api/other",
    ]
    async with gw.client() as c:
        first = {p: await c.get(p) for p in paths}
        clock.advance(10)
        later = {p: status(await c.get(p)) for p in paths}
    assert later == {
        "/api/cdn-only": "HIT",  # CDN-Cache-Control wins over Cache-Control: no-store (RFC 9213 §2.2)
        "/api/cdn-no-store": "MISS",
        "/api/cdn-private": "MISS",
        "/api/cdn-shorter": "MISS",  # max-age=5 for this cache, whatever Cache-Control says
        "/api/cdn-expires": "HIT",  # Expires is ignored too
        "/api/cdn-invalid": "HIT",  # invalid targeted field: Cache-Control max-age=60 applies
        "/api/cdn-uppercase": "HIT",
        "/api/cdn-empty": "HIT",
        "/api/cdn-decimal": "MISS",  # max-age must be an Integer: a decimal is not consumed as one
        "/api/other": "MISS",  # a targeted field not on the list changes nothing
    }
    # Passed through to the client, stored and replayed (RFC 9213 §3: forwarded by default).
    assert first["/api/cdn-only"].headers["cdn-cache-control"] == "max-age=60"
    assert first["/api/cdn-only"].headers["cache-control"] == "no-store"


async def test_targeted_cache_control_is_off_by_default(nursery, cache_cls):
    _, gw = await setup(nursery, cache_cls, _targeted_handler())
    async with gw.client() as c:
        await c.get("/api/cdn-only")
        second = await c.get("/api/cdn-only")
        await c.get("/api/cdn-no-store")
        third = await c.get("/api/cdn-no-store")
    assert status(second) == "MISS" and status(third) == "HIT"
    assert second.headers["cdn-cache-control"] == "max-age=60"


async def test_targeted_cache_control_setting_is_validated(nursery):
    upstream = await start_upstream(nursery)
    for bad in ("Cache-Control", "not a field", ""):
        with pytest.raises(ConfigError, match="targeted_cache_control"):
            await start_gateway(nursery, config(upstream.url, targeted_cache_control=bad), plugins=[Cache])
