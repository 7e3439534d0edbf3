"""WebSocket proxying (bascule.websocket), over real sockets.

Clients are trio-websocket's (a real WebSocket client library, on wsproto),
or wsproto driven by hand where a test needs frames the library does not send
(fragments, a connection cut without a close frame). Services are real
servers: trio-websocket's, hypercorn's, or wsproto's by hand.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from bascule import websocket as websocket_module
from bascule.config import ConfigError, parse_config
from bascule.registry import discover
from bascule.testing import eventually, parse_response, raw_exchange, self_signed_cert, start_gateway
from bascule.worker import listen
from bascule_sdk import DROP, Context, Plugin, Response, WebSocketClose, WebSocketMessage, hookimpl
from bascule_sdk.tracecontext import Trace
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RemoteSettingsChanged, ResponseReceived
from hypercorn.config import Config as HypercornConfig
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WSProtoConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    Ping,
    Request,
    TextMessage,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ROOT = Path(__file__).resolve().parent.parent


# -- services ----------------------------------------------------------------------


class Service:
    """A trio-websocket server; ``handler(request)`` serves each handshake (default: echo)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[WebSocketRequest] = []
        self.closes: list[int | None] = []  # the close code each echo socket ended with
        self.handler: Callable[[WebSocketRequest], Awaitable[None]] = self.echo

    async def __call__(self, request: WebSocketRequest) -> None:
        self.requests.append(request)
        try:
            await self.handler(request)
        except ConnectionClosed:
            pass

    async def echo(self, request: WebSocketRequest) -> None:
        offered = request.proposed_subprotocols
        ws = await request.accept(subprotocol=offered[-1] if offered else None)
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as e:
            self.closes.append(e.reason.code)


async def start_service(nursery: trio.Nursery, service: Service | None = None) -> Service:
    service = service or Service()
    server = await nursery.start(partial(serve_websocket, service, "127.0.0.1", 0, None, max_message_size=1 << 26))
    service.url = f"http://127.0.0.1:{server.port}"
    return service


async def start_raw_service(nursery: trio.Nursery, handler: Callable[[trio.SocketStream, WSConnection], Any]) -> str:
    """A service that speaks wsproto by hand: ``handler(stream, ws)`` runs after it accepted."""

    async def serve(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some())
            if any(isinstance(e, Request) for e in ws.events()):
                break
        await stream.send_all(ws.send(AcceptConnection()))
        await handler(stream, ws)

    (listener,) = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listener.socket.getsockname()[1]}"


