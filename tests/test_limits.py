"""Limits: body and header size, slow clients, requests in flight per service."""

import textwrap

import pytest
import trio
from bascule.config import ConfigError, parse_config
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Response


async def until(condition, timeout: float = 10) -> None:
    """Wait for ``condition()`` (a guard against a hang, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


def config(url: str, gateway: str = "", service: str = "") -> str:
    return f"""
        [gateway]
        {gateway}
        [services.api]
        targets = ["{url}"]
        {service}
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
    """


async def raw_exchange(url: str, data: bytes, task_status=trio.TASK_STATUS_IGNORED) -> bytes:
    """Send ``data`` on a new connection; return all bytes until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(data)
    task_status.started()
    received = b""
    with trio.fail_after(10):  # a guard against a hang, not a measurement
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


async def test_request_body_limit_is_exact(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, "max_body_size = 1000"))

    async def chunked(size):
        yield b"x" * size

    async with gw.client(timeout=30) as client:
        at_limit = await client.put("/x", content=b"x" * 1000)
        streamed_at_limit = await client.put("/x", content=chunked(1000))
        over = await client.put("/x", content=b"x" * 1001)
        streamed_over = await client.put("/x", content=chunked(1001))
    assert (at_limit.status_code, streamed_at_limit.status_code) == (200, 200)
    for r in (over, streamed_over):
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["request_id"] == r.headers["x-request-id"]
    assert max(len(r.body) for r in upstream.requests) == 1000


async def test_a_request_head_over_the_limit_is_refused_with_431(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'max_header_size = "16KiB"'))
    async with gw.client(timeout=30) as client:
        fits = await client.get("/x", headers={"x-big": "v" * 8000})
        # hypercorn (h11) applies the limit to a head still incomplete after a read of 64 KiB.
        too_big = await client.get("/x", headers={"x-big": "v" * 100_000})
    assert fits.status_code == 200
    assert too_big.status_code == 431
    assert len(upstream.requests) == 1


async def test_a_slow_client_cannot_hold_a_connection(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'read_timeout = "300ms"\nkeep_alive_timeout = "200ms"'))
    # Slowloris: a head that never ends. The gateway closes the connection.
    partial = await raw_exchange(gw.url, b"GET /x HTTP/1.1\r\nhost: a\r\nx-slow: ")
    # An idle keep-alive connection is closed after one full exchange.
    complete = await raw_exchange(gw.url, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
    assert partial == b""
    assert complete.startswith(b"HTTP/1.1 200") and complete.count(b"HTTP/1.1") == 1
    assert [r.path for r in upstream.requests] == ["/x"]


async def test_max_requests_per_service_queues_then_refuses_with_retry_after(nursery):
    release = trio.Event()

    async def held(request):
        await release.wait()
        return Response(200, body=b"done")

    upstream = await start_upstream(nursery, held)
    gw = await start_gateway(nursery, config(upstream.url, service="max_requests = 2\nmax_queue = 1"))
    svc = gw.gateway.runtime.upstreams["api"]
    results: list[int] = []

    async with gw.client(timeout=30) as client:

        async def call():
            results.append((await client.get("/x")).status_code)

        async with trio.open_nursery() as calls:
            for _ in range(3):
                calls.start_soon(call)
            await until(lambda: len(upstream.requests) == 2 and svc.admission.queued == 1)
            refused = await client.get("/x")
            release.set()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert results == [200, 200, 200]
    assert len(upstream.requests) == 3  # the queued one went through once a slot freed
    assert svc.describe()["refused"] == 1 and svc.admission.in_flight == 0


async def test_a_request_waits_in_the_queue_at_most_queue_timeout(nursery):
    release = trio.Event()

    async def held(request):
        await release.wait()
        return Response(200)

    upstream = await start_upstream(nursery, held)
    gw = await start_gateway(
        nursery, config(upstream.url, service='max_requests = 1\nmax_queue = 5\nqueue_timeout = "100ms"')
    )
    async with gw.client(timeout=30) as client, trio.open_nursery() as calls:
        calls.start_soon(client.get, "/first")
        await until(lambda: bool(upstream.requests))
        waited = await client.get("/second")
        release.set()
    assert waited.status_code == 503 and waited.headers["retry-after"] == "1"
    assert [r.path for r in upstream.requests] == ["/first"]


async def test_a_full_connection_pool_is_503_with_retry_after(nursery):
    release = trio.Event()

    async def held(request):
        await release.wait()
        return Response(200)

    upstream = await start_upstream(nursery, held)
    gw = await start_gateway(nursery, config(upstream.url, service='max_connections = 1\npool_timeout = "100ms"'))
    async with gw.client(timeout=30) as client, trio.open_nursery() as calls:
        calls.start_soon(client.get, "/first")
        await until(lambda: bool(upstream.requests))
        busy = await client.get("/second")
        release.set()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert [r.path for r in upstream.requests] == ["/first"]


def test_limit_settings_are_validated():
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(config("http://127.0.0.1:1", service="max_requests = -1")), "plugins.toml", {})
    assert e.value.lines == ["plugins.toml: services.api: max_requests: must be at least 0, got -1"]


# Append to tests/test_limits.py once gateway.diff is applied (the exact 431 limit needs it).


async def test_the_header_size_limit_is_exact(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, "max_header_size = 2000"))

    def head(pad: int) -> bytes:
        return b"GET /x HTTP/1.1\r\nhost: a\r\nx-pad: " + b"p" * pad + b"\r\nconnection: close\r\n\r\n"

    # Counted as the gateway counts it: method + target + 12 for the request line's rest,
    # name + value + 4 per field.
    fill = 2000 - (3 + 2 + 12) - (4 + 1 + 4) - (5 + 4) - (10 + 5 + 4)
    at_limit = await raw_exchange(gw.url, head(fill))
    over = await raw_exchange(gw.url, head(fill + 1))
    assert at_limit.startswith(b"HTTP/1.1 200")
    assert over.startswith(b"HTTP/1.1 431") and b"application/problem+json" in over
    assert len(upstream.requests) == 1
