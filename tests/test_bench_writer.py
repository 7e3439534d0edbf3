"""bench/writer.py runs and times each flush interval (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_writer_is_timed_at_each_interval():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "writer.py"), "--seconds", "0.3", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split() for line in run.stdout.splitlines()[1:] if line.strip()]
    assert [row[0] for row in rows] == ["5ms", "100ms"]
    assert all(float(row[1]) > 0 for row in rows)
