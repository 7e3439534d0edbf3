"""The bench's in-process scripts run, briefly, and print a figure for everything they name
(no timing is asserted: bench/README.md reports the figures of full runs); bench/run's rounds."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import targets  # noqa: E402  (bench/ is not a package: on sys.path above)
from runner import rounds  # noqa: E402
from wrk import UNIQUE_QUERY, script  # noqa: E402


def bench(script: str, *args: str) -> dict[str, list[str]]:
    """The rows ``bench/<script>`` prints after its header line, by their first column."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[1:] if line.strip()}


def test_each_plugins_hooks_are_timed():
    rows = bench("hooks.py", "--loops", "10")
    assert set(rows) == {"jwt", "key-auth", "rate-limit", "logging", "prometheus", "cache"}
    for plugin, costs in rows.items():
        *phases, total = map(float, costs)
        assert total > 0, plugin
        assert abs(total - sum(phases)) <= 0.03, plugin  # each printed to two decimals
    assert float(rows["logging"][3]) > 0  # its line is made in on_log's timing
    assert float(rows["cache"][1]) == 0  # a hit goes nowhere upstream


def test_each_plugins_route_is_timed_in_process():
    rows = bench("inrequest.py", "--requests", "40", "--rounds", "1")
    assert set(rows) == {"bare", "jwt", "key-auth", "rate-limit", "logging", "prometheus", "cache"}
    assert all(float(cost) > 0 for cost, *_ in rows.values())
    assert float(rows["bare"][1]) == 0  # the baseline
    assert float(rows["cache"][1]) < 0  # a hit goes nowhere upstream


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind is not installed (bench only)")
def test_each_plugins_route_is_counted_in_instructions():
    rows = bench("instructions.py", "--requests", "20", "--rounds", "1", "--connections", "2")
    assert set(rows) == {
        *("bare", "bare-again", "bare-plain"),
        *("jwt", "key-auth", "rate-limit", "logging", "prometheus", "cache"),
    }
    assert all(float(count) > 100 for count, *_ in rows.values())  # thousands of instructions per request
    assert float(rows["bare"][1]) == 0  # the baseline
    assert float(rows["cache"][1]) < 0  # a hit goes nowhere upstream
    assert float(rows["bare-plain"][1]) < 0  # a shorter request: no credentials to carry


def test_the_log_writer_is_timed_at_each_interval():
    rows = bench("writer.py", "--seconds", "0.3", "--rounds", "1")
    assert list(rows) == ["5ms", "100ms"]
    assert all(float(cost) > 0 for cost, *_ in rows.values())


def test_each_redis_client_is_timed_at_each_batch_size():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "redis_batches.py"), "--decisions", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.rsplit(None, 3) for line in run.stdout.splitlines()[1:]]
    assert [(client, int(size)) for client, size, _, _ in rows] == [
        (client, size) for client in ("coredis pipeline", "resp.Pipe") for size in (1, 5, 20, 50)
    ]
    assert all(float(batch) > 0 and float(decision) > 0 for _, _, batch, decision in rows)


def test_every_other_round_runs_the_cases_in_reverse_order():
    assert rounds(["a", "b", "c"], 3, 2.0, 10.0) == [
        (2.0, False, ["a", "b", "c"]),  # the warm-up, not kept
        (10.0, True, ["a", "b", "c"]),
        (10.0, True, ["c", "b", "a"]),
        (10.0, True, ["a", "b", "c"]),
    ]
    assert rounds(["a", "b"], 2, 0, 1.0) == [(1.0, True, ["a", "b"]), (1.0, True, ["b", "a"])]  # no warm-up


def test_a_plugins_share_is_taken_against_both_measures_of_the_bare_route():
    cpu = {"cost-bare": 400.0, "cost-bare-again": 410.0, "cost-jwt": 425.0, "cost-logging": 430.0}
    measured = {
        t["target"]: t["measured"]
        for t in targets({"cases": {n: {"median": {"cpu_us_per_req": v}} for n, v in cpu.items()}})
    }
    assert measured["control: the bare route again, above the bare route of its process"] == pytest.approx(2.5)
    share = "{} alone: CPU µs/req above the bare route of its process, share of it"
    assert measured[share.format("jwt")] == pytest.approx(20 / 405 * 100)  # 4.9%: 6.25% against the first alone
    assert measured[share.format("logging")] == pytest.approx(25 / 405 * 100)
    assert measured[share.format("key-auth")] is None  # not measured in this run


def test_each_run_of_the_cache_miss_case_asks_for_urls_never_asked_before(tmp_path):
    # The script is written again for every run: its RUN token makes the URLs of a run its own.
    first, second = (script(tmp_path / f"{n}.lua", UNIQUE_QUERY).read_text() for n in (1, 2))
    assert '"?n=" .. RUN .. "-" .. n' in first
    run_lines = [text.splitlines()[0] for text in (first, second)]
    assert all(line.startswith('RUN = "') for line in run_lines)
    assert run_lines[0] != run_lines[1]
