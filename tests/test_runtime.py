"""One way a config becomes a ``Runtime`` (``bascule.runtime``): whoever asks whether a file can run
(``bascule validate``, ``routes``, ``schema``, ``run``, ``POST /reload`` in one process or with
several workers) gets the same answer, also for a problem only compiling finds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import httpx
from bascule.admin import Admin
from bascule.server import hypercorn_config, signal_workers
from bascule.testing import start_gateway, start_upstream
from bascule.worker import listen

ROOT = Path(__file__).resolve().parent.parent

# An installed plugin whose settings model accepts any string but whose constructor refuses a
# pattern that does not compile: a problem validating the file alone cannot find.
PLUGIN = """
import re
from dataclasses import dataclass

from bascule_sdk import Plugin, hookimpl, setting


@dataclass(frozen=True)
class StrictSettings:
    pattern: str = setting(".*", "A regular expression.")


class Strict(Plugin[StrictSettings]):
    name = "strict"
    Settings = StrictSettings

    def __init__(self, settings, *, instance=None):
        super().__init__(settings, instance=instance)
        try:
            self.regex = re.compile(settings.pattern)
        except re.error as e:
            raise ValueError(f"plugins.strict.pattern: {e}") from None

    @hookimpl
    async def on_request(self, ctx):
        return None
"""


def install_plugin(site: Path) -> None:
    """``bascule-strict`` installed in ``site`` as pip lays out a distribution: its module and its
    ``.dist-info`` declaring the ``bascule.plugins`` entry point."""
    info = site / "bascule_strict-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "bascule_strict.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bascule-strict\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bascule.plugins]\nstrict = bascule_strict:Strict\n")


def config(upstream: str, pattern: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return textwrap.dedent(f"""
        [gateway]
        listen = "127.0.0.1:{port}"
        [services.api]
        targets = ["{upstream}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.strict]
        pattern = "{pattern}"
    """)


def bascule(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "bascule.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_the_cli_start_up_and_reloads_refuse_a_file_with_the_same_error(nursery, tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_plugin(site)
    upstream = await start_upstream(nursery)
    path = tmp_path / "plugins.toml"
    path.write_text(config(upstream.url, "(unclosed"))
    expected = [f'{path}: route "api": plugins.strict.pattern: missing ), unterminated subpattern at position 0']

    for args in (
        ["validate", str(path)],
        ["routes", "-c", str(path)],
        ["schema", "-c", str(path)],
        ["run", "-c", str(path)],
    ):
        r = bascule(site, *args)
        assert (r.returncode, r.stderr.splitlines()) == (1, expected), args

    monkeypatch.syspath_prepend(str(site))  # installed in this process too
    gw = await start_gateway(nursery, config(upstream.url, "^/api"))
    assert "strict" in gw.available
    admin = Admin(gw.gateway, path, gw.available)
    hc = hypercorn_config(gw.gateway.runtime.config.gateway, "127.0.0.1:0", tls=False)
    (admin_url,) = await nursery.start(partial(listen, admin, hc, shutdown_trigger=gw.stop.wait))
    async with httpx.AsyncClient(base_url=admin_url, timeout=30) as client, gw.client(timeout=30) as public:
        reload = await client.post("/reload")  # one process: reloaded here
        status = await client.get("/config/status")
        still = await public.get("/api")
    assert (reload.status_code, reload.json()["errors"]) == (400, expected)
    assert status.json()["last_reload"]["errors"] == expected
    assert still.status_code == 200  # the old config stays
    # With several workers, the file is checked before the supervisor is signalled: not signalled here.
    refused = signal_workers(gw.gateway, path, gw.available, "POST /reload")
    assert refused is not None and refused.lines == expected
