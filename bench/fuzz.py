"""Edge fuzzing, long form: the fuzzers of tests/test_fuzz_edge.py and tests/test_fuzz_h2.py
(one implementation: bench/edgefuzz.py) against 1 and 2 gateway workers.

    .venv/bin/python bench/fuzz.py [--seconds 600] [--workers 1,2] [--seed N] [--json OUT]
    .venv/bin/python bench/fuzz.py --seed N --replay INDEX     # print one input of a run

For each worker count: ``--seconds`` of HTTP/1.x fuzz inputs on the plain port
while 3 well-behaved clients are served; the hypercorn #203 request 1,000
times; then each HTTP/2 attack over TLS (``--h2-seconds`` at most each) while
2 HTTP/1.1 and 2 HTTP/2 clients are served. Prints Markdown tables of the
figures; exits 1 if any run broke a promise (a process exit, a lost
well-behaved request, a 500, an uncontained traceback, RSS growth of 50 MiB
or more after warm-up). Everything runs on 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgefuzz as ef


def run_edge(
    upstream: ef.Upstream, workdir: Path, workers: int, seconds: float, seed: int, tracebacks: bool
) -> dict[str, Any]:
    """One HTTP/1.x fuzz run and the #203 regression, each on a fresh gateway."""
    out: dict[str, Any] = {"workers": workers}
    with ef.Gateway(workdir / f"edge-{workers}", upstream.url, workers=workers, tracebacks=tracebacks) as gw:
        watch = trio.run(partial(ef.fuzz, gw, seconds, seed))
        out["fuzz"] = {**watch.summary(), "failures": watch.failures()}
    out["fuzz"]["exit_code_on_sigterm"] = gw.proc.returncode if gw.proc else None
    with ef.Gateway(workdir / f"crash-{workers}", upstream.url, workers=workers, tracebacks=tracebacks) as gw:
        crash = trio.run(ef.crash_regression, gw)
        crash["log_problems"] = gw.problems()[:3]
        crash["workers_replaced"] = len(gw.pids - gw.worker_pids()) if gw.alive() else None
        out["crash"] = crash
    return out


def run_h2(upstream: ef.Upstream, workdir: Path, workers: int, seconds: float, tracebacks: bool) -> list[dict]:
    """Every HTTP/2 attack (and the no-attack control), each on a fresh TLS gateway."""
    rows = []
    for name in ef.ATTACKS:
        with ef.Gateway(
            workdir / f"h2-{workers}-{name}", upstream.url, workers=workers, tls=True, tracebacks=tracebacks
        ) as gw:
            watch, outcome = trio.run(partial(ef.h2_attack, gw, name, seconds=seconds))
        failures = watch.failures()
        peak = (watch.rss_peak_kib - watch.rss_warm_kib) / 1024
        if peak >= 64:
            failures.append(f"peak RSS {peak:.0f} MiB over the start")
        rows.append(
            {
                "workers": workers,
                "attack": name,
                "outcome": outcome.describe(),
                "frames": outcome.frames_sent,
                "mib_sent": round(outcome.bytes_sent / 2**20, 1),
                "seconds": round(outcome.seconds, 1),
                "goaway": outcome.goaway,
                "closed_by_server": outcome.closed_by_server,
                "responses": dict(outcome.responses),
                **{k: v for k, v in watch.summary().items() if k.startswith(("good_", "rss_", "exits", "contained"))},
                "failures": failures,
            }
        )
    return rows


