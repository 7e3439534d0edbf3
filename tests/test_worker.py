"""The connection layer (bascule.worker): hypercorn #203, contained errors, lingering close.

Each case over a real socket against a gateway the test started.
"""

import json
import logging
import socket
from functools import partial
from importlib.metadata import version

import pytest
import trio
from bascule import worker
from bascule.testing import parse_response, raw_exchange, start_gateway, start_upstream
from bascule_sdk import Response

CONFIG = """
    [gateway]
    lingering_timeout = "{linger}"
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "api"
    paths = ["/api"]
    service = "api"
"""

# hypercorn #203: a complete HTTP/1.0 request (rejected for CL+TE) followed by more bytes.
ISSUE_203 = (
    b"POST /api/x HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /api/y HTTP/1.1\r\nHost: a\r\n\r\n"
)


async def gateway(nursery, linger: str = "2s"):
    upstream = await start_upstream(nursery)
    return await start_gateway(nursery, CONFIG.format(url=upstream.url, linger=linger))


def test_the_installed_hypercorn_is_the_one_the_worker_was_written_for():
    # bascule.worker overrides hypercorn internals: read the new release's trio/tcp_server.py and
    # protocol/h11.py, then move worker.HYPERCORN (and the pin in core/pyproject.toml).
    assert version("hypercorn").startswith(worker.HYPERCORN + ".")


async def test_bytes_after_a_request_that_ends_the_connection_get_its_whole_answer(nursery):
    gw = await gateway(nursery)
    answers: list[bytes] = []

    async def client() -> None:
        for _ in range(20):
            answers.append(await raw_exchange(gw.url, ISSUE_203))

    async with trio.open_nursery() as clients:
        for _ in range(10):
            clients.start_soon(client)
    assert len(answers) == 200
    for data in answers:
        status, headers, body = parse_response(data)
        assert status == 400
        assert headers["connection"].lower() == "close"
        assert headers["content-type"] == "application/problem+json"
        problem = json.loads(body)  # whole: the close did not cut it
        assert problem["request_id"] == headers["x-request-id"]
        assert "Transfer-Encoding" in problem["detail"]  # the gateway's own answer, not the server's
    async with gw.client() as client:
        assert (await client.get("/api/still-serving")).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",  # no colon
        b"head /api/x HTTP/1.1\r\nHost: a\r\n\r\n",  # methods are case-sensitive: not HEAD
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello on the plain port
    ],
)
async def test_unparseable_requests_get_a_problem_and_a_close(nursery, payload):
    gw = await gateway(nursery)
    status, headers, body = parse_response(await raw_exchange(gw.url, payload))
    assert status == 400
    assert headers["connection"].lower() == "close"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["request_id"] == headers["x-request-id"]


async def test_an_oversized_head_gets_431_as_a_problem(nursery):
    gw = await gateway(nursery)
    payload = b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 200_000  # never ends
    status, _headers, body = parse_response(await raw_exchange(gw.url, payload))
    assert status == 431
    assert json.loads(body)["status"] == 431


@pytest.mark.parametrize(("linger", "late", "reset"), [("2s", 0.2, False), ("0s", 0.2, True), ("300ms", 0.8, True)])
async def test_a_closing_connection_reads_on_for_lingering_timeout(nursery, linger, late, reset):
    # Closed with bytes of its client unread, a socket answers them with a reset, which drops
    # whatever of the answer the client has not read yet (an upload refused early, pipelined
    # requests after "Connection: close"). The lingering close keeps reading for a while, as nginx's.
    gw = await gateway(nursery, linger)
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := await trio.to_thread.run_sync(sock.recv, 65536):
        data += chunk  # until the server's FIN: the answer is complete
    assert data.startswith(b"HTTP/1.1 200")
    sock.sendall(b"z" * 1024)  # late bytes, as from a client still uploading
    await trio.sleep(late)
    try:
        sock.sendall(b"z")  # a closed server answers with a reset...
        await trio.sleep(0.1)
        sock.sendall(b"z")  # ...after which sending fails (EPIPE)
        was_reset = False
    except (BrokenPipeError, ConnectionResetError):
        was_reset = True
    sock.close()
    assert was_reset is reset


