"""Soak: mixed traffic through the full default config, gateway memory sampled.

    .venv/bin/python bench/soak.py [--duration 600] [--concurrency 16] [--json out.json]

Starts the demo services (examples/services.py) and ``bascule run`` on a copy of
plugins.toml, all on free ports (so ``make run`` may run at the same time), and
checks that the gateway it talks to is the one it started: the admin listener's
``/healthz`` must report that process's pid, and the gateway's own request
counter (``bascule_requests_total`` on the admin ``/metrics``) must equal the
requests sent. It sends the README demo's requests round-robin from
``--concurrency`` clients for ``--duration`` seconds, samples the gateway's RSS
every second while it is running, and reports the RSS slope after warm-up (the
first 20% of the run) with a least-squares fit. Every answer must be one the
demo expects for that request (429 counts as expected: the demo routes are rate
limited); anything else is counted as a failure. ``problems`` lists whatever
makes the run untrustworthy (the gateway exited, was not ours, missed requests);
the exit status is 1 when there is a failure or a problem. Stops everything it
started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bascule-demo-secret-not-for-production!"


def token() -> str:
    from bascule_jwt.mint import mint  # the demo's token, as the README mints it

    return mint(SECRET, sub="alice", scope="orders:read", ttl=3600)


def requests(bearer: str) -> list[tuple[str, str, dict[str, str], set[int]]]:
    """(method, path, headers, expected statuses) of the mix."""
    ok = {200, 429}
    return [
        ("GET", "/api/users/1", {}, {200}),
        ("GET", "/api/products/p1", {}, ok),
        ("GET", "/api/products", {}, ok),
        ("GET", "/api/orders", {"authorization": f"Bearer {bearer}"}, ok),
        ("GET", "/api/orders", {}, {401}),
        ("GET", "/partner/orders", {"x-api-key": "demo-partner-key"}, {200}),
        ("GET", "/partner/orders", {"x-api-key": "wrong"}, {401}),
        ("GET", "/api/rides/r1/status", {}, {200}),
        ("GET", "/api/v2/users/2", {}, {200}),
        ("DELETE", "/api/users", {}, {405}),
        ("GET", "/nowhere", {}, {404}),
    ]


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the gateway's workers)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids]


def slope_kib_per_min(samples: list[tuple[float, int]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return cov / var * 60 if var else 0.0


async def load(url: str, duration: float, concurrency: int, gateway: subprocess.Popen) -> dict:
    """Send the mix to ``url``; sample the RSS of ``gateway`` while it runs."""
    mix = requests(token())
    counts = {"requests": 0, "failures": 0}
    failures: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    exited: list[int] = []
    start = time.monotonic()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            i = index
            while time.monotonic() - start < duration and not exited:
                method, path, headers, expected = mix[i % len(mix)]
                i += 1
                try:
                    status = (await http.request(method, path, headers=headers)).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                counts["requests"] += 1
                if status not in expected:
                    counts["failures"] += 1
                    failures[f"{method} {path} -> {status}"] = failures.get(f"{method} {path} -> {status}", 0) + 1

    async def sampler() -> None:
        while time.monotonic() - start < duration:
            rss = rss_kib(gateway.pid)
            if gateway.poll() is not None:  # its /proc entry may still exist: check after reading it
                exited.append(gateway.returncode)
                return
            samples.append((time.monotonic() - start, rss))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for i in range(concurrency):
            nursery.start_soon(client, i)
    after_warmup = [s for s in samples if s[0] >= duration * 0.2]
    problems = []
    if exited:
        problems.append(f"the gateway exited during the run (status {exited[0]})")
    if not samples or any(rss <= 0 for _, rss in samples):
        problems.append("the gateway's memory could not be read")
    return {
        "duration_s": duration,
        "concurrency": concurrency,
        **counts,
        "failure_kinds": failures,
        "problems": problems,
        "rss_kib_first": samples[0][1] if samples else None,
        "rss_kib_after_warmup": after_warmup[0][1] if after_warmup else None,
        "rss_kib_last": samples[-1][1] if samples else None,
        "rss_slope_kib_per_min_after_warmup": round(slope_kib_per_min(after_warmup), 1),
        "samples": samples,
    }


async def serve_demo_services() -> None:
    """Serve every app of examples/services.py on a free port; print ``{demo port: port}`` as one JSON line."""
    from hypercorn.config import Config
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    sys.path.insert(0, str(ROOT / "examples"))
    import services  # examples/services.py

    ports: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        for name, (port, routes) in services.SERVICES.items():
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            (bound,) = await nursery.start(
                partial(worker_serve, wrap_app(services.app(routes, name), 0, "asgi"), config)
            )
            ports[port] = int(bound.rsplit(":", 1)[1])
        print(json.dumps(ports), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(service_ports: dict[int, int], listen: int, admin: int) -> str:
    """plugins.toml with the gateway on ``listen``/``admin`` and each demo service on its actual port."""
    text = (ROOT / "plugins.toml").read_text()
    text, n = re.subn(r'^listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{listen}"', text, flags=re.M)
    text, m = re.subn(r'^admin = "127\.0\.0\.1:\d+"', f'admin = "127.0.0.1:{admin}"', text, flags=re.M)
    if (n, m) != (1, 1):
        raise RuntimeError("plugins.toml: expected one [gateway] listen and one admin line")
    missing = set(service_ports)

    def target(match: re.Match[str]) -> str:
        port = int(match.group(1))
        if port not in service_ports:
            raise RuntimeError(f"plugins.toml: no demo service on port {port}")
        missing.discard(port)
        return f'"http://127.0.0.1:{service_ports[port]}/'

    text = re.sub(r'"http://127\.0\.0\.1:(\d+)/', target, text)
    if missing:
        raise RuntimeError(f"plugins.toml: no target for the demo services on {sorted(missing)}")
    return text


def process_tree(pid: int) -> set[int]:
    return {pid, *_children(pid)}


def wait_for_own_gateway(admin_url: str, gateway: subprocess.Popen, timeout: float = 60) -> None:
    """Return once ``admin_url``/healthz answers with the pid of ``gateway`` (or a worker of it).

    Raises ``RuntimeError`` when the gateway exits, another process answers,
    or nothing answers within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise RuntimeError(f"bascule run exited with status {gateway.returncode} before serving")
        try:
            pid = httpx.get(f"{admin_url}/healthz", timeout=1).json()["pid"]
        except (httpx.HTTPError, ValueError, KeyError):
            time.sleep(0.2)
            continue
        if pid not in process_tree(gateway.pid):
            raise RuntimeError(
                f"{admin_url} is answered by pid {pid}, not by the gateway this soak started (pid {gateway.pid})"
            )
        return
    raise RuntimeError(f"{admin_url}/healthz did not answer within {timeout:.0f} s")


