"""``max_body_size`` before forwarding, over a real socket: a chunked body is refused
(413, ``Connection: close``) as soon as its declared chunk sizes exceed the limit, before
the chunk's bytes arrive; a refused body never reaches a service whole."""

import json
from functools import partial

import trio
from bascule.asgi import accept_lifespan
from bascule.testing import eventually, start_gateway, start_upstream
from bascule.worker import listen
from hypercorn.config import Config as HypercornConfig

CONFIG = """
    [gateway]
    max_body_size = "{limit}"
    buffer_size = "{buffer}"
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "open"
    paths = ["/open"]
    service = "api"
"""

HEAD = b"POST /open HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


async def connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def read_all(stream: trio.SocketStream, timeout: float = 5) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    data = b""
    with trio.fail_after(timeout):
        try:
            while chunk := await stream.receive_some():
                data += chunk
        except trio.BrokenResourceError:
            pass
    return data


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def assert_413(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in head.lower()
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 413


class Recorder:
    """An upstream that tells a complete request (its body ended) from an aborted one."""

    def __init__(self) -> None:
        self.heads = 0
        self.complete: list[bytes] = []
        self.aborted: list[bytes] = []

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await accept_lifespan(receive, send)
            return
        self.heads += 1
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.aborted.append(body)
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.complete.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def start_recorder(nursery: trio.Nursery) -> tuple[Recorder, str]:
    recorder = Recorder()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    (url,) = await nursery.start(partial(listen, recorder, config))
    return recorder, url


async def test_a_chunk_declared_over_the_limit_is_a_413_before_its_bytes_are_sent(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, limit="1KiB", buffer="64KiB"))
    stream = await connect(gw.url)
    await stream.send_all(HEAD + b"%x\r\n" % (1024 * 1024))  # the chunk header only: no byte of the chunk
    assert_413(await read_all(stream))
    await stream.aclose()
    assert upstream.requests == []


async def test_declared_sizes_add_up_across_chunks(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, limit="1000B", buffer="64KiB"))
    stream = await connect(gw.url)
    # 600 bytes received, then a header declaring 500 more: 1100 > 1000, refused before those 500 come
    await stream.send_all(HEAD + chunk(b"a" * 600) + b"1f4\r\n")
    assert_413(await read_all(stream))
    await stream.aclose()
    assert upstream.requests == []


async def test_a_chunked_body_at_the_limit_is_forwarded_whole(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, limit="1000B", buffer="64KiB"))
    stream = await connect(gw.url)
    await stream.send_all(HEAD + chunk(b"a" * 600) + chunk(b"b" * 400) + b"0\r\n\r\n")
    with trio.fail_after(5):
        data = b""
        while b'"body"' not in data:
            data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 200")
    await stream.aclose()
    assert [r.body for r in upstream.requests] == [b"a" * 600 + b"b" * 400]


async def test_a_body_refused_while_streaming_never_reaches_the_service_complete(nursery):
    recorder, url = await start_recorder(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=url, limit="8KiB", buffer="1KiB"))
    stream = await connect(gw.url)
    await stream.send_all(HEAD)
    sent = 0
    for _ in range(6):  # 6 KiB: past buffer_size, so the request streams to the service
        await stream.send_all(chunk(b"c" * 1024))
        sent += 1024
    await eventually(lambda: recorder.heads > 0)  # the head went upstream with the first buffer_size bytes
    await stream.send_all(b"%x\r\n" % (64 * 1024))  # now a chunk that would pass the limit
    assert_413(await read_all(stream))
    await stream.aclose()
    await eventually(lambda: bool(recorder.aborted))  # the upstream request was aborted mid-body
    assert recorder.complete == []
    assert all(len(body) <= sent for body in recorder.aborted)


async def test_an_honest_chunked_body_over_the_limit_is_refused_before_its_excess_is_read(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, limit="100B", buffer="64KiB"))
    stream = await connect(gw.url)
    await stream.send_all(HEAD + chunk(b"d" * 100) + b"1\r\n")
    assert_413(await read_all(stream))
    await stream.aclose()
    assert upstream.requests == []
