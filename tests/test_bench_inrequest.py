"""bench/inrequest.py runs every route it names, each answered 200 (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_plugins_route_is_timed_in_process():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inrequest.py"), "--requests", "40", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"bare", "jwt", "key-auth", "rate-limit", "logging", "prometheus", "cache"}
    assert all(float(cost) > 0 for cost, *_ in rows.values())
    assert float(rows["bare"][1]) == 0  # the baseline
    assert float(rows["cache"][1]) < 0  # a hit goes nowhere upstream
