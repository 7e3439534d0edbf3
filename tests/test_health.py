"""Active health checks and panic mode, on real sockets.

A faulty target listens on a port bound to 0; ``recover()`` brings a real
upstream back on the same port. Everything is checked the way an operator
would: ``/upstreams`` on the admin listener, responses through the gateway,
and the gateway's log.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import RunningGateway, Upstream, eventually, start_gateway, start_upstream
from bascule.upstream import Pool
from bascule_sdk import Request, Response
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

CHECKS = {
    "health_path": "/health",
    "health_interval": "50ms",
    "health_timeout": "200ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}


def config(*urls: str, path: str = "/", **settings: Any) -> str:
    """One service ``api`` over ``urls``, routed from ``path``."""
    targets = ", ".join(f'"{u}"' for u in urls)
    keys = "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items())
    return f"""
[services.api]
targets = [{targets}]
{keys}
[[routes]]
name = "api"
paths = ["{path}"]
service = "api"
"""


async def upstreams(gw: RunningGateway) -> dict[str, Any]:
    """The ``api`` service as the admin listener shows it."""
    assert gw.admin_url is not None
    async with httpx.AsyncClient(base_url=gw.admin_url) as admin:
        return (await admin.get("/upstreams")).json()["api"]


async def until_states(gw: RunningGateway, *states: str) -> None:
    """Wait until the targets show ``states`` (a guard against a hang, not a measurement)."""
    with trio.fail_after(10):
        while [t["state"] for t in (await upstreams(gw))["targets"]] != list(states):  # noqa: ASYNC110 - polls the admin listener
            await trio.sleep(0.02)


async def serve_upstream(nursery: trio.Nursery, port: int) -> Upstream:
    """A real upstream (``bascule.testing.Upstream``) on ``port``."""
    upstream = Upstream()
    hc = HypercornConfig()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = None
    hc.graceful_timeout = 0.5
    await nursery.start(
        partial(worker_serve, wrap_app(upstream, None, "asgi"), hc, shutdown_trigger=upstream.stop.wait)
    )
    return upstream


async def reset(stream: trio.SocketStream) -> None:
    await stream.receive_some()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # with SO_LINGER 0, close sends RST instead of FIN


async def hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def garbage(stream: trio.SocketStream) -> None:
    await stream.receive_some()
    await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")  # a probe that reached the wrong port
    await stream.aclose()


async def start_faulty(nursery: trio.Nursery, kind: str) -> tuple[str, Callable[[], Awaitable[Upstream]]]:
    """A target that fails as ``kind``, and ``recover()``, which serves a real upstream there."""
    if kind == "refused":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]

        async def stop() -> None:
            sock.close()
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        scope, stopped = trio.CancelScope(), trio.Event()

        async def serve() -> None:
            with scope:
                await trio.serve_listeners({"reset": reset, "hang": hang, "garbage": garbage}[kind], listeners)
            stopped.set()

        async def stop() -> None:
            scope.cancel()
            await stopped.wait()

        nursery.start_soon(serve)

    async def recover() -> Upstream:
        await stop()
        return await serve_upstream(nursery, port)

    return f"http://127.0.0.1:{port}", recover


def served(upstream: Upstream, path: str) -> int:
    return sum(r.path == path for r in upstream.requests)


# -- health that cannot lie ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["refused", "reset", "hang", "garbage"])
async def test_active_checks_take_a_faulty_target_out_and_bring_it_back(nursery, kind):
    url, recover = await start_faulty(nursery, kind)
    good = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(url, good.url, **CHECKS), admin=True)
    await until_states(gw, "unhealthy", "healthy")
    async with gw.client(timeout=30) as client:
        assert [(await client.get("/out")).status_code for _ in range(6)] == [200] * 6
        assert served(good, "/out") == 6  # none was sent to the faulty target
        back = await recover()
        await until_states(gw, "healthy", "healthy")
        assert [(await client.get("/back")).status_code for _ in range(6)] == [200] * 6
        assert served(back, "/back") == served(good, "/back") == 3

        # The checks are still alive: a reload with changed settings starts those of the new service.
        probes = served(good, "/health"), served(back, "/health")
        await gw.reload(config(url, good.url, path="/v2", **{**CHECKS, "health_interval": "40ms"}))
        assert (await client.get("/v2/x")).status_code == 200
        await eventually(lambda: served(good, "/health") > probes[0] + 3 and served(back, "/health") > probes[1] + 3)
    target = (await upstreams(gw))["targets"][0]
    assert target["url"] == url and target["state"] == "healthy"


async def test_an_unexpected_error_in_a_probe_fails_it_and_checks_go_on(nursery, monkeypatch, caplog):
    flaky, good = await start_upstream(nursery), await start_upstream(nursery)
    send, broken = Pool.send, True

    async def probe_bug(pool: Pool, request: Request, buffer_size: int, informational=None) -> Response:
        if broken and pool.url == flaky.url and request.headers.get("user-agent") == "bascule-health-check":
            raise RuntimeError("a bug in the probe")
        return await send(pool, request, buffer_size, informational)

    monkeypatch.setattr(Pool, "send", probe_bug)
    gw = await start_gateway(nursery, config(flaky.url, good.url, **CHECKS), admin=True)
    await until_states(gw, "unhealthy", "healthy")
    broken = False
    await until_states(gw, "healthy", "healthy")
    bugs = [r for r in caplog.records if r.levelno == logging.WARNING and r.exc_info and "probe" in r.getMessage()]
    assert bugs and isinstance(bugs[0].exc_info[1], RuntimeError)
    assert flaky.url in bugs[0].getMessage()


# -- panic mode ---------------------------------------------------------------------


@pytest.mark.parametrize("panic_threshold", [0.5, 0])
async def test_a_lone_target_is_never_ejected(nursery, panic_threshold):
    failing = True

    async def handler(request):
        return Response(502 if failing else 200)

    upstream = await start_upstream(nursery, handler)
    gw = await start_gateway(nursery, config(upstream.url, panic_threshold=panic_threshold), admin=True)
    async with gw.client(timeout=30) as client:
        assert [(await client.get("/x")).status_code for _ in range(7)] == [502] * 7  # max_failures is 5
        during = await upstreams(gw)
        failing = False
        assert (await client.get("/x")).status_code == 200  # at once: no 503 for a cool-off
    (target,) = during["targets"]
    assert (target["state"], target["consecutive_failures"], target["failures"]) == ("healthy", 7, 7)
    assert target["ejections"] == 0 and during["panic"] is False
    (target,) = (await upstreams(gw))["targets"]
    assert (target["consecutive_failures"], target["failures"], target["requests"]) == (0, 7, 8)


async def start_sick(
    nursery: trio.Nursery, sick: int, well: int, **settings: Any
) -> tuple[list[Upstream], RunningGateway, Callable[[], None]]:
    """``sick`` targets answering 502 (until ``cure()``), then ``well`` ones; one request to
    each, in order, so that every sick target is ejected (for a minute)."""
    failing = True

    async def handler(request):
        return Response(502 if failing else 200)

    ups = [await start_upstream(nursery, handler) for _ in range(sick)]
    ups += [await start_upstream(nursery) for _ in range(well)]
    gw = await start_gateway(
        nursery, config(*(u.url for u in ups), max_failures=1, cool_off="1m", retries=0, **settings), admin=True
    )
    async with gw.client(timeout=30) as client:
        for _ in ups:
            await client.get("/eject")

    def cure() -> None:
        nonlocal failing
        failing = False

    return ups, gw, cure


async def test_below_the_panic_threshold_requests_spread_over_all_targets(nursery, caplog):
    caplog.set_level(logging.INFO, logger="bascule.upstream")
    ups, gw, cure = await start_sick(nursery, 3, 1)
    page = await upstreams(gw)
    assert [t["state"] for t in page["targets"]] == ["ejected"] * 3 + ["healthy"]
    assert page["panic"] is True  # 1 healthy target of 4 is below the default 50 %
    async with gw.client(timeout=30) as client:
        statuses = [(await client.get("/spread")).status_code for _ in range(40)]
        assert sorted(statuses) == [200] * 10 + [502] * 30
        assert [served(u, "/spread") for u in ups] == [10] * 4
        in_panic = await upstreams(gw)
        cure()
        assert [(await client.get("/cured")).status_code for _ in range(4)] == [200] * 4
    # The 4th request of start_sick and these 40 were balanced in panic mode.
    assert in_panic["panic"] is True and in_panic["panic_requests"] == 41
    page = await upstreams(gw)
    # The first cured request brought its target back: 2 of 4 healthy ends panic mode.
    assert page["panic"] is False and page["panic_requests"] == 42
    assert [t["state"] for t in page["targets"]] == ["healthy", "ejected", "ejected", "healthy"]
    panic_logs = [(r.levelname, r.getMessage()) for r in caplog.records if "panic" in r.getMessage()]
    assert [level for level, _ in panic_logs] == ["WARNING", "INFO"]  # once each, not per request
    assert all("service api" in message for _, message in panic_logs)


@pytest.mark.parametrize("threshold, panic", [(0.5, False), (0.6, True)])
async def test_exactly_at_the_panic_threshold_is_not_panic(nursery, threshold, panic):
    ups, gw, _ = await start_sick(nursery, 2, 2, panic_threshold=threshold)
    async with gw.client(timeout=30) as client:
        for _ in range(20):
            await client.get("/edge")
    assert (await upstreams(gw))["panic"] is panic  # 2 healthy targets of 4: 50 %
    expected = [5] * 4 if panic else [0, 0, 10, 10]
    assert [served(u, "/edge") for u in ups] == expected


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
async def test_a_panic_threshold_outside_0_to_1_is_rejected(nursery, value):
    with pytest.raises(ConfigError) as e:
        await start_gateway(nursery, config("http://127.0.0.1:1", panic_threshold=value))
    assert e.value.lines == [f"plugins.toml: services.api: panic_threshold: must be between 0 and 1, got {value!r}"]
