"""ws-rate-limit over real sockets: a WebSocket client, the gateway, a real echo service."""

from __future__ import annotations

from functools import partial

import pytest
from bascule.testing import start_gateway
from bascule_sdk.settings import SettingsError, parse
from bascule_ws_ratelimit import WebSocketRateLimit, WebSocketRateLimitSettings
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket


async def echo(closes: list[int | None], request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed as e:
        closes.append(e.reason.code)


async def gateway(nursery, table: str, closes: list[int | None] | None = None):
    server = await nursery.start(
        partial(serve_websocket, partial(echo, [] if closes is None else closes), "127.0.0.1", 0, None)
    )
    config = f"""
        [services.live]
        targets = ["http://127.0.0.1:{server.port}"]
        [[routes]]
        name = "live"
        paths = ["/live"]
        service = "live"
        [routes.websocket]
        [routes.plugins.ws-rate-limit]
        {table}
    """
    gw = await start_gateway(nursery, config, [WebSocketRateLimit])
    return gw.url.replace("http://", "ws://") + "/live"


async def test_the_message_over_the_limit_closes_the_socket_with_1008(nursery):
    closes: list[int | None] = []
    url = await gateway(nursery, 'limit = 3\nwindow = "1h"', closes)
    async with open_websocket_url(url) as ws:
        for i in range(3):  # at the limit: admitted
            await ws.send_message(f"m{i}")
            assert await ws.get_message() == f"m{i}"
        await ws.send_message("one too many")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "message rate limit exceeded")
    assert closes == [1008]  # the service was told too, and never got the fourth message


async def test_each_socket_has_its_own_count(nursery):
    url = await gateway(nursery, 'limit = 1\nwindow = "1h"')
    for _ in range(2):
        async with open_websocket_url(url) as ws:
            await ws.send_message("mine")
            assert await ws.get_message() == "mine"


async def test_drop_keeps_the_socket_and_counts_only_the_chosen_sender(nursery):
    url = await gateway(nursery, 'limit = 2\nwindow = "1h"\naction = "drop"')
    async with open_websocket_url(url) as ws:
        for text in ("a", "b", "c", "d"):
            await ws.send_message(text)
        await ws.send_message(b"binary too")  # also over the limit: dropped
        assert [await ws.get_message(), await ws.get_message()] == ["a", "b"]
        await ws.ping(b"still open")
    url = await gateway(nursery, 'limit = 1\nwindow = "1h"\nsender = "service"')
    async with open_websocket_url(url) as ws:
        await ws.send_message("first")  # the service's echo is its first message
        assert await ws.get_message() == "first"
        await ws.send_message("second")  # the client's second message passes; the service's echo does not
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1008


def test_settings_are_checked():
    table = {"limit": 0, "window": "0s", "burst": 0}
    with pytest.raises(SettingsError) as e:
        parse(WebSocketRateLimitSettings, table)
    assert {(p.key, p.message) for p in e.value.problems} == {
        ("limit", "must be at least 1, got 0"),
        ("window", "must be at least 0.001s, got '0s'"),
        ("burst", "must be at least 1, got 0"),
    }
