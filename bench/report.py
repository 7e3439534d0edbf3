"""Figures into words: medians, the results table, the issue's targets, and
the comparison of two result files (``bench/compare``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

NOISE = 10.0  # %: differences below this were noise on this machine (measured before the project started)
INVALID = 1.0  # %: a case with more failed or non-2xx requests than this measured something else

SUITE_TITLES = {
    "main": "Main comparison",
    "costs": "Each plugin's own cost, one process",
    "workers": "Worker processes",
    "routes": "Route count (matcher cost)",
    "plugins": "Plugins per route",
    "aggregate": "Aggregation",
}


def summarise(runs: list[dict]) -> dict:
    """Median requests/s, p50 and p99 over runs; spread = (max - min) / median of requests/s."""
    if not runs:
        return {}
    rps = [r["rps"] for r in runs]
    median = statistics.median(rps)
    return {
        "rps": median,
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p90_ms": statistics.median(r["p90_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "spread_pct": 100 * (max(rps) - min(rps)) / median if median else 0.0,
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "cpu_us_per_req": (
            statistics.median(r["cpu_us_per_req"] for r in runs) if all("cpu_us_per_req" in r for r in runs) else None
        ),
    }


def _m(result: dict, name: str) -> dict:
    return result["cases"].get(name, {}).get("median") or {}


def _rps(result: dict, name: str) -> float | None:
    return _m(result, name).get("rps")


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with what was measured (None: not measured in this run)."""
    out = []

    def ratio(a: str, b: str) -> float | None:
        x, y = _rps(result, a), _rps(result, b)
        return x / y if x and y else None

    def by_cpu(a: str, b: str) -> float | None:
        """The same ratio from the servers' CPU time per request: little affected by other load."""
        x, y = _m(result, a).get("cpu_us_per_req"), _m(result, b).get("cpu_us_per_req")
        return y / x if x and y else None

    def add(
        target: str,
        goal: str,
        value: float | None,
        ok: Callable[[float], bool | None],  # None: shown, no goal
        fmt: str = "{:.2f}x",
        cpu: float | None = None,
    ):
        out.append(
            {
                "target": target,
                "goal": goal,
                "measured": value,
                "text": fmt.format(value) if value is not None else "not measured",
                "ok": ok(value) if value is not None else None,
                "by_cpu": cpu,
                "by_cpu_text": fmt.format(cpu) if cpu is not None else "-",
            }
        )

    add(
        "bare route / hypercorn-trio no-proxy app (3)",
        "≥ 1.0 (aim 1.2)",
        ratio("bare", "hypercorn"),
        lambda v: v >= 1.0,
        cpu=by_cpu("bare", "hypercorn"),
    )
    add(
        "the same app on bascule.worker (3b) / on stock hypercorn (3)",
        "> 1 (shown)",
        ratio("hypercorn-bascule", "hypercorn"),
        lambda v: v > 1.0,
        cpu=by_cpu("hypercorn-bascule", "hypercorn"),
    )
    add("bare route / naive peer (4)", "≥ 1.5", ratio("bare", "naive"), lambda v: v >= 1.5, cpu=by_cpu("bare", "naive"))
    bare = _m(result, "bare")
    add(
        "bare route p99 / p50 at c=50",
        "≤ 2",
        bare["p99_ms"] / bare["p50_ms"] if bare.get("p50_ms") else None,
        lambda v: v <= 2.0,
    )
    # The full stack and each plugin: against the bare route of the same process when the costs
    # suite ran (its gateway serves them all), else the main suite's, each in a process of its own.
    paired = bool(_m(result, "cost-bare"))
    full_paired = paired and bool(_m(result, "cost-full"))
    full, bare_route = ("cost-full", "cost-bare") if full_paired else ("full", "bare")
    add(
        f"full default stack / bare route{' of its process' if full_paired else ''}",
        "≥ 0.80",
        ratio(full, bare_route),
        lambda v: v >= 0.80,
        cpu=by_cpu(full, bare_route),
    )
    if full_paired:
        add(
            "full default stack / bare route, each in a process of its own",
            "(shown)",
            ratio("full", "bare"),
            lambda v: None,
            cpu=by_cpu("full", "bare"),
        )
    add("2 workers / 1 worker", "≥ 1.8", ratio("workers-2", "workers-1"), lambda v: v >= 1.8)
    add(
        "cache hit / bare route",
        "≥ 1.5",
        ratio("cache-hit", "bare"),
        lambda v: v >= 1.5,
        cpu=by_cpu("cache-hit", "bare"),
    )
    few, many = _rps(result, "routes-10"), _rps(result, "routes-10000")
    add(
        "per-request cost, 10,000 routes / 10 routes",
        "≤ 1.10",
        few / many if few and many else None,
        lambda v: v <= 1.10,
        cpu=by_cpu("routes-10", "routes-10000"),
    )
    matcher = result.get("matcher_us", {})
    add(
        "Router.match alone, 10,000 routes / 10 routes",
        "≤ 1.10",
        matcher["10000"] / matcher["10"] if "10000" in matcher and "10" in matcher else None,
        lambda v: v <= 1.10,
    )
    hop, server = _m(result, "bare-c1"), _m(result, "hypercorn-c1")
    add(
        "proxy hop above the server at c=1: bare route p50 - (3) p50",
        "≤ 0.25 ms",
        hop["p50_ms"] - server["p50_ms"] if hop.get("p50_ms") and server.get("p50_ms") else None,
        lambda v: v <= 0.25,
        "{:+.2f} ms",
    )
    agg, slow, proxied = _m(result, "aggregate"), _m(result, "slowest"), _m(result, "proxy-slowest")
    agg_hop = agg["p50_ms"] - slow["p50_ms"] if agg.get("p50_ms") and slow.get("p50_ms") else None
    add("aggregate p50 - slowest backend p50 (c=1)", "≤ 2 ms", agg_hop, lambda v: v <= 2.0, "{:+.2f} ms")
    bare_hop = proxied["p50_ms"] - slow["p50_ms"] if proxied.get("p50_ms") and slow.get("p50_ms") else None
    add(
        "aggregate hop / bare route hop over the slowest backend (c=1)",
        "≤ 1.5",
        agg_hop / bare_hop if agg_hop is not None and bare_hop else None,
        lambda v: v <= 1.5,
    )
    first = _m(result, "cost-bare" if paired else "bare").get("cpu_us_per_req")
    again = _m(result, "cost-bare-again").get("cpu_us_per_req")
    base = first
    if paired and again and first:
        add(
            "control: the bare route again, above the bare route of its process",
            "(shown: the run's resolution)",
            (again - first) / first * 100,
            lambda v: None,
            "{:+.1f}%",
        )
        base = (first + again) / 2  # two measures of one route: each plugin's share is against both
    for name, exempt in PLUGIN_CASES:
        cost = _m(result, f"cost-{name}" if paired else name).get("cpu_us_per_req")
        add(
            f"{name} alone: CPU µs/req above the bare route{' of its process' if paired else ''}, share of it",
            "exempt: waits on Redis" if exempt else "≤ 5%",
            (cost - base) / base * 100 if cost and base else None,
            (lambda v: True) if exempt else (lambda v: v <= 5.0),
            "{:+.1f}%",
        )
    return out


