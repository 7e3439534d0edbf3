"""Resources shared per gateway across reloads (``Gateway.acquire``): a Redis client that a
reload keeping its URL keeps, closed when no config uses it any more, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from bascule.config import ConfigError
from bascule.testing import RedisServer, eventually, start_gateway
from bascule_sdk import Context, Gateway, Plugin, Response, hookimpl, setting
from bascule_sdk.redis import open_redis

NAME = "bascule-resources-test"  # the CLIENT SETNAME of the plugin's connections


@dataclass(frozen=True)
class PingSettings:
    url: str = setting(doc="Redis URL.")
    fail: bool = setting(False, "Fail to open the client.")


@asynccontextmanager
async def refused() -> AsyncIterator[None]:
    raise OSError("refused")
    yield


class Ping(Plugin[PingSettings]):
    """Answers each request with Redis' PONG, through the gateway's shared client for ``url``."""

    name = "ping"
    Settings = PingSettings

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        opener = (
            refused if self.settings.fail else partial(open_redis, self.settings.url, timeout=5.0, client_name=NAME)
        )
        self.client: Any = await gateway.acquire(("ping", self.settings.url), opener)

    @hookimpl
    async def handle(self, ctx: Context) -> Response:
        pong = await self.client.ping()
        return Response(200, {"content-type": "text/plain"}, pong if isinstance(pong, bytes) else str(pong).encode())


def config(url: str, *paths: str, fail: bool = False) -> str:
    routes = "\n".join(
        f"""
        [[routes]]
        name = "r{i}"
        paths = ["{path}"]
        [routes.plugins.ping]
        url = "{url}"
        fail = {str(fail).lower()}
        """
        for i, path in enumerate(paths or ("/a",))
    )
    return routes


def connections(redis: RedisServer) -> int:
    """The plugin's connections open on ``redis`` (named ``NAME``)."""
    listed = redis.command("CLIENT", "LIST")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return sum(f" name={NAME} " in f" {line} " for line in text.splitlines())


def clients(gw: Any) -> set[int]:
    return {id(p.client) for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, Ping)}


async def test_a_reload_keeping_the_url_keeps_the_client_and_the_last_release_closes_it(nursery):
    with RedisServer() as first, RedisServer() as second:
        gw = await start_gateway(nursery, config(first.url, "/a", "/b"), plugins=[Ping])
        async with gw.client() as http:
            assert [(await http.get(p)).text for p in ("/a", "/b")] == ["PONG", "PONG"]
            assert len(clients(gw)) == 1  # two routes, one client
            before = clients(gw)
            opened = connections(first)
            assert opened >= 1

            await gw.reload(config(first.url, "/a", "/c"))  # the same URL: the same client
            await eventually(lambda: len(gw.gateway.resources) == 1)
            assert clients(gw) == before
            assert (await http.get("/c")).text == "PONG"
            assert connections(first) == opened

            await gw.reload(config(second.url, "/a"))  # another URL: a new client, the old one closed
            assert clients(gw) != before
            assert (await http.get("/a")).text == "PONG"
            await eventually(lambda: connections(first) == 0)
            assert connections(second) >= 1
            assert len(gw.gateway.resources) == 1

        gw.stop.set()  # the gateway stops: its last config releases the client
        await eventually(lambda: connections(second) == 0)
        assert len(gw.gateway.resources) == 0


async def test_a_resource_that_fails_to_open_fails_the_reload_and_is_not_kept(nursery):
    with RedisServer() as redis:
        gw = await start_gateway(nursery, config(redis.url), plugins=[Ping])
        before = clients(gw)
        with pytest.raises(ConfigError, match="a plugin failed to start"):
            await gw.reload(config("redis://127.0.0.1:1", fail=True))
        assert clients(gw) == before
        assert len(gw.gateway.resources) == 1  # the old config's client only
        async with gw.client() as http:
            assert (await http.get("/a")).text == "PONG"