async def start_hypercorn_service(nursery: trio.Nursery) -> str:
    """An echo service on hypercorn's WebSocket server (which takes permessage-deflate)."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({**message, "type": "websocket.send"})

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    (url,) = await nursery.start(partial(listen, app, config))
    return url


def ws_url(gateway_url: str, path: str) -> str:
    return gateway_url.replace("http://", "ws://") + path


def config(service_url: str, websocket: str = "", plugins: str = "", extra: str = "") -> str:
    return f"""
        [gateway]
        graceful_timeout = "1s"
        [services.live]
        targets = ["{service_url}"]
        connect_timeout = "1s"
        {extra}
        [[routes]]
        name = "live"
        paths = ["/live"]
        service = "live"
        strip_path = true
        [routes.websocket]
        {websocket}
        {plugins}
        [[routes]]
        name = "plain"
        paths = ["/plain"]
        service = "live"
    """


async def handshake(
    gateway_url: str, path: str, extra: bytes = b"", timeout: float = 1.0
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 upgrade request; the response head and what followed it."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    ).encode()
    return parse_response(await raw_exchange(gateway_url, request + extra + b"\r\n", timeout=timeout))


# -- echo, frames, negotiation ---------------------------------------------------------


async def test_text_and_binary_messages_go_both_ways(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url))
    async with open_websocket_url(ws_url(gw.url, "/live/echo?x=1"), subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"  # what the service chose
        await ws.send_message("héllo")
        assert await ws.get_message() == "héllo"
        await ws.send_message(b"\x00\xffbinary")
        assert await ws.get_message() == b"\x00\xffbinary"
    (request,) = service.requests
    assert request.path == "/echo?x=1"  # strip_path, the query kept
    headers = {k.decode().lower(): v.decode() for k, v in request.headers}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"  # the scheme of the handshake, as for any request
    assert len(headers["x-request-id"]) == 32
    assert list(request.proposed_subprotocols) == ["v1", "v2"]
    assert headers["sec-websocket-key"] != KEY  # the handshake to the service is the gateway's own
    await eventually(lambda: service.closes == [1000])  # the client's close reached the service


async def test_fragmented_messages_arrive_whole(nursery):
    async def fragments(stream: trio.SocketStream, ws: WSConnection) -> None:
        for part in ("frag", "men", "ted"):
            await stream.send_all(ws.send(TextMessage(part, message_finished=part == "ted")))
        while True:  # echo what the gateway relays, whole
            ws.receive_data(await stream.receive_some())
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    await stream.send_all(ws.send(BytesMessage(b"got " + event.data)))

    gw = await start_gateway(nursery, config(await start_raw_service(nursery, fragments)))
    stream, client = await raw_client(gw.url, "/live")
    assert await next_message(stream, client) == "fragmented"
    for part in (b"one,", b"two,", b"three"):  # a fragmented binary message from the client
        await stream.send_all(client.send(BytesMessage(part, message_finished=part == b"three")))
    assert await next_message(stream, client) == b"got one,two,three"


async def raw_client(gateway_url: str, path: str) -> tuple[trio.SocketStream, WSConnection]:
    host, port = gateway_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="gw", target=path)))
    while True:
        client.receive_data(await stream.receive_some())
        if any(isinstance(e, AcceptConnection) for e in client.events()):
            return stream, client


async def next_message(stream: trio.SocketStream, ws: WSConnection) -> str | bytes:
    parts: list[Any] = []
    while True:
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                assert event.message_finished and not parts, "the gateway relays whole messages"
                return event.data
        ws.receive_data(await stream.receive_some())


async def test_pings_are_answered_both_ways(nursery):
    service = Service()
    pinged = trio.Event()

    async def ping_the_gateway(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.ping(b"service")  # returns once the gateway's pong came back
        pinged.set()
        await ws.get_message()

    service.handler = ping_the_gateway
    await start_service(nursery, service)
    gw = await start_gateway(nursery, config(service.url))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.ping(b"client")  # returns once the pong came back
        await pinged.wait()


async def test_permessage_deflate_only_when_the_service_took_it(nursery):
    without = await start_service(nursery)  # trio-websocket negotiates no extension
    with_deflate = await start_hypercorn_service(nursery)
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    gw = await start_gateway(nursery, config(without.url))
    status, headers, _ = await handshake(gw.url, "/live", offer)
    assert status == 101
    assert "sec-websocket-extensions" not in headers
    assert len(headers["x-request-id"]) == 32
    gw2 = await start_gateway(nursery, config(with_deflate))
    status, headers, _ = await handshake(gw2.url, "/live", offer)
    assert status == 101
    assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
    async with open_websocket_url(ws_url(gw2.url, "/live")) as ws:  # and messages go through it
        await ws.send_message("x" * 10_000)
        assert await ws.get_message() == "x" * 10_000


# -- refusals at the handshake -----------------------------------------------------------


async def test_a_plain_route_refuses_upgrades_with_a_problem(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url))
    status, headers, body = await handshake(gw.url, "/plain")
    assert status == 403
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["detail"] == "The route 'plain' does not accept WebSockets."
    assert problem["request_id"] == headers["x-request-id"]
    status, _, body = await handshake(gw.url, "/nowhere")
    assert status == 404
    assert json.loads(body)["status"] == 404
    assert not service.requests


async def test_auth_is_decided_at_the_handshake_before_any_upgrade(nursery):
    from bascule_jwt.mint import mint

    secret = "a-websocket-test-secret-of-32-bytes!"
    service = await start_service(nursery)
    jwt = f'[routes.plugins.jwt]\nquery = "access_token"\nkeys = [{{ kid = "k", secret = "{secret}" }}]'
    gw = await start_gateway(nursery, config(service.url, plugins=jwt))
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(ws_url(gw.url, "/live")):
            pass
    assert refused.value.status_code == 401
    headers = {k.decode(): v.decode() for k, v in refused.value.headers}
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(refused.value.body)["status"] == 401
    assert not service.requests  # nothing reached the service
    token = mint(secret, sub="alice", kid="k")
    async with open_websocket_url(ws_url(gw.url, f"/live?access_token={token}")) as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"
    (request,) = service.requests
    headers = {k.decode().lower(): v.decode() for k, v in request.headers}
    assert headers["x-consumer-username"] == "alice"


async def test_the_services_refusal_is_passed_on(nursery):
    service = Service()

    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(409, extra_headers=[(b"x-why", b"busy")], body=b"not now")

    service.handler = refuse
    await start_service(nursery, service)
    gw = await start_gateway(nursery, config(service.url))
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(ws_url(gw.url, "/live")):
            pass
    assert refused.value.status_code == 409
    assert refused.value.body == b"not now"
    assert (b"x-why", b"busy") in refused.value.headers


async def test_an_unreachable_target_is_retried_on_another_before_the_upgrade(nursery):
    service = await start_service(nursery)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    extra = 'balance = "round-robin"\nmax_failures = 0'
    text = config(service.url, extra=extra).replace(
        f'targets = ["{service.url}"]', f'targets = ["{dead}", "{service.url}"]'
    )
    gw = await start_gateway(nursery, text)
    for _ in range(2):  # each target comes first once
        async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
            await ws.send_message("up")
            assert await ws.get_message() == "up"
    only_dead = config(dead)
    gw2 = await start_gateway(nursery, only_dead)
    status, _, body = await handshake(gw2.url, "/live")
    assert status == 502
    assert json.loads(body)["detail"] == "The service 'live' is unreachable."


async def test_open_sockets_are_limited_per_route_and_per_consumer(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url, "max_connections = 2\nmax_connections_per_consumer = 1"))
    async with open_websocket_url(ws_url(gw.url, "/live")) as first:
        status, _, body = await handshake(gw.url, "/live")  # the same client (IP), a second socket
        assert status == 429
        assert json.loads(body)["status"] == 429
        await first.send_message("still here")
        assert await first.get_message() == "still here"
    gw2 = await start_gateway(nursery, config(service.url, "max_connections = 1"))
    async with open_websocket_url(ws_url(gw2.url, "/live")):
        status, headers, _ = await handshake(gw2.url, "/live")
        assert status == 503
        assert headers["retry-after"] == "1"
    async with open_websocket_url(ws_url(gw2.url, "/live")) as again:  # closed: counted out
        await again.send_message("ok")
        assert await again.get_message() == "ok"


# -- the service's balancing, admission and retry rule ---------------------------------------


def two_targets(a: str, b: str, extra: str) -> str:
    return config(a, extra=extra).replace(f'targets = ["{a}"]', f'targets = ["{a}", "{b}"]')


async def test_an_open_socket_counts_in_least_requests_balancing(nursery):
    a, b = await start_service(nursery), await start_service(nursery)
    gw = await start_gateway(nursery, two_targets(a.url, b.url, 'balance = "least-requests"'))

    def in_use() -> dict[str, int]:
        return {t["url"]: t["in_use"] for t in gw.gateway.describe_upstreams()["live"]["targets"]}

    async with open_websocket_url(ws_url(gw.url, "/live")) as held:
        busy, other = (a, b) if a.requests else (b, a)
        assert in_use() == {busy.url: 1, other.url: 0}  # what /upstreams shows
        for i in range(3):  # one socket open on `busy`: each new one goes to the other target
            async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
                await ws.send_message(f"{i}")
                assert await ws.get_message() == f"{i}"
                assert in_use() == {busy.url: 1, other.url: 1}
            await eventually(lambda: in_use() == {busy.url: 1, other.url: 0})  # closed: counted out
        assert (len(busy.requests), len(other.requests)) == (1, 3)
        await held.send_message("held")
        assert await held.get_message() == "held"
    await eventually(lambda: in_use() == {busy.url: 0, other.url: 0})


async def test_an_open_socket_holds_one_of_the_services_max_requests(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url, extra="max_requests = 1\nmax_queue = 0"))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        status, headers, body = await handshake(gw.url, "/live")
        assert status == 503
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/problem+json"
        problem = json.loads(body)
        assert problem["detail"] == "The service 'live' has too many requests waiting; try again shortly."
        assert problem["request_id"] == headers["x-request-id"]
        async with gw.client() as client:  # an HTTP request to the service meets the same limit
            response = await client.get("/plain")
        assert (response.status_code, response.headers["retry-after"]) == (503, "1")
        await ws.send_message("still open")
        assert await ws.get_message() == "still open"
    assert len(service.requests) == 1  # the refused handshake never reached the service
    await eventually(lambda: gw.gateway.describe_upstreams()["live"]["in_flight"] == 0)
    async with open_websocket_url(ws_url(gw.url, "/live")) as again:  # closed: its slot is free
        await again.send_message("ok")
        assert await again.get_message() == "ok"


async def test_a_handshake_waits_in_the_services_queue_for_a_slot(nursery):
    service = await start_service(nursery)
    extra = 'max_requests = 1\nmax_queue = 1\nqueue_timeout = "30s"'
    gw = await start_gateway(nursery, config(service.url, extra=extra))
    replies: list[str] = []

    async def queued() -> None:
        async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
            await ws.send_message("queued")
            replies.append(await ws.get_message())

    async with open_websocket_url(ws_url(gw.url, "/live")):
        nursery.start_soon(queued)
        await eventually(lambda: gw.gateway.describe_upstreams()["live"]["queued"] == 1)
        status, headers, _ = await handshake(gw.url, "/live")  # the queue is full
        assert (status, headers["retry-after"]) == (503, "1")
        assert len(service.requests) == 1
    await eventually(lambda: replies == ["queued"])  # the first closed: the queued one went on
    assert len(service.requests) == 2


async def test_a_handshake_without_an_answer_in_timeout_is_504_and_not_retried(nursery):
    """As for an HTTP request: the service may have acted on it, and the time is spent."""
    heard: list[bytes] = []

    async def silent(stream: trio.SocketStream) -> None:
        heard.append(await stream.receive_some())
        await trio.sleep_forever()

    urls = []
    for _ in range(2):
        (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        urls.append(f"http://127.0.0.1:{listener.socket.getsockname()[1]}")
    gw = await start_gateway(nursery, two_targets(*urls, 'timeout = "200ms"\nretries = 1'))
    status, _, body = await handshake(gw.url, "/live", timeout=10.0)
    assert status == 504
    assert json.loads(body)["detail"] == "The service 'live' did not answer in time."
    assert len(heard) == 1 and heard[0].startswith(b"GET / HTTP/1.1")


class Attempts(Plugin):
    """Traces every request and keeps each one's upstream attempts."""

    name = "attempts"
    logged: list[list[tuple[str, int, int | None, str | None, str | None]]] = []

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        ctx.trace = Trace.start(sampled=True)

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        Attempts.logged.append([(c.target, c.attempt, c.status, c.error, c.span_id) for c in ctx.upstream_calls])


