"""Soak: mixed traffic through the full default config, gateway memory sampled.

    .venv/bin/python bench/soak.py [--duration 600] [--concurrency 16] [--json out.json]

Starts the demo services and ``bascule run -c plugins.toml`` (ports 8080/8081 and
9101-9105 must be free), sends the README demo's requests round-robin from
``--concurrency`` clients for ``--duration`` seconds, samples the gateway's RSS
every second, and reports the RSS slope after warm-up (the first 20% of the run)
with a least-squares fit. Every answer must be one the demo expects for that
request (429 counts as expected: the demo routes are rate limited); anything
else is counted as a failure. Stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "http://127.0.0.1:8080"
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


async def load(duration: float, concurrency: int, gateway_pid: int) -> dict:
    mix = requests(token())
    counts = {"requests": 0, "failures": 0}
    failures: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=GATEWAY, timeout=10) as http:
            i = index
            while time.monotonic() - start < duration:
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
            samples.append((time.monotonic() - start, rss_kib(gateway_pid)))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for i in range(concurrency):
            nursery.start_soon(client, i)
    after_warmup = [s for s in samples if s[0] >= duration * 0.2]
    return {
        "duration_s": duration,
        "concurrency": concurrency,
        **counts,
        "failure_kinds": failures,
        "rss_kib_first": samples[0][1] if samples else None,
        "rss_kib_after_warmup": after_warmup[0][1] if after_warmup else None,
        "rss_kib_last": samples[-1][1] if samples else None,
        "rss_slope_kib_per_min_after_warmup": round(slope_kib_per_min(after_warmup), 1),
        "samples": samples,
    }


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    services = subprocess.Popen([sys.executable, str(ROOT / "examples" / "services.py")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gateway = subprocess.Popen([sys.executable, "-m", "bascule.cli", "run", "-c", str(ROOT / "plugins.toml")],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_ready("http://127.0.0.1:9101/users")
        wait_ready("http://127.0.0.1:8081/healthz")
        result = trio.run(load, args.duration, args.concurrency, gateway.pid)
    finally:
        for proc in (gateway, services):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
