"""bench/run's engine: start every server on 127.0.0.1, load each with wrk in
interleaved rounds, print the table, write the JSON.

    bench/run                   the full benchmark (about 20 minutes)
    bench/run --quick           1 s per case, one round: checks that everything runs
    bench/run --workers 2       the same with two gateway worker processes
    bench/run --suites main,routes --cases bare,jwt
    bench/run --profile bare    also record a py-spy profile of one case's hot path

Placement (2 cores): the server under test on core 1; wrk, the upstream nginx,
redis and the delay backends on core 0. Processes are pinned with taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from http.client import HTTPConnection
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import configs
import report
import wrk
from apps.hello import BODY
from bascule.testing import RedisServer
from procs import CORES, Procs, cpu_seconds, free_port, memory_kib, wait_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PEER = BENCH / ".venv" / "bin"
PEER_PACKAGES = ("uvicorn", "uvloop", "httptools", "httpx")  # the naive peer's stack (case 4)
SERVER_CORE = 1 if CORES >= 2 else None
LOAD_CORE = 0 if CORES >= 2 else None
SUITES = ("main", "costs", "workers", "routes", "plugins", "aggregate", "memory")


@dataclass
class Case:
    """One thing wrk loads, and what it measured."""

    name: str
    label: str
    suite: str
    url: str = ""
    pid: int | None = None
    headers: tuple[str, ...] = ()
    lua: str = ""
    connections: int | None = None
    wrk_core: int | None = LOAD_CORE
    runs: list[dict] = field(default_factory=list)
    memory_kib: dict | None = None
    skipped: str | None = None

    def summary(self) -> dict:
        return report.summarise(self.runs)


class Bench:
    def __init__(self, opts: argparse.Namespace, procs: Procs, tmp: Path) -> None:
        self.opts = opts
        self.procs = procs
        self.tmp = tmp
        self.cases: list[Case] = []
        self._upstream: str | None = None
        # Installed plugins, and the bench-only no-op plugin the gateways get on their PYTHONPATH.
        self.available = {ep.name for ep in metadata.entry_points(group="bascule.plugins")} | {"noop"}
        self.noop_path = self._noop_dist()
        self._redis: str | None = None
        self._jwt: configs.JWTKeys | None = None
        self.stream: dict[str, object] = {}
        self.matcher: dict[str, float] = {}

    # -- servers ------------------------------------------------------------

    def nginx(self, name: str, conf: Path, port: int, core: int | None) -> subprocess.Popen:
        return self.procs.start(
            name, ["nginx", "-e", str(conf.parent / "error.log"), "-c", str(conf)], core=core, port=port
        )

    def upstream(self) -> str:
        """The shared upstream nginx (core 0), started once."""
        if self._upstream is None:
            port = free_port()
            self.nginx("upstream", configs.nginx_upstream(self.tmp, port, BODY, "upstream"), port, LOAD_CORE)
            self._upstream = f"http://127.0.0.1:{port}"
        return self._upstream

    def redis(self) -> str:
        """The URL of the bench's Redis, started on first use: ``redis-server`` from the PATH, else
        the ``valkey-server`` of the test extra (``bascule.testing.RedisServer.find_binary``)."""
        if self._redis is None:
            port = free_port()
            server = RedisServer.find_binary()
            self.procs.start(
                "redis",
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                core=LOAD_CORE,
                port=port,
            )
            self._redis = f"redis://127.0.0.1:{port}"
        return self._redis

    def jwt(self) -> configs.JWTKeys:
        if self._jwt is None:
            self._jwt = configs.JWTKeys(self.tmp)
        return self._jwt

    def _noop_dist(self) -> Path:
        """A directory making the bench-only ``noop`` plugin discoverable (PYTHONPATH)."""
        path = self.tmp / "noop-dist"
        info = path / "bascule_bench_noop-0.0.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bascule-bench-noop\nVersion: 0.0.0\n")
        (info / "entry_points.txt").write_text("[bascule.plugins]\nnoop = bascule_bench_noop:Noop\n")
        return path

    def gateways(
        self, specs: Iterable[tuple[str, Callable[[int, int], str]]], workers: int = 1
    ) -> dict[str, tuple[int, int] | str]:
        """Start one Bascule per (name, config(port, admin port) -> plugins.toml text), all at once.

        Returns name -> (pid, port), or name -> an error message when it did not start.
        """
        env = {"PYTHONPATH": os.pathsep.join([str(self.noop_path), str(BENCH / "noop")])}
        pending = []
        for name, config in specs:
            port, admin = free_port(), free_port()
            path = self.tmp / f"{name}.toml"
            path.write_text(config(port, admin))
            cmd = [PYTHON, "-m", "bascule.cli", "run", "-c", str(path)]
            if workers > 1:
                cmd += ["--workers", str(workers)]
            proc = self.procs.start(name, cmd, core=SERVER_CORE if workers == 1 else None, env=env)
            pending.append((name, proc, port))
        started: dict[str, tuple[int, int] | str] = {}
        for name, proc, port in pending:
            try:
                wait_port(port, proc, 120, name)
                started[name] = (proc.pid, port)
            except RuntimeError as e:
                log = (self.tmp / f"{name}.log").read_text(errors="replace").strip().splitlines()
                self.procs.stop(proc)
                started[name] = f"{e}: {' | '.join(log[-3:])[:400]}"
        return started

    def gateway_cases(self, suite: str, defs: list[GatewayCase], workers: int = 1) -> list[Case]:
        """Cases served by Bascule: skipped when a plugin they need is not installed."""
        cases, specs = [], []
        for d in defs:
            missing = sorted(set(d.needs) - self.available)
            case = Case(
                d.name,
                d.label,
                suite,
                headers=tuple(d.headers),
                lua=d.lua,
                connections=d.connections,
                wrk_core=d.wrk_core,
            )
            if missing:
                case.skipped = f"plugin not installed: {', '.join(missing)}"
            elif d.gateway not in dict(specs):
                specs.append((d.gateway, d.config))
            cases.append((case, d))
        started = self.gateways(specs, workers)
        for case, d in cases:
            if case.skipped:
                continue
            got = started[d.gateway]
            if isinstance(got, str):
                case.skipped = f"gateway did not start: {got}"
            else:
                case.pid, port = got
                case.url = f"http://127.0.0.1:{port}{d.path}"
        return [c for c, _ in cases]

    # -- load ---------------------------------------------------------------

    def check(self, case: Case) -> None:
        """One request before loading: a case that does not answer 2xx is skipped, with the reason."""
        if case.skipped or not case.url:
            return
        host_port, _, path = case.url.removeprefix("http://").partition("/")
        host, _, port = host_port.partition(":")
        headers = dict(h.split(": ", 1) for h in case.headers)
        try:
            conn = HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/" + path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            conn.close()
        except OSError as e:
            case.skipped = f"no answer: {e}"
            return
        if not 200 <= r.status < 300:
            case.skipped = f"answered {r.status}: {body[:200].decode(errors='replace')}"

    def load(self, cases: list[Case], runs: int | None = None) -> None:
        """Warm every case up, then ``runs`` (default ``--runs``) interleaved rounds of every case,
        in the order ``rounds`` gives."""
        live = []
        for c in cases:
            self.check(c)
            if not c.skipped:
                live.append(c)
            self.cases.append(c)
        for seconds, keep, order in rounds(live, runs or self.opts.runs, self.opts.warmup, self.opts.duration):
            for c in order:
                if c.skipped:
                    continue
                try:
                    result = self._wrk(c, seconds)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    c.skipped = f"wrk: {e}"
                    continue
                if keep:
                    c.runs.append(result)
        for c in live:
            if c.pid:
                c.memory_kib = memory_kib(c.pid)

    def _wrk(self, case: Case, duration: float) -> dict:
        """One wrk run, with the server's CPU time per request (robust to other load on the machine)."""
        lua = wrk.script(self.tmp / f"{case.name}.lua", case.lua)
        before = cpu_seconds(case.pid) if case.pid else None
        result = wrk.run(
            case.url,
            duration=duration,
            connections=case.connections or self.opts.connections,
            lua=lua,
            headers=case.headers,
            core=case.wrk_core,
        )
        if before is not None and result["requests"]:
            result["cpu_us_per_req"] = (cpu_seconds(case.pid) - before) * 1e6 / result["requests"]
        return result

    # -- suites -------------------------------------------------------------

    def main(self) -> None:
        """(1)-(6), each with the small body, then the 100 KB body through (1), (2), (4) and (5)."""
        up = self.upstream()
        want = self.wanted
        direct = proxy = hello = hello_pid = served = served_pid = None
        naive = Case("naive", "(4) naive peer: ASGI + httpx on uvicorn", "main")
        direct_pid = proxy_pid = None
        if want("direct", "direct-100k"):  # the same nginx config as the upstream, on the server core
            direct = free_port()
            conf = configs.nginx_upstream(self.tmp, direct, BODY, "direct")
            direct_pid = self.nginx("direct", conf, direct, SERVER_CORE).pid
        if want("nginx", "nginx-100k"):
            proxy = free_port()
            conf = configs.nginx_proxy(self.tmp, proxy, int(up.rpartition(":")[2]), "nginx-proxy")
            proxy_pid = self.nginx("nginx-proxy", conf, proxy, SERVER_CORE).pid
        if want("hypercorn", "hypercorn-c1"):
            hello = free_port()
            p = self.procs.start(
                "hypercorn-trio",
                [
                    str(ROOT / ".venv" / "bin" / "hypercorn"),
                    "--worker-class",
                    "trio",
                    "--bind",
                    f"127.0.0.1:{hello}",
                    "hello:app",
                ],
                core=SERVER_CORE,
                port=hello,
                cwd=BENCH / "apps",
            )
            hello_pid = p.pid
        if want("hypercorn-bascule"):
            served = free_port()
            p = self.procs.start(
                "hypercorn-bascule",
                [str(ROOT / ".venv" / "bin" / "python"), "hello_bascule.py", str(served)],
                core=SERVER_CORE,
                port=served,
                cwd=BENCH / "apps",
            )
            served_pid = p.pid
        if want("naive", "naive-100k") and (problem := peer_environment()):
            naive.skipped = problem
        elif want("naive", "naive-100k"):
            port = free_port()
            p = self.procs.start(
                "naive",
                [
                    str(PEER / "uvicorn"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "naive_proxy:app",
                ],
                core=SERVER_CORE,
                port=port,
                cwd=BENCH / "apps",
                env={"UPSTREAM": up},
            )
            naive.url, naive.pid = f"http://127.0.0.1:{port}/api/x", p.pid
        defs = [d for d in plugin_cases(self) if want(d.name) or (d.name == "bare" and want("bare-c1"))]
        gw = self.gateway_cases("main", defs, self.opts.workers)
        if self.opts.workers > 1:  # the workers, and wrk, float over every core
            for c in gw:
                c.label += f" ({self.opts.workers} workers)"
                c.wrk_core = None
        cases = [
            Case("direct", "(1) upstream directly (nginx)", "main", f"http://127.0.0.1:{direct}/api/x", pid=direct_pid),
            Case(
                "nginx",
                "(2) nginx proxy_pass, keep-alive pool",
                "main",
                f"http://127.0.0.1:{proxy}/api/x",
                pid=proxy_pid,
            ),
            Case(
                "hypercorn",
                "(3) hypercorn-trio app, no proxying",
                "main",
                f"http://127.0.0.1:{hello}/api/x",
                pid=hello_pid,
            ),
            Case(
                "hypercorn-bascule",
                "(3b) the same app on Bascule's server module",
                "main",
                f"http://127.0.0.1:{served}/api/x",
                pid=served_pid,
            ),
            naive,
            *[c for c in gw if c.name != "bare-100k"],
            Case(
                "direct-100k",
                "100 KB body: (1) upstream directly",
                "main",
                f"http://127.0.0.1:{direct}/big",
                pid=direct_pid,
            ),
            Case("nginx-100k", "100 KB body: (2) nginx proxy", "main", f"http://127.0.0.1:{proxy}/big", pid=proxy_pid),
            Case(
                "naive-100k",
                "100 KB body: (4) naive peer",
                "main",
                naive.url.replace("/api/x", "/big"),
                pid=naive.pid,
                skipped=naive.skipped,
            ),
            *[c for c in gw if c.name == "bare-100k"],
        ]
        # The hop's latency: (3) and (5) again with one connection, requests one after another.
        bare = next((c for c in gw if c.name == "bare"), None)
        for name, label, of in (
            (
                "hypercorn-c1",
                "(3) hypercorn-trio app, no proxying, c=1",
                next(c for c in cases if c.name == "hypercorn"),
            ),
            ("bare-c1", "(5) Bascule, bare route, c=1", bare),
        ):
            if of is not None:
                cases.append(Case(name, label, "main", of.url, pid=of.pid, connections=1, skipped=of.skipped))
        self.load([c for c in cases if want(c.name)])

    def wanted(self, *names: str) -> bool:
        """Whether any of ``names`` is among the main-suite cases asked for (``--cases``; the costs
        suite takes the plugins of the main-suite cases asked for)."""
        return not self.opts.cases or bool(set(names) & set(self.opts.cases.split(",")))

    def costs(self) -> None:
        """Each plugin's own cost: the bare route, each plugin's route of the main suite and the
        full default stack, all in one gateway process, in rounds of alternating order (an even
        number of them). A plugin's cost is then its route's CPU µs/request above a bare route of
        the same process, free of the few percent by which separate processes of the same config
        differ; so is the full stack's. A second bare route among them, ``bare-again``, is the
        control: what it measures above the first is the run's resolution. Every route is sent
        the same request, with both credentials (``configs.credentials``)."""
        plugins = {name for name, _ in report.PLUGIN_CASES} | {"full"}
        defs = [
            d
            for d in plugin_cases(self)
            if d.name == "bare" or (d.name in plugins and self.wanted(d.name) and set(d.needs) <= self.available)
        ]
        bare = next(d for d in defs if d.name == "bare")
        control = replace(bare, name="bare-again", label="the bare route again (control)")
        defs.insert((len(defs) + 1) // 2, control)  # mid-round, where the plugins are measured
        routes = [{**d.routes[0], "name": d.name, "paths": [f"/{d.name}"]} for d in defs]
        consumers = next((d.consumers for d in defs if d.consumers), None)
        headers = [f"{name}: {value}" for name, value in configs.credentials(self.jwt()).items()]
        cases = [
            GatewayCase(
                f"cost-{d.name}",
                f"{d.label.removeprefix('(5) ').removeprefix('(6) ')}, one process",
                "costs",
                f"/{d.name}/x",
                routes,
                d.services,
                d.needs,
                headers=headers,
                consumers=consumers,
            )
            for d in defs
        ]
        self.load(self.gateway_cases("costs", cases), runs=self.opts.runs + self.opts.runs % 2)

    def workers(self) -> None:
        up = self.upstream()
        cases = self.gateway_cases("workers", [bare_case("workers-1", "bare route, 1 worker (core 1)", up)])
        two = bare_case("workers-2", "bare route, 2 workers (unpinned)", up)
        two.wrk_core = None
        cases += self.gateway_cases("workers", [two], workers=2)
        self.load(cases)

    def routes(self) -> None:
        up = self.upstream()
        counts = (10, 1000) if self.opts.quick else (10, 1000, 10000)
        defs = [many_routes_case(n, up) for n in counts]
        self.load(self.gateway_cases("routes", defs))
        self.matcher = matcher_costs(counts)

    def plugins(self) -> None:
        up = self.upstream()
        counts = (0, 4) if self.opts.quick else (0, 1, 4, 16)
        self.load(self.gateway_cases("plugins", [noop_case(n, up) for n in counts]))

    def aggregate(self) -> None:
        delays = (2, 5, 10)
        # One process per backend, as separate services are: one asyncio loop serving all three
        # would wake for each timer with epoll's millisecond rounding, and delay the slowest
        # backend by up to 1 ms inside the aggregation but not when it is called alone.
        backends = []
        for delay in delays:
            port = free_port()
            cmd = [PYTHON, str(BENCH / "apps" / "backends.py"), "delay", str(delay), str(port)]
            backends.append((self.procs.start(f"delay-backend-{delay}ms", cmd, core=LOAD_CORE, port=port), port))
        p, _ = backends[-1]
        urls = [f"http://127.0.0.1:{port}" for _, port in backends]
        c = self.opts.agg_connections
        slowest = Case(
            "slowest",
            f"slowest backend ({delays[-1]} ms) directly, c={c}",
            "aggregate",
            f"{urls[-1]}/x",
            connections=c,
            pid=p.pid,
        )
        defs = aggregate_cases(urls, c)
        self.load([slowest, *self.gateway_cases("aggregate", defs)])

    def memory(self) -> None:
        port = free_port()
        size = self.opts.stream_bytes
        p = self.procs.start(
            "stream-backend",
            [PYTHON, str(BENCH / "apps" / "backends.py"), "stream", str(size), str(port)],
            core=LOAD_CORE,
            port=port,
        )
        d = GatewayCase(
            "stream",
            f"{size / 2**20:,.0f} MiB streamed",
            "stream",
            "/stream",
            routes=[{"name": "stream", "paths": ["/stream"], "service": "stream"}],
            services={"stream": [f"http://127.0.0.1:{port}"]},
        )
        (case,) = self.gateway_cases("memory", [d])
        result: dict[str, object] = {"bytes": size}
        if case.skipped:
            result["skipped"] = case.skipped
        else:
            before = memory_kib(case.pid)
            try:
                curl = subprocess.run(
                    [
                        "curl",
                        "-sS",
                        "-o",
                        "/dev/null",
                        "--max-time",
                        "300",
                        "-w",
                        "%{http_code} %{size_download} %{time_total}",
                        case.url,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=320,
                )
            except subprocess.TimeoutExpired:
                curl = subprocess.CompletedProcess([], 1, "", "")
            after = memory_kib(case.pid)
            status, got, seconds = [*curl.stdout.split(), "0", "0", "0"][:3]
            result.update(
                status=int(status),
                received=int(got),
                seconds=float(seconds),
                rss_before_kib=before["rss"],
                rss_after_kib=after["rss"],
                peak_kib=after["peak"],
                mib_per_s=int(got) / float(seconds) / 2**20 if float(seconds) else 0.0,
            )
        self.stream = result
        self.procs.stop(p)


def peer_environment() -> str | None:
    """Create bench/.venv for the naive peer if needed; a reason it cannot run, or None."""
    if (PEER / "uvicorn").exists():
        return None
    print("bench: creating bench/.venv for the naive peer (uvicorn, uvloop, httptools, httpx)", file=sys.stderr)
    steps = ([sys.executable, "-m", "venv", str(PEER.parent)], [str(PEER / "pip"), "install", "-q", *PEER_PACKAGES])
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            return f"cannot create bench/.venv: {(out.stderr or out.stdout).strip()[-200:]}"
    return None


# -- Bascule cases ------------------------------------------------------------


T = TypeVar("T")


def rounds(cases: list[T], runs: int, warmup: float, duration: float) -> list[tuple[float, bool, list[T]]]:
    """``Bench.load``'s rounds, as (seconds, kept, cases in order): a warm-up round if ``warmup``
    (not kept), then ``runs`` kept rounds, every other one in reverse order. A cost that drifts
    through a round weighs on the cases at its end; the reversed rounds even it out."""
    kept = [(duration, True, cases if i % 2 == 0 else cases[::-1]) for i in range(runs)]
    return ([(warmup, False, cases)] if warmup else []) + kept


@dataclass
class GatewayCase:
    """A Bascule case: the plugins.toml it runs on, and how wrk calls it."""

    name: str
    label: str
    gateway: str  # cases with the same gateway name share one gateway process
    path: str
    routes: list[dict]
    services: dict[str, list[str]]
    needs: tuple[str, ...] = ()
    headers: list[str] = field(default_factory=list)
    lua: str = ""
    consumers: dict | None = None
    connections: int | None = None
    wrk_core: int | None = LOAD_CORE

    def config(self, port: int, admin: int) -> str:
        return configs.gateway(port, self.services, self.routes, admin=admin, consumers=self.consumers)


def route(plugins: dict | None = None, **extra: object) -> dict:
    return {"name": "api", "paths": ["/"], "service": "up", **extra, "plugins": plugins or {}}


def bare_case(name: str, label: str, up: str, path: str = "/api/x", gateway: str | None = None) -> GatewayCase:
    return GatewayCase(name, label, gateway or name, path, [route()], {"up": [up]})


def plugin_cases(b: Bench) -> list[GatewayCase]:
    """(5) the bare route and (6) each plugin alone, then the full default stack.

    Plugin settings follow each plugin's README (plugins/<dir>/README.md).
    """
    up = b.upstream()
    services = {"up": [up]}
    needs_redis = {"rate-limit-redis", "full"}
    redis = b.redis() if b.wanted(*needs_redis) and "rate-limit" in b.available else ""
    jwt = b.jwt()
    credentials = configs.credentials(jwt)
    bearer = [f"authorization: {credentials['authorization']}"]
    s = configs.plugin_settings(b.tmp, jwt, redis)

    def one(
        name: str,
        label: str,
        needs: tuple[str, ...],
        plugins: dict,
        path: str = "/api/x",
        gateway: str | None = None,
        **kw: object,
    ) -> GatewayCase:
        return GatewayCase(name, label, gateway or name, path, [route(plugins)], services, needs, **kw)

    return [
        bare_case("bare", "(5) Bascule, bare route", up),
        one("jwt", "(6) jwt (RS256, verified-token cache)", ("jwt",), {"jwt": s["jwt"]}, headers=bearer),
        one(
            "key-auth",
            "(6) key-auth",
            ("key-auth",),
            {"key-auth": s["key-auth"]},
            headers=[f"apikey: {credentials['apikey']}"],
            consumers=configs.CONSUMERS,
        ),
        one("rate-limit-local", "(6) rate-limit, local", ("rate-limit",), {"rate-limit": s["rate-limit-local"]}),
        one("rate-limit-redis", "(6) rate-limit, Redis", ("rate-limit",), {"rate-limit": s["rate-limit-redis"]}),
        one("cache-hit", "(6) cache hit", ("cache",), {"cache": s["cache"]}, path="/cacheable/x", gateway="cache"),
        one(
            "cache-miss",
            "(6) cache miss (every URL new)",
            ("cache",),
            {"cache": s["cache"]},
            path="/cacheable/x",
            gateway="cache",
            lua=wrk.UNIQUE_QUERY,
        ),
        one("logging", "(6) logging (JSON lines to a file)", ("logging",), {"logging": s["logging"]}),
        one("prometheus", "(6) metrics (prometheus)", ("prometheus",), {"prometheus": s["prometheus"]}),
        # The upstream nginx stands in for a collector that accepts every export (200), on core 0.
        one(
            "otel-collector-up",
            "(6) opentelemetry, every request traced, collector up",
            ("opentelemetry",),
            {"opentelemetry": {"endpoint": f"{up}/v1/traces"}},
        ),
        one(
            "otel-collector-down",
            "(6) opentelemetry, every request traced, collector down",
            ("opentelemetry",),
            {"opentelemetry": {"endpoint": "http://127.0.0.1:9/v1/traces", "export_timeout": "1s"}},
        ),
        one(
            "full",
            "(6) full default stack: jwt + rate-limit Redis + logging + metrics",
            ("jwt", "rate-limit", "logging", "prometheus"),
            {
                "jwt": s["jwt"],
                "rate-limit": s["rate-limit-redis"],
                "logging": s["logging"],
                "prometheus": s["prometheus"],
            },
            headers=bearer,
        ),
        bare_case("bare-100k", "100 KB body: (5) Bascule, bare route", up, "/big", gateway="bare"),
    ]


def many_routes_case(n: int, up: str) -> GatewayCase:
    """``n`` routes (a literal prefix and a ``{param}`` path each); wrk calls the last one declared."""
    routes = [
        {"name": f"r{i}", "paths": [f"/svc{i}/items/{{id}}", f"/svc{i}/static"], "service": "up"} for i in range(n)
    ]
    return GatewayCase(
        f"routes-{n}",
        f"{n:,} routes, request matches the last",
        f"routes-{n}",
        f"/svc{n - 1}/items/42",
        routes,
        {"up": [up]},
    )


def matcher_costs(counts: Iterable[int]) -> dict[str, float]:
    """µs per ``Router.match`` in this process for the same routes as ``many_routes_case``:
    the matcher alone, free of the server's cost and of other load's noise."""
    import timeit

    from bascule.routing import Router, RouterEntry

    timers = {}
    for n in counts:
        router = Router(
            [RouterEntry(path, i, order=i) for i in range(n) for path in (f"/svc{i}/items/{{id}}", f"/svc{i}/static")]
        )
        path = f"/svc{n - 1}/items/42"
        assert router.match("GET", path).target == n - 1
        timer = timeit.Timer(lambda r=router, p=path: r.match("GET", p))
        timers[str(n)] = (timer, timer.autorange()[0])
    costs = {n: float("inf") for n in timers}
    for _ in range(5):  # interleaved, best of 5
        for n, (timer, loops) in timers.items():
            costs[n] = min(costs[n], timer.timeit(loops) / loops * 1e6)
    return costs


def noop_case(n: int, up: str) -> GatewayCase:
    plugins = {f"noop{i}": {"plugin": "noop"} for i in range(n)}
    return GatewayCase(
        f"plugins-{n}",
        f"{n} no-op plugins on the route (3 hooks each)",
        f"plugins-{n}",
        "/api/x",
        [route(plugins)],
        {"up": [up]},
        ("noop",) if n else (),
    )


def aggregate_cases(urls: list[str], connections: int) -> list[GatewayCase]:
    """(7) One gateway: a bare route to the slowest backend, and a route aggregating all of them."""
    services = {f"b{i}": [u] for i, u in enumerate(urls)}
    agg = {
        "aggregate": {
            "backends": [
                {"name": f"b{i}", "service": f"b{i}", "path": "/x", "group": f"b{i}"} for i in range(len(urls))
            ]
        }
    }
    routes = [
        {"name": "slow", "paths": ["/slow"], "service": f"b{len(urls) - 1}", "strip_path": True},
        {"name": "agg", "paths": ["/agg"], "plugins": agg},
    ]
    return [
        GatewayCase(
            "proxy-slowest",
            f"Bascule bare route to the slowest backend, c={connections}",
            "aggregate",
            "/slow/x",
            routes,
            services,
            ("aggregate",),
            connections=connections,
        ),
        GatewayCase(
            "aggregate",
            f"aggregated route over {len(urls)} backends, c={connections}",
            "aggregate",
            "/agg",
            routes,
            services,
            ("aggregate",),
            connections=connections,
        ),
    ]


# -- main -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description="Bascule load benchmarks (loopback only).")
    p.add_argument("--quick", action="store_true", help="1 s per case, one round, no warm-up; smaller suites")
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes in the main suite")
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, from {', '.join(SUITES)}")
    p.add_argument("--cases", default="", help="main suite: only these cases (comma-separated names)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10; quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per case (default 3; quick 0)")
    p.add_argument("--runs", type=int, help="rounds; the median is reported (default 3; quick 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--agg-connections", type=int, default=1, help="connections for the aggregate suite")
    p.add_argument("--stream-bytes", type=int, help="size of the streamed response (default 1 GiB; quick 64 MiB)")
    p.add_argument("--profile", metavar="CASE", help="record a py-spy profile of CASE (main suite) after the runs")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/<date>.json)")
    p.add_argument("--max-minutes", type=float, default=60, help="stop everything after this long")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    opts = p.parse_args(argv)
    q = opts.quick
    opts.duration = opts.duration or (1 if q else 10)
    opts.warmup = opts.warmup if opts.warmup is not None else (0 if q else 3)
    opts.runs = opts.runs or (1 if q else 3)
    opts.stream_bytes = opts.stream_bytes or (64 * 2**20 if q else 2**30)
    unknown = set(opts.suites.split(",")) - set(SUITES)
    if unknown:
        p.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    if opts.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        opts.out = BENCH / "results" / f"{stamp}{'-quick' if q else ''}.json"
    return opts


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for dist in ("bascule", "bascule-sdk", "trio", "hypercorn", "httpcore", "h11", "pluggy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"]), ("redis-server", ["--version"])):
        try:
            out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=5)
            versions[tool] = re.search(r"\d+\.\d+[^\s\]]*", out.stdout + out.stderr).group()
        except (OSError, AttributeError, subprocess.TimeoutExpired):
            pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    return {
        "cpu": cpu,
        "cores": CORES,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + ("+dirty" if dirty else ""),
    }


