"""HTTP/2 attacks over TLS on a real ``bascule run`` process (bench/edgefuzz.py): each is
bounded in frames and seconds, and while it runs two HTTP/1.1 and two HTTP/2 clients on
other connections must keep getting correct answers.

What the server does to each attacker is printed (``pytest -s``) and asserted where
it is a promise: a header list beyond ``max_header_size`` is never served.
"""

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import edgefuzz as ef  # bench/ is not a package: on sys.path above

ATTACK_SECONDS = 8.0
MAX_GROWTH_MIB = 64  # peak RSS during the attack over the RSS before it


@pytest.fixture(scope="module")
def upstream():
    with ef.Upstream() as up:
        yield up


@pytest.fixture
def gateway(tmp_path, upstream):
    gw = ef.Gateway(tmp_path, upstream.url, workers=1, tls=True)
    with gw:
        yield gw
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack", ["none", "rapid-reset", "continuation-flood", "settings-flood", "huge-headers", "hpack-bomb"]
)
async def test_an_http2_attack_has_a_bounded_effect(gateway, attack):
    watch, outcome = await ef.h2_attack(gateway, attack, seconds=ATTACK_SECONDS)
    summary = watch.summary()
    print(f"\n{outcome.describe()}\n{ef.to_json(summary)}")
    peak_growth = (watch.rss_peak_kib - watch.rss_warm_kib) / 1024
    assert watch.failures(max_growth_mib=MAX_GROWTH_MIB) == [], (outcome.describe(), summary)
    assert peak_growth < MAX_GROWTH_MIB, (outcome.describe(), summary)
    assert gateway.alive() and gateway.worker_pids() == gateway.pids
    assert watch.good_sent >= 20, summary  # both kinds of clients were at work during the attack
    if attack != "none":
        assert outcome.frames_sent > 0 and outcome.connections >= 1, outcome.describe()
    if attack in ("huge-headers", "hpack-bomb"):
        assert outcome.status_of.get(1 if attack == "huge-headers" else 3) != "200", outcome.describe()


async def test_data_after_an_early_answer_keeps_the_connection(gateway):
    """A POST answered before its body ends (Content-Length: 0 with the END_STREAM in a
    later empty DATA frame, as httpx sends an empty body) must not cost the connection."""
    from hyperframe.frame import DataFrame, HeadersFrame

    outcome = ef.H2Outcome("early answer")

    async def answered(stream_id: int) -> bool:
        with trio.move_on_after(10):  # a hang guard: the answer normally takes milliseconds
            while stream_id not in outcome.status_of and not conn.closed:  # noqa: ASYNC110 - the reader sets it
                await trio.sleep(0.01)
        return stream_id in outcome.status_of

    async with trio.open_nursery() as nursery:
        conn = ef.H2Conn(outcome)
        await conn.open(gateway.port, nursery)
        post = ef.request_block("/early", [("content-length", "0")], method="POST")
        await conn.send([HeadersFrame(1, data=post, flags=["END_HEADERS"]).serialize()], frames=1)
        assert await answered(1) and outcome.status_of[1] == "200", outcome.describe()
        await conn.send(
            [
                DataFrame(1, data=b"", flags=["END_STREAM"]).serialize(),
                HeadersFrame(3, data=ef.request_block("/next"), flags=["END_HEADERS", "END_STREAM"]).serialize(),
            ],
            frames=2,
        )
        await answered(3)
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert outcome.status_of.get(3) == "200", (outcome.describe(), gateway.log_text()[-1000:])
