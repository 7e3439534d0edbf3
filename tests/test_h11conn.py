"""The h11 upstream connection and its pool, against raw trio servers on real sockets."""

import socket
from functools import partial

import httpcore
import pytest
import trio
from bascule import upstream
from bascule.upstream import Pool
from bascule.upstream.h11conn import H11Connection
from bascule_sdk import Headers, Request


class Raw:
    """A TCP server: ``answer(stream, request_bytes)`` for each request head it reads."""

    def __init__(self, answers: list[bytes], close_after: bool = False, hang: bool = False) -> None:
        self.answers, self.close_after, self.hang = list(answers), close_after, hang
        self.connections = 0
        self.received: list[bytes] = []

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        while self.answers:
            while b"\r\n\r\n" not in buffer or (b"chunked" in buffer and not buffer.endswith(b"0\r\n\r\n")):
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            self.received.append(buffer)
            buffer = b""
            if self.hang:
                await trio.sleep_forever()
            await stream.send_all(self.answers.pop(0))
            if self.close_after:
                break
        await stream.aclose()


def pool(url: str, **kw: float) -> Pool:
    settings = {"max_connections": 10, "keepalive_expiry": 60.0, "connect_timeout": 2.0, "read_timeout": 2.0}
    settings.update(kw)
    return Pool(url, pool_timeout=1.0, **settings)  # type: ignore[arg-type]


def get(path: str = "/x", body: object = b"", method: str = "GET", **headers: str) -> Request:
    return Request(method, path, "", Headers.of(headers), body)  # type: ignore[arg-type]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mixed-Case: 1\r\n\r\nok"


def test_http_targets_use_h11_and_https_ones_httpcore(monkeypatch):
    assert pool("http://127.0.0.1:1").client == "h11"
    assert pool("https://127.0.0.1:1").client == "httpcore"
    monkeypatch.setattr(upstream, "CLIENT", "httpcore")
    assert pool("http://127.0.0.1:1").client == "httpcore"


async def test_keep_alive_reuses_one_connection_and_lower_cases_header_names(nursery):
    raw = Raw([OK] * 3)
    p = pool(await raw.serve(nursery))
    for _ in range(3):
        r = await p.send(get(), 1024)
        assert (r.status, r.body, r.headers.get("x-mixed-case")) == (200, b"ok", "1")
        assert [k for k, _ in r.headers.raw] == [b"content-length", b"x-mixed-case"]
    assert raw.connections == 1 and p.in_use == 0
    assert raw.received[0].startswith(b"GET /x HTTP/1.1\r\nhost: 127.0.0.1:")