async def test_handshake_attempts_are_recorded_and_traced_like_http_ones(nursery):
    service = await start_service(nursery)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    text = two_targets(dead, service.url, 'balance = "round-robin"\nmax_failures = 0')
    gw = await start_gateway(
        nursery, text.replace("[routes.websocket]", "[routes.websocket]\n[routes.plugins.attempts]"), [Attempts]
    )
    Attempts.logged.clear()
    for _ in range(2):  # round-robin: the dead target comes first each time
        async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
            await ws.send_message("up")
            assert await ws.get_message() == "up"
    await eventually(lambda: len(Attempts.logged) == 2)
    for calls in Attempts.logged:
        assert [c[:4] for c in calls] == [(dead, 0, None, "connect"), (service.url, 1, 101, None)]
    sent = [dict(request.headers)[b"traceparent"].decode().split("-")[2] for request in service.requests]
    assert sent == [calls[1][4] for calls in Attempts.logged]  # the traceparent of the attempt's own span


# -- limits and failures on an open socket -------------------------------------------------


async def test_a_message_over_max_message_size_closes_with_1009(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url, 'max_message_size = "1KiB"'))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message(b"x" * 1024)  # at the limit: relayed
        assert await ws.get_message() == b"x" * 1024
        await ws.send_message("é" * 513)  # 1026 bytes of UTF-8
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009
    await eventually(lambda: service.closes == [1009])  # the service is told why too


