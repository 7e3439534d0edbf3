"""Each plugin's cost in a request, in process: CPU µs above the bare route, without the server.

    .venv/bin/python bench/inrequest.py [--requests N] [--rounds N]

The gateway's ASGI app is called directly (no HTTP server in front of it) by 20
concurrent tasks, one route at a time, against an upstream in another process
(Bascule's server module answering the bench's JSON body; with ``Cache-Control``
under ``/cache``, so the cache route answers from the cache). The process's CPU
time per request (its log writer's thread included) is taken for each route in
turn, ``rounds`` times; the median is printed, with the cost above the bare route.

Beside ``bench/hooks.py`` (each plugin's hooks alone, in a loop) this shows what the
same hooks cost among a request's other work, free of the server and of the
process-to-process spread of ``bench/run``. The plugins are set as in
``hooks.py``; Redis is left out. Every other round runs the routes in reverse
order, as ``bench/run`` does (``runner.rounds``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import configs
import runner
import trio
from bascule.server import settle_heap
from bascule.testing import start_gateway
from hooks import routes
from procs import free_port, wait_port

BODY = b'{"id":42,"name":"bascule","tags":["gateway","bench"],"ok":true,"items":[1,2,3],"next":null}'
TASKS = 20  # requests in flight, as a loaded gateway has


async def upstream_app(scope: dict, receive: Any, send: Any) -> None:
    """The upstream: the bench's JSON body; cacheable for an hour under ``/cache``."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    if scope["path"].startswith("/cache"):
        headers.append((b"cache-control", b"public, max-age=3600"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve_upstream(port: int) -> None:
    from functools import partial

    from bascule.worker import listen
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    trio.run(partial(listen, upstream_app, config))


def config(
    upstream: str,
    plugins: dict[str, dict[str, Any]],
    consumers: dict[str, Any],
    *,
    bare: Sequence[str] = ("bare",),
    port: int = 0,
) -> str:
    """A route without plugins at ``/<name>`` for each name of ``bare``, then one route per plugin
    at ``/<plugin>``; listening on ``port`` (0: the tests' in-process gateway picks one)."""
    routes = [{"name": n, "paths": [f"/{n}"], "service": "up"} for n in bare]
    routes += [{"name": n, "paths": [f"/{n}"], "service": "up", "plugins": {n: s}} for n, s in plugins.items()]
    return configs.gateway(port, {"up": [upstream]}, routes, consumers=consumers)


def scope(route: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    path = f"/{route}/x"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }


async def cpu_per_request(app: Any, request: dict[str, Any], count: int) -> float:
    """CPU µs per request for ``count`` requests of ``request``, ``TASKS`` at a time."""
    statuses = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def client(n: int) -> None:
        for _ in range(n):
            await app(dict(request), receive, send)

    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(TASKS):
            nursery.start_soon(client, count // TASKS)
    used = time.process_time() - cpu
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"{request['path']}: answered {sorted(set(statuses))}")
    return used / len(statuses) * 1e6


async def main(port: int, count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plugins, credentials, consumers = routes(Path(tmp))
        sent = [(k.encode(), v.encode()) for k, v in credentials.items()]
        names = ["bare", *plugins]
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, config(f"http://127.0.0.1:{port}", plugins, consumers))
            settle_heap()  # as a serving gateway does: no full collection lands on one route's round
            requests = {name: scope(name, sent) for name in names}
            costs: dict[str, list[float]] = {name: [] for name in names}
            # A warm-up round (the cache's first answer stores the response), then rounds in alternating order.
            for n, kept, order in runner.rounds(names, rounds, TASKS * 10, count):
                for name in order:
                    cost = await cpu_per_request(gw.gateway, requests[name], int(n))
                    if kept:
                        costs[name].append(cost)
            bare = statistics.median(costs["bare"])
            print(f"{'route':12} {'CPU µs/req':>10} {'above bare':>11} {'share':>7}   ({count:,} requests x {rounds})")
            for name in names:
                cost = statistics.median(costs[name])
                print(f"{name:12} {cost:10.1f} {cost - bare:+11.1f} {(cost - bare) / bare:+7.1%}")
            gw.stop.set()
            nursery.cancel_scope.cancel()


def run(count: int, rounds: int) -> None:
    """``main`` against an upstream process started here, and stopped after."""
    port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])
    try:
        wait_port(port, upstream, 30, "upstream")
        trio.run(main, port, count, rounds)
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per route and round")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every route")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
    else:
        run(args.requests, args.rounds)
