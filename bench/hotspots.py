"""A py-spy profile of one case under load: where the gateway's time goes."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from runner import PEER, peer_environment

TOP = 25


def record(case: Any, bench: Any, tmp: Path) -> dict:
    """Load ``case`` with wrk while py-spy samples its process; the top frames by inclusive share."""
    spy = PEER / "py-spy"
    if not spy.exists():
        if problem := peer_environment():
            return {"case": case.name, "error": problem}
        out = subprocess.run([str(PEER / "pip"), "install", "-q", "py-spy"], capture_output=True, text=True)
        if out.returncode != 0 or not spy.exists():
            return {"case": case.name, "error": f"cannot install py-spy: {out.stderr.strip()[-300:]}"}
    raw = tmp / f"{case.name}.pyspy.txt"
    seconds = max(3, round(bench.opts.duration))
    load = threading.Thread(target=bench._wrk, args=(case, seconds + 2))
    load.start()
    out = subprocess.run(
        [
            str(spy),
            "record",
            "--pid",
            str(case.pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(raw),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    load.join()
    if out.returncode != 0 or not raw.exists():
        return {"case": case.name, "error": (out.stderr or out.stdout).strip()[-300:]}
    keep = Path(bench.opts.out).with_suffix(f".{case.name}.pyspy.txt")
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, keep)
    return {"case": case.name, "file": str(keep), **top_frames(raw.read_text())}


def top_frames(collapsed: str) -> dict:
    """From py-spy's collapsed stacks: the share of samples per function, inclusive (on the
    stack; frames on nearly every stack left out) and self (at the top), and self per package."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
    if not total:
        return {"samples": 0, "top": [], "self": [], "packages": []}

    def rows(counter: Counter[str], limit: int = TOP) -> list[dict]:
        return [{"frame": f, "pct": 100 * n / total} for f, n in counter.most_common() if n < 0.9 * total][:limit]

    return {"samples": total, "top": rows(inclusive), "self": rows(own, 15), "packages": rows(packages, 10)}


def _function(frame: str) -> str:
    """``f (pkg/mod.py:12)`` -> ``f (pkg/mod.py)``: lines of one function counted together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if ":" in where else frame


def _package(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    return where.split("/")[0] if "/" in where else (where or frame)
