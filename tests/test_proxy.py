"""Proxying over real sockets: header hygiene, forwarded headers, paths, streaming, upstream errors."""

import tracemalloc

import httpx
import pytest
import trio
from bascule.asgi import accept_lifespan
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import HTTPError, Plugin, Response, hookimpl
from hypercorn.config import Config
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app


def config(upstream_url: str, extra: str = "", gateway: str = "") -> str:
    return f"""
        [gateway]
        {gateway}
        [services.api]
        targets = ["{upstream_url}"]
        timeout = "300ms"
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
        {extra}
    """


async def test_hop_by_hop_headers_do_not_cross_the_gateway(nursery):
    async def handler(request):
        return Response(
            200,
            [
                ("connection", "x-upstream-private"),
                ("x-upstream-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ],
            b"ok",
        )

    upstream = await start_upstream(nursery, handler)
    gw = await start_gateway(nursery, config(upstream.url))
    async with gw.client() as client:
        r = await client.get(
            "/x",
            headers={
                "connection": "keep-alive, x-client-private",
                "x-client-private": "1",
                "keep-alive": "300",
                "te": "trailers",
                "proxy-authorization": "Basic Zm9vOmJhcg==",
                "x-end-to-end": "kept",
            },
        )
    seen = upstream.requests[0].headers
    for name in ("x-client-private", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen, name
    assert seen.get("x-end-to-end") == "kept"
    assert "x-upstream-private" not in r.headers
    assert "keep-alive" not in r.headers
    assert r.headers["x-kept"] == "yes"


class Forger(Plugin):
    """Tries, in ``on_upstream_request``, to forge what only the gateway writes upstream."""

    name = "forger"

    @hookimpl
    async def on_upstream_request(self, ctx, request):
        for name, value in [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("via", "1.1 evil"),
            ("x-request-id", "forged"),
            ("connection", "x-plugin-private"),
            ("x-plugin-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-length", "999"),
        ]:
            request.headers.set(name, value)
        request.headers.set("x-plugin-kept", "yes")


async def test_a_plugin_cannot_forge_forwarding_hop_by_hop_or_framing_fields(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, "[routes.plugins.forger]"), [Forger])
    async with gw.client() as client:
        r = await client.post("/x", content=b"body")
    assert r.status_code == 200
    seen = upstream.requests[0]
    assert (seen.body, seen.headers.get_all("content-length")) == (b"body", ["4"])
    for name in ("x-forwarded-port", "connection", "x-plugin-private", "te", "transfer-encoding"):
        assert name not in seen.headers, name
    assert seen.headers.get_all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.headers.get_all("x-real-ip") == ["127.0.0.1"]
    assert seen.headers.get_all("via") == ["1.1 bascule"]
    assert seen.headers.get_all("forwarded") == [f'for=127.0.0.1;proto=http;host="{r.request.headers["host"]}"']
    assert seen.headers.get_all("x-request-id") == [r.headers["x-request-id"]]
    assert seen.header("x-plugin-kept") == "yes"


async def test_untrusted_client_cannot_spoof_forwarded_headers(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    async with gw.client() as client:
        r = await client.get(
            "/x",
            headers={
                "x-forwarded-for": "6.6.6.6",
                "x-forwarded-host": "evil.example",
                "x-forwarded-proto": "https",
                "forwarded": "for=6.6.6.6",
                "x-real-ip": "6.6.6.6",
                "x-request-id": "chosen-by-client",
                "x-consumer-username": "admin",
                "x-consumer-id": "1",
                "via": "1.1 evil",
            },
        )
    seen = upstream.requests[0].headers
    assert seen.get_all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.get("x-forwarded-host") == r.request.headers["host"]
    assert seen.get("x-forwarded-proto") == "http"
    assert seen.get_all("forwarded") == [f'for=127.0.0.1;proto=http;host="{r.request.headers["host"]}"']
    assert seen.get("x-real-ip") == "127.0.0.1"
    assert seen.get("via") == "1.1 bascule"
    assert "x-consumer-username" not in seen and "x-consumer-id" not in seen
    assert seen.get("x-request-id") == r.headers["x-request-id"] != "chosen-by-client"


async def test_trusted_proxy_headers_are_extended(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, gateway='trusted_proxies = ["127.0.0.0/8"]'))
    async with gw.client() as client:
        r = await client.get(
            "/x",
            headers={
                "x-forwarded-for": "203.0.113.7, 10.0.0.2",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "shop.example.com",
                "x-request-id": "lb-1234",
                "via": "1.1 lb",
            },
        )
    seen = upstream.requests[0].headers
    assert seen.get("x-forwarded-for") == "203.0.113.7, 10.0.0.2, 127.0.0.1"
    assert seen.get("x-forwarded-proto") == "https"
    assert seen.get("x-forwarded-host") == "shop.example.com"
    assert seen.get("x-real-ip") == "10.0.0.2"  # the first untrusted address from the right
    assert seen.get("via") == "1.1 lb, 1.1 bascule"
    assert r.headers["x-request-id"] == seen.get("x-request-id") == "lb-1234"


async def test_strip_path_preserve_host_and_service_base_path(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.users]
        targets = ["{upstream.url}/v2/users"]
        [[routes]]
        name = "stripped"
        paths = ["/api/users"]
        service = "users"
        strip_path = true
        [[routes]]
        name = "kept"
        paths = ["/keep"]
        service = "users"
        preserve_host = true
    """,
    )
    async with gw.client() as client:
        await client.get("/api/users/7?expand=1")
        await client.get("/api/users")
        await client.get("/keep/x", headers={"host": "shop.example.com"})
    a, b, c = upstream.requests
    assert (a.path, a.query) == ("/v2/users/7", "expand=1")
    assert b.path == "/v2/users"
    assert a.header("host") == upstream.url.removeprefix("http://")
    assert (c.path, c.header("host")) == ("/v2/users/keep/x", "shop.example.com")


class Guard(Plugin):
    name = "guard"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx):
        raise HTTPError(401, "Admins only.")


@pytest.mark.parametrize(
    "path",
    [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin/",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/public/./../admin/users",
    ],
)
async def test_no_spelling_of_a_path_skips_the_route_plugins(nursery, path):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "public"
        paths = ["/public"]
        service = "api"
        [[routes]]
        name = "admin"
        paths = ["/admin"]
        service = "api"
        [routes.plugins.guard]
    """,
        [Guard],
    )
    async with httpx.AsyncClient() as client:
        # Send the path exactly as written: no client-side normalisation.
        request = client.build_request("GET", gw.url)
        request.url = request.url.copy_with(raw_path=path.encode())
        r = await client.send(request)
    assert r.status_code == 401, (path, r.status_code)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/public/..%2fadmin",
        "/public/%2e%2e%5cadmin",
        "/public\\..\\admin",
        "/public/..;/admin",
        "/public/.;x/admin",
    ],
)
async def test_ambiguous_paths_are_rejected(nursery, path):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    async with httpx.AsyncClient() as client:
        request = client.build_request("GET", gw.url)
        request.url = request.url.copy_with(raw_path=path.encode())
        r = await client.send(request)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert upstream.requests == []


