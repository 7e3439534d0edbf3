"""The access log writer's CPU per line, by flush interval: what batching lines saves.

    .venv/bin/python bench/writer.py [--seconds S] [--rounds N] [--rate LINES_PER_S]

A ``LineWriter`` (the logging plugin's) takes ``rate`` lines a second into a sink
that keeps nothing, while another task keeps the trio loop busy, as a loaded
gateway's is. Every write is a hop to a worker thread and a wake of the writer
task; on a 2-core VM each costs about 100 µs of CPU. The process's CPU time per
line is printed for each interval, the intervals taking turns, ``rounds`` times:
the differences between intervals are the writes' cost (the busy loop is the
same in each).
"""

from __future__ import annotations

import argparse
import time

import trio
from bascule_logging.writer import LineWriter

INTERVALS = (0.005, 0.1)  # the writer's former fixed gathering, and flush_interval's default


class Discard:
    """A sink that keeps nothing."""

    def write(self, data: bytes, /) -> int:
        return len(data)

    def flush(self) -> None:
        pass


async def cpu_per_line(interval: float, seconds: float, rate: float) -> float:
    """CPU µs per line over ``seconds`` of ``rate`` lines a second, written every ``interval``."""
    writer = LineWriter(Discard(), 10_000, interval=interval)
    busy = True

    async def spin() -> None:
        while busy:
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(spin)
        cpu, start, lines = time.process_time(), trio.current_time(), 0
        while trio.current_time() - start < seconds:
            writer.put(b"x\n")
            lines += 1
            await trio.sleep(1 / rate)
        used = time.process_time() - cpu
        busy = False
        await writer.aclose(5)
    return used / lines * 1e6


async def main(seconds: float, rounds: int, rate: float) -> None:
    print(f"{'flush interval':>14} {'CPU µs per line':>16}   ({rate:,.0f} lines/s, {seconds:g} s each)")
    for _ in range(rounds):
        for interval in INTERVALS:
            print(f"{interval * 1000:12g}ms {await cpu_per_line(interval, seconds, rate):16.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every interval")
    parser.add_argument("--rate", type=float, default=2000.0, help="lines a second")
    args = parser.parse_args()
    trio.run(main, args.seconds, args.rounds, args.rate)
