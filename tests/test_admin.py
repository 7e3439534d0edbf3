"""The admin listener, served in-process on its own port beside the gateway."""

import os
from functools import partial

import httpx
import pytest
import trio
from bascule.admin import Admin
from bascule.server import hypercorn_config
from bascule.testing import start_gateway, start_upstream
from bascule.worker import listen
from bascule_sdk import Plugin, Request, Response, hookimpl
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app


def config(*urls: str, extra: str = "", route: str = "api") -> str:
    targets = ", ".join(f'"{u}"' for u in urls)
    return f"""
        [gateway]
        {extra}
        [services.api]
        targets = [{targets}]
        max_failures = 2
        cool_off = "1m"
        [[routes]]
        name = "{route}"
        paths = ["/{route}"]
        service = "api"
    """


async def stopped(upstream) -> None:
    """Wait until ``upstream`` refuses connections."""
    host, port = upstream.url.removeprefix("http://").split(":")
    with trio.fail_after(5):
        while True:
            try:
                stream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                return
            await stream.aclose()
            await trio.sleep(0.01)


async def start_admin(nursery, gw, path) -> httpx.AsyncClient:
    """Serve the gateway's admin listener on a free port; return a client for it."""
    admin = Admin(gw.gateway, path, gw.available)
    hc = hypercorn_config(gw.gateway.runtime.config.gateway, "127.0.0.1:0", tls=False)
    (url,) = await nursery.start(partial(listen, admin, hc, shutdown_trigger=gw.stop.wait))
    return httpx.AsyncClient(base_url=url, timeout=30)


async def test_health_routes_plugins(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    text = config(upstream.url)
    (tmp_path / "plugins.toml").write_text(text)
    gw = await start_gateway(nursery, text)
    async with await start_admin(nursery, gw, tmp_path / "plugins.toml") as admin:
        health = await admin.get("/healthz")
        ready = await admin.get("/readyz")
        routes = await admin.get("/routes")
        plugins = await admin.get("/plugins")
        missing = await admin.get("/nope")
        wrong = await admin.post("/routes")
    assert health.json() == {"status": "ok", "pid": os.getpid()}
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["degraded"] == []
    assert [(r["name"], r["service"], r["paths"]) for r in routes.json()] == [("api", "api", ["/api"])]
    assert isinstance(plugins.json(), list)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert wrong.status_code == 405


async def test_upstreams_shows_a_killed_target_ejected_after_max_failures(nursery, tmp_path):
    ups = [await start_upstream(nursery) for _ in range(2)]
    text = config(ups[0].url, ups[1].url)
    gw = await start_gateway(nursery, text)
    async with await start_admin(nursery, gw, tmp_path / "plugins.toml") as admin, gw.client(timeout=30) as client:
        for _ in range(4):
            assert (await client.get("/api")).status_code == 200
        ups[0].stop.set()
        await stopped(ups[0])
        states = []
        for _ in range(6):
            assert (await client.get("/api")).status_code == 200  # retried on the other target
            states.append((await admin.get("/upstreams")).json()["api"]["targets"][0])
        ready = await admin.get("/readyz")
        ups[1].stop.set()
        await stopped(ups[1])
        for _ in range(2):
            await client.get("/api")
        all_down = await admin.get("/readyz")
    # Round-robin sends every other request to the killed target: its 2nd failure ejects it.
    assert [s["state"] for s in states] == ["healthy"] + ["ejected"] * 5
    assert states[-1]["consecutive_failures"] == 2 and states[-1]["ejections"] == 1
    assert 0 < states[-1]["ejected_for"] <= 60
    assert states[-1]["url"] == ups[0].url and states[-1]["requests"] == 4
    assert ready.status_code == 200 and ready.json()["without_healthy_target"] == []
    # Still ready: a dead service is dead for every instance, and the others' routes still serve.
    assert all_down.status_code == 200 and all_down.json()["without_healthy_target"] == ["api"]
    assert all_down.json()["status"] == "ready" and all_down.json()["degraded"] == []


async def test_reload_applies_a_valid_file_and_rejects_an_invalid_one(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    path = tmp_path / "plugins.toml"
    path.write_text(config(upstream.url))
    gw = await start_gateway(nursery, config(upstream.url))
    async with await start_admin(nursery, gw, path) as admin, gw.client(timeout=30) as client:
        path.write_text(config(upstream.url, route="v2"))
        ok = await admin.post("/reload")
        new = await client.get("/v2")
        old = await client.get("/api")
        path.write_text(config(upstream.url, route="v3").replace('"1m"', '"soon"'))
        bad = await admin.post("/reload")
        still = await client.get("/v2")
        v3 = await client.get("/v3")
        get = await admin.get("/reload")
    assert ok.status_code == 200 and (new.status_code, old.status_code) == (200, 404)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    (error,) = bad.json()["errors"]
    assert "services.api" in error and "cool_off" in error
    assert (still.status_code, v3.status_code) == (200, 404)
    assert get.status_code == 405


async def test_admin_token_is_required_when_set(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, extra='admin_token = "s3cret"'))
    async with await start_admin(nursery, gw, tmp_path / "plugins.toml") as admin:
        anonymous = await admin.get("/upstreams")
        wrong = await admin.get("/upstreams", headers={"authorization": "Bearer nope"})
        right = await admin.get("/upstreams", headers={"authorization": "Bearer s3cret"})
    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200 and right.json()["api"]["targets"][0]["state"] == "healthy"


@pytest.mark.parametrize("source", ["env", "file"])
async def test_the_admin_token_may_come_from_the_environment_or_a_file(nursery, tmp_path, monkeypatch, source):
    # "env:NAME" once passed validation and was itself the token in force.
    monkeypatch.setenv("BASCULE_TEST_ADMIN_TOKEN", "from-outside")
    (tmp_path / "token").write_text("from-outside\n")
    reference = "env:BASCULE_TEST_ADMIN_TOKEN" if source == "env" else f"file:{tmp_path / 'token'}"
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, extra=f'admin_token = "{reference}"'))
    async with await start_admin(nursery, gw, tmp_path / "plugins.toml") as admin:
        literal = await admin.get("/upstreams", headers={"authorization": f"Bearer {reference}"})
        right = await admin.get("/upstreams", headers={"authorization": "Bearer from-outside"})
    assert (literal.status_code, right.status_code) == (401, 200)