async def test_a_service_message_over_the_limit_closes_it_with_1009_and_the_client_with_1011(nursery):
    service = Service()
    sockets: list[WebSocketConnection] = []

    async def too_big(request: WebSocketRequest) -> None:
        ws = await request.accept()
        sockets.append(ws)
        await ws.send_message(b"y" * 2048)
        await ws.get_message()

    service.handler = too_big
    await start_service(nursery, service)
    gw = await start_gateway(nursery, config(service.url, 'max_message_size = "1KiB"'))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1011
    await eventually(lambda: sockets[0].closed is not None)
    assert sockets[0].closed.code == 1009


async def test_the_service_dying_mid_stream_closes_the_client_with_1011(nursery):
    async def die(stream: trio.SocketStream, ws: WSConnection) -> None:
        await stream.send_all(ws.send(TextMessage("last words")))
        await trio.aclose_forcefully(stream)  # no close frame

    gw = await start_gateway(nursery, config(await start_raw_service(nursery, die)))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        assert await ws.get_message() == "last words"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1011


async def test_close_codes_go_both_ways(nursery):
    service = Service()

    async def close_on_request(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            if message == "bye":
                await ws.aclose(4001, "service says bye")
                return
            await ws.send_message(message)

    service.handler = close_on_request
    await start_service(nursery, service)
    gw = await start_gateway(nursery, config(service.url))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("bye")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert (closed.value.reason.code, closed.value.reason.reason) == (4001, "service says bye")
    echo = await start_service(nursery)
    gw2 = await start_gateway(nursery, config(echo.url))
    async with open_websocket_url(ws_url(gw2.url, "/live")) as ws:
        await ws.aclose(4002, "client says bye")
    await eventually(lambda: echo.closes == [4002])


async def test_an_idle_socket_is_closed_with_1001(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url, 'idle_timeout = "200ms"'))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("one")
        assert await ws.get_message() == "one"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1001
    await eventually(lambda: service.closes == [1001])


