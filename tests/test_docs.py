"""The docs are tested: every hook and config key is documented, every example runs.

- docs/plugins.md: one section per hookspec of ``bascule_sdk.hookspecs``, with
  its exact signature, arguments, when it runs, what it returns, and a Python
  example. The examples are executed here, over real sockets. Every name of
  ``bascule_sdk.__all__`` has an entry in its SDK reference.
- docs/config.md: every key of every config model, in a generated table that
  must match the dataclasses (``python docs/update_config_md.py`` regenerates
  them), and every key set in a TOML example that must validate.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import sys
import tomllib
import types
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
from bascule.admin import Admin
from bascule.config import (
    ConfigError,
    ConsumerSettings,
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
    TargetSettings,
    WebSocketSettings,
    parse_config,
)
from bascule.registry import discover
from bascule.schema import reference_table
from bascule.server import hypercorn_config
from bascule.testing import start_gateway, start_upstream
from bascule.worker import listen
from bascule_sdk import Plugin, Response, hookspecs
from bascule_sdk.settings import parse

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIG_MODELS = (GatewaySettings, ServiceSettings, TargetSettings, RouteSettings, WebSocketSettings, ConsumerSettings)


# -- docs/plugins.md -------------------------------------------------------------


def hookspec_signatures() -> dict[str, str]:
    """``{"on_request": "on_request(ctx)", ...}`` for every hook in the SDK."""
    specs = {}
    for name in hookspecs.HOOKS:
        specs[name] = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
    return specs


def hook_sections() -> dict[str, str]:
    """The text under each ``### `hook(args)` `` heading of the hook reference, by heading."""
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    reference = text.split("\n## Hook reference\n", 1)[1]
    parts = re.split(r"^### `([^`]+)`\s*$", reference, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_every_hook_is_documented_with_its_signature():
    specs = hookspec_signatures()
    assert specs, "no hookspecs found"
    sections = hook_sections()
    missing = sorted(set(specs.values()) - set(sections))
    assert not missing, f"docs/plugins.md has no '### `...`' section for: {', '.join(missing)}"
    stale = sorted(set(sections) - set(specs.values()))
    assert not stale, f"docs/plugins.md documents hooks that are not in the SDK (or a wrong signature): {stale}"


@pytest.mark.parametrize("hook", sorted(hookspec_signatures()))
def test_hook_section_is_complete(hook):
    section = hook_sections()[hookspec_signatures()[hook]]
    for part in ("**Arguments**", "**When**", "**Returns**", "**Example**"):
        assert part in section, f"{hook}: the section lacks {part}"
    blocks = python_blocks(section)
    assert len(blocks) == 1, f"{hook}: expected one python example"
    assert f"async def {hook}(" in blocks[0], f"{hook}: the example does not implement the hook"
    assert f"test_{hook}_example" in globals(), f"{hook}: no test runs its example"


def example(hook: str) -> type[Plugin]:
    """Execute the example of ``hook`` as a module; return the plugin class it defines."""
    (code,) = python_blocks(hook_sections()[hookspec_signatures()[hook]])
    module = types.ModuleType(f"docs_example_{hook}")
    sys.modules[module.__name__] = module  # dataclasses and typing look their module up
    # dont_inherit: run the example as written, not under this file's ``from __future__`` imports.
    exec(compile(code, f"docs/plugins.md ({hook} example)", "exec", dont_inherit=True), module.__dict__)
    (cls,) = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Plugin) and v is not Plugin]
    return cls