async def test_upstream_receives_the_path_that_was_matched(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    async with httpx.AsyncClient() as client:
        request = client.build_request("GET", gw.url)
        request.url = request.url.copy_with(raw_path=b"/a//b/./c/../d/%7Euser/%3a?q=%2F")
        await client.send(request)
    assert (upstream.requests[0].path, upstream.requests[0].query) == ("/a/b/d/~user/%3A", "q=%2F")


async def test_unreachable_upstream_is_502_with_request_id(nursery):
    gw = await start_gateway(nursery, config("http://127.0.0.1:9"))
    async with gw.client() as client:
        r = await client.get("/x")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert "127.0.0.1" not in r.text  # no internal address leaks


async def test_slow_upstream_is_504(nursery):
    async def slow(request):
        await trio.sleep(5)
        return Response(200, body=b"late")

    upstream = await start_upstream(nursery, slow)
    gw = await start_gateway(nursery, config(upstream.url))  # timeout = 300ms
    async with gw.client() as client:
        r = await client.get("/x")
    assert r.status_code == 504
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_head_and_no_content_responses(nursery):
    async def handler(request):
        if request.path == "/empty":
            return Response(204)
        return Response(200, {"content-length": "5"}, b"" if request.method == "HEAD" else b"hello")

    upstream = await start_upstream(nursery, handler)
    gw = await start_gateway(nursery, config(upstream.url))
    async with gw.client() as client:
        head = await client.head("/x")
        empty = await client.delete("/empty")
        missing = await client.head("/nowhere-route-matches-all")  # still proxied (route "/")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "5", b"")
    assert (empty.status_code, empty.content) == (204, b"")
    assert missing.status_code == 200


async def test_body_size_limit_is_exact(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, gateway="max_body_size = 1000"))

    async def chunked(size):
        yield b"x" * size

    async with gw.client() as client:
        at_limit = await client.post("/x", content=b"x" * 1000)
        over = await client.post("/x", content=b"x" * 1001)
        streamed_at = await client.post("/x", content=chunked(1000))
        streamed_over = await client.post("/x", content=chunked(1001))
    assert at_limit.status_code == 200 and streamed_at.status_code == 200
    assert over.status_code == 413 and streamed_over.status_code == 413
    assert over.headers["content-type"] == "application/problem+json"
    assert [len(r.body) for r in upstream.requests] == [1000, 1000]


class CountingUpstream:
    """An upstream that streams ``size`` bytes out and counts what it receives, holding neither."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await accept_lifespan(receive, send)
            return
        while True:
            message = await receive()
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        size = self.size if scope["method"] == "GET" else 0
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def test_large_bodies_stream_both_ways_with_bounded_memory(nursery):
    size = 32 * 1024 * 1024
    app = CountingUpstream(size)
    hc = Config()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    (url,) = await nursery.start(worker_serve, wrap_app(app, None, "asgi"), hc)
    # The service timeout bounds the wait for the response head, uploads included.
    gw = await start_gateway(nursery, config(url, gateway=f"max_body_size = {size}").replace('"300ms"', '"60s"'))

    async def upload():
        chunk = b"y" * 65536
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        async with gw.client(timeout=60) as client:
            received = 0
            async with client.stream("GET", "/download") as r:
                async for chunk in r.aiter_raw():
                    received += len(chunk)
            up = await client.post("/upload", content=upload())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (r.status_code, received) == (200, size)
    assert (up.status_code, app.received) == (200, size)
    # Everything (client, gateway, upstream) runs in this process: a gateway that
    # buffered either body would have held 32 MiB at once.
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
