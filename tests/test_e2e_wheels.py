"""End to end, the way a new user meets Bascule: wheels in a fresh virtualenv.

``bascule-sdk``, ``bascule`` and ``bascule-cors`` are built into wheels and
installed into an empty virtualenv (their third-party dependencies come from
the package index, as for any user). There, ``bascule plugin new`` generates a
plugin, which is built and installed from its wheel too; ``bascule plugins``
lists both plugins, and ``bascule run``, as a subprocess, serves a config that
enables each on one route: they act there and not on the other route.

Every ``pip install`` a user is told to run outside the repository is run here
as written, in clean virtualenvs, with the test's folder of wheels in place of
the placeholder ``/path/to/bascule/dist`` (or ``DIST``): docs/plugins.md's
first plugin, the next step ``bascule plugin new`` prints, the generated
README's develop steps, the hint of ``bascule validate`` for a plugin that
is not installed, and the README's install section (from ``dist/`` and from
the repository's folders, each into a new virtualenv in place of
``/opt/bascule``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from bascule.testing import start_upstream

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"bascule-sdk": ROOT / "sdk", "bascule": ROOT / "core", "bascule-cors": ROOT / "plugins" / "cors"}
DISTRIBUTIONS = [ROOT / "sdk", ROOT / "core", *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]

pytestmark = pytest.mark.slow


async def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; return its stdout, or fail the test with everything it printed."""
    result = await trio.run_process(
        [str(c) for c in cmd], cwd=cwd, env=env, check=False, capture_stdout=True, capture_stderr=True
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{out}\n{err}"
    return out


async def build_wheel(source: Path, wheels: Path, scratch: Path) -> None:
    """Build ``source``'s wheel into ``wheels`` from a clean copy (the checkout stays untouched)."""
    copy = scratch / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
    # Without build isolation when this interpreter has setuptools: no download of the build backend.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    await run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "--wheel-dir", wheels, copy)


async def pip_install(python: Path, wheels: Path, *names: str, index: bool = True) -> None:
    """Install ``names`` into the virtualenv of ``python`` with this environment's pip."""
    await run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        *([] if index else ["--no-index"]),
        "--find-links",
        wheels,
        *names,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BasculeProcess:
    """``bascule run`` in a subprocess, on ``url`` with its admin listener on ``admin_url``."""

    def __init__(self, process: trio.Process, url: str, admin_url: str) -> None:
        self.process = process
        self.url, self.admin_url = url, admin_url
        self.output = b""

    async def watch(self) -> None:
        async for chunk in self.process.stderr:
            self.output += chunk


async def start_bascule(nursery: trio.Nursery, bascule: Path, config: Path, listen: int, admin: int) -> BasculeProcess:
    """Start ``bascule run`` on ``config``, whose listeners are on ports ``listen`` and ``admin``.

    Returns once the admin listener's /healthz reports the pid of the process
    started here: the test talks to its own gateway, or fails (if another
    process held a port, this one could not bind it and exited).
    """
    process = await trio.lowlevel.open_process(
        [str(bascule), "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    gateway = BasculeProcess(process, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}")
    nursery.start_soon(gateway.watch)
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(60):
                while process.returncode is None:
                    try:
                        pid = (await client.get(f"{gateway.admin_url}/healthz")).json()["pid"]
                    except httpx.TransportError:
                        await trio.sleep(0.1)
                        continue
                    assert pid == process.pid, f"{gateway.admin_url} is another process's ({pid}), not {process.pid}"
                    return gateway
        raise AssertionError(f"bascule run exited ({process.returncode}):\n{gateway.output.decode()}")
    except BaseException:
        process.kill()  # never left running by a failed start
        raise


CONFIG = """
[gateway]
listen = "127.0.0.1:{listen}"
admin = "127.0.0.1:{admin}"

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

    where = await run(
        python,
        "-c",
        "import bascule, bascule_sdk, bascule_shout, bascule_cors as m; "
        "print(bascule.__file__, bascule_sdk.__file__, bascule_shout.__file__, m.__file__)",
    )
    assert all(path.startswith(str(tmp_path / "venv")) for path in where.split()), where  # nothing from the checkout
    licenses = await run(
        python,
        "-c",
        "from importlib.metadata import metadata as m; "
        "print(*(m(d)['License-Expression'] for d in ('bascule', 'bascule-sdk', "
        "'bascule-cors')))",
    )
    assert licenses.split() == ["Apache-2.0"] * 3

    listed = await run(bascule, "plugins")
    rows = {line.split()[0]: line.split()[2] for line in listed.splitlines() if line.strip()}
    assert rows == {"cors": "bascule-cors", "shout": "bascule-shout"}, listed

    upstream = await start_upstream(nursery)
    config = tmp_path / "plugins.toml"
    listen, admin = free_port(), free_port()
    config.write_text(CONFIG.format(upstream=upstream.url, listen=listen, admin=admin))
    await run(bascule, "validate", config)
    gateway = await start_bascule(nursery, bascule, config, listen, admin)
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            loud = await client.get("/loud/a")
            plain = await client.get("/plain/b", headers={"origin": "https://app.example.com"})
            preflight = await client.options(
                "/web/c", headers={"origin": "https://app.example.com", "access-control-request-method": "GET"}
            )
            web = await client.get("/web/d", headers={"origin": "https://app.example.com"})
        # The container's HEALTHCHECK (deploy/healthcheck.py): healthy now, unhealthy once stopped.
        await run(python, ROOT / "deploy" / "healthcheck.py", config)
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await gateway.process.wait()
    stopped = await trio.run_process([str(python), str(ROOT / "deploy" / "healthcheck.py"), str(config)], check=False)
    assert stopped.returncode == 1

    assert loud.status_code == 200 and loud.headers["x-shout"] == "HELLO"
    assert plain.status_code == 200
    assert "x-shout" not in plain.headers and "access-control-allow-origin" not in plain.headers
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert web.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-shout" not in web.headers
    assert [r.path for r in upstream.requests] == ["/loud/a", "/plain/b", "/web/d"]  # the preflight stayed
    assert gateway.process.returncode == 0, gateway.output.decode()


PLACEHOLDER = "/path/to/bascule/dist"


def sh_block(markdown: str, heading: str) -> str:
    """The first ```sh block after the line ``heading``."""
    after = markdown[markdown.index(heading + "\n") :]
    match = re.search(r"^```sh\n(.*?)^```$", after, re.M | re.S)
    assert match, f"no sh block after {heading!r}"
    return match.group(1)


def shell(venv: Path | None) -> dict[str, str]:
    """The environment of a user's shell, with ``venv`` activated if given."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(venv)
    return env


HINT_CONFIG = """
[services.api]
targets = ["http://127.0.0.1:1"]

[[routes]]
name = "web"
paths = ["/web"]
service = "api"
[routes.plugins.cors]
origins = ["https://app.example.com"]
"""


async def test_every_documented_pip_install_works_as_written_in_a_clean_virtualenv(tmp_path):
    dist, scratch, work = tmp_path / "dist", tmp_path / "src", tmp_path / "work"
    scratch.mkdir()
    work.mkdir()
    venv = tmp_path / "venv"
    async with trio.open_nursery() as builds:
        for source in SOURCES.values():
            builds.start_soon(build_wheel, source, dist, scratch)
        builds.start_soon(run, sys.executable, "-m", "venv", venv)  # with pip, as a user makes one
    env = shell(venv)

    # docs/plugins.md, "Your first plugin in five minutes": pip install bascule, generate, install -e, pytest.
    docs = sh_block((ROOT / "docs" / "plugins.md").read_text(), "## Your first plugin in five minutes")
    assert PLACEHOLDER in docs
    out = await run("bash", "-euo", "pipefail", "-c", docs.replace(PLACEHOLDER, str(dist)), cwd=work, env=env)
    assert "2 passed" in out, out
    assert re.search(r"^add-header\s+\S+\s+bascule-add-header\b", out, re.M), out

    # The next step `bascule plugin new` prints, as printed.
    printed = await run(venv / "bin" / "bascule", "plugin", "new", "greet", cwd=work, env=env)
    (step,) = [line.strip() for line in printed.splitlines() if line.strip().startswith("cd ")]
    out = await run("bash", "-euo", "pipefail", "-c", step, cwd=work, env=env)
    assert "2 passed" in out, out

    # The generated README's develop steps: a virtualenv of its own, nothing installed beforehand.
    develop = sh_block((work / "bascule-greet" / "README.md").read_text(), "## Develop")
    assert PLACEHOLDER in develop
    out = await run(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        develop.replace(PLACEHOLDER, str(dist)),
        cwd=work / "bascule-greet",
        env=shell(None),
    )
    assert "2 passed" in out, out

    # bascule validate names a plugin that is not installed with the command that installs it.
    config = tmp_path / "plugins.toml"
    config.write_text(HINT_CONFIG)
    invalid = await trio.run_process(
        [str(venv / "bin" / "bascule"), "validate", str(config)],
        env=env,
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    errors = invalid.stderr.decode()
    assert invalid.returncode == 1, errors
    hint = re.search(r"plugin 'cors' is not installed \((pip install [^,)]*)", errors)
    assert hint, errors
    assert "DIST" in hint.group(1), hint.group(1)  # no checkout here: the wheels' folder it is
    await run("bash", "-euo", "pipefail", "-c", hint.group(1).replace("DIST", str(dist)), cwd=work, env=env)
    await run(venv / "bin" / "bascule", "validate", config, env=env)


def install_lines(readme: str) -> list[str]:
    """The ``pip install`` commands of the README's "Install" section, continuation lines joined."""
    assert "\n## Install\n" in readme, "README.md has no '## Install' section"
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [re.sub(r"#.*", "", line).strip() for line in lines]
    return [c for c in commands if re.search(r"\bpip install\b", c)]


async def test_the_readme_install_section_works_as_written(tmp_path):
    lines = install_lines((ROOT / "README.md").read_text())
    assert any("--find-links dist/" in line for line in lines), lines  # from the wheels of make dist ...
    assert any("./core" in line for line in lines), lines  # ... and from the repository's folders
    # A copy of the repository's distributions, and dist/ as make dist leaves it.
    repo, scratch = tmp_path / "repo", tmp_path / "src"
    scratch.mkdir()
    for source in DISTRIBUTIONS:
        shutil.copytree(
            source,
            repo / source.relative_to(ROOT),
            ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"),
        )
    async with trio.open_nursery() as builds:
        for source in DISTRIBUTIONS:
            builds.start_soon(build_wheel, source, repo / "dist", scratch)
        for i in range(len(lines)):
            builds.start_soon(run, sys.executable, "-m", "venv", tmp_path / f"venv{i}")

    for i, line in enumerate(lines):
        venv = tmp_path / f"venv{i}"
        await run("bash", "-euo", "pipefail", "-c", line.replace("/opt/bascule", str(venv)), cwd=repo, env=shell(None))
        listed = await run(venv / "bin" / "bascule", "plugins")
        distributions = {row.split()[2] for row in listed.splitlines() if row.strip()}
        named = {f"bascule-{m}" for m in re.findall(r"\./plugins/([\w-]+)", line)}
        named |= set(re.findall(r"\bbascule-[\w-]+", line)) - {"bascule-sdk"}
        assert distributions == named, (line, listed)
        if "--find-links dist/" in line:  # every plugin: the demo's config is valid there
            await run(venv / "bin" / "bascule", "validate", ROOT / "plugins.toml")