def route(upstream_url: str, plugin: str, table: str = "") -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.{plugin}]
        {table}
        [[routes]]
        name = "other"
        paths = ["/other"]
        service = "api"
    """


async def test_startup_example(nursery, tmp_path):
    blocklist = example("startup")
    upstream = await start_upstream(nursery)
    (tmp_path / "blocked").write_text("10.9.9.9\n127.0.0.1\n")
    (tmp_path / "empty").write_text("10.9.9.9\n")
    blocked = await start_gateway(
        nursery, route(upstream.url, "blocklist", f'file = "{tmp_path / "blocked"}"'), plugins=[blocklist]
    )
    allowed = await start_gateway(
        nursery, route(upstream.url, "blocklist", f'file = "{tmp_path / "empty"}"'), plugins=[blocklist]
    )
    async with blocked.client() as client:
        r = await client.get("/api/x")
        other = await client.get("/other/x")
    assert r.status_code == 403
    assert r.json()["detail"] == "Your address is blocked."
    assert other.status_code == 200
    async with allowed.client() as client:
        assert (await client.get("/api/y")).status_code == 200
    assert [q.path for q in upstream.requests] == ["/other/x", "/api/y"]


async def test_shutdown_example(tmp_path):
    audit = example("shutdown")
    path = tmp_path / "audit.log"
    async with trio.open_nursery() as nursery:
        upstream = await start_upstream(nursery)
        gw = await start_gateway(nursery, route(upstream.url, "audit", f'path = "{path}"'), plugins=[audit])
        async with gw.client() as client:
            await client.get("/api/a")
            await client.post("/api/b")
            await client.get("/other/c")
        gw.stop.set()  # the gateway shuts down: the plugin flushes and closes its file
        upstream.stop.set()
    assert path.read_text().splitlines() == ["GET /api/a 200", "POST /api/b 200"]


async def test_on_request_example(nursery):
    ping = example("on_request")
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, route(upstream.url, "ping"), plugins=[ping])
    async with gw.client() as client:
        pong = await client.get("/api/ping")
        proxied = await client.get("/api/users")
        other = await client.get("/other/ping")
    assert pong.json() == {"pong": True, "route": "api"}
    assert proxied.status_code == other.status_code == 200
    assert [q.path for q in upstream.requests] == ["/api/users", "/other/ping"]


async def test_on_upstream_request_example(nursery, monkeypatch):
    token = example("on_upstream_request")
    monkeypatch.setenv("DOCS_SERVICE_TOKEN", "s3cret")
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, route(upstream.url, "upstream-token", 'token = "env:DOCS_SERVICE_TOKEN"'), plugins=[token]
    )
    async with gw.client() as client:
        r = await client.get("/api/x", headers={"authorization": "Bearer client-token"})
        await client.get("/other/x", headers={"authorization": "Bearer client-token"})
    assert r.status_code == 200
    assert [q.header("authorization") for q in upstream.requests] == ["Bearer s3cret", "Bearer client-token"]


async def test_handle_example(nursery):
    mock = example("handle")
    gw = await start_gateway(
        nursery,
        """
        [[routes]]
        name = "mocked"
        paths = ["/mock"]
        [routes.plugins.mock]
        status = 201
        body = { created = true }
    """,
        plugins=[mock],
    )
    async with gw.client() as client:
        r = await client.post("/mock/orders")
    assert r.status_code == 201
    assert r.json() == {"created": True, "path": "/mock/orders"}


async def test_on_response_example(nursery):
    security = example("on_response")

    async def service(request):
        return Response(200, {"server": "nginx/1.0", "content-length": "2"}, b"ok")

    upstream = await start_upstream(nursery, service)
    gw = await start_gateway(
        nursery, route(upstream.url, "security-headers", 'hsts_max_age = "1d"'), plugins=[security]
    )
    async with gw.client() as client:
        r = await client.get("/api/x")
        other = await client.get("/other/x")
    assert r.headers["strict-transport-security"] == "max-age=86400"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "server" not in r.headers
    assert other.headers["server"].startswith("nginx/1.0")  # untouched where the plugin is off


async def test_on_log_example(caplog):
    slow_log = example("on_log")
    caplog.set_level(logging.WARNING, logger="slow-requests")
    async with trio.open_nursery() as nursery:
        upstream = await start_upstream(nursery)
        gw = await start_gateway(nursery, route(upstream.url, "slow-log", 'threshold = "0s"'), plugins=[slow_log])
        async with gw.client() as client:
            r = await client.get("/api/slow")
            await client.get("/other/x")
        gw.stop.set()  # a graceful stop lets on_log (which runs after the response) finish
        upstream.stop.set()
    (record,) = [r for r in caplog.records if r.name == "slow-requests"]
    assert record.getMessage().startswith("slow: GET /api/slow -> 200 in ")
    assert r.headers["x-request-id"] in record.getMessage()


async def test_on_admin_request_example(nursery):
    counts = example("on_admin_request")
    admin_stop = trio.Event()
    async with trio.open_nursery() as public:
        upstream = await start_upstream(public)
        gw = await start_gateway(public, route(upstream.url, "status-counts"), plugins=[counts])
        admin = Admin(gw.gateway, "plugins.toml", gw.available)
        hc = hypercorn_config(gw.gateway.runtime.config.gateway, "127.0.0.1:0", tls=False)
        (admin_url,) = await nursery.start(partial(listen, admin, hc, shutdown_trigger=admin_stop.wait))
        async with gw.client() as client:
            await client.get("/api/a")
            await client.get("/api/b")
            await client.get("/other/c")
        gw.stop.set()  # a graceful stop lets on_log (which runs after the response) finish
        upstream.stop.set()
    async with httpx.AsyncClient(base_url=admin_url) as client:
        page = await client.get("/status-counts")
        health = await client.get("/healthz")
    admin_stop.set()
    assert page.json() == {"api 200": 2}
    assert health.json()["status"] == "ok"  # other admin paths are left to the gateway


def test_every_public_name_of_the_sdk_is_documented():
    import bascule_sdk

    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    reference = text.split("\n## SDK reference\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"\*\*`(\w+)[`(]", reference))
    missing = sorted(set(bascule_sdk.__all__) - documented)
    assert not missing, f"docs/plugins.md, SDK reference: no **`name`** entry for {', '.join(missing)}"


async def test_on_websocket_message_example(nursery):
    json_only = example("on_websocket_message")
    server = await nursery.start(partial(trio_websocket.serve_websocket, _echo_websocket, "127.0.0.1", 0, None))
    config = route(f"http://127.0.0.1:{server.port}", "json-only").replace(
        'service = "api"\n', 'service = "api"\nwebsocket = {}\n', 1
    )
    gw = await start_gateway(nursery, config, plugins=[json_only])
    async with trio_websocket.open_websocket_url(gw.url.replace("http", "ws") + "/api") as ws:
        await ws.send_message('{"lat": 48.85}')
        await ws.send_message("ping")
        await ws.send_message('{"lon": 2.35}')
        assert [await ws.get_message(), await ws.get_message()] == ['{"lat": 48.85}', '{"lon": 2.35}']
        await ws.send_message("not json")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert (closed.value.reason.code, closed.value.reason.reason) == (1007, "client messages must be JSON")


async def _echo_websocket(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


# -- docs/config.md ----------------------------------------------------------------


def config_doc() -> str:
    return (DOCS / "config.md").read_text(encoding="utf-8")


def generated_block(model: type) -> str | None:
    m = re.search(rf"<!-- BEGIN {model.__name__} -->\n(.*?)<!-- END {model.__name__} -->", config_doc(), re.S)
    return m.group(1) if m else None


@pytest.mark.parametrize("model", CONFIG_MODELS, ids=lambda m: m.__name__)
def test_every_config_key_is_in_its_reference_table(model):
    block = generated_block(model)
    assert block is not None, f"docs/config.md has no table for {model.__name__}"
    assert block == reference_table(model), (
        f"docs/config.md: the {model.__name__} table is out of date: run `python docs/update_config_md.py`"
    )


def toml_examples(model: type) -> list[str]:
    """The ```toml blocks in the section of ``model`` (up to the next ``##`` heading)."""
    text = config_doc()
    start = text.index(f"<!-- END {model.__name__} -->")
    end = text.find("\n## ", start)
    return re.findall(r"^```toml\n(.*?)^```", text[start : end if end != -1 else None], flags=re.M | re.S)


def example_tables(model: type, data: dict) -> list[dict]:
    """The tables of ``model`` in a parsed example."""
    if model is GatewaySettings:
        return [data["gateway"]]
    if model is ServiceSettings:
        return list(data["services"].values())
    if model is TargetSettings:
        return [t for s in data["services"].values() for t in s["targets"] if isinstance(t, dict)]
    if model is RouteSettings:
        return data["routes"]
    if model is WebSocketSettings:
        return [r["websocket"] for r in data["routes"] if "websocket" in r]
    return list(data["consumers"].values())


@pytest.mark.parametrize("model", CONFIG_MODELS, ids=lambda m: m.__name__)
def test_every_config_key_has_an_example(model):
    examples = toml_examples(model)
    assert examples, f"docs/config.md: the {model.__name__} section has no toml example"
    keys = set()
    for text in examples:
        for table in example_tables(model, tomllib.loads(text)):
            parse(model, table)  # raises if the example is wrong
            keys |= {k.replace("-", "_") for k in table}
    fields = {f.name for f in dataclasses.fields(model) if f.init}
    assert not fields - keys, f"docs/config.md: no example sets {model.__name__} key(s) {sorted(fields - keys)}"


def test_config_examples_are_valid_configs():
    available = discover()
    blocks = re.findall(r"^```toml\n(.*?)^```", config_doc(), flags=re.M | re.S)
    whole = [b for b in blocks if "[[routes]]" in b and "[services." in b]
    assert len(whole) >= 2, "docs/config.md: expected complete examples (with services and routes)"
    missing = []
    for text in whole:
        try:
            parse_config(text, "plugins.toml", available)
        except ConfigError as e:
            if not all("is not installed" in line for line in e.lines):
                raise
            missing += e.lines
    if missing:
        pytest.skip(f"plugins used by the examples are not installed here: {missing}")


def test_schema_command_documented():
    assert "bascule schema" in config_doc()
