"""``make run`` behaves like a service: SIGTERM (or Ctrl-C) stops the demo services and the gateway.

Each test runs the demo on a copy of plugins.toml whose gateway and services
listen on free ports, in a session of its own, checks that the gateway
answering is the one it started (``/healthz`` reports a pid of that session),
stops it with a signal and then checks that no process of the session is left.
A second start on the same ports must then serve again, without a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(tmp_path: Path) -> tuple[Path, int, dict[int, int]]:
    """plugins.toml with every port (gateway, admin, services) replaced by a free one."""
    text = (ROOT / "plugins.toml").read_text()
    listen, admin = free_port(), free_port()
    text, n = re.subn(r'^listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{listen}"', text, flags=re.M)
    text, m = re.subn(r'^admin = "127\.0\.0\.1:\d+"', f'admin = "127.0.0.1:{admin}"', text, flags=re.M)
    assert (n, m) == (1, 1)
    services: dict[int, int] = {}

    def target(match: re.Match[str]) -> str:
        services.setdefault(int(match.group(1)), free_port())
        return f'"http://127.0.0.1:{services[int(match.group(1))]}/'

    text = re.sub(r'"http://127\.0\.0\.1:(\d+)/', target, text)
    assert len(services) == 5, services
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    return path, admin, services


def session(sid: int) -> set[int]:
    """Every live (not zombie) process of session ``sid``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def wait_until_serving(proc: subprocess.Popen, admin: int, services: dict[int, int]) -> None:
    """Until the gateway of ``proc``'s session answers /healthz and every demo service answers."""
    deadline = time.monotonic() + 60
    urls = [f"http://127.0.0.1:{admin}/healthz"] + [f"http://127.0.0.1:{p}/" for p in services.values()]
    while True:
        assert proc.poll() is None, f"the demo exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the demo did not serve within 60 s"
        try:
            pid = httpx.get(urls[0], timeout=2).json()["pid"]
            assert pid in session(proc.pid), f"/healthz answered by pid {pid}, not by this test's gateway"
            for url in urls[1:]:
                httpx.get(url, timeout=2)  # any answer: the service listens
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        return


def start(command: list[str], stderr: Path) -> subprocess.Popen:
    with stderr.open("wb") as err:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def stop(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to ``proc`` alone; assert it ends and leaves no process of its session behind."""
    members = session(proc.pid)
    assert len(members) >= 3, members  # the demo (or make), its services, the gateway
    os.kill(proc.pid, signum)
    try:
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10  # children that got the signal may take a moment to exit
        while session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session(proc.pid) == set(), f"left running: {session(proc.pid)}"
    finally:
        for pid in session(proc.pid):  # the cleanup of a failed test; an assertion said so
            os.kill(pid, signal.SIGKILL)


def demo_command(config: Path) -> list[str]:
    return [sys.executable, str(ROOT / "examples" / "demo.py"), str(config)]


def make_command(config: Path) -> list[str]:
    # -o: the virtualenv is taken as up to date (the tests run in it); only the run recipe runs.
    return ["make", "-s", "-o", f"{BIN}/bascule", f"BIN={BIN}", f"CONFIG={config}", "run"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "signum"),
    [("make", signal.SIGTERM), ("demo", signal.SIGTERM), ("demo", signal.SIGINT), ("demo", signal.SIGHUP)],
)
def test_a_signal_stops_the_services_and_the_gateway_and_a_second_start_serves(tmp_path, how, signum):
    if how == "make" and subprocess.run(["make", "--version"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")
    config, admin, services = demo_config(tmp_path)
    command = make_command(config) if how == "make" else demo_command(config)
    for attempt in ("first", "second"):
        err = tmp_path / f"{attempt}.err"
        proc = start(command, err)
        wait_until_serving(proc, admin, services)
        stop(proc, signum)
        text = err.read_text()
        assert "Traceback" not in text, text
        assert "bascule 0.1.0" in text  # the banner
    if how == "demo":
        assert proc.returncode == 0


def test_an_address_in_use_is_one_line_and_nothing_is_left(tmp_path):
    config, _admin, services = demo_config(tmp_path)
    taken = next(iter(services.values()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        err = tmp_path / "err"
        proc = start(demo_command(config), err)
        assert proc.wait(timeout=60) == 1
    lines = err.read_text().splitlines()
    assert f"demo: cannot listen on 127.0.0.1:{taken} (service users): address already in use" in lines, lines
    assert "Traceback" not in err.read_text()
    deadline = time.monotonic() + 10
    while session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session(proc.pid) == set()
