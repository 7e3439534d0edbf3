"""The rate limiter's batches through each Redis client: CPU µs per batch and per decision.

    .venv/bin/python bench/redis_batches.py [--decisions N]

Against a redis-server started here (``bascule.testing.RedisServer``), the rate
limiter's script is run in batches of 1, 5, 20 and 50 decisions, through
coredis' pipeline (``RedisBackend`` on a Sentinel URL or with URL options) and
through ``bascule_ratelimit.resp.Pipe`` (a plain ``redis://`` URL). Only this
process's CPU time is counted, not the server's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import trio
from bascule.testing import RedisServer
from bascule_ratelimit.redis import SCRIPT
from bascule_ratelimit.resp import Pipe
from bascule_sdk.redis import open_redis

SIZES = (1, 5, 20, 50)
ARGS = ["gcra", 10_000_000, 60_000_000, 10_000_000]  # one limit, never reached


async def cpu_per_batch(send: Callable[[int], Awaitable[object]], size: int, decisions: int) -> float:
    batches = max(1, decisions // size)
    cpu = time.process_time()
    for _ in range(batches):
        await send(size)
    return (time.process_time() - cpu) / batches * 1e6


async def main(decisions: int) -> None:
    with RedisServer() as server:
        async with open_redis(server.url, timeout=5) as client:
            script = client.register_script(SCRIPT)
            await client.script_load(SCRIPT)
            pipe = Pipe.for_url(server.url)
            assert pipe is not None

            async def coredis_pipeline(size: int) -> object:
                async with client.pipeline(transaction=False, raise_on_error=False) as p:
                    sent = [p.evalsha(script.sha, keys=[f"k{i}"], args=ARGS) for i in range(size)]
                return [await r for r in sent]

            async def own_connection(size: int) -> object:
                return await pipe.send([("EVALSHA", script.sha, 1, f"k{i}", *ARGS) for i in range(size)])

            print(f"{'client':18} {'batch':>5} {'µs/batch':>9} {'µs/decision':>12}")
            for name, send in (("coredis pipeline", coredis_pipeline), ("resp.Pipe", own_connection)):
                await send(50)  # connect, warm up
                for size in SIZES:
                    per_batch = await cpu_per_batch(send, size, decisions)
                    print(f"{name:18} {size:5} {per_batch:9.1f} {per_batch / size:12.1f}")
            pipe.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=4000, help="decisions per client and batch size")
    trio.run(main, parser.parse_args().decisions)
