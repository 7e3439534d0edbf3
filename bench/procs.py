"""Processes the benchmark starts: each in its own process group, optionally
pinned to a core, always stopped (``Procs`` is a context manager)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

CORES = os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: Sequence[str], core: int | None) -> list[str]:
    """``cmd`` run on one core (``taskset``), or as is when there is one core or ``core`` is None."""
    if core is None or CORES < 2 or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0, name: str = "") -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; raise if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name or proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name or proc.args[0]} is not listening on port {port} after {timeout:.0f} s")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) in KiB, summed over ``pid``'s process tree."""
    total = {"rss": 0, "peak": 0}
    for p in tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total["rss"] += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                total["peak"] += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid``'s process tree."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Procs:
    """Starts processes and stops every one of them (process group, TERM then KILL) on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        core: int | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 30.0,
    ) -> subprocess.Popen:
        """Start ``cmd`` (its output goes to ``<logdir>/<name>.log``); wait for ``port`` if given."""
        log = open(self.logdir / f"{name}.log", "ab")  # the child keeps its own copy
        proc = subprocess.Popen(
            pinned(cmd, core),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.running.append((name, proc))
        if port is not None:
            try:
                wait_port(port, proc, timeout, name)
            except RuntimeError as e:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{e}\n--- {name}.log (end) ---\n{tail}") from None
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        else:  # the leader is gone; its group may not be
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.running = [(n, p) for n, p in self.running if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            self.stop(proc)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
