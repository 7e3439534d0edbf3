"""Running wrk and reading its figures (from a Lua ``done`` hook, in microseconds)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from procs import pinned

DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("BENCH-JSON ", string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout), "\\n")
end
"""

# Every request to a URL no run asked for before (cache misses): "?n=<RUN>-1", "?n=<RUN>-2", ...
UNIQUE_QUERY = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?n=" .. RUN .. "-" .. n)
end
"""


def script(path: Path, extra: str = "") -> Path:
    """Write a wrk script: ``extra`` and the ``done`` hook that reports the figures. It sees
    ``RUN``, a token new at every call: a script is written for each run, and a count that
    started again at 1 would ask for the URLs the warm-up and the earlier rounds stored."""
    path.write_text(f'RUN = "{secrets.token_hex(8)}"\n' + extra + DONE)
    return path


def run(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    lua: Path,
    headers: Sequence[str] = (),
    core: int | None = 0,
    timeout: float | None = None,
) -> dict:
    """One bounded wrk run; returns rps, p50/p90/p99/max in ms, requests, errors."""
    secs = max(1, round(duration))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", str(lua)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(pinned([*cmd, url], core), capture_output=True, text=True, timeout=timeout or secs + 30)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(line.removeprefix("BENCH-JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "errors": errors,
        "non_2xx": raw["status"],
    }