async def test_connection_close_is_not_reused(nursery):
    raw = Raw([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"] * 2, close_after=True)
    p = pool(await raw.serve(nursery))
    for _ in range(2):
        assert (await p.send(get(), 1024)).body == b"ok"
    assert raw.connections == 2


async def test_a_streamed_request_body_is_chunked_and_a_large_response_streams(nursery):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000
    raw = Raw([big, OK])
    p = pool(await raw.serve(nursery))

    async def body():
        yield b"hello "
        yield b"world"

    r = await p.send(get(body=body(), method="POST"), 1024)
    assert not isinstance(r.body, bytes) and p.in_use == 1
    assert b"".join([c async for c in r.body]) == b"z" * 5000  # type: ignore[union-attr]
    await r.aclose()
    assert p.in_use == 0
    assert b"transfer-encoding: chunked" in raw.received[0]
    assert raw.received[0].endswith(b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    assert (await p.send(get(), 1024)).body == b"ok"
    assert raw.connections == 1  # the streamed response, read to its end, kept the connection


async def test_an_unread_streamed_body_closes_its_connection(nursery):
    raw = Raw([b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000, OK])
    p = pool(await raw.serve(nursery))
    r = await p.send(get(), 1024)
    await r.aclose()
    assert (await p.send(get(), 1024)).body == b"ok"
    assert raw.connections == 2 and p.in_use == 0


async def test_head_204_and_304_have_no_body(nursery):
    raw = Raw(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
            OK,
        ]
    )
    p = pool(await raw.serve(nursery))
    assert (await p.send(get(method="HEAD"), 10)).body == b""
    assert (await p.send(get(), 10)).status == 204
    assert (await p.send(get(), 10)).body == b""
    assert (await p.send(get(), 10)).body == b"ok"
    assert raw.connections == 1


async def test_interim_responses_go_to_the_callback_and_101_is_an_error(nursery):
    raw = Raw(
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK,
            OK,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
        ]
    )
    p = pool(await raw.serve(nursery))
    seen: list[tuple[int, list]] = []

    async def informational(status, headers):
        seen.append((status, headers))

    r = await p.send(get(), 1024, informational)
    assert (r.status, r.body) == (200, b"ok")
    assert seen == [(100, []), (103, [(b"link", b"</style.css>; rel=preload")])]
    assert (await p.send(get(), 1024)).body == b"ok"  # without a callback: nothing to call
    with pytest.raises(httpcore.RemoteProtocolError):
        await p.send(get(), 1024)
    assert p.in_use == 0


async def test_a_reused_connection_the_server_drops_is_retried_once_when_replayable(nursery):
    class DropsSecond(Raw):
        """Every connection answers one request, then reads the next and closes unanswered."""

        async def handle(self, stream):
            self.connections += 1
            await stream.receive_some(65536)
            await stream.send_all(OK)
            await stream.receive_some(65536)
            await stream.aclose()

    raw = DropsSecond([OK] * 4)
    p = pool(await raw.serve(nursery))
    assert (await p.send(get(), 1024)).body == b"ok"
    assert (await p.send(get(body=b"data", method="PUT"), 1024)).body == b"ok"  # retried on connection 2
    assert raw.connections == 2

    async def body():
        yield b"x"

    await p.send(get(), 1024)  # dropped on connection 2, answered on 3, which drops the next one
    with pytest.raises((httpcore.RemoteProtocolError, httpcore.ReadError)):  # a streamed body is not replayed
        await p.send(get(body=body(), method="POST"), 1024)
    assert p.in_use == 0


async def test_stale_check_fails_a_streamed_body_only_on_a_fresh_connection(nursery):
    # An idle connection the server closed is noticed at checkout (it reads as readable).
    raw = Raw([OK] * 4, close_after=True)
    p = pool(await raw.serve(nursery))
    await p.send(get(), 1024)
    await trio.sleep(0.05)

    async def body():
        yield b"x"

    assert (await p.send(get(body=body(), method="POST"), 1024)).body == b"ok"
    assert raw.connections == 2


async def test_a_replayable_request_trusts_a_fresh_connection_and_is_sent_again_if_it_was_closed(nursery):
    # Used within TRUST_IDLE: no stale check (a system call) for a request whose body is held;
    # the server had closed it, so the request meets the close and goes again on a new connection.
    raw = Raw([OK] * 4, close_after=True)
    p = pool(await raw.serve(nursery))
    await p.send(get(), 1024)
    await trio.sleep(0.05)  # the server's close has arrived
    assert (await p.send(get(body=b"data", method="PUT"), 1024)).body == b"ok"
    assert raw.connections == 2
    assert p.in_use == 0


async def test_the_tighter_of_read_timeout_and_an_enclosing_deadline_ends_a_wait(nursery):
    # The read gets a cancel scope of its own only when read_timeout comes first.
    raw = Raw([OK, OK], hang=True)
    p = pool(await raw.serve(nursery), read_timeout=5)
    with trio.move_on_after(0.2) as outer:  # the caller's deadline first: it ends the wait
        await p.send(get(), 1024)
    assert outer.cancelled_caught
    p = pool(await raw.serve(nursery), read_timeout=0.2)
    with trio.move_on_after(5) as outer, pytest.raises(httpcore.ReadTimeout):  # read_timeout first
        await p.send(get(), 1024)
    assert not outer.cancelled_caught


async def test_timeouts_and_refused_connections_raise_httpcore_errors(nursery):
    raw = Raw([OK], hang=True)
    p = pool(await raw.serve(nursery), read_timeout=0.2)
    with pytest.raises(httpcore.ReadTimeout):
        await p.send(get(), 1024)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: refused
    with pytest.raises(httpcore.ConnectError):
        await H11Connection.connect(
            "127.0.0.1", s.getsockname()[1], connect_timeout=1, read_timeout=1, write_timeout=1, keepalive_expiry=1
        )
    s.close()
    assert p.in_use == 0


async def test_a_body_cut_short_raises_a_protocol_error(nursery):
    raw = Raw([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after=True)
    p = pool(await raw.serve(nursery))
    with pytest.raises(httpcore.RemoteProtocolError):
        await p.send(get(), 1024)
    raw.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\nabc"]
    r = await p.send(get(), 1024)
    with pytest.raises(httpcore.RemoteProtocolError):
        async for _ in r.body:  # type: ignore[union-attr]
            pass
    await r.aclose()
    assert p.in_use == 0


async def test_expired_idle_connections_are_not_reused(nursery):
    raw = Raw([OK] * 2)
    p = pool(await raw.serve(nursery), keepalive_expiry=0.05)
    await p.send(get(), 1024)
    await trio.sleep(0.1)
    await p.send(get(), 1024)
    assert raw.connections == 2
    await p.aclose()
