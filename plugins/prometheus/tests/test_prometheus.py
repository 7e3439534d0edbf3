"""Metrics scraped over HTTP from the admin listener, in one process and summed over two workers."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version

import httpx
import pytest
import trio
import trio.testing
from bascule.config import ConfigError
from bascule.tasks import Backoff
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Context, Gateway, Plugin, Response, hookimpl
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(scraper: httpx.AsyncClient, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape ``/metrics`` until ``condition(samples)`` holds (metrics are recorded after the
    response is sent, so the last requests may still be on their way); fails after 20 s."""
    with trio.fail_after(20):
        while True:
            r = await scraper.get("/metrics")
            assert r.status_code == 200
            if condition(samples := parse(r.text)):
                return samples
            await trio.sleep(0.01)


class FakeTags(Plugin):
    """Sets the tags the rate-limit and cache plugins set, from the query string."""

    name = "fake-tags"
    priority = 900

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        query = dict(p.split("=") for p in ctx.request.query.split("&") if "=" in p)
        if "cache" in query:
            ctx.tags["cache"] = query["cache"]
        ctx.tags["rate_limit"] = query.get("limit", "allowed")
        if ctx.tags["rate_limit"] == "rejected":
            return Response.json({"detail": "slow down"}, status=429)
        return None