async def test_a_slow_reader_slows_the_service_down(nursery):
    """Backpressure: with a client that does not read, the service can only send what the
    sockets' buffers and one message per hop hold; then every byte arrives, in order."""
    size, total = 64 * 1024, 2000  # 125 MiB, far more than every buffer on the way
    sent = 0
    service = Service()

    async def flood(request: WebSocketRequest) -> None:
        nonlocal sent
        ws = await request.accept()
        for i in range(total):
            await ws.send_message(i.to_bytes(4, "big") * (size // 4))
            sent += 1
        await ws.get_message()

    service.handler = flood
    await start_service(nursery, service)
    gw = await start_gateway(nursery, config(service.url))
    async with open_websocket_url(ws_url(gw.url, "/live"), message_queue_size=1, max_message_size=size) as ws:
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)  # every side waits on the sockets
        stalled_at = sent
        assert stalled_at < total
        assert stalled_at * size < 48 * 1024 * 1024  # a bounded amount in flight
        for i in range(total):
            assert (await ws.get_message())[:4] == i.to_bytes(4, "big")
    assert sent == total


# -- reload and shutdown ---------------------------------------------------------------------


async def test_a_reload_does_not_cut_open_sockets(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        moved = config(service.url).replace('paths = ["/live"]', 'paths = ["/moved"]')
        await gw.reload(moved)
        await ws.send_message("after the reload")
        assert await ws.get_message() == "after the reload"
        status, _, _ = await handshake(gw.url, "/live")  # new sockets follow the new config
        assert status == 404
    async with open_websocket_url(ws_url(gw.url, "/moved")) as ws:
        await ws.send_message("moved")
        assert await ws.get_message() == "moved"


async def test_shutdown_drains_open_sockets_then_closes_them_with_1001(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url))  # graceful_timeout = "1s"
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        gw.stop.set()  # what SIGTERM does (bascule.server)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await ws.send_message("still served while draining")
        assert await ws.get_message() == "still served while draining"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1001
    await eventually(lambda: service.closes == [1001])


# -- the message hook and the access log -------------------------------------------------------


class Redact(Plugin):
    """Changes, drops and closes on client messages; counts service messages."""

    name = "redact"

    @hookimpl
    async def on_websocket_message(self, ctx: Context, message: WebSocketMessage) -> object:
        if message.sender == "service":
            ctx.state["seen"] = ctx.state.get("seen", 0) + 1
            return None
        if message.data == "drop me":
            return DROP
        if message.data == "close me":
            raise WebSocketClose(4000, "asked to")
        if message.data == "crash":
            raise RuntimeError("boom")
        if isinstance(message.data, str):
            message.data = message.data.replace("secret", "******")
        return None


class Facts(Plugin):
    """Keeps the facts the access log gets."""

    name = "facts"
    logged: list[tuple[int, dict]] = []

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        Facts.logged.append((response.status, ctx.tags.get("websocket")))


async def test_the_message_hook_passes_changes_drops_and_closes(nursery):
    service = await start_service(nursery)
    gw = await start_gateway(
        nursery, config(service.url, plugins="[routes.plugins.redact]\n[routes.plugins.facts]"), [Redact, Facts]
    )
    Facts.logged.clear()
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("my secret")
        assert await ws.get_message() == "my ******"
        await ws.send_message("drop me")
        await ws.send_message(b"binary passes")
        assert await ws.get_message() == b"binary passes"  # "drop me" never came back
        await ws.send_message("close me")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert (closed.value.reason.code, closed.value.reason.reason) == (4000, "asked to")
    await eventually(lambda: service.closes == [4000])
    await eventually(lambda: len(Facts.logged) == 1)
    status, facts = Facts.logged[0]
    assert status == 101
    assert facts["messages_in"] == 4 and facts["messages_out"] == 2
    assert facts["bytes_in"] == len("my secret") + len("drop me") + len("binary passes") + len("close me")
    assert facts["bytes_out"] == len("my ******") + len("binary passes")
    assert (facts["close_code"], facts["closed_by"]) == (4000, "gateway")
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("crash")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1011


async def test_one_access_log_line_per_socket_says_who_closed(nursery):
    service = await start_service(nursery)
    text = config(service.url, 'max_message_size = "10B"').replace("[gateway]", "[plugins.facts]\n[gateway]")
    gw = await start_gateway(nursery, text, [Facts])
    Facts.logged.clear()
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("hello")
        assert await ws.get_message() == "hello"
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("far too long for the limit")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    await handshake(gw.url, "/plain")
    await eventually(lambda: len(Facts.logged) == 3)
    by_client, too_big, refused = Facts.logged
    assert by_client[0] == 101
    assert by_client[1]["messages_in"] == by_client[1]["messages_out"] == 1
    assert (by_client[1]["close_code"], by_client[1]["closed_by"]) == (1000, "client")
    assert (too_big[1]["close_code"], too_big[1]["closed_by"]) == (1009, "gateway")
    assert refused == (403, {})


async def test_the_access_log_and_the_metrics_see_websockets(nursery, tmp_path):
    service = await start_service(nursery)
    log = tmp_path / "access.log"
    text = config(service.url).replace(
        "[gateway]", f'[plugins.logging]\noutput = "{log}"\n[plugins.prometheus]\n[gateway]'
    )
    gw = await start_gateway(nursery, text, admin=True)

    async def metric(name: str) -> float:
        async with httpx.AsyncClient(base_url=gw.admin_url) as client:
            page = (await client.get("/metrics")).text
        return sum(float(line.split()[-1]) for line in page.splitlines() if line.startswith(name))

    async with open_websocket_url(ws_url(gw.url, "/live/feed?token=x")) as ws:
        await ws.send_message("one")
        assert await ws.get_message() == "one"
        assert await metric("bascule_websockets_open") == 1
    await eventually(lambda: log.exists() and log.read_text().count("\n") == 1)
    assert await metric("bascule_websockets_open") == 0
    assert await metric('bascule_websocket_messages_total{direction="in",route="live"}') == 1
    assert await metric('bascule_websocket_messages_total{direction="out",route="live"}') == 1
    line = json.loads(log.read_text())
    assert (line["status"], line["route"], line["path"]) == (101, "live", "/live/feed")
    facts = line["websocket"]
    assert (facts["messages_in"], facts["bytes_in"], facts["messages_out"], facts["bytes_out"]) == (1, 3, 1, 3)
    assert (facts["close_code"], facts["closed_by"]) == (1000, "client")
    assert facts["duration_ms"] > 0


async def test_the_demo_streams_the_drivers_position_with_a_token(nursery):
    """plugins.toml's ride-live route in front of examples/services.py's drivers service."""
    from bascule_jwt.mint import mint

    spec = importlib.util.spec_from_file_location("demo_services", ROOT / "examples" / "services.py")
    assert spec is not None and spec.loader is not None
    services = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(services)
    port, routes = services.SERVICES["drivers"]
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    (drivers,) = await nursery.start(partial(listen, services.app(routes, "drivers"), hc))
    text = (ROOT / "plugins.toml").read_text().replace(f"http://127.0.0.1:{port}", drivers)
    text = text.replace("[plugins.logging]", "[plugins.logging]\nsample_rate = 0.0")  # quiet
    gw = await start_gateway(nursery, text)
    status, _, _ = await handshake(gw.url, "/api/rides/r1/live")
    assert status == 401
    token = mint("bascule-demo-secret-not-for-production!", sub="alice")
    url = ws_url(gw.url, f"/api/rides/r1/live?access_token={token}")
    async with open_websocket_url(url) as ws:
        first, second = json.loads(await ws.get_message()), json.loads(await ws.get_message())
    assert first["driver"] == second["driver"] == "Marie"
    assert second["eta_minutes"] < first["eta_minutes"]
    assert second["lat"] > first["lat"]  # moving toward the pickup point


@pytest.mark.slow
async def test_bascule_run_keeps_sockets_over_sighup_and_drains_them_on_sigterm(nursery, tmp_path):
    """The real process: SIGHUP reloads without cutting the socket; SIGTERM lets it go on for
    graceful_timeout, then closes it with 1001, and the process exits 0."""
    service = await start_service(nursery)
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port, admin = a.getsockname()[1], b.getsockname()[1]
    path = tmp_path / "plugins.toml"
    text = config(service.url).replace(
        'graceful_timeout = "1s"', f'graceful_timeout = "3s"\nlisten = "127.0.0.1:{port}"\nadmin = "127.0.0.1:{admin}"'
    )
    path.write_text(text)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bascule.cli", "run", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: handshake_status(url, "/live"), 101)
        async with open_websocket_url(ws_url(url, "/live")) as ws:
            path.write_text(text.replace('paths = ["/live"]', 'paths = ["/moved"]'))
            proc.send_signal(signal.SIGHUP)
            await until(lambda: handshake_status(url, "/moved"), 101)
            await ws.send_message("after SIGHUP")
            assert await ws.get_message() == "after SIGHUP"
            proc.send_signal(signal.SIGTERM)
            await until(lambda: listening(port), False)  # draining: no new connections
            await ws.send_message("while draining")
            assert await ws.get_message() == "while draining"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        assert closed.value.reason.code == 1001
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    # the probes' sockets too: their client vanished (1006), the service is told 1001
    await eventually(lambda: len(service.closes) == len(service.requests) and set(service.closes) == {1001})


async def until(probe: Callable[[], Awaitable[object]], value: object) -> None:
    with trio.fail_after(30):  # a guard against a hang, not a measurement
        while True:
            if await probe() == value:
                return
            await trio.sleep(0.05)


async def listening(port: int) -> bool:
    try:
        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
    except OSError:
        return False
    return True


async def handshake_status(gateway_url: str, path: str) -> int:
    """The status of an upgrade request; 0 when the connection is refused."""
    try:
        return (await handshake(gateway_url, path))[0]
    except OSError:
        return 0


async def test_http2_extended_connect(nursery):
    """RFC 8441: a WebSocket on an HTTP/2 stream (prior knowledge, cleartext), relayed to the service."""
    service = await start_service(nursery)
    gw = await start_gateway(nursery, config(service.url))
    host, port = gw.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    await stream.send_all(h2.data_to_send())

    async def next_event(kind: type, stream_id: int | None = None) -> Any:
        while True:
            events = h2.receive_data(await stream.receive_some())
            await stream.send_all(h2.data_to_send())
            for event in events:
                if isinstance(event, kind) and getattr(event, "stream_id", stream_id) == stream_id:
                    return event

    await next_event(RemoteSettingsChanged)
    assert h2.remote_settings.enable_connect_protocol == 1  # the server offers RFC 8441
    sid = h2.get_next_available_stream_id()
    h2.send_headers(
        sid,
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", b"/live/h2"),
            (b":authority", b"gw"),
            (b"sec-websocket-version", b"13"),
        ],
    )
    await stream.send_all(h2.data_to_send())
    response = await next_event(ResponseReceived, sid)
    assert dict(response.headers)[b":status"] == b"200"
    ws = WSProtoConnection(ConnectionType.CLIENT)
    h2.send_data(sid, ws.send(TextMessage("over HTTP/2")))
    await stream.send_all(h2.data_to_send())
    while True:
        data = await next_event(DataReceived, sid)
        h2.acknowledge_received_data(data.flow_controlled_length, sid)
        ws.receive_data(data.data)
        messages = [e.data for e in ws.events() if isinstance(e, TextMessage)]
        if messages:
            break
    assert messages == ["over HTTP/2"]
    (request,) = service.requests
    assert request.path == "/h2"
    await stream.aclose()


