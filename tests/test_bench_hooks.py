"""bench/hooks.py runs and times every plugin it names (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_plugins_hooks_are_timed():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hooks.py"), "--loops", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"jwt", "key-auth", "rate-limit", "logging", "prometheus", "cache"}
    for plugin, costs in rows.items():
        *phases, total = map(float, costs)
        assert total > 0, plugin
        assert abs(total - sum(phases)) <= 0.03, plugin  # each printed to two decimals
    assert float(rows["logging"][3]) > 0  # its line is made in on_log's timing
    assert float(rows["cache"][1]) == 0  # a hit goes nowhere upstream