def requests_counted(admin_url: str) -> int:
    """The sum of ``bascule_requests_total`` over every route and status class on the admin /metrics."""
    text = httpx.get(f"{admin_url}/metrics", timeout=10).text
    return round(sum(float(m.group(1)) for m in re.finditer(r"^bascule_requests_total\{.*\} (\S+)$", text, re.M)))


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--demo-services", action="store_true", help=argparse.SUPPRESS)  # the services' process
    args = parser.parse_args()
    if args.demo_services:
        trio.run(serve_demo_services)
        return 0

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="bascule-soak-") as tmp:
        services = subprocess.Popen(
            [sys.executable, __file__, "--demo-services"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started = [services]
        try:
            line = services.stdout.readline() if services.stdout else ""
            if not line:
                raise RuntimeError(f"the demo services did not start (status {services.wait()})")
            service_ports = {int(k): v for k, v in json.loads(line).items()}
            listen, admin = free_port(), free_port()
            config = Path(tmp) / "plugins.toml"
            config.write_text(demo_config(service_ports, listen, admin))
            gateway = subprocess.Popen(
                [sys.executable, "-m", "bascule.cli", "run", "-c", str(config)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started.append(gateway)
            admin_url = f"http://127.0.0.1:{admin}"
            wait_for_own_gateway(admin_url, gateway)
            result = trio.run(load, f"http://127.0.0.1:{listen}", args.duration, args.concurrency, gateway)
            if gateway.poll() is None:
                result["gateway_requests_counted"] = requests_counted(admin_url)
                if result["gateway_requests_counted"] != result["requests"]:
                    result["problems"].append(
                        f"the gateway counted {result['gateway_requests_counted']} requests, "
                        f"the soak sent {result['requests']}: another server answered some"
                    )
        finally:
            for proc in reversed(started):
                stop(proc)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["failures"] or result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
