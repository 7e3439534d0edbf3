"""What a user of the ``bascule`` command sees: one line per start-up failure, a banner,
``--version``, a closed pipe that ends quietly, ``validate --offline`` and ``--format json``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def bascule(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bascule.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kwargs
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(tmp_path: Path, listen: int, admin: int, extra: str = "") -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{listen}"
admin = "127.0.0.1:{admin}"
{extra}
[services.a]
targets = ["http://127.0.0.1:9/"]
[[routes]]
name = "a"
paths = ["/a"]
service = "a"
[routes.plugins.key-auth]
"""
    )
    return path


def test_version():
    from bascule.server import _version

    r = bascule("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"bascule {_version()}\n", "")


@pytest.mark.slow
def test_every_printing_command_ends_quietly_on_a_closed_pipe(tmp_path):
    for args in (["routes"], ["plugins"], ["schema"], ["validate", "plugins.toml"], ["--version"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone, as after `| head -1`
        try:
            r = subprocess.run(
                [sys.executable, "-m", "bascule.cli", *args],
                cwd=ROOT,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write)
        assert r.stderr == "", (args, r.stderr)
        assert r.returncode in (0, 1), args


def test_a_listen_address_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = bascule("run", "-c", str(gateway_config(tmp_path, port, free_port())))
        assert r.returncode == 1
        assert r.stderr == f"bascule: cannot listen on 127.0.0.1:{port}: address already in use\n"
        r = bascule("run", "-c", str(gateway_config(tmp_path, free_port(), port)))
        assert r.returncode == 1
        assert r.stderr == f"bascule: cannot listen on 127.0.0.1:{port} (admin): address already in use\n"
        r = bascule("run", "--workers", "2", "-c", str(gateway_config(tmp_path, port, free_port())))
        assert r.returncode == 1
        assert r.stderr == f"bascule: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_a_missing_file_is_one_line_naming_it(tmp_path):
    r = bascule("run", "-c", str(tmp_path / "nope.toml"))
    assert (r.returncode, r.stderr) == (1, f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory\n")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    extra = f'tls_cert = "{cert}"\ntls_key = "{key}"'
    r = bascule("run", "-c", str(gateway_config(tmp_path, free_port(), free_port(), extra)))
    assert (r.returncode, r.stderr) == (1, f"bascule: cannot read tls_cert {cert}: no such file or directory\n")
    config = tmp_path / "secret.toml"
    config.write_text(
        f'[services.a]\ntargets = ["http://127.0.0.1:9/"]\n[[routes]]\nname = "a"\npaths = ["/a"]\nservice = "a"\n'
        f'[routes.plugins.jwt]\nkeys = [{{ secret = "file:{tmp_path}/jwt.key" }}]\n'
    )
    r = bascule("run", "-c", str(config))
    assert r.returncode == 1
    assert r.stderr == (
        f'{config}: route "a": plugins.jwt.keys[0].secret: '
        f"cannot read secret file {tmp_path}/jwt.key: No such file or directory\n"
    )


def test_the_banner_names_version_config_listeners_and_counts(tmp_path):
    listen, admin = free_port(), free_port()
    config = gateway_config(tmp_path, listen, admin)
    err = tmp_path / "err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bascule.cli", "run", "-c", str(config)], cwd=ROOT, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "no /healthz within 60 s"
            try:
                pid = httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=2).json()["pid"]
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert pid == proc.pid  # this test's gateway
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    from bascule.server import _version

    text = err.read_text()
    assert f"bascule {_version()}: {config}: 1 route, 1 plugin enabled, 1 worker" in text
    assert f"public listener http://127.0.0.1:{listen}; admin listener http://127.0.0.1:{admin}" in text
    assert "Traceback" not in text


OFFLINE = """
[services.a]
targets = ["http://127.0.0.1:9/"]
[[routes]]
name = "api"
paths = ["/api"]
service = "a"
[routes.plugins.jwt]
keys = [{ secret = "env:BASCULE_TEST_UNSET_SECRET" }, { pem = "file:/nonexistent/key.pem" }]
"""


def test_validate_offline_checks_all_but_the_secrets_values(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(OFFLINE)
    env = {k: v for k, v in os.environ.items() if k != "BASCULE_TEST_UNSET_SECRET"}
    assert bascule("validate", str(config), env=env).returncode == 1  # online: the secrets are missing
    r = bascule("validate", "--offline", str(config), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{config}: valid (1 route, 1 service)",
        f'{config}: route "api": plugins.jwt.keys[0]: not checked offline: '
        "needs the value of env:BASCULE_TEST_UNSET_SECRET",
        f'{config}: route "api": plugins.jwt.keys[1]: not checked offline: '
        "needs the value of file:/nonexistent/key.pem",
    ]
    # A badly written reference, and any other problem, still fail.
    config.write_text(OFFLINE.replace("env:BASCULE_TEST_UNSET_SECRET", "env:").replace('"/api"', '"api"'))
    r = bascule("validate", "--offline", "--format", "json", str(config), env=env)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "file": str(config),
        "valid": False,
        "errors": [
            {
                "file": str(config),
                "where": 'route "api"',
                "route": "api",
                "key": "paths[0]",
                "message": "expected a path starting with '/', got 'api'",
            },
            {
                "file": str(config),
                "where": 'route "api"',
                "route": "api",
                "key": "plugins.jwt.keys[0].secret",
                "message": "'env:' does not name an environment variable (env:NAME, NAME of A-Z, 0-9, _)",
            },
        ],
    }


def test_validate_json_on_the_default_config():
    r = bascule("validate", "--format", "json", "plugins.toml")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["valid"] is True and result["errors"] == [] and result["routes"] > 0


def test_validate_a_toml_syntax_error_is_file_line_column(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[services.a]\ntargets = ["http://127.0.0.1:9/"\n')
    r = bascule("validate", str(config))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [  # the end of the file: just after its last character
        f"{config}:2:33: invalid TOML: Unclosed array at the end of the file",
        '    targets = ["http://127.0.0.1:9/"',
        "                                    ^",
    ]
    r = bascule("validate", "--format", "json", str(config))
    (error,) = json.loads(r.stdout)["errors"]
    assert (error["file"], error["line"], error["column"]) == (str(config), 2, 33)


def test_plugins_lists_the_refused_ones_after_the_installed_ones_with_their_reason(tmp_path):
    # A distribution whose entry point names a module that is not there: discovery refuses it.
    dist = tmp_path / "bascule_ghost-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bascule-ghost\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bascule.plugins]\nghost = bascule_ghost_missing:GhostPlugin\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    r = bascule("plugins", env={**os.environ, "PYTHONPATH": path})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert "rate-limit" in names and names[-1] == "ghost"
    assert lines[-1].startswith("ghost ")
    assert "refused: plugin 'ghost' (bascule-ghost 0.1) failed to import: ModuleNotFoundError" in lines[-1]
    assert "bascule_ghost_missing" in lines[-1]
