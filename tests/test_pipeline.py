"""The plugin pipeline over real sockets: per-route plugins, order, short-circuits, containment."""

import logging
from dataclasses import dataclass

import pytest
from bascule.testing import eventually, start_gateway, start_upstream
from bascule_sdk import HTTPError, Plugin, Response, hookimpl, setting

LOG: list[tuple[str, int]] = []


@dataclass(frozen=True)
class TagSettings:
    value: str = setting("default", "A label added to the upstream request.")


class Tag(Plugin):
    """Records each phase it sees, in the order it sees them."""

    name = "tag"
    priority = 100
    Settings = TagSettings

    @hookimpl
    async def on_request(self, ctx):
        ctx.state.setdefault("order", []).append(self.instance)

    @hookimpl
    async def on_upstream_request(self, ctx, request):
        request.headers.add("x-tag", f"{self.instance}={self.settings.value}")

    @hookimpl
    async def on_response(self, response):  # opt-in arguments: only what it needs
        response.headers.add("x-response-order", self.instance)

    @hookimpl
    async def on_log(self, ctx, response):
        LOG.append((self.instance, response.status))


class Deny(Plugin):
    name = "deny"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx):
        if ctx.request.headers.get("x-token") != "letmein":
            raise HTTPError(401, "A token is required.", {"www-authenticate": "Token"})


class Throttle(Plugin):
    name = "throttle"
    priority = 900

    @hookimpl
    async def on_request(self, ctx):
        return Response.json({"slow": "down"}, 429, {"retry-after": "7"})


class Crash(Plugin):
    name = "crash"

    @hookimpl
    async def on_request(self, ctx):
        if "x-crash" in ctx.request.headers:
            raise RuntimeError("boom")


class Answer(Plugin):
    name = "answer"
    priority = 10

    @hookimpl
    async def handle(self, ctx):
        return Response.json({"answered_by": self.instance, "ride": ctx.path_params.get("ride")})


PLUGINS = [Tag, Deny, Throttle, Crash, Answer]


