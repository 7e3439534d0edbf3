"""The Redis backend: one cache shared by two gateway instances, bypassed while Redis is down."""

from __future__ import annotations

import trio
from bascule.testing import RedisServer, start_gateway, start_upstream
from bascule_cache import Cache
from bascule_sdk import Response


async def until(predicate, timeout: float = 10) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def counting(request):
    if request.method == "POST":
        return Response(204, {}, b"")
    return Response(
        200, {"cache-control": "max-age=60", "vary": "accept", "etag": '"e"', "content-length": "5"}, b"hello"
    )


def config(upstream_url: str, redis_url: str) -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.cache]
        backend = "redis"
        redis_url = "{redis_url}"
        redis_timeout = "500ms"
        """


async def started(gw) -> Cache:
    cache = next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, Cache))
    await until(lambda: cache.store.ready)
    return cache


async def test_two_gateways_share_one_redis_cache(nursery, caplog):
    with RedisServer() as redis:
        upstream = await start_upstream(nursery, counting)
        gw1 = await start_gateway(nursery, config(upstream.url, redis.url), plugins=[Cache])
        gw2 = await start_gateway(nursery, config(upstream.url, redis.url), plugins=[Cache])
        await started(gw1)
        await started(gw2)
        async with gw1.client() as c1, gw2.client() as c2:
            miss = await c1.get("/api/a", headers={"accept": "text/plain"})
            hit = await c2.get("/api/a", headers={"accept": "text/plain"})
            other_variant = await c2.get("/api/a", headers={"accept": "application/json"})
            await c2.post("/api/a", content=b"x")  # invalidates for both gateways
            after_post = await c1.get("/api/a", headers={"accept": "text/plain"})
            assert len(upstream.requests) == 4

            redis.stop()
            down = [await c1.get("/api/a", headers={"accept": "text/plain"}) for _ in range(2)]
            redis.start()
            await c1.get("/api/b")
            back = await c2.get("/api/b")

    assert (miss.headers["x-cache-status"], hit.headers["x-cache-status"]) == ("MISS", "HIT")
    assert hit.text == "hello" and "age" in hit.headers
    assert other_variant.headers["x-cache-status"] == "MISS"
    assert after_post.headers["x-cache-status"] == "MISS"
    assert [(r.status_code, r.headers["x-cache-status"]) for r in down] == [(200, "BYPASS")] * 2
    assert back.headers["x-cache-status"] == "HIT"
    assert len(upstream.requests) == 7
    assert "Redis unavailable" in caplog.text


async def test_a_redis_slower_than_redis_timeout_is_bypassed(nursery):
    import os
    import signal

    with RedisServer() as redis:
        upstream = await start_upstream(nursery, counting)
        gw = await start_gateway(
            nursery, config(upstream.url, redis.url).replace('"500ms"', '"200ms"'), plugins=[Cache]
        )
        await started(gw)
        async with gw.client() as c:
            await c.get("/api/a")
            os.kill(redis._proc.pid, signal.SIGSTOP)  # Redis hangs: every call would block
            try:
                slow = await c.get("/api/a")
            finally:
                os.kill(redis._proc.pid, signal.SIGCONT)
            await c.get("/api/b")
            again = await c.get("/api/b")
    assert (slow.status_code, slow.headers["x-cache-status"]) == (200, "BYPASS")
    assert again.headers["x-cache-status"] == "HIT"
    assert len(upstream.requests) == 3