def test_config_errors_name_the_file_the_route_and_the_key():
    text = """
        [services.live]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "live"
        paths = ["/live"]
        methods = ["POST"]
        service = "live"
        [routes.websocket]
        idle_timeout = "0s"
        max_connections = 0
        max_connections_per_consumer = -1
        [[routes]]
        name = "typo"
        paths = ["/typo"]
        service = "live"
        websocket = { max_message_size = "big", max_conections = 5 }
        [[routes]]
        name = "nowhere"
        paths = ["/nowhere"]
        websocket = {}
        [routes.plugins.redact]
    """
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(text), "plugins.toml", discover([Redact]))
    assert e.value.lines == [
        "plugins.toml: route \"live\": websocket.idle_timeout: must be at least 0.001s, got '0s'",
        'plugins.toml: route "live": websocket.max_connections: must be at least 1, got 0',
        'plugins.toml: route "live": websocket.max_connections_per_consumer: must be at least 0, got -1',
        'plugins.toml: route "typo": websocket.max_message_size: expected a size like "64KiB" or "10MB", got \'big\'',
        "plugins.toml: route \"typo\": websocket.max_conections: unknown key; did you mean 'max_connections'? "
        "(known keys: idle_timeout, max_connections, max_connections_per_consumer, max_message_size, ping_interval)",
        'plugins.toml: route "nowhere": websocket: a route that accepts WebSockets needs a service to proxy them to',
    ]
    post_only = """
        [services.live]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "live"
        paths = ["/live"]
        methods = ["POST"]
        service = "live"
        websocket = {}
    """
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(post_only), "plugins.toml", discover())
    assert e.value.lines == [
        'plugins.toml: route "live": methods: must include GET on a route that accepts WebSockets '
        "(the handshake is a GET)"
    ]