#: The plugin cases whose own cost issue 23 bounds (each alone ≤ 5% of the bare route), and
#: whether the bound is waived (a Redis round trip per request).
PLUGIN_CASES = (
    ("jwt", False),
    ("key-auth", False),
    ("rate-limit-local", False),
    ("logging", False),
    ("prometheus", False),
    ("rate-limit-redis", True),
)


def _fmt_rps(v: float | None) -> str:
    return f"{v:,.0f}" if v else "-"


def _fmt_ms(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def _pct(a: float | None, b: float | None) -> str:
    return f"{100 * a / b:.1f}%" if a and b else "-"


def _note(case: dict) -> str:
    if case.get("skipped"):
        return "skipped: " + case["skipped"].replace("|", "/").replace("\n", " ")[:160]
    m = case.get("median") or {}
    bad = m.get("errors", 0) + m.get("non_2xx", 0)
    notes = []
    if bad:
        invalid = bad > INVALID / 100 * max(m.get("requests", 0), 1)
        notes.append(f"{'INVALID: ' if invalid else ''}{bad:,} failed/non-2xx of {m.get('requests', 0):,}")
    if m.get("spread_pct", 0) > NOISE and len(case.get("runs", ())) > 1:
        notes.append(f"spread {m['spread_pct']:.0f}%")
    return "; ".join(notes)


def _cpu(median: dict) -> str:
    v = median.get("cpu_us_per_req")
    return f"{v:,.0f}" if v else "-"


def _mib(case: dict) -> str:
    mem = case.get("memory_kib")
    return f"{mem['peak'] / 1024:.0f}" if mem else "-"


def render(result: dict) -> str:
    """The results as Markdown: one table per suite, memory, then the targets."""
    m = result["machine"]
    o = result["options"]
    lines = [
        f"Bascule benchmark, {result['date']}, commit {m.get('commit') or '?'}, {result['seconds']:.0f} s",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Load: wrk -t1 -c{o['connections']}, {o['runs']} x {o['duration']:.0f} s per case after "
        f"{o['warmup']:.0f} s warm-up, rounds interleaved, median reported; server on core "
        f"{result['placement']['server']}, wrk + upstream on core {result['placement']['load']}.",
        "",
    ]
    cases = result["cases"]
    direct, nginx, hyper = (_rps(result, n) for n in ("direct", "nginx", "hypercorn"))
    suites: dict[str, list[dict]] = {}
    for c in cases.values():
        suites.setdefault(c["suite"], []).append(c)
    for suite, members in suites.items():
        if suite == "memory":
            continue
        lines.append(f"### {SUITE_TITLES.get(suite, suite)}\n")
        if suite == "main":
            lines.append(
                "| case | req/s | p50 ms | p99 ms | % of (1) | % of (2) | % of (3) | CPU µs/req "
                "| peak RSS MiB | notes |"
            )
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for c in members:
                md = c.get("median") or {}
                r = md.get("rps")
                big = c["name"].endswith("-100k")
                d, n = (_rps(result, "direct-100k"), _rps(result, "nginx-100k")) if big else (direct, nginx)
                lines.append(
                    f"| {c['label']} | {_fmt_rps(r)} | {_fmt_ms(md.get('p50_ms'))} | "
                    f"{_fmt_ms(md.get('p99_ms'))} | {_pct(r, d)} | {_pct(r, n)} | "
                    f"{'-' if big else _pct(r, hyper)} | {_cpu(md)} | {_mib(c)} | {_note(c)} |"
                )
        else:
            base = next((c for c in members if c.get("median")), None)
            lines.append("| case | req/s | p50 ms | p99 ms | vs first row | CPU µs/req | peak RSS MiB | notes |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---|")
            for c in members:
                md = c.get("median") or {}
                r = md.get("rps")
                b = (base or {}).get("median", {}).get("rps")
                lines.append(
                    f"| {c['label']} | {_fmt_rps(r)} | {_fmt_ms(md.get('p50_ms'))} | "
                    f"{_fmt_ms(md.get('p99_ms'))} | {f'{r / b:.2f}x' if r and b else '-'} | "
                    f"{_cpu(md)} | {_mib(c)} | {_note(c)} |"
                )
        lines.append("")
    matcher = result.get("matcher_us")
    if matcher:
        lines.append(
            "Router.match alone (in process, best of 5): "
            + ", ".join(f"{int(n):,} routes {us:.2f} µs" for n, us in matcher.items())
            + ".\n"
        )
    stream = result.get("stream")
    if stream:
        lines.append("### Memory: one streamed response\n")
        if stream.get("skipped"):
            lines.append(f"skipped: {stream['skipped']}\n")
        else:
            lines.append(
                f"{stream['received'] / 2**20:,.0f} MiB streamed through a bare route (HTTP "
                f"{stream['status']}, {stream['mib_per_s']:.0f} MiB/s): gateway RSS "
                f"{stream['rss_before_kib'] / 1024:.0f} MiB before, {stream['rss_after_kib'] / 1024:.0f}"
                f" MiB after, peak {stream['peak_kib'] / 1024:.0f} MiB.\n"
            )
    profile = result.get("profile")
    if profile:
        lines.append(f"### Profile of `{profile.get('case', '?')}` (py-spy)\n")
        if profile.get("error"):
            lines.append(f"not recorded: {profile['error']}\n")
        else:
            lines.append(f"{profile['samples']:,} samples; raw stacks in {profile.get('file', '?')}\n")
            for key, title in (
                ("packages", "self time by package"),
                ("self", "self time by function"),
                ("top", "on the stack (inclusive)"),
            ):
                lines.append(f"| % of samples | {title} |")
                lines.append("|---:|---|")
                for row in profile.get(key, ()):
                    lines.append(f"| {row['pct']:.1f}% | `{row['frame']}` |")
                lines.append("")
    lines.append("### Targets (issue 23)\n")
    hello = _m(result, "hypercorn").get("cpu_us_per_req")
    if hello:
        lines.append(f"Machine speed on the day: stock hypercorn-trio alone, {hello:.0f} CPU µs/request.\n")
    lines.append("| target | goal | measured (req/s, latency) | met | same, from CPU µs/req |")
    lines.append("|---|---|---:|---|---:|")
    for t in result.get("targets", ()):
        met = {True: "yes", False: "**no**", None: "-"}[t["ok"]]
        lines.append(f"| {t['target']} | {t['goal']} | {t['text']} | {met} | {t.get('by_cpu_text', '-')} |")
    return "\n".join(lines)


def compare(a: dict, b: dict) -> str:
    """Case by case, B against A: requests/s change and latencies; changes beyond NOISE are marked."""
    lines = [
        f"A: {a['date']} commit {a['machine'].get('commit') or '?'}",
        f"B: {b['date']} commit {b['machine'].get('commit') or '?'}",
        "",
        "| case | A req/s | B req/s | change | A p50 / p99 ms | B p50 / p99 ms |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, ca in a["cases"].items():
        cb = b["cases"].get(name)
        if cb is None:
            continue
        ma, mb = ca.get("median") or {}, cb.get("median") or {}
        ra, rb = ma.get("rps"), mb.get("rps")
        if ra and rb:
            change = 100 * (rb - ra) / ra
            text = f"**{change:+.1f}%**" if abs(change) >= NOISE else f"{change:+.1f}%"
        else:
            text = "-"
        lines.append(
            f"| {name} | {_fmt_rps(ra)} | {_fmt_rps(rb)} | {text} | "
            f"{_fmt_ms(ma.get('p50_ms'))} / {_fmt_ms(ma.get('p99_ms'))} | "
            f"{_fmt_ms(mb.get('p50_ms'))} / {_fmt_ms(mb.get('p99_ms'))} |"
        )
    only = sorted(set(a["cases"]) ^ set(b["cases"]))
    if only:
        lines.append(f"\nIn one file only: {', '.join(only)}")
    lines.append(f"\nChanges under {NOISE:.0f}% are within this machine's noise (bold: beyond it).")
    return "\n".join(lines)
