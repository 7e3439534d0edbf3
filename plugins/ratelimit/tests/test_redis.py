"""The Redis backend against a real redis-server: exactness, faults, recovery."""

import logging
import socket
import subprocess
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from bascule.testing import RedisServer, start_gateway, start_upstream
from bascule_ratelimit import RateLimit


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(name: str, *settings: str) -> str:
    """A route ``/NAME`` rate limited on Redis with the given ``key = value`` lines."""
    lines = "\n".join(('backend = "redis"', *settings))
    return f"""
[[routes]]
name = "{name}"
paths = ["/{name}"]
service = "api"
[routes.plugins.rate-limit]
{lines}
"""


async def rate_limited(nursery: trio.Nursery, upstream: str, *routes: str):
    """A gateway in ``nursery`` with the service ``api`` at ``upstream`` and ``routes`` (``route(...)``)."""
    config = f'[services.api]\ntargets = ["{upstream}"]\n' + "".join(routes)
    return await start_gateway(nursery, config, plugins=[RateLimit])


@contextmanager
def gateway_processes(configs: list[Path]):
    """Run ``bascule run -c CONFIG`` for each config; stop them all on exit."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bascule.cli", "run", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for cfg in configs
    ]
    try:
        yield
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_until_serving(url: str) -> None:
    """Poll until ``url`` answers (with a 404: a path no route matches uses no quota)."""
    with trio.fail_after(120):  # a guard against a gateway that never starts
        while True:
            try:
                async with httpx.AsyncClient() as probe:
                    if (await probe.get(f"{url}/ready")).status_code == 404:
                        return
            except httpx.TransportError:
                await trio.sleep(0.05)


async def fire(clients: list[httpx.AsyncClient], path: str, n: int) -> list[int]:
    """``n`` concurrent requests for ``path``, spread over ``clients``; their statuses."""
    codes: list[int] = []

    async def call(client: httpx.AsyncClient) -> None:
        codes.append((await client.get(path)).status_code)

    async with trio.open_nursery() as requests:
        for i in range(n):
            requests.start_soon(call, clients[i % len(clients)])
    return codes


@pytest.mark.slow
async def test_four_gateway_processes_admit_exactly_the_limit(nursery, redis, tmp_path: Path):
    """200 concurrent clients spread over 4 gateway processes, per algorithm:
    exactly `limit` requests reach the upstream, every other one is a 429."""
    limit, n = 50, 200
    upstream = await start_upstream(nursery)
    algorithms = ("gcra", "sliding-window", "fixed-window")
    routes = "".join(
        route(
            a,
            f"limit = {limit}",
            'window = "1h"',
            f'algorithm = "{a}"',
            f'redis_url = "{redis.url}"',
            'redis_timeout = "5s"',
            'on_error = "fail-closed"',
        )  # a slow answer is a 503, never a 200
        for a in algorithms
    )
    urls, configs = [], []
    for i in range(4):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        configs.append(tmp_path / f"gateway-{i}.toml")
        configs[-1].write_text(
            f'[gateway]\nlisten = "127.0.0.1:{port}"\nkeep_alive_timeout = "1m"\n'
            f'[services.api]\ntargets = ["{upstream.url}"]\n{routes}'
        )
    with gateway_processes(configs):
        for url in urls:
            await wait_until_serving(url)
        clients = [httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=n)) for url in urls]
        for algorithm in algorithms:
            codes = await fire(clients, f"/{algorithm}", n)
            admitted = sum(1 for r in upstream.requests if r.path == f"/{algorithm}")
            assert admitted == limit, algorithm
            assert sorted(codes) == [200] * limit + [429] * (n - limit), algorithm
        for client in clients:
            await client.aclose()


async def test_redis_down_fails_open_or_closed_per_route_then_recovers(nursery, redis, caplog):
    caplog.set_level(logging.INFO, logger="bascule.ratelimit")
    upstream = await start_upstream(nursery)
    # A refused connection fails at once; the long timeout only keeps a loaded machine from failing open.
    common = ("limit = 2", 'window = "1h"', f'redis_url = "{redis.url}"', 'redis_timeout = "5s"')
    gw = await rate_limited(
        nursery, upstream.url, route("open", *common), route("closed", *common, 'on_error = "fail-closed"')
    )
    async with gw.client() as client:
        for path in ("/open", "/closed"):
            r = await client.get(path)
            assert (r.status_code, r.headers["ratelimit"]) == (200, '"2-per-1h";r=1;t=1800'), path

        redis.stop()
        for _ in range(3):  # beyond the limit: nothing is counted while Redis is away
            r = await client.get("/open")
            assert r.status_code == 200
            assert "ratelimit" not in r.headers
        r = await client.get("/closed")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "1"

        redis.start()  # same port, empty: the client reconnects by itself
        for path in ("/open", "/closed"):
            codes = [(await client.get(path)).status_code for _ in range(3)]
            assert codes == [200, 200, 429], path
    assert [r.path for r in upstream.requests].count("/open") == 1 + 3 + 2
    assert [r.path for r in upstream.requests].count("/closed") == 1 + 2
    failures = sum(p.failures for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, RateLimit))
    assert failures == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "bascule.ratelimit"]
    assert sum("backend failed" in m for m in messages) == 2  # once per instance, not per request
    assert sum("backend works again" in m for m in messages) == 2


async def test_a_redis_that_never_answers_cannot_stall_requests(nursery):
    async def black_hole(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, black_hole, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    upstream = await start_upstream(nursery)
    common = ("limit = 2", 'window = "1h"', f'redis_url = "redis://127.0.0.1:{port}"', 'redis_timeout = "50ms"')
    gw = await rate_limited(
        nursery, upstream.url, route("open", *common), route("closed", *common, 'on_error = "fail-closed"')
    )
    async with gw.client() as client:
        with trio.fail_after(20):  # a guard against a hang, not a timing assertion
            assert [(await client.get("/open")).status_code for _ in range(3)] == [200] * 3
            assert [(await client.get("/closed")).status_code for _ in range(3)] == [503] * 3
    assert len(upstream.requests) == 3


async def test_a_gateway_starts_while_redis_is_down(nursery):
    redis = RedisServer()  # not started yet
    upstream = await start_upstream(nursery)
    gw = await rate_limited(
        nursery,
        upstream.url,
        route(
            "closed",
            "limit = 1",
            'window = "1h"',
            f'redis_url = "{redis.url}"',
            'redis_timeout = "5s"',
            'on_error = "fail-closed"',
        ),
    )
    async with gw.client() as client:
        assert (await client.get("/closed")).status_code == 503
        with redis:
            assert [(await client.get("/closed")).status_code for _ in range(2)] == [200, 429]
    assert len(upstream.requests) == 1


async def test_concurrent_decisions_survive_a_redis_that_lost_the_script(nursery, redis):
    """Decisions leave in batches (one pipeline per round trip); a Redis that lost the script
    (SCRIPT FLUSH, a restart) gets it again and the batch that met NOSCRIPT is decided, exactly."""
    from bascule.testing import redis_command

    upstream = await start_upstream(nursery)
    gw = await rate_limited(
        nursery,
        upstream.url,
        route("api", "limit = 30", 'window = "1h"', f'redis_url = "{redis.url}"', 'redis_timeout = "5s"'),
    )
    async with gw.client() as client:
        assert (await client.get("/api")).status_code == 200
        assert redis_command(redis.port, "SCRIPT", "FLUSH") == "OK"
        codes = await fire([client], "/api", 40)
    assert sorted(codes) == [200] * 29 + [429] * 11
    assert len(upstream.requests) == 30


async def test_decisions_go_through_a_password_and_a_database(nursery, redis):
    """The batches' own connection (``resp.Pipe``) logs in and selects the URL's database."""
    from bascule.testing import redis_command
    from bascule_ratelimit.resp import Pipe

    assert redis_command(redis.port, "CONFIG", "SET", "requirepass", "s3cret") == "OK"
    upstream = await start_upstream(nursery)
    url = f"redis://:s3cret@127.0.0.1:{redis.port}/4"
    gw = await rate_limited(
        nursery,
        upstream.url,
        route("api", "limit = 2", 'window = "1h"', f'redis_url = "{url}"', 'on_error = "fail-closed"'),
    )
    async with gw.client() as client:
        assert [(await client.get("/api")).status_code for _ in range(3)] == [200, 200, 429]
    pipe = Pipe.for_url(url)
    assert pipe is not None
    assert await pipe.send([("DBSIZE",), ("SELECT", 0), ("DBSIZE",)]) == [1, b"OK", 0]  # the bucket is in db 4
    pipe.close()


async def test_a_decision_waits_no_longer_than_its_timeout_behind_a_stalled_batch(nursery, autojump_clock):
    """Each decision is answered by its own deadline, ``redis_timeout`` after it was asked, also
    when it queued behind a batch Redis never answers (virtual time: trio's autojump clock)."""
    from bascule_ratelimit.policy import Policy
    from bascule_ratelimit.redis import BackendError, RedisBackend

    async def black_hole(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, black_hole, 0, host="127.0.0.1"))
    url = f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    policy = Policy("default", "gcra", 10, 60.0, 10)
    waited: dict[str, float] = {}

    async def decide(backend: RedisBackend, key: str) -> None:
        asked = trio.current_time()
        with pytest.raises(BackendError, match="no answer within 50 ms"):
            await backend.decide([key], [policy])
        waited[key] = trio.current_time() - asked

    with trio.fail_after(10):  # a guard against a decision never answered
        async with RedisBackend.opened(url, 0.05) as backend, trio.open_nursery() as decisions:
            decisions.start_soon(decide, backend, "first")  # its batch leaves at once, and stalls
            await trio.sleep(0.03)
            decisions.start_soon(decide, backend, "second")  # queued behind it
    assert waited == {"first": pytest.approx(0.05), "second": pytest.approx(0.05)}