async def test_metrics_by_route_status_cache_and_rate_limit(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [plugins.prometheus]
        [services.api]
        targets = ["{upstream.url}"]
        [services.down]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "tagged"
        paths = ["/tagged"]
        service = "api"
        [routes.plugins.fake-tags]
        [[routes]]
        name = "broken"
        paths = ["/broken"]
        service = "down"
    """,
        plugins=[FakeTags],
        admin=True,
    )
    admin = gw.admin_url
    async with httpx.AsyncClient(base_url=admin) as scraper:
        # Metrics belong to the process: other tests in it may have counted too, so compare with a baseline.
        before = await scrape_until(scraper, lambda s: True)
        async with gw.client() as client:
            responses = []
            for query in ["cache=HIT"] * 3 + ["cache=MISS"] * 2 + ["limit=rejected", "cache=weird"]:
                responses.append((await client.get(f"/tagged?{query}")).content)
            broken = await client.get("/broken")
            assert broken.status_code == 502
            responses.append(broken.content)
            assert (await client.get("/not-routed/x")).status_code == 404
        after = await scrape_until(
            scraper,
            lambda s: (
                value(s, "bascule_requests_total", route="(none)", method="GET", code="404", service="")
                > value(before, "bascule_requests_total", route="(none)", method="GET", code="404", service="")
            ),
        )
        r = await scraper.get("/metrics")
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        r = await scraper.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert r.text.endswith("# EOF\n")
        assert (await scraper.head("/metrics")).status_code == 200
        assert (await scraper.post("/metrics")).status_code == 405

    def counted(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "bascule_requests_total"
    assert counted(requests, route="tagged", method="GET", code="200", service="api") == 6
    assert counted(requests, route="tagged", method="GET", code="429", service="api") == 1
    assert counted(requests, route="broken", method="GET", code="502", service="down") == 1
    assert counted(requests, route="(none)", method="GET", code="404", service="") == 1
    assert counted("bascule_cache_total", route="tagged", result="hit") == 3
    assert counted("bascule_cache_total", route="tagged", result="miss") == 2
    assert counted("bascule_cache_total", route="tagged", result="other") == 1
    assert counted("bascule_rate_limit_total", route="tagged", outcome="rejected") == 1
    assert counted("bascule_rate_limit_total", route="tagged", outcome="allowed") == 6
    assert counted("bascule_upstream_errors_total", route="broken", status="502") == 1
    duration = "bascule_request_duration_seconds"
    assert counted(f"{duration}_count", route="tagged", method="GET", service="api") == 7
    assert counted(f"{duration}_bucket", route="tagged", method="GET", service="api", le="+Inf") == 7
    target = {"service": "api", "target": upstream.url}
    assert counted("bascule_upstream_duration_seconds_count", **target) == 6  # not the 429
    assert counted("bascule_upstream_attempts_total", **target, outcome="200") == 6
    assert (
        counted("bascule_upstream_attempts_total", service="down", target="http://127.0.0.1:9", outcome="connect") == 1
    )
    assert counted("bascule_response_body_bytes_total", route="tagged") == sum(len(r) for r in responses[:7])
    assert counted("bascule_response_body_bytes_total", route="broken") == len(responses[7])
    assert value(after, "bascule_requests_in_flight") == 0
    assert len(upstream.requests) == 6
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert {"tagged", "broken", "(none)"} <= routes
    assert not any(r and r.startswith("/") for r in routes)  # raw paths never become labels


async def test_invalid_path_setting_is_rejected(nursery):
    with pytest.raises(ConfigError, match=r"prometheus: path: expected a path starting with /, got 'metrics'"):
        await start_gateway(
            nursery,
            """
            [plugins.prometheus]
            path = "metrics"
            [[routes]]
            name = "x"
            paths = ["/x"]
            service = "x"
            [services.x]
            targets = ["http://127.0.0.1:9"]
        """,
        )


class Refresher(Plugin):
    """A background task that raises until ``fixed`` is set, as a key refresh might."""

    name = "refresher"
    fixed = False

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        gateway.start_soon(self.refresh, name="refresh")

    async def refresh(self) -> None:
        while True:
            await trio.sleep(0.01)
            if not type(self).fixed:
                raise OSError("key server unreachable")


async def test_background_task_health(nursery):
    Refresher.fixed = False
    gw = await start_gateway(
        nursery,
        """
        [plugins.prometheus]
        [plugins.refresher]
        [services.x]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "x"
        paths = ["/x"]
        service = "x"
    """,
        plugins=[Refresher],
        admin=True,
    )
    gw.gateway.supervisor.backoff = Backoff(base=0.01, cap=0.01, reset_after=0.1)
    task = {"task": "refresh", "plugin": "refresher"}
    async with httpx.AsyncClient(base_url=gw.admin_url) as scraper:
        failing = await scrape_until(scraper, lambda s: value(s, "bascule_background_task_failures_total", **task) >= 2)
        Refresher.fixed = True
        recovered = await scrape_until(scraper, lambda s: value(s, "bascule_background_task_failing", **task) == 0)
    assert value(failing, "bascule_background_task_failing", **task) == 1
    assert value(recovered, "bascule_background_task_failures_total", **task) >= value(
        failing, "bascule_background_task_failures_total", **task
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def bascule_run(config: str, workers: int, env: dict[str, str], tmp_path) -> AsyncIterator[tuple[str, str]]:
    """``bascule run --workers N`` as a subprocess; yields the public and admin URLs once it serves."""
    public, admin = free_port(), free_port()
    path = tmp_path / "plugins.toml"
    path.write_text(
        textwrap.dedent(f"""
        [gateway]
        listen = "127.0.0.1:{public}"
        admin = "127.0.0.1:{admin}"
        graceful_timeout = "1s"
    """)
        + textwrap.dedent(config)
    )
    output = tmp_path / "bascule.out"
    with output.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bascule.cli", "run", "-c", str(path), "--workers", str(workers)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{admin}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert process.poll() is None, f"bascule run exited:\n{output.read_text()}"
                    await trio.sleep(0.05)
        yield f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin}"
    finally:
        process.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        with trio.move_on_after(15):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()


def one_route_config(upstream_url: str) -> str:
    """Prometheus on every route, and one route ``/api`` to ``upstream_url``."""
    return f"""
        [plugins.prometheus]
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
    """


@pytest.mark.slow
async def test_metrics_are_summed_over_two_workers(nursery, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    upstream = await start_upstream(nursery)
    config = one_route_config(upstream.url)
    async with bascule_run(config, 2, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, tmp_path) as (public, admin):

        def workers_counted() -> set[str]:
            return {name for name in os.listdir(metrics_dir) if name.startswith("counter_")}

        sent = 0
        with trio.fail_after(60):
            while len(workers_counted()) < 2:  # new connections until both workers have answered some
                for _ in range(10):
                    async with httpx.AsyncClient(base_url=public) as client:
                        assert (await client.get("/api/x")).status_code == 200
                    sent += 1
        async with httpx.AsyncClient(base_url=admin) as scraper:
            ok = {"route": "api", "method": "GET", "code": "200", "service": "api"}
            samples = await scrape_until(scraper, lambda s: value(s, "bascule_requests_total", **ok) >= sent)
            assert value(samples, "bascule_requests_total", **ok) == sent
            assert sent == len(upstream.requests)

            # Requests in flight, summed over the workers: hold four at the upstream.
            release = trio.Event()

            async def held(request):
                await release.wait()
                return Response.json({"ok": True})

            upstream.handler = held
            statuses = []

            async def call() -> None:
                async with httpx.AsyncClient(base_url=public, timeout=30) as client:
                    statuses.append((await client.get("/api/held")).status_code)

            async with trio.open_nursery() as calls:
                for _ in range(4):
                    calls.start_soon(call)
                await scrape_until(scraper, lambda s: value(s, "bascule_requests_in_flight") == 4)
                release.set()
            assert statuses == [200] * 4
            samples = await scrape_until(
                scraper,
                lambda s: (
                    value(s, "bascule_requests_in_flight") == 0 and value(s, "bascule_requests_total", **ok) == sent + 4
                ),
            )
            assert value(
                samples, "bascule_request_duration_seconds_count", route="api", method="GET", service="api"
            ) == (sent + 4)
            # The standard process metrics of each live worker, told apart by pid.
            pids = {dict(labels)["pid"] for (name, labels) in samples if name == "process_resident_memory_bytes"}
            assert len(pids) == 2
            # The upstream state each worker mirrors: both see the target healthy, none ejected.
            target = {"service": "api", "target": upstream.url}
            samples = await scrape_until(
                scraper, lambda s: value(s, "bascule_upstream_target_state", **target, state="healthy") == 2
            )
            assert value(samples, "bascule_upstream_target_state", **target, state="ejected") == 0
            assert (
                value(samples, "bascule_build_info", version=version("bascule"), python=platform.python_version()) == 1
            )


@pytest.mark.slow
async def test_workers_sum_their_metrics_in_the_run_directory_by_default(nursery, tmp_path, monkeypatch):
    """Without PROMETHEUS_MULTIPROC_DIR, the run's own directory (``Gateway.run_dir``) provides one."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    upstream = await start_upstream(nursery)
    config = one_route_config(upstream.url)
    async with bascule_run(config, 2, {}, tmp_path) as (_public, admin), httpx.AsyncClient(base_url=admin) as scraper:
        # Each worker mirrors the target's state: summed, both count, whoever answers the scrape.
        target = {"service": "api", "target": upstream.url}
        samples = await scrape_until(
            scraper, lambda s: value(s, "bascule_upstream_target_state", **target, state="healthy") == 2
        )
        pids = {dict(labels)["pid"] for (name, labels) in samples if name == "process_resident_memory_bytes"}
        assert len(pids) == 2


async def test_contained_connection_errors_are_counted(nursery):
    from bascule import worker

    gw = await start_gateway(
        nursery,
        """
        [plugins.prometheus]
        [services.x]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "x"
        paths = ["/x"]
        service = "x"
    """,
        admin=True,
    )

    async def broken(stream: trio.abc.Stream) -> None:
        raise RuntimeError("a bug that escaped a connection")

    async with httpx.AsyncClient(base_url=gw.admin_url) as scraper:
        before = value(parse((await scraper.get("/metrics")).text), "bascule_connection_errors_total")
        for _ in range(2):  # what bascule.worker does with every client connection
            await worker._contain(broken, trio.testing.memory_stream_pair()[0])
        after = value(parse((await scraper.get("/metrics")).text), "bascule_connection_errors_total")
    assert after == before + 2
