"""The soak script in its shortened form: mixed traffic through the default config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_short_soak_loses_no_request_and_memory_stays_bounded(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "15", "--concurrency", "8",
         "--json", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    soak = json.loads(out.read_text())
    assert soak["requests"] > 100 and soak["failures"] == 0
    # A leak of even a few hundred bytes per request would show here; warm-up (caches,
    # buckets, imports) is excluded.
    growth_kib = soak["rss_kib_last"] - soak["rss_kib_after_warmup"]
    assert growth_kib < 32 * 1024, soak
