"""Tests over real sockets: a real upstream, a real gateway, an HTTP client."""

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from bascule_example import ExamplePlugin


def config(upstream_url: str, plugin_table: str = "") -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]

        [[routes]]
        name = "with"
        paths = ["/with"]
        service = "api"
        [routes.plugins.example]
        {plugin_table}

        [[routes]]
        name = "without"
        paths = ["/without"]
        service = "api"
    """


async def test_adds_the_header_on_its_route_only(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'value = "hi"'), plugins=[ExamplePlugin])
    async with gw.client() as client:
        enabled = await client.get("/with/x")
        other = await client.get("/without/x")
    assert enabled.status_code == 200
    assert enabled.headers["x-example"] == "hi"
    assert other.status_code == 200
    assert "x-example" not in other.headers
    assert [r.path for r in upstream.requests] == ["/with/x", "/without/x"]


async def test_invalid_header_name_is_a_config_error(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    table = 'header = "bad header"'
    with pytest.raises(ConfigError, match="header: expected a header name"):
        await start_gateway(nursery, config(upstream.url, table), plugins=[ExamplePlugin])
