"""A fleet of ``bascule run --config-store`` processes on one real Redis, under load from the test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from bascule.config import ConfigError
from bascule.configstore import open_store
from bascule.testing import RedisServer, eventually, start_gateway, start_upstream
from bascule_sdk import Response

SECRET = "a-secret-that-is-at-least-32-bytes-long"


def config(version: int, upstream: str, extra: str = "") -> str:
    """The config pushed as ``version``: its route tells the upstream which version it serves."""
    return f"""
[gateway]
listen = "127.0.0.1:0"
admin = "127.0.0.2:0"
graceful_timeout = "5s"

[services.api]
targets = ["{upstream}"]

[[routes]]
name = "api"
paths = ["/api"]
service = "api"
[routes.plugins.request-transformer.headers]
add = {{ x-config-version = "{version}" }}
{extra}"""


# Valid only where $FLEET_SECRET is set: a host without it cannot apply it.
NEEDS_SECRET = """
[[routes]]
name = "private"
paths = ["/private"]
service = "api"
[routes.plugins.jwt]
keys = [{ secret = "env:FLEET_SECRET", algorithms = ["HS256"] }]
"""


async def serving_version(request):
    return Response.json({"version": request.header("x-config-version")})


def bascule(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``bascule`` command, as an operator runs it (blocking: call it in a thread); ``env``: None unsets."""
    return subprocess.run(
        [sys.executable, "-m", "bascule.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
    )


class Node:
    """One gateway process following the store; the test reads its ports from its start-up log."""

    def __init__(
        self, tmp_path: Path, store: str, name: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.name, self.store, self.env, self.args = name, store, env or {}, args
        self.state_dir = tmp_path / name
        self.log = tmp_path / f"{name}.log"
        self.url = self.admin = ""
        self.seen: str | None = None  # the version of the last response through it
        self.failed = 0  # requests that did not get a 200
        self.idle: trio.Event | None = None  # set when ``load`` has ended
        self.versions: list[str] = []  # of every response

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FLEET_SECRET"} | self.env
        args = ["run", "--config-store", self.store, "--node-id", self.name, "--state-dir", str(self.state_dir)]
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bascule.cli", *args, "--heartbeat", "0.5", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
            env=env,
        )
        found = None

        def banner() -> bool:
            nonlocal found
            found = re.search(rb"public listener (\S+); admin listener (\S+)", self.log.read_bytes())
            return found is not None or self.proc.poll() is not None

        await eventually(banner, timeout=60)
        assert found is not None, self.log.read_text()
        self.url, self.admin = found.group(1).decode(), found.group(2).decode()

    async def stop(self) -> None:
        """SIGTERM, once the load on it (if any) has ended: its ``stop`` event must be set."""
        if self.idle is not None:
            with trio.fail_after(30):
                await self.idle.wait()
        if self.proc.returncode is None:
            self.proc.terminate()
        with trio.fail_after(30):
            await self.proc.wait()

    async def fleet(self) -> dict:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.admin + "/fleet", timeout=10)).json()

    async def load(self, stop: trio.Event, *, fresh: bool = False) -> None:
        """Requests one after the other until ``stop`` (with ``fresh``, each on a new connection):
        records the version served and counts failures."""
        self.idle = idle = trio.Event()
        limits = {"max_keepalive_connections": 0} if fresh else {}
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=httpx.Limits(**limits)) as client:
                while not stop.is_set():
                    try:
                        r = await client.get("/api")
                        if r.status_code == 200:
                            self.seen = r.json()["version"]
                            self.versions.append(self.seen)
                        else:
                            self.failed += 1
                    except httpx.TransportError:
                        self.failed += 1
                    await trio.sleep(0.01)
        finally:
            idle.set()


