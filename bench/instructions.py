"""Each plugin's cost in instructions: the serving gateway under callgrind, one route at a time.

    .venv/bin/python bench/instructions.py [--requests N] [--rounds N] [--connections N]

Needs valgrind (``callgrind_control`` too): ``apt install valgrind``, as nginx and wrk for
``bench/run``. One gateway process runs under callgrind, with the bare route, the bare route
again (the control) and one route per plugin, set as in ``bench/hooks.py``. Its upstream is
another process, outside valgrind (``inrequest.py``'s). For each route in turn: a warm-up, the
counters zeroed, ``requests`` requests over ``connections`` keep-alive connections, then a dump.
Its total over ``requests`` is the route's instructions per request, server included. Every
route is sent the same request, with both credentials (``configs.credentials``); ``bare-plain``
is the bare route sent neither, to show what carrying them costs. Rounds
alternate their order (``runner.rounds``); the median is printed, with the share above the
bare route.

An instruction count does not move with the machine's load. The control sits within about 0.5%
of the bare route, where ``bench/run``'s CPU time differs by 2-4% between two runs of the same
route. A count is not time, though: a regular expression's loop over a long header runs several
instructions a cycle, the interpreter about one. Read these shares as each plugin's work, precise
enough to compare changes, and ``bench/run``'s as what the plugin costs in time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import h11
import runner
import trio
from hooks import routes
from inrequest import config
from procs import Procs, free_port

ROUTES = ("bare", "bare-again")  # the baseline and the control: no plugin
PLAIN = "bare-plain"  # the bare route without the credentials


async def load(port: int, path: str, headers: dict[str, str], count: int, connections: int) -> None:
    """``count`` GETs of ``path``, ``connections`` at a time on keep-alive connections; each must be a 200."""
    left = count

    async def connection() -> None:
        nonlocal left
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        h = h11.Connection(h11.CLIENT)
        while left > 0:
            left -= 1
            request = h11.Request(method="GET", target=path, headers=[("host", "bench"), *headers.items()])
            await stream.send_all(h.send(request) + h.send(h11.EndOfMessage()))
            while (event := h.next_event()) is not h11.PAUSED and type(event) is not h11.EndOfMessage:
                if event is h11.NEED_DATA:
                    h.receive_data(await stream.receive_some(65536))
                elif type(event) is h11.Response and event.status_code != 200:
                    raise RuntimeError(f"{path}: answered {event.status_code}")
            h.start_next_cycle()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection)


class Callgrind:
    """The gateway under callgrind: ``count`` zeroes its counters, runs a load and reads the dump."""

    def __init__(self, procs: Procs, tmp: Path, config: str, port: int) -> None:
        (tmp / "gateway.toml").write_text(config)
        self.out = tmp / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", runner.PYTHON, "-m", "bascule.cli"]
        self.proc = procs.start("gateway", [*cmd, "run", "-c", str(tmp / "gateway.toml")], port=port, timeout=600)
        self.dumps = 0

    def count(self, run: Callable[[], Awaitable[None]]) -> int:
        """Instructions the gateway ran during ``trio.run(run)``."""
        self._control("-z")
        trio.run(run)
        self._control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}").read_text().splitlines()
        return next(int(line.split()[1]) for line in dump if line.startswith(("summary:", "totals:")))

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True, timeout=120)


def main(count: int, rounds: int, connections: int) -> None:
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: apt install valgrind")
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        plugins, credentials, consumers = routes(Path(tmp))
        up = free_port()
        upstream = [runner.PYTHON, str(runner.BENCH / "inrequest.py"), "--serve-upstream", str(up)]
        procs.start("upstream", upstream, port=up)
        port = free_port()
        text = config(f"http://127.0.0.1:{up}", plugins, consumers, bare=ROUTES, port=port)
        gateway = Callgrind(procs, Path(tmp), text, port)
        names = [*ROUTES, PLAIN, *plugins]
        counts: dict[str, list[float]] = {name: [] for name in names}
        # A warm-up round (the cache's first answer stores the response), then rounds in alternating order.
        for n, kept, order in runner.rounds(names, rounds, connections * 5, count):
            for name in order:
                path, sent = ("/bare/x", {}) if name == PLAIN else (f"/{name}/x", credentials)
                ran = gateway.count(partial(load, port, path, sent, int(n), connections))
                if kept:
                    counts[name].append(ran / n)
        bare = statistics.median(counts["bare"])
        print(f"{'route':12} {'kIr/req':>9} {'above bare':>11} {'share':>7}   ({count:,} requests x {rounds})")
        for name in names:
            median = statistics.median(counts[name])
            print(f"{name:12} {median / 1000:9.1f} {(median - bare) / 1000:+11.1f} {(median - bare) / bare:+7.2%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per route and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns of every route")
    parser.add_argument("--connections", type=int, default=10, help="requests in flight")
    args = parser.parse_args()
    main(args.requests, args.rounds, args.connections)
