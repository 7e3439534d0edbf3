"""``bascule run`` as a real process: signals (SIGHUP reload, SIGTERM drain) and worker processes."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from bascule.testing import echo, start_upstream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(url: str, port: int, admin: int, *routes: str) -> str:
    text = f"""
[gateway]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
graceful_timeout = "5s"

[services.api]
targets = ["{url}"]
"""
    for name in routes:
        text += f'\n[[routes]]\nname = "{name}"\npaths = ["/{name}"]\nservice = "api"\n'
    return text


class Bascule:
    """``python -m bascule.cli run`` on a config file, with its admin listener."""

    def __init__(self, tmp_path: Path, upstream_url: str, *routes: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.path = tmp_path / "plugins.toml"
        self.log = tmp_path / "bascule.log"
        self.upstream_url = upstream_url
        self.write(*routes)

    def write(self, *routes: str, extra: str = "") -> None:
        self.path.write_text(config(self.upstream_url, self.port, self.admin_port, *routes) + extra)

    async def start(self, *args: str) -> trio.Process:
        self.terminated = False
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bascule.cli", "run", "-c", str(self.path), *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        await self.until(lambda: self.status(self.admin + "/healthz") == 200)
        return self.proc

    def status(self, url: str) -> int:
        """GET ``url`` (blocking: call it in a thread, the upstream runs in this trio loop)."""
        try:
            return httpx.get(url, timeout=5).status_code
        except httpx.TransportError:
            return 0

    async def fetch(self, method: str, url: str) -> httpx.Response:
        return await trio.to_thread.run_sync(lambda: httpx.request(method, url, timeout=10))

    async def until(self, condition, timeout: float = 30) -> None:
        with trio.fail_after(timeout):  # a guard against a hang, not a measurement
            while True:
                if await trio.to_thread.run_sync(condition):
                    return
                await trio.sleep(0.05)

    def terminate(self) -> None:
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    async def stop(self) -> int:
        if self.proc.returncode is None and not self.terminated:
            self.terminate()
        with trio.fail_after(30):
            return await self.proc.wait()

    def workers(self) -> set[int]:
        """PIDs of the worker processes (children of the supervisor)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


async def test_sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_invalid(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw = Bascule(tmp_path, upstream.url, "old")
    proc = await gw.start()
    try:
        gw.write("old", extra="\n[services.broken]\ntargets = []\n")
        proc.send_signal(signal.SIGHUP)
        await gw.until(lambda: b"reload rejected" in gw.log.read_bytes())
        assert (await gw.fetch("GET", gw.url + "/old")).status_code == 200

        gw.write("old", "new")
        proc.send_signal(signal.SIGHUP)
        await gw.until(lambda: gw.status(gw.url + "/new") == 200)
        assert (await gw.fetch("GET", gw.url + "/old")).status_code == 200
    finally:
        code = await gw.stop()
    assert code == 0
    assert b"services.broken: targets: must not be empty" in gw.log.read_bytes()


async def test_sigterm_lets_in_flight_requests_finish(nursery, tmp_path):
    release = trio.Event()

    async def handler(request):
        if request.path == "/api/slow":
            await release.wait()
        return await echo(request)

    upstream = await start_upstream(nursery, handler)
    gw = Bascule(tmp_path, upstream.url, "api")
    await gw.start()
    answers = []

    async def slow() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            answers.append(await client.get(gw.url + "/api/slow"))

    async with trio.open_nursery() as calls:
        calls.start_soon(slow)
        await gw.until(lambda: bool(upstream.requests))
        gw.terminate()
        # Draining: no new connections are accepted ...
        await gw.until(lambda: gw.status(gw.url + "/api/fast") == 0)
        # ... but the request in flight gets its answer.
        release.set()
    code = await gw.stop()
    assert answers[0].status_code == 200 and answers[0].json()["path"] == "/api/slow"
    assert code == 0
    assert [r.path for r in upstream.requests] == ["/api/slow"]


@pytest.mark.slow
async def test_two_workers_serve_a_killed_one_is_replaced_and_reload_reaches_both(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw = Bascule(tmp_path, upstream.url, "old")
    await gw.start("--workers", "2")
    try:
        await gw.until(lambda: len(gw.workers()) == 2)
        first = gw.workers()
        await gw.until(lambda: all(gw.status(gw.url + "/old") == 200 for _ in range(10)))

        admin_pid = (await gw.fetch("GET", gw.admin + "/healthz")).json()["pid"]
        (victim,) = first - {admin_pid}
        os.kill(victim, signal.SIGKILL)
        await gw.until(lambda: len(gw.workers()) == 2 and victim not in gw.workers())
        assert gw.workers() - first  # a new process took its place
        await gw.until(lambda: all(gw.status(gw.url + "/old") == 200 for _ in range(10)))

        gw.write("old", "new")
        reload = await gw.fetch("POST", gw.admin + "/reload")
        assert reload.status_code == 202
        # Every worker reloads: new connections, whichever worker takes them, see the route.
        await gw.until(lambda: all(gw.status(gw.url + "/new") == 200 for _ in range(20)))

        gw.write("old", "new", extra="\n[services.broken]\ntargets = []\n")
        rejected = await gw.fetch("POST", gw.admin + "/reload")
        assert rejected.status_code == 400
        assert rejected.json()["errors"] == [f"{gw.path}: services.broken: targets: must not be empty"]
    finally:
        code = await gw.stop()
    assert code == 0


@pytest.mark.slow
async def test_a_sighup_while_workers_start_reloads_them_and_kills_none(nursery, tmp_path):
    """The supervisor forwards SIGHUP to workers that may still be importing: held until they can reload."""
    upstream = await start_upstream(nursery)
    gw = Bascule(tmp_path, upstream.url, "old")
    gw.proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bascule.cli", "run", "-c", str(gw.path), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=gw.log.open("wb"),
    )
    try:
        gw.terminated = False
        await gw.until(lambda: len(gw.workers()) == 2)
        started = gw.workers()
        gw.write("old", "new")
        async with trio.open_nursery() as hups:  # SIGHUPs all through the workers' start

            async def hup() -> None:
                while True:
                    gw.proc.send_signal(signal.SIGHUP)
                    await trio.sleep(0.02)

            hups.start_soon(hup)
            await gw.until(lambda: gw.status(gw.admin + "/healthz") == 200)
            hups.cancel_scope.cancel()
        await gw.until(lambda: all(gw.status(gw.url + "/new") == 200 for _ in range(20)))
        assert gw.workers() == started  # none died of a SIGHUP and was replaced
        assert b"exited with" not in gw.log.read_bytes()
    finally:
        code = await gw.stop()
    assert code == 0