def tables(result: dict[str, Any]) -> str:
    lines = [
        "### HTTP/1.x fuzzing (plain port)",
        "",
        "| workers | duration | inputs | inputs/min | process exits | well-behaved sent | lost | 500s "
        "| contained errors | RSS after warm-up MiB | RSS end MiB | slope KiB/min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["edge"]:
        f = run["fuzz"]
        lines.append(
            f"| {run['workers']} | {f['seconds'] / 60:.1f} min | {f['inputs']:,} | {f['inputs_per_minute']:,} "
            f"| {f['exits']} | {f['good_sent']:,} | {f['good_lost']} | {len(f['server_errors'])} "
            f"| {f['contained_errors_logged']} | {f['rss_warm_mib']} | {f['rss_end_mib']} "
            f"| {f['rss_slope_kib_per_min']:,} |"
        )
    lines += [
        "",
        "First status of each fuzz answer: "
        + "; ".join(
            f"{run['workers']} worker(s): " + ", ".join(f"{k} {v:,}" for k, v in run["fuzz"]["statuses"].items())
            for run in result["edge"]
        ),
        "",
        "### The hypercorn #203 request, 1,000 times",
        "",
        "| workers | outcomes | alive after |",
        "|---:|---|---|",
    ]
    for run in result["edge"]:
        c = run["crash"]
        lines.append(
            f"| {run['workers']} | {', '.join(f'{k}: {v}' for k, v in c['outcomes'].items())} "
            f"| {'yes' if c['alive'] else 'no'} |"
        )
    if result["h2"]:
        lines += [
            "",
            "### HTTP/2 attacks over TLS",
            "",
            "| workers | attack | sent | server | exits | well-behaved sent / lost | RSS start / peak MiB |",
            "|---:|---|---|---|---:|---|---|",
        ]
        for r in result["h2"]:
            server = (f"GOAWAY {', '.join(r['goaway'])}" if r["goaway"] else "no GOAWAY") + (
                ", closed" if r["closed_by_server"] else ", kept open"
            )
            lines.append(
                f"| {r['workers']} | {r['attack']} | {r['frames']:,} frames, {r['mib_sent']} MiB, "
                f"{r['seconds']} s | {server} | {r['exits']} | {r['good_sent']:,} / {r['good_lost']} "
                f"| {r['rss_warm_mib']} / {r['rss_peak_mib']} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="HTTP/1.x fuzzing per worker count (default 600)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random, printed)")
    parser.add_argument("--h2-seconds", type=float, default=10, help="longest HTTP/2 attack (default 10)")
    parser.add_argument("--no-h2", action="store_true", help="skip the HTTP/2 attacks")
    parser.add_argument(
        "--tracebacks",
        action="store_true",
        help="log contained errors with their tracebacks (the bascule logger at DEBUG)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    parser.add_argument(
        "--replay",
        type=int,
        default=None,
        metavar="INDEX",
        help="print input INDEX of --seed (its kind, how it ends, its bytes) and exit",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    if args.replay is not None:
        c = ef.case(seed, args.replay)
        print(f"seed {seed} input {args.replay}: {c.kind}, {len(c.chunks)} chunk(s), then {c.finish}")
        print(repr(c.data))
        return 0
    print(f"edge fuzzing: seed {seed}, {args.seconds:.0f} s per worker count, workers {args.workers}", flush=True)
    started = time.monotonic()
    result: dict[str, Any] = {"seed": seed, "seconds": args.seconds, "edge": [], "h2": []}
    with ef.Upstream() as upstream, tempfile.TemporaryDirectory(prefix="bascule-fuzz-") as tmp:
        for workers in (int(w) for w in args.workers.split(",")):
            result["edge"].append(run_edge(upstream, Path(tmp), workers, args.seconds, seed, args.tracebacks))
            print(f"  {workers} worker(s): fuzzing done", flush=True)
            if not args.no_h2:
                result["h2"] += run_h2(upstream, Path(tmp), workers, args.h2_seconds, args.tracebacks)
                print(f"  {workers} worker(s): HTTP/2 attacks done", flush=True)
    result["wall_seconds"] = round(time.monotonic() - started)
    failures = [f"{run['workers']} worker(s): {f}" for run in result["edge"] for f in run["fuzz"]["failures"]]
    failures += [
        f"{run['workers']} worker(s), #203 request: {run['crash']['outcomes']}"
        for run in result["edge"]
        if run["crash"]["outcomes"] != {"answered": 1000} or not run["crash"]["alive"] or run["crash"]["log_problems"]
    ]
    failures += [f"{r['workers']} worker(s), {r['attack']}: {f}" for r in result["h2"] for f in r["failures"]]
    result["failures"] = failures
    print(tables(result))
    print(
        f"\nseed {seed}; {result['wall_seconds']} s in all; "
        + ("every promise kept" if not failures else f"{len(failures)} broken:\n  " + "\n  ".join(failures))
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
