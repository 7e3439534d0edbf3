"""The HTTP/1.x edge under fuzzing: a real ``bascule run`` process takes hostile bytes on
its plain port while well-behaved clients keep being served (bench/edgefuzz.py).

``BASCULE_FUZZ_SECONDS`` (default 60) is the fuzzing time of this file: two thirds
with 1 worker, one third with 2 workers. ``BASCULE_FUZZ_SEED`` replays a run; the
seed is printed and named in every failure (``bench/fuzz.py --seed S --replay N``
prints input N).
"""

import os
import random
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from bascule.testing import start_gateway, start_upstream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import edgefuzz as ef  # bench/ is not a package: on sys.path above

SECONDS = float(os.environ.get("BASCULE_FUZZ_SECONDS", "60"))
SEED = int(os.environ.get("BASCULE_FUZZ_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture(scope="module")
def upstream():
    with ef.Upstream() as up:
        yield up


@pytest.fixture
def gateway(tmp_path, upstream, request):
    gw = ef.Gateway(tmp_path, upstream.url, workers=request.param)
    with gw:
        yield gw
    # A clean shutdown (SIGTERM drains, exit 0) is part of surviving.
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gateway", "share"), [(1, 2 / 3), (2, 1 / 3)], indirect=["gateway"], ids=["1-worker", "2-workers"]
)
async def test_fuzzed_edge_keeps_serving_well_behaved_clients(gateway, share):
    watch = await ef.fuzz(gateway, SECONDS * share, SEED)
    summary = watch.summary()
    print(f"\nedge fuzz, {gateway.workers} worker(s), seed {SEED}:\n{ef.to_json(summary)}")
    assert watch.failures(max_growth_mib=50) == [], f"seed {SEED}: {ef.to_json(summary)}"
    assert gateway.alive()
    assert gateway.worker_pids() == gateway.pids  # no worker was replaced
    # The run did what it claims: many inputs, of every kind, and the clients were served throughout.
    assert watch.inputs >= 100 and len(watch.kinds) >= 8, summary
    assert watch.good_sent >= 100, summary


@pytest.mark.slow
@pytest.mark.parametrize("gateway", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
async def test_content_length_and_chunked_then_more_bytes_is_answered_400_1000_times(gateway):
    """hypercorn issue #203: HTTP/1.0, Content-Length + chunked, a last chunk, then a request line."""
    result = await ef.crash_regression(gateway, total=1000, concurrency=10)
    print(f"\n{gateway.workers} worker(s): {ef.to_json(result)}")
    assert result["outcomes"] == {"answered": 1000}, ef.to_json(result)
    assert result["alive"] and gateway.worker_pids() == gateway.pids
    assert ef.log_problems(gateway.log_text()) == []


async def test_a_websocket_upgrade_is_refused_with_a_client_error(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
    """,
    )
    upgrade = ef.Case(
        "websocket",
        [
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ],
    )
    answer = await ef.exchange(int(gw.url.rsplit(":", 1)[1]), upgrade, wait=5)
    assert answer.status == 403, answer.data[:300]
    assert b"application/problem+json" in answer.data and b"x-request-id" in answer.data.lower()
    assert upstream.requests == []


# The fuzzer's own parts: its oracles must be able to fail, and its inputs must replay.


def test_log_check_accepts_contained_errors_and_flags_everything_else():
    contained = (
        "2026-12-01 12:00:00,000 bascule WARNING connection error from 127.0.0.1:5, connection closed: X\n"
        'Traceback (most recent call last):\n  File "x", line 1\nValueError: x\n'
        "2026-12-01 12:00:01,000 bascule INFO reloaded plugins.toml\n"
    )
    assert ef.log_problems(contained) == []
    assert ef.contained_errors(contained) == 1
    escaped = contained + "  + Exception Group Traceback (most recent call last):\n  | trio.BusyResourceError\n"
    other_record = (
        "2026-12-01 12:00:02,000 hypercorn.error ERROR Error in ASGI Framework\n"
        "Traceback (most recent call last):\nKeyError: 1\n"
    )
    died = "2026-12-01 12:00:03,000 bascule ERROR worker 1 exited with -9; starting a new one\n"
    assert len(ef.log_problems(escaped)) == 1
    assert len(ef.log_problems(contained + other_record)) == 1
    assert ef.log_problems(died) == [died.strip()]
    assert len(ef.log_problems("Traceback (most recent call last):\nSystemExit\n")) == 1


def test_inputs_replay_from_seed_and_index_and_cover_every_kind():
    first = [ef.case(7, i) for i in range(400)]
    assert [c.data for c in first] == [ef.case(7, i).data for i in range(400)]
    assert [c.data for c in first] != [ef.case(8, i).data for i in range(400)]
    kinds = {c.kind for c in first}
    assert kinds >= {
        "mutated",
        "framing",
        "chunked",
        "syntax",
        "pipeline",
        "split",
        "garbage",
        "partial",
        "tls-h2",
        "valid",
        "huge-done",
        "huge-open",
    }
    sizes = [len(c.data) for c in first if c.kind.startswith("huge")]
    assert min(sizes) < ef.MAX_HEADER_SIZE < max(sizes)


def test_the_crash_check_fails_on_a_server_that_answers_and_keeps_the_connection_open():
    async def main() -> dict:
        async def handler(stream: trio.SocketStream) -> None:
            await stream.receive_some()
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            await trio.sleep(2)

        class Fake:  # stands in for a gateway: alive, on the listener's port
            port = 0

            def alive(self) -> bool:
                return True

        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            Fake.port = listener.socket.getsockname()[1]
            result = await ef.crash_regression(Fake(), total=3, concurrency=3)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
        return result

    result = trio.run(main)
    assert result["outcomes"] == {"answer not 400 + connection: close + closed": 3}
