"""The rate limiter's own Redis connection (``resp.Pipe``) against a real redis-server."""

from collections.abc import Iterator
from functools import partial

import pytest
import trio
from bascule.testing import RedisServer, redis_command
from bascule_ratelimit.resp import Address, Pipe, ReplyError


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A Redis server that asks for the password ``s3cret``."""
    with RedisServer() as server:
        assert redis_command(server.port, "CONFIG", "SET", "requirepass", "s3cret") == "OK"
        yield server


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6380", Address("127.0.0.1", 6380, None, None, None, 0)),
        ("redis://redis.internal", Address("redis.internal", 6379, None, None, None, 0)),
        ("redis://:p%40ss@[::1]:7000/3", Address("::1", 7000, None, None, "p@ss", 3)),
        ("redis://gw:pw@10.0.0.5/", Address("10.0.0.5", 6379, None, "gw", "pw", 0)),
        ("unix:///run/redis.sock", Address(None, 0, "/run/redis.sock", None, None, 0)),
    ],
)
def test_a_plain_url_is_an_address(url, address):
    assert Address.parse(url) == address


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6380",  # TLS: coredis
        "redis+sentinel://127.0.0.1:26379/main",
        "redis+cluster://127.0.0.1:7000",
        "redis://127.0.0.1:6380?db=2",  # options: coredis reads them
        "redis://127.0.0.1:6380/cache",
        "redis://127.0.0.1:port",  # coredis reports it
        "unix:///run/redis.sock?db=1",
    ],
)
def test_any_other_url_is_left_to_coredis(url):
    assert Pipe.for_url(url) is None


async def test_a_batch_logs_in_selects_its_database_and_gets_every_reply_in_order(redis):
    pipe = Pipe.for_url(f"redis://:s3cret@127.0.0.1:{redis.port}/2")
    assert pipe is not None
    # 3,000 commands: their replies take several reads; an error reply keeps its place.
    commands = [("SET", f"k{i}", "x" * 100) for i in range(1000)] + [("INCR", "k0")]
    commands += [("GET", f"k{i}") for i in range(1000)] + [("DBSIZE",)] + [("INCRBY", "n", i) for i in range(998)]
    replies = await pipe.send(commands)
    assert replies[:1000] == [b"OK"] * 1000
    assert isinstance(replies[1000], ReplyError) and "not an integer" in str(replies[1000])
    assert replies[1001:2001] == [b"x" * 100] * 1000
    assert replies[2001] == 1000
    assert replies[2002:] == [sum(range(i + 1)) for i in range(998)]
    assert await pipe.send([("SELECT", 0), ("DBSIZE",)]) == [b"OK", 0]  # one connection: the keys are in db 2
    pipe.close()


async def test_a_refused_login_is_a_connection_error(redis):
    pipe = Pipe.for_url(f"redis://:wrong@127.0.0.1:{redis.port}")
    assert pipe is not None
    with pytest.raises(ConnectionError, match="refused the connection's set-up"):
        await pipe.send([("PING",)])


async def test_a_cancelled_batch_closes_its_connection_and_the_next_opens_another(nursery):
    """Replies still due must never answer the next batch: a send cut short drops its connection."""
    accepted: list[trio.SocketStream] = []
    answer = trio.Event()

    async def late_redis(stream: trio.SocketStream) -> None:  # answers PINGs once ``answer`` is set
        accepted.append(stream)
        await answer.wait()
        while data := await stream.receive_some():
            await stream.send_all(b"+PONG\r\n" * data.count(b"PING"))

    listeners = await nursery.start(partial(trio.serve_tcp, late_redis, 0, host="127.0.0.1"))
    pipe = Pipe.for_url(f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    assert pipe is not None
    with trio.move_on_after(0.2) as waited:
        await pipe.send([("PING",)])
    assert waited.cancelled_caught
    answer.set()
    assert await pipe.send([("PING",), ("PING",)]) == [b"PONG", b"PONG"]
    assert len(accepted) == 2
    pipe.close()


async def test_a_unix_socket_url_reaches_the_server(tmp_path):
    socket = tmp_path / "redis.sock"
    with RedisServer("--unixsocket", str(socket)):
        pipe = Pipe.for_url(f"unix://{socket}")
        assert pipe is not None
        assert await pipe.send([("PING",), ("ECHO", "over the socket")]) == [b"PONG", b"over the socket"]
        pipe.close()