async def push(
    tmp_path: Path, store: str, text: str, *args: str, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """``bascule config push`` of ``text``."""
    path = tmp_path / "push.toml"
    path.write_text(text)
    return await trio.to_thread.run_sync(lambda: bascule("config", "push", str(path), "--store", store, *args, env=env))


async def status(store: str) -> tuple[int, dict]:
    done = await trio.to_thread.run_sync(lambda: bascule("fleet", "status", "--store", store, "--format", "json"))
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


@pytest.mark.slow
async def test_four_gateways_converge_on_every_push_under_load(nursery, tmp_path, redis):
    upstream = await start_upstream(nursery, serving_version)
    assert (await push(tmp_path, redis.url, config(1, upstream.url))).returncode == 0
    nodes = [Node(tmp_path, redis.url, f"gw{i}") for i in range(4)]
    stop = trio.Event()
    try:
        async with trio.open_nursery() as starting:
            for node in nodes:
                starting.start_soon(node.start)
        for node in nodes:
            nursery.start_soon(node.load, stop)
        await eventually(lambda: all(n.seen == "1" for n in nodes), timeout=30)

        for version in range(2, 22):  # 20 configs
            done = await push(tmp_path, redis.url, config(version, upstream.url))
            assert done.returncode == 0, done.stderr
            assert f"as version {version} " in done.stdout
            await eventually(lambda v=str(version): all(n.seen == v for n in nodes), timeout=30)

        # A bad config is refused by push: it never reaches the store nor a gateway.
        done = await push(tmp_path, redis.url, config(99, upstream.url, extra="[services.broken]\ntargets = []\n"))
        assert done.returncode == 1
        assert "push.toml: services.broken: targets: must not be empty" in done.stderr
        assert "not pushed" in done.stderr
        code, fleet = await status(redis.url)
        assert code == 0 and fleet["version"] == 21
        assert [(n["node"], n["version"], n["behind"], n["silent"]) for n in fleet["nodes"]] == [
            (f"gw{i}", 21, False, False) for i in range(4)
        ]
        await trio.sleep(0.2)  # a few more requests on version 21
        assert {n.seen for n in nodes} == {"21"}

        # Rollback: version 5's config again, as version 22.
        done = await trio.to_thread.run_sync(lambda: bascule("config", "rollback", "5", "--store", redis.url))
        assert done.returncode == 0, done.stderr
        assert "as version 22 (version 5 again)" in done.stdout
        await eventually(lambda: all(n.seen == "5" for n in nodes), timeout=30)
        assert [(await n.fleet())["version"] for n in nodes] == [22] * 4
    finally:
        stop.set()
        for node in nodes:
            await node.stop()
    assert [n.failed for n in nodes] == [0, 0, 0, 0]


@pytest.mark.slow
async def test_a_config_that_fails_on_one_host_leaves_it_on_its_version(nursery, tmp_path, redis):
    upstream = await start_upstream(nursery, serving_version)
    assert (await push(tmp_path, redis.url, config(1, upstream.url))).returncode == 0
    nodes = [
        Node(tmp_path, redis.url, "with-secret", env={"FLEET_SECRET": SECRET}),
        Node(tmp_path, redis.url, "without-secret"),
    ]
    stop = trio.Event()
    try:
        for node in nodes:
            await node.start()
            nursery.start_soon(node.load, stop)
        await eventually(lambda: all(n.seen == "1" for n in nodes), timeout=30)

        done = await push(tmp_path, redis.url, config(2, upstream.url, NEEDS_SECRET), env={"FLEET_SECRET": SECRET})
        assert done.returncode == 0, done.stderr
        await eventually(lambda: nodes[0].seen == "2", timeout=30)
        with trio.fail_after(30):  # a guard against a hang
            while (mine := await nodes[1].fleet())["error_version"] != 2:  # noqa: ASYNC110 - polls over HTTP
                await trio.sleep(0.05)
        assert mine["version"] == 1 and mine["latest"] == 2 and mine["behind"]
        assert "FLEET_SECRET" in mine["last_error"]
        assert nodes[1].seen == "1"  # still serving its version

        code, fleet = await status(redis.url)
        assert code == 1  # a gateway is behind
        by_node = {n["node"]: n for n in fleet["nodes"]}
        assert by_node["with-secret"]["version"] == 2 and not by_node["with-secret"]["behind"]
        assert by_node["without-secret"]["version"] == 1 and by_node["without-secret"]["behind"]
        assert by_node["without-secret"]["error_version"] == 2
        text = await trio.to_thread.run_sync(lambda: bascule("fleet", "status", "--store", redis.url))
        assert re.search(r"without-secret +version 1 .*BEHIND", text.stdout)
        assert "version 2 failed here:" in text.stdout and "FLEET_SECRET" in text.stdout
    finally:
        stop.set()
        for node in nodes:
            await node.stop()
    assert [n.failed for n in nodes] == [0, 0]

    # Stopped: its heartbeat expires (3 x 0.5 s) and it is flagged silent.
    async with open_store(redis.url) as store:
        with trio.fail_after(30):  # a guard against a hang
            while any(s.alive for s in await store.statuses()):  # noqa: ASYNC110 - polls the store
                await trio.sleep(0.1)
    text = await trio.to_thread.run_sync(lambda: bascule("fleet", "status", "--store", redis.url))
    assert text.returncode == 1
    assert re.search(r"with-secret +version 2 .*SILENT", text.stdout)
    assert re.search(r"without-secret +version 1 .*BEHIND SILENT", text.stdout)


async def test_nothing_to_serve_when_the_newest_version_cannot_run_here(tmp_path, redis):
    text = config(1, "http://127.0.0.1:9", NEEDS_SECRET)
    assert (await push(tmp_path, redis.url, text, env={"FLEET_SECRET": SECRET})).returncode == 0
    args = ("run", "--config-store", redis.url, "--state-dir", str(tmp_path / "s"))
    done = await trio.to_thread.run_sync(lambda: bascule(*args, env={"FLEET_SECRET": None}))
    assert done.returncode == 1
    assert f"bascule: version 1 of the config store {redis.url} cannot run here:" in done.stderr
    assert "FLEET_SECRET" in done.stderr
    assert "(the last config applied) does not exist" in done.stderr


@pytest.mark.slow
async def test_store_down_at_start_then_lost_and_back(nursery, tmp_path, redis):
    upstream = await start_upstream(nursery, serving_version)
    assert (await push(tmp_path, redis.url, config(1, upstream.url))).returncode == 0
    node = Node(tmp_path, redis.url, "gw")
    await node.start()
    await eventually(lambda: b"applied" in (tmp_path / "gw" / "applied.json").read_bytes(), timeout=30)
    await node.stop()

    # Down at start: the last applied config, from the state directory.
    redis.stop()
    await node.start()
    async with httpx.AsyncClient() as client:
        r = await client.get(node.url + "/api")
        assert r.json() == {"version": "1"}
    mine = await node.fleet()
    assert (mine["version"], mine["store_reachable"]) == (1, False)
    assert b"config store unreachable" in node.log.read_bytes()

    stop = trio.Event()
    try:
        # Back (empty: the server kept nothing): the gateway reconnects and takes the next push.
        redis.start()
        await eventually(lambda: b"is back" in node.log.read_bytes(), timeout=30)
        assert (await push(tmp_path, redis.url, config(2, upstream.url))).returncode == 0
        nursery.start_soon(node.load, stop)
        await eventually(lambda: node.seen == "2", timeout=30)

        # Lost while serving: it keeps serving, says so once, and catches up when the store is back.
        redis.stop()
        await eventually(lambda: b"config store lost" in node.log.read_bytes(), timeout=30)
        served = node.seen
        await trio.sleep(1)  # requests go on without the store
        redis.start()
        assert (await push(tmp_path, redis.url, config(3, upstream.url))).returncode == 0
        await eventually(lambda: node.seen == "3", timeout=30)
    finally:
        stop.set()
        await node.stop()
    assert served == "2"
    assert node.failed == 0
    assert node.log.read_bytes().count(b"config store lost") == 1
    assert (tmp_path / "gw" / "config.toml").read_text() == config(3, upstream.url)


@pytest.mark.slow
async def test_push_keeps_the_newest_versions_only(tmp_path, redis):
    for version in (1, 2, 3):
        done = await push(tmp_path, redis.url, config(version, "http://127.0.0.1:9"), "--keep", "2")
        assert done.returncode == 0, done.stderr
    gone = await trio.to_thread.run_sync(lambda: bascule("config", "rollback", "1", "--store", redis.url))
    assert gone.returncode == 1
    assert "keeps no version 1" in gone.stderr
    kept = await trio.to_thread.run_sync(lambda: bascule("config", "rollback", "2", "--store", redis.url))
    assert kept.returncode == 0, kept.stderr


async def test_no_store_and_no_state_is_one_line_on_stderr(tmp_path, redis):
    redis.stop()
    done = await trio.to_thread.run_sync(
        lambda: bascule("run", "--config-store", redis.url, "--state-dir", str(tmp_path / "empty"))
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "is unreachable, and " + str(tmp_path / "empty" / "config.toml") + " (the last config applied) does not exist"
    )


@pytest.mark.slow
async def test_with_workers_every_worker_applies_each_version(nursery, tmp_path, redis):
    upstream = await start_upstream(nursery, serving_version)
    assert (await push(tmp_path, redis.url, config(1, upstream.url))).returncode == 0
    node = Node(tmp_path, redis.url, "gw", args=("--workers", "2"))
    await node.start()
    stop = trio.Event()
    try:
        nursery.start_soon(partial(node.load, stop, fresh=True))  # each request may reach either worker
        await eventually(lambda: node.versions[-20:] == ["1"] * 20, timeout=30)  # both workers serving
        assert (await push(tmp_path, redis.url, config(2, upstream.url))).returncode == 0
        # The first worker checks it and signals the supervisor, which signals every worker.
        await eventually(lambda: node.versions[-20:] == ["2"] * 20, timeout=30)
        assert b"reloaded " in node.log.read_bytes()
        assert (await node.fleet())["version"] == 2
    finally:
        stop.set()
        await node.stop()


async def test_fleet_page_and_store_urls(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(1, upstream.url), admin=True)
    async with httpx.AsyncClient() as client:
        r = await client.get(gw.admin_url + "/fleet")
    assert r.status_code == 404  # not following a store

    done = await trio.to_thread.run_sync(lambda: bascule("run", "--config-store", "http://127.0.0.1:1"))
    assert done.returncode == 2
    assert "--config-store: expected a URL starting with redis://" in done.stderr
    done = await trio.to_thread.run_sync(lambda: bascule("fleet", "status", env={"BASCULE_CONFIG_STORE": ""}))
    assert done.returncode == 2 and "--store URL (or $BASCULE_CONFIG_STORE) is required" in done.stderr

    for url, problem in (
        ("redis+sentinel://127.0.0.1:26379", "a Sentinel URL ends with /SERVICE or /SERVICE/DB"),
        ("redis+cluster://127.0.0.1:7000/0", "a Cluster URL takes no /DB"),
        ("redis+sentinel://127.0.0.1/primary", "a Sentinel URL lists HOST:PORT,HOST:PORT"),
    ):
        text = f'''
            [services.api]
            targets = ["{upstream.url}"]
            [[routes]]
            name = "api"
            paths = ["/api"]
            service = "api"
            [routes.plugins.rate-limit]
            limit = 1
            window = "1s"
            backend = "redis"
            redis_url = "{url}"
            '''
        with pytest.raises(ConfigError, match=f'route "api": plugins.rate-limit.redis_url: .*{problem}'):
            await start_gateway(nursery, text)
