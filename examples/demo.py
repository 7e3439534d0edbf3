"""Run the demo: the services in ``services.py`` and the gateway on plugins.toml.

    python examples/demo.py [plugins.toml]

Each demo service listens where the config sends its requests (the port of
the first target of ``[services.NAME]``; services.py's own port otherwise),
so a copy of plugins.toml with other ports runs a second demo beside the first.

Stops both on Ctrl-C, SIGTERM (``make run`` stopped by a supervisor or an
IDE) or SIGHUP (the terminal closed): the services and the gateway run in a
process group of their own, are sent SIGTERM and waited for, so nothing is
left listening. An address already in use is one line on stderr, not a
traceback, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stop(Exception):
    """A stop signal arrived."""


def service_ports(config: str) -> dict[str, tuple[str, int]]:
    """``{service name: (host, port)}``: where the config sends each demo service's requests."""
    sys.path.insert(0, str(ROOT / "examples"))
    import services  # examples/services.py

    try:
        with open(config, "rb") as f:
            declared = tomllib.load(f).get("services", {})
    except (OSError, tomllib.TOMLDecodeError):
        declared = {}  # the gateway reports it, in one line
    ports = {}
    for name, (port, _routes) in services.SERVICES.items():
        host = "127.0.0.1"
        targets = declared.get(name, {}).get("targets", []) if isinstance(declared.get(name), dict) else []
        if targets:
            url = targets[0] if isinstance(targets[0], str) else targets[0].get("url", "")
            parts = urlsplit(url)
            if parts.hostname and parts.port:
                host, port = parts.hostname, parts.port
        ports[name] = (host, port)
    return ports


def serve_services(ports: dict[str, tuple[str, int]]) -> int:
    """The services' process: every app of services.py on its address, until SIGTERM."""
    from functools import partial

    import trio
    from hypercorn.config import Config
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    sys.path.insert(0, str(ROOT / "examples"))
    import services  # examples/services.py

    bound = []
    for name, (host, port) in ports.items():
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        try:
            sockets = config.create_sockets()
            for s in sockets.insecure_sockets:
                s.listen(config.backlog)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            print(f"demo: cannot listen on {host}:{port} (service {name}): {reason}", file=sys.stderr)
            return 1
        bound.append((wrap_app(services.app(services.SERVICES[name][1], name), 0, "asgi"), config, sockets))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for app, config, sockets in bound:
                nursery.start_soon(partial(worker_serve, app, config, sockets=sockets))

    try:
        trio.run(main)  # hypercorn stops on SIGTERM/SIGINT
    except KeyboardInterrupt:
        pass
    return 0


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def _die_with_parent() -> None:
    """In a child: SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    os.setpgrp()  # not in the terminal's foreground group: Ctrl-C reaches the demo, which stops us
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main() -> int:
    if sys.argv[1:2] == ["--services"]:  # the services' process, started below
        return serve_services({k: (h, p) for k, (h, p) in json.loads(sys.argv[2]).items()})
    config = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "plugins.toml")
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    children: list[subprocess.Popen[bytes]] = []
    status = 0
    try:
        ports = json.dumps(service_ports(config))
        services = subprocess.Popen([sys.executable, __file__, "--services", ports], preexec_fn=_die_with_parent)
        children.append(services)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "bascule.cli", "run", "-c", str(Path(config).resolve())],
            cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
        children.append(gateway)
        # Until one of them exits (a startup failure: it said why) or a stop signal arrives.
        while status == 0:
            pid, wait_status = os.wait()
            for child in children:
                if child.pid == pid:
                    child.returncode = os.waitstatus_to_exitcode(wait_status)
                    status = max(child.returncode, 1)
    except Stop:
        status = 0
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the cleanup
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait()
    return status


if __name__ == "__main__":
    sys.exit(main())