class Deadline(Exception):
    """--max-minutes ran out."""


def _timeout(signum: int, frame: object) -> None:
    raise Deadline


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is not installed (bench/run installs it)", file=sys.stderr)
            return 2
    os.environ["PATH"] += os.pathsep + "/usr/sbin"
    signal.signal(signal.SIGALRM, _timeout)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started in the background, where SIGINT is ignored
    signal.alarm(int(opts.max_minutes * 60))
    tmp = Path(tempfile.mkdtemp(prefix="bascule-bench-"))
    tmp.chmod(0o755)  # nginx workers run as another user
    started = time.time()
    print(f"bench: logs in {tmp}; every server on 127.0.0.1", file=sys.stderr)
    suites = opts.suites.split(",")
    profile = None
    try:
        with Procs(tmp) as procs:
            bench = Bench(opts, procs, tmp)
            runners: dict[str, Callable[[], None]] = {
                "main": bench.main,
                "costs": bench.costs,
                "workers": bench.workers,
                "routes": bench.routes,
                "plugins": bench.plugins,
                "aggregate": bench.aggregate,
                "memory": bench.memory,
            }
            for name in SUITES:
                if name in suites:
                    print(f"bench: suite {name} ({time.time() - started:.0f} s)", file=sys.stderr)
                    before = {id(p) for _, p in procs.running}
                    runners[name]()
                    if name == "main" and opts.profile:
                        import hotspots

                        case = next((c for c in bench.cases if c.name == opts.profile and c.pid), None)
                        profile = hotspots.record(case, bench, tmp) if case else {"error": "no such case"}
                    # Gateways of a suite stop with it; the shared upstream and redis stay.
                    for n, p in list(procs.running):
                        if id(p) not in before and n not in ("upstream", "redis"):
                            procs.stop(p)
    except KeyboardInterrupt:
        print("bench: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except Deadline:
        print(f"bench: --max-minutes ({opts.max_minutes:g}) ran out; everything started was stopped", file=sys.stderr)
        return 124
    finally:
        signal.alarm(0)
        if not opts.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "placement": {"server": SERVER_CORE, "load": LOAD_CORE},
        "cases": {c.name: {**asdict(c), "median": c.summary()} for c in bench.cases},
    }
    if "memory" in suites:
        result["stream"] = bench.stream
    if bench.matcher:
        result["matcher_us"] = bench.matcher
    if profile is not None:
        result["profile"] = profile
    result["targets"] = report.targets(result)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print(report.render(result))
    print(f"\nbench: raw figures in {opts.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
