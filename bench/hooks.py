"""Each plugin's hooks alone: CPU µs per request, timed in a loop in this process.

    .venv/bin/python bench/hooks.py [--loops N]

A gateway (``bascule.testing.start_gateway``) with one route per plugin, set as
in the main suite, answers one request per route from an in-process upstream;
the hooks that request ran (``on_request``, ``on_upstream_request``,
``on_response``, ``on_log``) are then called again in a loop on its context,
its headers put back before each call (what putting them back costs, timed
with a hook that does nothing, is taken off).

The loop leaves out the rest of the request: the same code runs two to three
times slower among a request's other work. Read these figures as each plugin's
own work and its trend, and the main suite's as what the plugin costs in a
request. The access log's line, made later by its writer task, is timed with
``on_log``; ``on_upstream_request`` only when the request went upstream (not
on a cache hit). Redis is not timed here (its decision waits on a round trip).
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import configs
import trio
from bascule.testing import start_gateway, start_upstream
from bascule_logging import AccessLog
from bascule_sdk import Context, Plugin, Request, Response, hookimpl
from configs import JWTKeys

PHASES = ("on_request", "on_upstream_request", "on_response", "on_log")


class Capture(Plugin):
    """Keeps each route's last context and response (``on_log``), for the loop to replay."""

    name = "capture"
    priority = -1000
    seen: ClassVar[dict[str, tuple[Context, Response]]] = {}

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        self.seen[ctx.route.name] = (ctx, response)


#: The plugins timed here, by name, and the bench case whose settings each takes.
PLUGINS = {
    "jwt": "jwt",
    "key-auth": "key-auth",
    "rate-limit": "rate-limit-local",
    "logging": "logging",
    "prometheus": "prometheus",
    "cache": "cache",
}


def routes(tmp: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, Any]]:
    """Each plugin's settings (``configs.plugin_settings``, as the main suite sets them), the
    credentials every route is sent (``configs.credentials``), and the consumers."""
    jwt = JWTKeys(tmp)
    settings = configs.plugin_settings(tmp, jwt)
    plugins = {name: settings[case] for name, case in PLUGINS.items()}
    return plugins, configs.credentials(jwt), configs.CONSUMERS


def config(upstream: str, plugins: dict[str, dict[str, Any]], consumers: dict[str, Any]) -> str:
    """One route per plugin, at ``/<plugin>``, with ``capture`` after it."""
    routes = [
        {"name": name, "paths": [f"/{name}"], "service": "up", "plugins": {name: settings, "capture": {}}}
        for name, settings in plugins.items()
    ]
    return configs.gateway(0, {"up": [upstream]}, routes, consumers=consumers)


def replay(ctx: Context, response: Response, phase: str, call: Any) -> Any:
    """A function running ``call`` (a hook) once as the request ran it, its inputs put back first."""
    raw, response_raw, state = list(ctx.request.headers.raw), list(response.headers.raw), dict(ctx.state)
    upstream = Request("GET", ctx.request.path, "", ctx.request.headers.copy(), b"")

    def once() -> None:
        ctx.request.headers.raw = list(raw)
        ctx.state.clear()
        ctx.state.update(state)
        if phase == "on_request":
            ctx.trace = None
            coroutine = call(ctx)
        elif phase == "on_upstream_request":
            upstream.headers.raw = list(raw)
            coroutine = call(ctx, upstream)
        else:
            response.headers.raw = list(response_raw)
            coroutine = call(ctx, response)
        try:
            coroutine.send(None)  # these hooks do not wait on anything in this case
        except StopIteration:
            pass

    return once


def per_call(calls: list[Any], loops: int) -> float:
    """µs for one run of ``calls``: the best of three timings of ``loops`` runs."""
    seconds = min(timeit.repeat(lambda: [f() for f in calls], number=loops, repeat=3))
    return seconds / loops * 1e6


async def nothing(*args: Any) -> None:
    """A hook that does nothing: what replaying costs by itself."""


def made(line: Any, facts: Any) -> bool:
    line(facts)
    return True


async def cacheable(request: Any) -> Response:
    headers = {"cache-control": "public, max-age=3600", "content-type": "application/json", "content-length": "2"}
    return Response(200, headers, b"{}")


async def main(loops: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plugins, credentials, consumers = routes(Path(tmp))
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, cacheable)
            gw = await start_gateway(nursery, config(up.url, plugins, consumers), plugins=[Capture])
            async with gw.client() as client:
                for name in plugins:
                    for _ in range(2):  # the cache's second answer is a hit
                        r = await client.get(f"/{name}/x", headers=credentials)
                        assert r.status_code == 200, (name, r.status_code, r.text)
            print(f"{'plugin':12} " + " ".join(f"{p:>20}" for p in PHASES) + f" {'total':>8}   (µs, {loops:,} loops)")
            for name in plugins:
                ctx, response = Capture.seen[name]
                pipeline = gw.gateway.runtime.routes[name].pipeline
                plugin = next(p for p in gw.gateway.runtime.plugins.instances.values() if p.instance == name)
                costs = []
                for phase in PHASES:
                    if phase == "on_upstream_request" and not ctx.upstream_calls:
                        costs.append(0.0)  # answered without going upstream (a cache hit)
                        continue
                    hooks = [h for h in getattr(pipeline, phase) if h.instance == name]
                    once = [replay(ctx, response, phase, h.call) for h in hooks]
                    overhead = [replay(ctx, response, phase, nothing) for _ in hooks]  # putting inputs back
                    if phase == "on_log" and isinstance(plugin, AccessLog) and plugin.writer is not None:
                        # The writer task makes the line later: here, in place of queueing it.
                        plugin.writer.put = partial(made, plugin.line)  # type: ignore[method-assign]
                    costs.append(max(0.0, per_call(once, loops) - per_call(overhead, loops)) if once else 0.0)
                print(f"{name:12} " + " ".join(f"{c:20.2f}" for c in costs) + f" {sum(costs):8.2f}")
            gw.stop.set()
            up.stop.set()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20_000, help="calls of each hook per timing")
    trio.run(main, parser.parse_args().loops)
