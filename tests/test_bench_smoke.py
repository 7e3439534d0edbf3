"""bench/run --quick runs end to end and writes its JSON (no timing is asserted)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        sys.platform != "linux"
        or not all(shutil.which(t) or Path(f"/usr/sbin/{t}").exists() for t in ("nginx", "wrk")),
        reason="bench/run needs Linux with nginx and wrk (bench/run installs them; CI's .ci/run does not)",
    ),
]


def test_quick_run_writes_results(tmp_path):
    out = tmp_path / "quick.json"
    run = subprocess.run(
        [
            str(ROOT / "bench" / "run"),
            "--quick",
            "--suites",
            "main,costs,plugins,memory",
            "--cases",
            "direct,nginx,hypercorn,bare,key-auth,full",
            "--stream-bytes",
            str(8 * 2**20),
            "--out",
            str(out),
            "--max-minutes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    cases = result["cases"]
    for name in ("direct", "nginx", "hypercorn", "bare", "key-auth", "plugins-0", "plugins-4"):
        assert cases[name]["skipped"] is None, (name, cases[name]["skipped"])
        (only,) = cases[name]["runs"]
        assert only["requests"] > 0 and only["errors"] == 0 and only["non_2xx"] == 0, (name, only)
    # One process, two rounds (an even number), one reversed; a second bare route as the control.
    for name in ("cost-bare", "cost-bare-again", "cost-key-auth", "cost-full"):
        assert cases[name]["skipped"] is None, (name, cases[name]["skipped"])
        assert [r["non_2xx"] + r["errors"] for r in cases[name]["runs"]] == [0, 0], (name, cases[name]["runs"])
    assert "cost-jwt" not in cases  # --cases chooses the plugins of the costs suite too
    assert cases["bare"]["memory_kib"]["peak"] > 0
    stream = result["stream"]
    assert (stream["status"], stream["received"]) == (200, 8 * 2**20)
    assert "| (5) Bascule, bare route |" in run.stdout
    assert {t["target"] for t in result["targets"]} >= {
        "bare route / naive peer (4)",
        "2 workers / 1 worker",
        "key-auth alone: CPU µs/req above the bare route of its process, share of it",
        "full default stack / bare route of its process",
        "full default stack / bare route, each in a process of its own",
        "control: the bare route again, above the bare route of its process",
    }
    measured = {t["target"]: t["measured"] for t in result["targets"]}
    for paired in (
        "full default stack / bare route of its process",
        "control: the bare route again, above the bare route of its process",
    ):
        assert measured[paired] is not None, paired  # from the costs suite's cases, not left out


def test_compare_reads_two_results(tmp_path):
    def result(rps):
        return {
            "date": "d",
            "machine": {"commit": "c"},
            "cases": {"bare": {"median": {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0}}},
        }

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result(1000.0)))
    b.write_text(json.dumps(result(1250.0)))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare"), str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "| bare | 1,000 | 1,250 | **+25.0%** |" in out
