"""Supervised background tasks: a failing task is logged, restarted with backoff and
reported (``/readyz``, ``/metrics``), and never stops the gateway or another task."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import httpx
import trio
from bascule.tasks import Backoff, Supervisor
from bascule.testing import eventually, start_gateway, start_upstream
from bascule_sdk import Gateway, Plugin, hookimpl
from prometheus_client.parser import text_string_to_metric_families


class Flaky(Plugin):
    """A background task that raises every 0.05 s while ``failing`` is set, then runs on quietly."""

    name = "flaky"
    failing = True
    raised = 0

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.stopped = False
        gateway.start_soon(self.fail_repeatedly)

    async def fail_repeatedly(self) -> None:
        while not self.stopped:
            await trio.sleep(0.05)
            if type(self).failing:
                type(self).raised += 1
                raise RuntimeError("boom")

    @hookimpl
    async def shutdown(self) -> None:
        self.stopped = True


class Ticker(Plugin):
    """A healthy background task: counts ticks until its config retires."""

    name = "ticker"
    ticks = 0
    ended = 0

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.stopped = False
        gateway.start_soon(self.tick, name="ticker")

    async def tick(self) -> None:
        try:
            while not self.stopped:
                type(self).ticks += 1
                await trio.sleep(0.01)
        finally:
            type(self).ended += 1

    @hookimpl
    async def shutdown(self) -> None:
        self.stopped = True


class Stubborn(Plugin):
    """A background task that never ends by itself, nor fails."""

    name = "stubborn"
    cancelled = 0

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        gateway.start_soon(self.wait)

    async def wait(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            type(self).cancelled += 1
            raise


class Broken(Plugin):
    """A background task that raises at once, every time."""

    name = "broken"

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        gateway.start_soon(self.fail)

    async def fail(self) -> None:
        raise RuntimeError("broken")


def config(upstream_url: str, plugins: tuple[str, ...] = ("flaky", "ticker", "prometheus")) -> str:
    tables = "\n".join(f"[plugins.{name}]" for name in plugins)
    return f"""
        {tables}
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
    """


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus exposition, None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


FLAKY = {"task": "Flaky.fail_repeatedly", "plugin": "flaky"}


async def test_a_failing_task_leaves_requests_other_tasks_and_reloads_working(nursery):
    Flaky.failing, Flaky.raised, Ticker.ticks = True, 0, 0
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[Flaky, Ticker], admin=True)
    gw.gateway.supervisor.backoff = Backoff(base=0.01, cap=0.05)  # restarted often: a failure every ~0.1 s
    statuses, ticks, readyz, metrics = [], [], [], []
    async with gw.client() as client, httpx.AsyncClient(base_url=gw.admin_url) as admin:
        with trio.fail_after(60):
            while Flaky.raised < 20 or len(statuses) < 20:  # some 2 s of failures
                statuses.append((await client.get("/api/x")).status_code)
                ticks.append(Ticker.ticks)
                readyz.append(await admin.get("/readyz"))
                metrics.append((await admin.get("/metrics")).text)
                if len(statuses) % 10 == 0:
                    await gw.reload(config(upstream.url))
                await trio.sleep(0.02)
            await gw.reload(config(upstream.url))
            after = (await client.get("/api/x")).status_code
            ticks_after_reload = Ticker.ticks
            await eventually(lambda: Ticker.ticks > ticks_after_reload)
            # The retired configs' tasks end (their plugins' shutdown stops them); the new one fails on.
            await eventually(lambda: [t.plugin for t in gw.gateway.supervisor.states()].count("flaky") == 1)
            await eventually_async(lambda: flaky_failing(admin))
    assert set(statuses) == {200} and after == 200
    assert ticks == sorted(ticks) and ticks[-1] > ticks[0]  # the ticker never stopped
    assert all(r.status_code == 200 and r.json()["status"] == "ready" for r in readyz)  # degraded, not unready
    degraded = [d for r in readyz for d in r.json()["degraded"]]
    assert degraded and {(d["task"], d["plugin"], d["last_error"]) for d in degraded} == {
        ("Flaky.fail_repeatedly", "flaky", "RuntimeError: boom")
    }
    assert all(d["consecutive_failures"] >= 1 and d["failing_since"].endswith("Z") for d in degraded)
    assert any(metric(m, "bascule_background_task_failing", **FLAKY) == 1 for m in metrics)
    assert max(metric(m, "bascule_background_task_failures_total", **FLAKY) or 0 for m in metrics) >= 1
    assert {metric(m, "bascule_background_task_failing", task="ticker", plugin="ticker") for m in metrics} == {0}


async def flaky_failing(admin: httpx.AsyncClient) -> bool:
    """Whether both /metrics and /readyz show the flaky task failing."""
    text = (await admin.get("/metrics")).text
    degraded = (await admin.get("/readyz")).json()["degraded"]
    return metric(text, "bascule_background_task_failing", **FLAKY) == 1 and [d["task"] for d in degraded] == [
        "Flaky.fail_repeatedly"
    ]


async def eventually_async(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """``eventually`` for a condition that awaits (requests)."""
    with trio.move_on_after(timeout):
        while not await condition():  # noqa: ASYNC110 - polls an awaited condition
            await trio.sleep(0.02)
        return
    raise AssertionError(f"condition still false after {timeout} s")


async def test_a_task_that_recovers_clears_its_failing_state(nursery, caplog):
    Flaky.failing = True
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[Flaky, Ticker], admin=True)
    gw.gateway.supervisor.backoff = Backoff(base=0.01, cap=0.05, reset_after=0.2)
    async with httpx.AsyncClient(base_url=gw.admin_url) as admin:
        await eventually_async(lambda: flaky_failing(admin))
        Flaky.failing = False

        async def recovered() -> bool:
            text = (await admin.get("/metrics")).text
            return metric(text, "bascule_background_task_failing", **FLAKY) == 0

        await eventually_async(recovered)
        readyz = (await admin.get("/readyz")).json()
        text = (await admin.get("/metrics")).text
    [flaky] = [t for t in gw.gateway.supervisor.states() if t.plugin == "flaky"]
    assert readyz["status"] == "ready" and readyz["degraded"] == []
    assert flaky.failures >= 1 and not flaky.failing and flaky.last_error == "RuntimeError: boom"
    assert metric(text, "bascule_background_task_failures_total", **FLAKY) == flaky.failures
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "Flaky.fail_repeatedly" in r.getMessage()]
    assert len(logged) == flaky.failures  # once per failure, with its plugin and traceback
    assert all("of plugin 'flaky'" in r.getMessage() and r.exc_info for r in logged)


async def test_shutdown_cancels_supervised_tasks(nursery, caplog):
    Stubborn.cancelled = 0
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, ("stubborn", "broken")), plugins=[Stubborn, Broken])
    supervisor = gw.gateway.supervisor
    await eventually(lambda: [t.failing for t in supervisor.states()] == [True, False])  # broken waits to restart
    gw.stop.set()
    await eventually(lambda: not supervisor.states())
    assert Stubborn.cancelled == 1
    assert not [r for r in caplog.records if "Stubborn" in r.getMessage()]  # cancelled, not failed


# -- the supervisor on trio's mock clock -------------------------------------------


async def test_backoff_doubles_up_to_its_cap_and_resets_after_a_long_run(autojump_clock):
    supervisor = Supervisor(Backoff(base=1, cap=8, reset_after=100))
    starts: list[float] = []

    async def fails() -> None:
        starts.append(trio.current_time())
        if len(starts) == 6:
            await trio.sleep(100)  # a long healthy run: the next failure waits `base` again
        raise ValueError("nope")

    async with supervisor.running():
        supervisor.start_soon(fails)
        await trio.sleep(200)
        [state] = supervisor.states()
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert waits[:8] == [1, 2, 4, 8, 8, 100 + 1, 2, 4]
    assert state.name == "test_backoff_doubles_up_to_its_cap_and_resets_after_a_long_run.<locals>.fails"
    assert state.plugin is None and state.failures == len(starts) and state.failing


async def test_a_task_is_healthy_again_after_running_reset_after(autojump_clock):
    supervisor = Supervisor(Backoff(base=1, cap=8, reset_after=10))
    runs = 0

    async def fails_twice() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError("not yet")
        await trio.sleep_forever()

    async with supervisor.running():
        supervisor.start_soon(fails_twice, name="settling", plugin="p")
        await trio.sleep(1 + 2 + 9)  # restarted at t=3; 9 s into its healthy run
        during = supervisor.states()
        await trio.sleep(2)
        after = supervisor.states()
    assert [(s.name, s.plugin, s.consecutive_failures, s.failing) for s in during] == [("settling", "p", 2, True)]
    assert [(s.failures, s.consecutive_failures, s.failing, s.failing_since) for s in after] == [(2, 0, False, None)]
    assert supervisor.states() == []  # cancelled when the supervisor stopped


async def test_a_task_that_returns_is_done_while_a_failing_one_restarts(autojump_clock):
    supervisor = Supervisor()
    done: list[str] = []

    async def once() -> None:
        done.append("once")

    async def broken() -> None:
        raise ValueError("always")

    async with supervisor.running():
        supervisor.start_soon(once)
        supervisor.start_soon(broken)
        await trio.sleep(3600)
        names = [s.name for s in supervisor.states()]
    assert done == ["once"] and names == [broken.__qualname__]


def test_the_default_backoff_is_a_tenth_of_a_second_doubling_up_to_30_s():
    b = Backoff()
    assert [b.delay(n) for n in range(1, 11)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0]
    assert b.delay(100_000) == 30.0  # failing for days does not overflow


def test_start_soon_outside_a_running_supervisor_is_an_error():
    async def noop() -> None:
        pass

    try:
        Supervisor().start_soon(noop)
    except RuntimeError as e:
        assert "while the gateway runs" in str(e)
    else:
        raise AssertionError("start_soon outside running() was accepted")
