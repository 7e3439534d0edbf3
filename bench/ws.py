"""WebSockets through the gateway against the service directly: latency, messages per
second, and the gateway's memory for idle sockets. Short runs (the machine is shared).

    .venv/bin/python bench/ws.py [--round-trips 2000] [--messages 20000] [--idle 1000]

The service (bench/apps/ws_echo.py, trio-websocket) and the gateway (``bascule run``
on a bare ``[routes.websocket]`` route, no plugins) are processes of their own; the
client is this process (trio-websocket too), so both paths pay the same client. Each
figure is the median of alternating runs, direct then through the gateway; what to
read is the ratio between the two, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from procs import Procs, free_port, memory_kib
from trio_websocket import open_websocket_url

HERE = Path(__file__).resolve().parent

CONFIG = """
[gateway]
listen = "127.0.0.1:{port}"
graceful_timeout = "1s"

[services.echo]
targets = ["http://127.0.0.1:{service}"]

[[routes]]
name = "echo"
paths = ["/echo"]
service = "echo"
[routes.websocket]
max_connections = 100000
"""


async def round_trips(url: str, n: int, size: int) -> list[float]:
    """Seconds of each of ``n`` send-then-receive round trips on one socket."""
    payload = "x" * size
    times = []
    async with open_websocket_url(url) as ws:
        for _ in range(50):  # warm-up
            await ws.send_message(payload)
            await ws.get_message()
        for _ in range(n):
            start = time.perf_counter()
            await ws.send_message(payload)
            await ws.get_message()
            times.append(time.perf_counter() - start)
    return times


async def throughput(url: str, n: int, size: int) -> float:
    """Messages per second echoed on one socket, sender and receiver running at once."""
    payload = b"x" * size
    async with open_websocket_url(url, message_queue_size=64) as ws:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for _ in range(n):
                    await ws.send_message(payload)

            nursery.start_soon(send)
            for _ in range(n):
                await ws.get_message()
        return n / (time.perf_counter() - start)


async def idle_memory(url: str, gateway_pid: int, count: int) -> tuple[int, int]:
    """The gateway's RSS (KiB) before and with ``count`` idle sockets open through it."""
    before = memory_kib(gateway_pid)["rss"]
    opened = trio.Event()
    done = trio.Event()
    open_now = 0

    async def hold() -> None:
        nonlocal open_now
        async with open_websocket_url(url):
            open_now += 1
            if open_now == count:
                opened.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(hold)
        await opened.wait()
        await trio.sleep(0.5)  # let the gateway settle before reading its RSS
        after = memory_kib(gateway_pid)["rss"]
        done.set()
    return before, after


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        service, port = free_port(), free_port()
        procs.start("service", [sys.executable, str(HERE / "apps" / "ws_echo.py"), str(service)], port=service)
        config = Path(tmp) / "plugins.toml"
        config.write_text(CONFIG.format(port=port, service=service))
        gateway = procs.start("gateway", [sys.executable, "-m", "bascule.cli", "run", "-c", str(config)], port=port)
        urls = {"direct": f"ws://127.0.0.1:{service}/echo", "gateway": f"ws://127.0.0.1:{port}/echo"}
        latency: dict[str, list[float]] = {"direct": [], "gateway": []}
        rates: dict[str, list[float]] = {"direct": [], "gateway": []}
        for _ in range(args.runs):  # alternating: the machine's drift hits both alike
            for name, url in urls.items():
                latency[name] += await round_trips(url, args.round_trips, 64)
                rates[name].append(await throughput(url, args.messages, 64))
        before, after = await idle_memory(urls["gateway"], gateway.pid, args.idle)
    print(f"latency, {args.runs} x {args.round_trips} round trips of 64 B (µs): p50 / p99")
    for name in urls:
        print(f"  {name:8} {quantile(latency[name], 0.5) * 1e6:8.0f} / {quantile(latency[name], 0.99) * 1e6:8.0f}")
    ratio = quantile(latency["gateway"], 0.5) / quantile(latency["direct"], 0.5)
    print(f"  gateway/direct p50: {ratio:.2f}x")
    print(f"messages/s, {args.messages} messages of 64 B each way on one socket (median of {args.runs})")
    for name in urls:
        print(f"  {name:8} {statistics.median(rates[name]):10,.0f}")
    print(f"  gateway/direct: {statistics.median(rates['gateway']) / statistics.median(rates['direct']):.2f}x")
    print(
        f"memory: gateway RSS {before / 1024:.1f} MiB, with {args.idle} idle sockets {after / 1024:.1f} MiB"
        f" ({(after - before) / args.idle:.1f} KiB per socket)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    trio.run(main, parser.parse_args())
