"""``Expect: 100-continue`` (RFC 9110 10.1.1) over a real socket: the body is asked for
(``100 Continue``) and read only once the route's ``on_request`` accepted the request."""

import json

import pytest
import trio
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Context, HTTPError, Plugin, hookimpl


class Deny(Plugin):
    """An auth plugin: no ``x-token: letmein``, a 401."""

    name = "deny"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if ctx.request.headers.get("x-token") != "letmein":
            raise HTTPError(401, "A token is required.", {"www-authenticate": "Token"})


class Peek(Plugin):
    """A plugin that reads the body in ``on_request`` (a signature check, say)."""

    name = "peek"
    priority = 500

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        body = await ctx.request.read(1024)
        ctx.request.headers.set("x-peeked", str(len(body)))


CONFIG = """
    [gateway]
    max_body_size = "{limit}"
    buffer_size = "{buffer}"
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "guarded"
    paths = ["/guarded"]
    service = "api"
    [routes.plugins.deny]
    [[routes]]
    name = "peeked"
    paths = ["/peeked"]
    service = "api"
    [routes.plugins.peek]
    [[routes]]
    name = "open"
    paths = ["/open"]
    methods = ["POST"]
    service = "api"
"""


async def start(nursery, limit="1MiB", buffer="64KiB"):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, limit=limit, buffer=buffer), plugins=[Deny, Peek])
    return gw, upstream


async def read_head(stream: trio.SocketStream, data: bytes = b"") -> tuple[bytes, bytes]:
    """The next response head (up to the blank line) and what followed it."""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def read_rest(stream: trio.SocketStream, data: bytes) -> bytes:
    with trio.move_on_after(2):
        try:
            while chunk := await stream.receive_some():
                data += chunk
        except trio.BrokenResourceError:
            pass
    return data


async def connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


def expecting(target: bytes, size: int, extra: bytes = b"", method: bytes = b"POST") -> bytes:
    return (
        method + b" " + target + b" HTTP/1.1\r\nHost: a\r\nContent-Length: " + str(size).encode() + b"\r\n"
        b"Expect: 100-continue\r\n" + extra + b"\r\n"
    )


REFUSED = {
    "auth refuses (401)": (b"/guarded", b"POST", 401),
    "no route (404)": (b"/nowhere", b"POST", 404),
    "method not allowed (405)": (b"/open", b"PUT", 405),
}


@pytest.mark.parametrize("name", REFUSED)
async def test_a_refused_request_gets_no_100_continue_and_its_body_is_not_read(nursery, name):
    gw, upstream = await start(nursery)
    target, method, status = REFUSED[name]
    stream = await connect(gw.url)
    await stream.send_all(expecting(target, 5, method=method))
    head, rest = await read_head(stream)
    assert head.split(b"\r\n")[0].split()[1] == str(status).encode()  # the first answer: no 100 before it
    assert b"connection: close" in head.lower()  # the body is left unread: the connection ends (RFC 9110 10.1.1)
    body = await read_rest(stream, rest)
    assert b"HTTP/1.1 100" not in body
    assert json.loads(body.split(b"\r\n\r\n")[0])["status"] == status
    await stream.aclose()
    assert upstream.requests == []


async def test_an_accepted_request_gets_100_continue_then_its_answer(nursery):
    gw, upstream = await start(nursery)
    for target, extra in ((b"/guarded", b"X-Token: letmein\r\n"), (b"/open", b"")):
        stream = await connect(gw.url)
        await stream.send_all(expecting(target, 5, extra))
        head, rest = await read_head(stream)
        assert head.startswith(b"HTTP/1.1 100"), head
        await stream.send_all(b"hello")
        head, rest = await read_head(stream, rest)
        assert head.startswith(b"HTTP/1.1 200"), head
        await stream.aclose()
    assert [(r.path, r.body) for r in upstream.requests] == [("/guarded", b"hello"), ("/open", b"hello")]


async def test_a_plugin_can_read_the_body_in_on_request(nursery):
    gw, upstream = await start(nursery)
    stream = await connect(gw.url)
    await stream.send_all(expecting(b"/peeked", 5))
    head, rest = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 100")
    await stream.send_all(b"hello")
    head, rest = await read_head(stream, rest)
    assert head.startswith(b"HTTP/1.1 200")
    await stream.aclose()
    (seen,) = upstream.requests
    assert (seen.body, seen.header("x-peeked")) == (b"hello", "5")


async def test_a_declared_length_over_the_limit_is_a_413_before_any_100_continue(nursery):
    gw, upstream = await start(nursery, limit="10B")
    stream = await connect(gw.url)
    await stream.send_all(expecting(b"/open", 11))
    head, _ = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 413")
    await stream.aclose()
    assert upstream.requests == []


async def test_a_refused_body_is_never_read_without_expect_either(nursery):
    # Without Expect the client sends its body at once: a refusal still does not read it
    # (hypercorn may have taken what arrived with the head; the connection closes after).
    gw, upstream = await start(nursery)
    stream = await connect(gw.url)
    await stream.send_all(b"POST /guarded HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    head, _ = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 401")
    assert b"connection: close" in head.lower()
    await stream.aclose()
    assert upstream.requests == []


async def test_large_and_streamed_bodies_still_reach_the_upstream(nursery):
    gw, upstream = await start(nursery, buffer="1KiB")
    body = b"y" * 50_000

    async def chunks():
        yield body[:20_000]
        yield body[20_000:]

    async with gw.client() as client:
        fixed = await client.post("/open", content=body)
        chunked = await client.post("/open", content=chunks())
        small = await client.post("/open", content=b"abc")
        over = await client.post("/guarded", content=body, headers={"x-token": "letmein"})
    assert [fixed.status_code, chunked.status_code, small.status_code, over.status_code] == [200] * 4
    assert [r.body for r in upstream.requests] == [body, body, b"abc", body]