async def test_the_gateway_pings_a_quiet_client_and_read_timeout_does_not_cut_it(nursery):
    service = await start_service(nursery)
    text = config(service.url, 'ping_interval = "100ms"').replace("[gateway]", '[gateway]\nread_timeout = "200ms"')
    gw = await start_gateway(nursery, text)
    stream, client = await raw_client(gw.url, "/live")
    pings = 0
    while pings < 5:  # half a second, the client silent (no pong either): over twice read_timeout
        data = await stream.receive_some()
        assert data, "the gateway closed the connection"
        client.receive_data(data)
        pings += sum(isinstance(event, Ping) for event in client.events())
    await stream.send_all(client.send(TextMessage("still open")))
    assert await next_message(stream, client) == "still open"


async def test_an_https_target_is_reached_over_wss(nursery, tmp_path, monkeypatch):
    """TLS to the service as the upstream pool does it (certificate and host name checked);
    only the trust store is the test's: its CA is the service's self-signed certificate."""
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    service = Service()
    server = await nursery.start(partial(serve_websocket, service, "127.0.0.1", 0, server_tls))
    trusted = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(websocket_module, "_TLS", [trusted])
    gw = await start_gateway(nursery, config(f"https://localhost:{server.port}"))
    async with open_websocket_url(ws_url(gw.url, "/live")) as ws:
        await ws.send_message("over TLS")
        assert await ws.get_message() == "over TLS"
    assert len(service.requests) == 1
    monkeypatch.setattr(websocket_module, "_TLS", [ssl.create_default_context()])  # the CA is not trusted
    status, _, body = await handshake(gw.url, "/live")
    assert status == 502
    assert json.loads(body)["detail"] == "The service 'live' is unreachable."