async def gateway(nursery, routes: str, globals_: str = ""):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        {globals_}
        {routes}
    """,
        PLUGINS,
        entry_points=False,
    )
    return gw, upstream


def route(name: str, path: str, plugins: str = "") -> str:
    return f"""
        [[routes]]
        name = "{name}"
        paths = ["{path}"]
        service = "api"
        {plugins}
    """


async def test_plugin_runs_only_on_routes_that_enable_it(nursery):
    gw, upstream = await gateway(nursery, route("tagged", "/tagged", "[routes.plugins.tag]") + route("open", "/open"))
    async with gw.client() as client:
        tagged = await client.get("/tagged")
        plain = await client.get("/open")
    assert upstream.requests[0].headers.get_all("x-tag") == ["tag=default"]
    assert upstream.requests[1].headers.get_all("x-tag") == []
    assert tagged.headers["x-response-order"] == "tag"
    assert "x-response-order" not in plain.headers


async def test_global_plugin_with_route_override_and_disable(nursery):
    gw, upstream = await gateway(
        nursery,
        route("default", "/a")
        + route("override", "/b", '[routes.plugins.tag]\nvalue = "route"')
        + route("disabled", "/c", "[routes.plugins]\ntag = false"),
        '[plugins.tag]\nvalue = "global"',
    )
    async with gw.client() as client:
        for path in ("/a", "/b", "/c"):
            assert (await client.get(path)).status_code == 200
    assert [r.headers.get_all("x-tag") for r in upstream.requests] == [["tag=global"], ["tag=route"], []]


async def test_same_plugin_twice_and_priority_override(nursery):
    gw, upstream = await gateway(
        nursery,
        route(
            "twice",
            "/twice",
            """
        [routes.plugins.tag]
        value = "first"
        [routes.plugins.early]
        plugin = "tag"
        value = "second"
        priority = 5000
    """,
        ),
    )
    async with gw.client() as client:
        r = await client.get("/twice")
    # 'early' overrides its priority above 'tag': it runs first on the way in ...
    assert upstream.requests[0].headers.get_all("x-tag") == ["early=second", "tag=first"]
    # ... and last on the way out (on_response unwinds like middleware).
    assert r.headers.get_list("x-response-order") == ["tag", "early"]


async def test_short_circuit_skips_upstream_but_runs_on_response_and_on_log(nursery):
    LOG.clear()
    gw, upstream = await gateway(
        nursery,
        route(
            "guarded",
            "/guarded",
            """
        [routes.plugins.deny]
        [routes.plugins.tag]
    """,
        )
        + route(
            "throttled",
            "/throttled",
            """
        [routes.plugins.throttle]
        [routes.plugins.tag]
    """,
        ),
    )
    async with gw.client() as client:
        denied = await client.get("/guarded")
        allowed = await client.get("/guarded", headers={"x-token": "letmein"})
        throttled = await client.get("/throttled")
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.headers["www-authenticate"] == "Token"
    assert denied.json() == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "A token is required.",
        "request_id": denied.headers["x-request-id"],
    }
    assert denied.headers["x-response-order"] == "tag"
    assert allowed.status_code == 200
    assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "7")
    assert throttled.headers["x-response-order"] == "tag"
    assert len(upstream.requests) == 1  # only the allowed request went upstream
    await eventually(lambda: len(LOG) == 3)
    assert LOG == [("tag", 401), ("tag", 200), ("tag", 429)]


async def test_a_crashing_plugin_fails_only_its_request(nursery, caplog):
    gw, upstream = await gateway(nursery, route("fragile", "/fragile", "[routes.plugins.crash]"))
    async with gw.client() as client:
        crashed = await client.get("/fragile", headers={"x-crash": "1"})
        fine = await client.get("/fragile")
    assert crashed.status_code == 500
    problem = crashed.json()
    assert problem["request_id"] == crashed.headers["x-request-id"]
    assert "boom" not in crashed.text  # no internals leak to the client
    assert fine.status_code == 200
    assert len(upstream.requests) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "plugin 'crash' failed in on_request" in record.getMessage()
    assert problem["request_id"] in record.getMessage()
    assert record.exc_info[0] is RuntimeError


async def test_a_handle_plugin_answers_a_route_without_service(nursery):
    gw, upstream = await gateway(
        nursery,
        """
        [[routes]]
        name = "status"
        paths = ["/rides/{ride}/status"]
        match = "exact"
        [routes.plugins.answer]
    """,
    )
    async with gw.client() as client:
        r = await client.get("/rides/r7/status")
    assert r.json() == {"answered_by": "answer", "ride": "r7"}
    assert upstream.requests == []


@pytest.mark.parametrize("phase", ["on_request", "on_response"])
async def test_a_plugin_may_replace_the_response(nursery, phase):
    class Replace(Plugin):
        name = "replace"

    async def hook(self, *args):
        return Response(203, {"x-replaced": phase}, b"replaced")

    setattr(Replace, phase, hookimpl(hook))
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "r"
        paths = ["/"]
        service = "api"
        [routes.plugins.replace]
    """,
        [Replace],
        entry_points=False,
    )
    async with gw.client() as client:
        r = await client.get("/x")
    assert (r.status_code, r.headers["x-replaced"], r.content) == (203, phase, b"replaced")


def test_a_sync_hook_is_rejected_at_load():
    from bascule import ConfigError, parse_config
    from bascule.registry import discover
    from bascule.runtime import check_config

    class Sync(Plugin):
        name = "sync"

        @hookimpl
        def on_request(self, ctx):
            return None

    config = """
        [services.api]
        targets = ["http://127.0.0.1:1"]
        [[routes]]
        name = "r"
        paths = ["/"]
        service = "api"
        [routes.plugins.sync]
    """
    with pytest.raises(ConfigError, match=r"plugin 'sync' \(.*Sync\): hook on_request must be 'async def'"):
        available = discover([Sync], entry_points=False)
        check_config(parse_config(config, "plugins.toml", available), available)


async def test_unmatched_requests_still_meet_global_plugins(nursery):
    LOG.clear()
    gw, _ = await gateway(nursery, route("a", "/a"), "[plugins.tag]")
    async with gw.client() as client:
        r = await client.get("/nowhere")
    assert r.status_code == 404
    assert r.headers["x-response-order"] == "tag"
    await eventually(lambda: LOG != [])
    assert LOG == [("tag", 404)]


async def test_a_plugin_failing_at_startup_on_reload_keeps_the_old_config(nursery):
    class Fragile(Plugin):
        name = "fragile"

        @hookimpl
        async def startup(self, gateway):
            raise OSError("cannot open the key file")

    from bascule import ConfigError

    upstream = await start_upstream(nursery)
    base = f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "a"
        paths = ["/a"]
        service = "api"
    """
    gw = await start_gateway(nursery, base, [Fragile], entry_points=False)
    with pytest.raises(ConfigError, match="a plugin failed to start: cannot open the key file"):
        await gw.reload(base + "[routes.plugins.fragile]\n")
    async with gw.client() as client:
        assert (await client.get("/a")).status_code == 200