async def test_the_admin_listener_is_not_on_the_public_port(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    async with gw.client(timeout=30) as client:
        for page in ("/healthz", "/upstreams", "/reload"):
            assert (await client.get(page)).status_code == 404


class AdminEcho(Plugin):
    """Answers POST /echo on the admin listener with the size of the body it was given."""

    name = "admin-echo"

    @hookimpl
    async def on_admin_request(self, request: Request) -> Response | None:
        if request.path != "/echo":
            return None
        return Response.json({"received": len(request.body)})


async def test_admin_body_limit_is_max_body_size(nursery, tmp_path):
    """The admin listener takes a body up to ``[gateway] max_body_size``, no further: 413 problem+json."""
    text = config("http://127.0.0.1:9", extra='max_body_size = "1KiB"') + "\n[plugins.admin-echo]\n"
    (tmp_path / "plugins.toml").write_text(text)
    gw = await start_gateway(nursery, text, [AdminEcho], entry_points=False)
    async with await start_admin(nursery, gw, tmp_path / "plugins.toml") as admin:
        await assert_body_limit(admin, "max_body_size")


async def test_the_admin_app_bounds_the_body_under_any_asgi_server(nursery, tmp_path):
    """Served by plain hypercorn (no bascule connection layer counting body bytes), the
    admin app stops reading at ``max_body_size`` itself (``bascule.asgi.read_body``)."""
    text = config("http://127.0.0.1:9", extra='max_body_size = "1KiB"') + "\n[plugins.admin-echo]\n"
    gw = await start_gateway(nursery, text, [AdminEcho], entry_points=False)
    hc = hypercorn_config(gw.gateway.runtime.config.gateway, "127.0.0.1:0", tls=False)
    app = wrap_app(Admin(gw.gateway, tmp_path / "plugins.toml", gw.available), None, "asgi")
    (url,) = await nursery.start(partial(worker_serve, app, hc, shutdown_trigger=gw.stop.wait))
    async with httpx.AsyncClient(base_url=url) as admin:
        await assert_body_limit(admin, "larger than 1024 bytes")


async def assert_body_limit(admin: httpx.AsyncClient, detail: str) -> None:
    """1 KiB is read, 1 KiB + 1 (streamed, or declared) is a 413 problem+json whose detail says ``detail``."""
    at_limit = await admin.post("/echo", content=b"x" * 1024)
    assert at_limit.status_code == 200
    assert at_limit.json() == {"received": 1024}

    async def chunks():  # chunked: no length ahead, the limit is found while reading
        yield b"x" * 1000
        yield b"x" * 25

    for over in (await admin.post("/echo", content=chunks()), await admin.post("/reload", content=b"x" * 1025)):
        assert over.status_code == 413
        assert over.headers["content-type"] == "application/problem+json"
        assert over.json()["status"] == 413
        assert detail in over.json()["detail"]
