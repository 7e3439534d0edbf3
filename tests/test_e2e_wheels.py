"""End to end, the way a new user meets Bascule: wheels in a fresh virtualenv.

``bascule-sdk``, ``bascule`` and ``bascule-cors`` are built into wheels and
installed into an empty virtualenv (their third-party dependencies come from
the package index, as for any user). There, ``bascule plugin new`` generates a
plugin, which is built and installed from its wheel too; ``bascule plugins``
lists both plugins, and ``bascule run``, as a subprocess, serves a config that
enables each on one route: they act there and not on the other route.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from bascule.testing import start_upstream

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"bascule-sdk": ROOT / "sdk", "bascule": ROOT / "core", "bascule-cors": ROOT / "plugins" / "cors"}

pytestmark = pytest.mark.slow


async def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    """Run ``cmd``; return its stdout, or fail the test with everything it printed."""
    result = await trio.run_process([str(c) for c in cmd], cwd=cwd, check=False,
                                    capture_stdout=True, capture_stderr=True)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{out}\n{err}"
    return out


async def build_wheel(source: Path, wheels: Path, scratch: Path) -> None:
    """Build ``source``'s wheel into ``wheels`` from a clean copy (the checkout stays untouched)."""
    copy = scratch / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
    # Without build isolation when this interpreter has setuptools: no download of the build backend.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    await run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
              "--wheel-dir", wheels, copy)


async def pip_install(python: Path, wheels: Path, *names: str, index: bool = True) -> None:
    """Install ``names`` into the virtualenv of ``python`` with this environment's pip."""
    await run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
              *([] if index else ["--no-index"]), "--find-links", wheels, *names)


class BasculeProcess:
    """``bascule run`` in a subprocess; ``url`` once it listens."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""
        self.url = ""
        self.listening = trio.Event()

    async def watch(self) -> None:
        async for chunk in self.process.stderr:
            self.output += chunk
            if not self.url and (m := re.search(rb"Running on (http://127\.0\.0\.1:\d+)", self.output)):
                self.url = m.group(1).decode()
                self.listening.set()
        self.listening.set()  # exited: the test reports the output


async def start_bascule(nursery: trio.Nursery, bascule: Path, config: Path) -> BasculeProcess:
    process = await trio.lowlevel.open_process([str(bascule), "run", "-c", str(config)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    gateway = BasculeProcess(process)
    nursery.start_soon(gateway.watch)
    with trio.fail_after(60):
        await gateway.listening.wait()
    assert gateway.url, f"bascule run did not start:\n{gateway.output.decode()}"
    return gateway


CONFIG = """
[gateway]
listen = "127.0.0.1:0"

[services.api]
targets = ["{upstream}"]

[[routes]]
name = "loud"
paths = ["/loud"]
service = "api"
[routes.plugins.shout]
value = "HELLO"

[[routes]]
name = "web"
paths = ["/web"]
methods = ["GET", "OPTIONS"]
service = "api"
[routes.plugins.cors]
origins = ["https://app.example.com"]

[[routes]]
name = "plain"
paths = ["/plain"]
service = "api"
"""


async def test_third_party_plugins_from_wheels_in_a_fresh_virtualenv(tmp_path, nursery):
    wheels, scratch = tmp_path / "wheels", tmp_path / "src"
    scratch.mkdir()
    async with trio.open_nursery() as builds:
        for source in SOURCES.values():
            builds.start_soon(build_wheel, source, wheels, scratch)
        builds.start_soon(run, sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv")
    python, bascule = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin" / "bascule"
    await pip_install(python, wheels, "bascule-sdk", "bascule")

    # A user's own plugin: generated, built into a wheel, installed from it.
    await run(bascule, "plugin", "new", "shout", "--dir", tmp_path / "bascule-shout")
    await build_wheel(tmp_path / "bascule-shout", wheels, scratch)
    await pip_install(python, wheels, "bascule-shout", "bascule-cors", index=False)

    where = await run(python, "-c", "import bascule, bascule_sdk, bascule_shout, bascule_cors as m; "
                                    "print(bascule.__file__, bascule_sdk.__file__, bascule_shout.__file__, m.__file__)")
    assert all(path.startswith(str(tmp_path / "venv")) for path in where.split()), where  # nothing from the checkout

    listed = await run(bascule, "plugins")
    rows = {line.split()[0]: line.split()[2] for line in listed.splitlines() if line.strip()}
    assert rows == {"cors": "bascule-cors", "shout": "bascule-shout"}, listed

    upstream = await start_upstream(nursery)
    config = tmp_path / "plugins.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    await run(bascule, "validate", config)
    gateway = await start_bascule(nursery, bascule, config)
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            loud = await client.get("/loud/a")
            plain = await client.get("/plain/b", headers={"origin": "https://app.example.com"})
            preflight = await client.options("/web/c", headers={
                "origin": "https://app.example.com", "access-control-request-method": "GET"})
            web = await client.get("/web/d", headers={"origin": "https://app.example.com"})
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await gateway.process.wait()

    assert loud.status_code == 200 and loud.headers["x-shout"] == "HELLO"
    assert plain.status_code == 200
    assert "x-shout" not in plain.headers and "access-control-allow-origin" not in plain.headers
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert web.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-shout" not in web.headers
    assert [r.path for r in upstream.requests] == ["/loud/a", "/plain/b", "/web/d"]  # the preflight stayed
    assert gateway.process.returncode == 0, gateway.output.decode()