async def test_an_error_escaping_a_connection_is_logged_and_ends_only_that_connection(nursery, caplog):
    async def broken(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"partial")
        raise RuntimeError("a bug in the connection handler")

    listeners = await nursery.start(partial(trio.serve_tcp, partial(worker._contain, broken), 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    before = worker.contained_errors()
    with caplog.at_level(logging.WARNING, "bascule"):
        for _ in range(3):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            await sock.connect(("127.0.0.1", port))
            assert await sock.recv(100) == b"partial"
            assert await sock.recv(100) == b""  # closed by the containment
            sock.close()
    assert worker.contained_errors() == before + 3
    lines = [r.getMessage() for r in caplog.records if "connection error from 127.0.0.1" in r.getMessage()]
    assert len(lines) == 3
    assert "RuntimeError: a bug in the connection handler" in lines[0]


KEEP_ALIVE = """
    [gateway]
    keep_alive_timeout = "{keep_alive}"
    graceful_timeout = "5s"
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "api"
    paths = ["/api"]
    service = "api"
"""


async def open_connection(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response with Content-Length, read whole (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(parse_response(head + b"\r\n\r\n")[1]["content-length"])
    while len(body) < length:
        body += await stream.receive_some()
    return head + b"\r\n\r\n" + body


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(5):
        try:
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:
            return True
    return False


async def slow(request) -> Response:
    await trio.sleep(0.6)
    return Response(200, {"content-type": "text/plain", "content-length": "4"}, b"slow")


async def test_keep_alive_closes_idle_connections_and_never_busy_ones(nursery):
    upstream = await start_upstream(nursery, slow)
    gw = await start_gateway(nursery, KEEP_ALIVE.format(url=upstream.url, keep_alive="300ms"))
    stream = await open_connection(gw.url)
    for _ in range(2):  # each request outlasts the keep-alive timeout: busy, not idle
        await stream.send_all(b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(stream)).endswith(b"slow")
    started = trio.current_time()
    assert await closed_by_server(stream)  # idle after the answer: closed
    assert trio.current_time() - started >= 0.25
    await stream.aclose()


async def test_shutdown_closes_idle_connections_and_lets_busy_ones_answer(nursery):
    upstream = await start_upstream(nursery, slow)
    gw = await start_gateway(nursery, KEEP_ALIVE.format(url=upstream.url, keep_alive="60s"))
    idle = await open_connection(gw.url)
    busy = await open_connection(gw.url)
    await idle.send_all(b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n")
    await read_response(idle)
    await busy.send_all(b"GET /api/b HTTP/1.1\r\nHost: a\r\n\r\n")
    await trio.sleep(0.1)  # the request is in flight
    gw.stop.set()
    assert await closed_by_server(idle)  # at once, not after 60 s
    assert (await read_response(busy)).endswith(b"slow")
    assert await closed_by_server(busy)
    await idle.aclose()
    await busy.aclose()


BIG = bytes(range(256)) * 32768  # 8 MiB, more than the sockets between take at once


async def big(request) -> Response:
    return Response(200, {"content-type": "application/octet-stream", "content-length": str(len(BIG))}, BIG)


async def test_an_answer_larger_than_the_socket_takes_arrives_whole_and_in_order(nursery):
    # The gateway writes what the socket takes at once, then waits for room for the rest
    # (worker._write_now, then send_all): a client that reads late still gets every byte, in order,
    # and the connection serves the next request.
    upstream = await start_upstream(nursery, big)
    gw = await start_gateway(nursery, KEEP_ALIVE.format(url=upstream.url, keep_alive="5s"))
    stream = await open_connection(gw.url)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    for _ in range(2):
        await stream.send_all(b"GET /api/big HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(0.3)  # not reading yet: the gateway's socket fills up
        with trio.fail_after(10):
            answer = await read_response(stream)
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.partition(b"\r\n\r\n")[2] == BIG
    await stream.aclose()


async def test_a_streamed_answer_sends_its_head_before_its_first_chunk(nursery):
    first_chunk = trio.Event()

    async def events(request) -> Response:
        async def body():
            await first_chunk.wait()
            yield b"data: 1\n\n"

        return Response(200, {"content-type": "text/event-stream"}, body())

    upstream = await start_upstream(nursery, events)
    gw = await start_gateway(nursery, KEEP_ALIVE.format(url=upstream.url, keep_alive="5s"))
    stream = await open_connection(gw.url)
    await stream.send_all(b"GET /api/events HTTP/1.1\r\nHost: a\r\n\r\n")
    head = b""
    with trio.fail_after(5):  # the head arrives while the upstream holds its first event back
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"data: 1" not in head
    first_chunk.set()
    rest = b""
    with trio.fail_after(5):
        while b"data: 1" not in rest:
            rest += await stream.receive_some()
    await stream.aclose()


async def test_an_h2c_upgrade_is_answered_over_http_1_1(nursery):
    # RFC 9113 deprecates h2c; a bad HTTP2-Settings once broke the connection.
    gw = await gateway(nursery)
    for settings in (b"AAMAAABkAARAAAAAAAIAAAAA", b"not base64!"):
        payload = (
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        status, _headers, body = parse_response(await raw_exchange(gw.url, payload))
        assert status == 200
        assert json.loads(body)["path"] == "/api/x"


H2C_UPGRADE = (
    b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


@pytest.mark.parametrize("h2c", [None, False, True])
async def test_the_h2c_setting_decides_whether_an_upgrade_is_accepted(nursery, h2c):
    # [gateway] h2c: off by default (RFC 9113 3.1 deprecates the upgrade), hypercorn's upgrade when on.
    upstream = await start_upstream(nursery)
    config = CONFIG.format(url=upstream.url, linger="2s")
    if h2c is not None:
        config = config.replace("[gateway]\n", f"[gateway]\n    h2c = {str(h2c).lower()}\n")
    gw = await start_gateway(nursery, config)
    host, port = gw.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(H2C_UPGRADE)
    data = b""
    with trio.move_on_after(2):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
    await stream.aclose()
    head = data.partition(b"\r\n\r\n")[0].lower()
    if h2c:
        assert head.startswith(b"http/1.1 101") and b"upgrade: h2c" in head
    else:
        assert head.startswith(b"http/1.1 200") and b"upgrade" not in head


def test_declared_body_size_counts_the_chunk_header_before_its_bytes():
    import h11
    from bascule.worker import declared_body_size

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n400\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.Data)
    assert conn.next_event() is h11.NEED_DATA  # the 0x400 chunk's header only
    assert declared_body_size(conn, 3) == 3 + 0x400
    assert declared_body_size(object(), 7) == 7  # no chunked reader: what was received
