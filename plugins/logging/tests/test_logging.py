"""The access log and trace context, over real sockets with real upstreams."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import Received, start_gateway, start_upstream
from bascule_logging import AccessLog
from bascule_logging.writer import LineWriter
from bascule_sdk import Consumer, Context, HTTPError, Plugin, Request, Response, hookimpl

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
FIELDS = {
    "time",
    "request_id",
    "trace_id",
    "span_id",
    "route",
    "method",
    "path",
    "query",
    "status",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "consumer",
    "upstream",
    "upstreams",
    "latency_ms",
    "upstream_latency_ms",
    "gateway_latency_ms",
    "cache",
    "rate_limit",
    "error",
    "headers",
}


class MemorySink:
    """A sink in memory; ``stall()`` makes writes block until ``release()``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.entered = threading.Event()  # a write has started
        self._go = threading.Event()
        self._go.set()

    def write(self, data: bytes) -> int:
        self.entered.set()
        self._go.wait()
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def stall(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    @property
    def text(self) -> str:
        return bytes(self.data).decode()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines()]

    async def wait_for(self, count: int) -> list[dict]:
        """The records once ``count`` lines were written."""
        await until(lambda: len(self.records()) >= count)
        return self.records()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (lines are written after the response; fails after 10 s)."""
    with trio.fail_after(10):
        while True:
            if condition():
                return
            await trio.sleep(0.005)


def logging_into(sink: MemorySink) -> type[AccessLog]:
    class CapturedAccessLog(AccessLog):
        def open_sink(self):
            return sink, None

    return CapturedAccessLog


class FakeAuth(Plugin):
    """Stands in for auth, rate limiting and caching: sets what they would set."""

    name = "fake-auth"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        if ctx.request.headers.get("authorization") != "Bearer let-me-in":
            raise HTTPError(401, "Missing or invalid token.", {"www-authenticate": "Bearer"})
        ctx.consumer = Consumer("alice")
        if ctx.request.headers.get("x-test-limit"):
            ctx.tags["rate_limit"] = "rejected"
            return Response.json({"limited": True}, status=429)
        ctx.tags["rate_limit"] = "allowed"
        ctx.tags["cache"] = "MISS"
        return None


class TwoBackends(Plugin):
    """A minimal aggregation: calls two services and joins their answers."""

    name = "two-backends"
    priority = 10

    @hookimpl
    async def handle(self, ctx: Context) -> Response:
        parts = {}
        for service in ("a", "b"):
            response = await ctx.forward(Request("GET", "/part", "", ctx.request.headers.copy()), service)
            parts[service] = json.loads(await response.read(1 << 16))
            await response.aclose()
        return Response.json(parts)


def config(upstream_url: str, extra: str = "", logging: str = "") -> str:
    return f"""
        [gateway]
        trusted_proxies = ["10.0.0.0/8"]
        [plugins.logging]
        {logging}
        [services.users]
        targets = ["{upstream_url}"]
        [services.down]
        targets = ["http://127.0.0.1:9"]
        connect_timeout = "1s"
        [[routes]]
        name = "users"
        paths = ["/api/users"]
        service = "users"
        [[routes]]
        name = "private"
        paths = ["/private"]
        service = "users"
        [routes.plugins.fake-auth]
        [[routes]]
        name = "broken"
        paths = ["/broken"]
        service = "down"
        {extra}
    """


async def test_proxied_request_is_logged_field_by_field(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.get(
            "/private/7?x=1&token=s3cr3t&API_KEY=k3y",
            headers={
                "authorization": "Bearer let-me-in",
                "cookie": "session=c00kie",
                "x-api-key": "hdr-k3y",
                "user-agent": "test-agent/1",
            },
        )
    assert r.status_code == 200
    (line,) = await sink.wait_for(1)
    assert set(line) == FIELDS
    seen = upstream.requests[-1]
    _, trace_id, span_id, flags = seen.header("traceparent").split("-")
    assert line["request_id"] == r.headers["x-request-id"] == seen.header("x-request-id")
    assert line["trace_id"] == trace_id and HEX32.match(trace_id)
    assert line["span_id"] == span_id and HEX16.match(span_id)
    assert flags == "01"  # a new trace, recorded (sampled)
    assert line["route"] == "private"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/private/7", 200)
    assert line["query"] == "x=1&token=REDACTED&API_KEY=REDACTED"
    assert line["bytes_in"] == 0
    assert line["bytes_out"] == len(r.content)
    assert line["client_ip"] == "127.0.0.1"
    assert line["consumer"] == "alice"
    assert line["upstream"] == upstream.url
    ((call,),) = [line["upstreams"]]
    assert (call["service"], call["target"], call["attempt"], call["status"], call["error"]) == (
        "users",
        upstream.url,
        0,
        200,
        None,
    )
    assert 0 <= call["latency_ms"] <= line["upstream_latency_ms"]
    assert 0 <= line["upstream_latency_ms"] <= line["latency_ms"]
    assert line["gateway_latency_ms"] == pytest.approx(line["latency_ms"] - line["upstream_latency_ms"], abs=0.002)
    assert (line["cache"], line["rate_limit"], line["error"]) == ("MISS", "allowed", None)
    assert line["headers"] == {"user-agent": "test-agent/1"}
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert line["time"].endswith("Z")
    for secret in ("let-me-in", "s3cr3t", "k3y", "c00kie", "hdr-k3y"):
        assert secret not in sink.text


async def test_request_body_size_is_logged(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.post("/api/users", content=b"x" * 1234)
    (line,) = await sink.wait_for(1)
    assert (line["method"], line["status"], line["bytes_in"]) == ("POST", r.status_code, 1234)
    assert upstream.requests[-1].body == b"x" * 1234


@pytest.mark.parametrize(
    ("headers", "status", "rate_limit"),
    [
        ({}, 401, None),
        ({"authorization": "Bearer let-me-in", "x-test-limit": "1"}, 429, "rejected"),
    ],
)
async def test_short_circuited_request_is_logged(nursery, headers, status, rate_limit):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.get("/private/x", headers=headers)
    assert r.status_code == status
    (line,) = await sink.wait_for(1)
    assert set(line) == FIELDS
    assert (line["route"], line["status"], line["request_id"]) == ("private", status, r.headers["x-request-id"])
    assert line["bytes_out"] == len(r.content)
    assert line["upstream"] is None and line["upstream_latency_ms"] is None and line["span_id"] is None
    assert line["gateway_latency_ms"] == line["latency_ms"]
    assert line["rate_limit"] == rate_limit
    assert line["consumer"] == ("alice" if status == 429 else None)
    assert line["error"] is None  # a rejection is not a gateway error
    assert upstream.requests == []


async def test_failed_request_is_logged_with_its_error(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.get("/broken")
    assert r.status_code == 502
    (line,) = await sink.wait_for(1)
    assert (line["route"], line["status"]) == ("broken", 502)
    assert line["request_id"] == r.json()["request_id"] == r.headers["x-request-id"]
    assert line["error"] == "The service 'down' is unreachable."
    assert line["bytes_out"] == len(r.content)


async def test_aggregated_request_is_logged_and_each_hop_is_a_new_span(nursery):
    sink = MemorySink()
    a = await start_upstream(nursery)
    b = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [plugins.logging]
        [services.a]
        targets = ["{a.url}"]
        [services.b]
        targets = ["{b.url}"]
        [[routes]]
        name = "both"
        paths = ["/both"]
        [routes.plugins.two-backends]
    """,
        plugins=[logging_into(sink), TwoBackends],
    )
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with gw.client() as client:
        r = await client.get("/both", headers={"traceparent": incoming, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200
    (line,) = await sink.wait_for(1)
    hops = [a.requests[0].header("traceparent"), b.requests[0].header("traceparent")]
    spans = [h.split("-")[2] for h in hops]
    assert all(h.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and h.endswith("-01") for h in hops)
    assert len(set(spans)) == 2 and "00f067aa0ba902b7" not in spans
    assert [a.requests[0].header("tracestate"), b.requests[0].header("tracestate")] == ["congo=t61rcWkgMzE"] * 2
    for hop in (a.requests[0], b.requests[0]):  # the client's fields replaced, not sent beside the gateway's
        assert len(hop.headers.get_all("traceparent")) == len(hop.headers.get_all("tracestate")) == 1
    assert (line["route"], line["status"], line["trace_id"]) == ("both", 200, "4bf92f3577b34da6a3ce929d0e0e4736")
    assert line["span_id"] == spans[-1]
    assert line["upstream"] == b.url  # the last service called
    assert 0 <= line["upstream_latency_ms"] <= line["latency_ms"]


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",  # short flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has four fields
    ],
)
async def test_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(nursery, traceparent):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        await client.get("/api/users", headers={"traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"})
    (line,) = await sink.wait_for(1)
    seen = upstream.requests[-1]
    version, trace_id, span_id, flags = seen.header("traceparent").split("-")
    assert version == "00" and trace_id == line["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert HEX32.match(trace_id) and HEX16.match(span_id) and flags == "01"
    assert seen.header("tracestate") is None


async def test_trace_context_continues_a_caller_trace(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-holds"
    async with gw.client() as client:
        await client.get("/api/users", headers={"traceparent": future})  # a later version, flags kept: sampled
        await client.get(
            "/api/users",
            headers={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                "tracestate": "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE",
            },
        )
        await client.get("/api/users")
        await client.get("/api/users")
    lines = await sink.wait_for(4)
    sent = [u.header("traceparent").split("-") for u in upstream.requests]
    assert sent[0][:2] == ["00", "4bf92f3577b34da6a3ce929d0e0e4736"] and sent[0][3] == "01"
    assert sent[1][1] == "0af7651916cd43dd8448eb211c80319c" and sent[1][3] == "00"
    assert upstream.requests[1].header("tracestate") == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert sent[2][1] != sent[3][1]  # each request without a caller trace starts its own
    assert [line["trace_id"] for line in lines] == [s[1] for s in sent]


async def test_trace_context_can_be_switched_off(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream.url, logging="trace_context = false"), plugins=[logging_into(sink), FakeAuth]
    )
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with gw.client() as client:
        await client.get("/api/users", headers={"traceparent": incoming})
    (line,) = await sink.wait_for(1)
    assert upstream.requests[-1].header("traceparent") == incoming  # passed through untouched
    assert line["span_id"] is None and line["trace_id"] is None


async def test_request_id_round_trip(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.get("/api/users", headers={"x-request-id": "from-an-untrusted-client"})
    (line,) = await sink.wait_for(1)
    assert r.headers["x-request-id"] != "from-an-untrusted-client"  # 127.0.0.1 is not a trusted proxy
    assert line["request_id"] == r.headers["x-request-id"] == upstream.requests[-1].header("x-request-id")
    await gw.reload(config(upstream.url).replace('"10.0.0.0/8"', '"127.0.0.1/32"'))
    async with gw.client() as client:
        r = await client.get("/api/users", headers={"x-request-id": "from-a-trusted-proxy"})
    records = await sink.wait_for(2)
    assert records[1]["request_id"] == r.headers["x-request-id"] == "from-a-trusted-proxy"
    assert upstream.requests[-1].header("x-request-id") == "from-a-trusted-proxy"


async def test_sampling_and_excluded_paths(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            logging="""
        sample_rate = 0.0
        exclude_paths = ["/api/users/health"]
    """,
        ),
        plugins=[logging_into(sink), FakeAuth],
    )
    async with gw.client() as client:
        for _ in range(20):
            assert (await client.get("/api/users/1")).status_code == 200
        assert (await client.get("/broken")).status_code == 502  # 5xx: always logged
        await gw.reload(config(upstream.url, logging='exclude_paths = ["/api/users/health"]'))
        await client.get("/api/users/health")
        await client.get("/api/users/health/deep")
        await client.get("/api/users/healthy")
    records = await sink.wait_for(2)
    assert [(r["path"], r["status"]) for r in records] == [("/broken", 502), ("/api/users/healthy", 200)]
    assert len(upstream.requests) == 23


async def test_a_request_matching_no_route_is_logged(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    async with gw.client() as client:
        r = await client.get("/nowhere?password=hunter2")
    (line,) = await sink.wait_for(1)
    assert (line["route"], line["status"], line["path"]) == (None, 404, "/nowhere")
    assert line["query"] == "password=REDACTED"
    assert line["request_id"] == r.json()["request_id"]


async def test_a_stalled_sink_does_not_slow_requests(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream.url, logging="buffer = 5"), plugins=[logging_into(sink), FakeAuth]
    )
    (plugin,) = [p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, AccessLog)]
    sink.stall()
    async with gw.client() as client:
        assert (await client.get("/api/users/first")).status_code == 200
        with trio.fail_after(10):
            await trio.to_thread.run_sync(sink.entered.wait)  # the writer holds line 1, stuck in the sink
        statuses = [(await client.get(f"/api/users/{i}")).status_code for i in range(30)]
    assert statuses == [200] * 30
    assert len(upstream.requests) == 31
    await until(lambda: plugin.writer.dropped >= 30 - 5)  # on_log runs once the response is sent
    assert plugin.writer.dropped == 30 - 5  # exactly the lines beyond the buffer
    sink.release()
    records = await sink.wait_for(6)
    assert [r["path"] for r in records] == ["/api/users/first"] + [f"/api/users/{i}" for i in range(5)]
    await until(lambda: plugin.writer.written == 6)  # counted once the sink's write returned


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this")


class OddField(Plugin):
    """Adds a log field that no JSON encoding can write, on requests that ask for it."""

    name = "odd-field"

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if ctx.request.headers.get("x-odd"):
            ctx.log_fields["odd"] = Unprintable()


async def test_a_line_that_cannot_be_made_is_dropped_and_the_others_written(nursery, caplog):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    extra = "[plugins.odd-field]"
    gw = await start_gateway(nursery, config(upstream.url, extra), plugins=[logging_into(sink), FakeAuth, OddField])
    (plugin,) = [p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, AccessLog)]
    async with gw.client() as client:
        for i, odd in enumerate(["", "1", ""]):
            assert (await client.get(f"/api/users/{i}", headers={"x-odd": odd})).status_code == 200
    records = await sink.wait_for(2)
    assert [r["path"] for r in records] == ["/api/users/0", "/api/users/2"]
    await until(lambda: plugin.writer.written == 2)  # counted once the sink's write returned
    assert plugin.writer.dropped == 1
    assert "cannot make a line" in caplog.text


async def test_a_line_says_when_the_request_was_logged_not_when_it_was_written(nursery):
    """The line is made later, by the writer; its times are the request's, taken in on_log."""
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url), plugins=[logging_into(sink), FakeAuth])
    sink.stall()
    async with gw.client() as client:
        assert (await client.get("/api/users/first")).status_code == 200
        with trio.fail_after(10):
            await trio.to_thread.run_sync(sink.entered.wait)  # the writer holds line 1, stuck in the sink
        sent = time.time()
        assert (await client.get("/api/users/second")).status_code == 200
        await trio.sleep(1.0)  # line 2 waits, unmade, behind the stalled write
    sink.release()
    _first, second = await sink.wait_for(2)
    assert second["path"] == "/api/users/second"
    assert second["latency_ms"] < 1000  # not the second it waited for the writer
    arrived = datetime.fromisoformat(second["time"].replace("Z", "+00:00")).timestamp()
    assert abs(arrived - sent) < 0.5


async def test_lines_wait_for_flush_interval_or_half_the_buffer(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    conf = config(upstream.url, logging='flush_interval = "60s"\nbuffer = 8')
    gw = await start_gateway(nursery, conf, plugins=[logging_into(sink), FakeAuth])
    (plugin,) = [p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, AccessLog)]
    assert plugin.writer is not None
    async with gw.client() as client:
        assert (await client.get("/api/users/1")).status_code == 200
        await trio.sleep(0.3)
        assert sink.records() == []  # one line waits for the interval (a minute)
        for i in (2, 3, 4):
            assert (await client.get(f"/api/users/{i}")).status_code == 200
        with trio.fail_after(5):  # 4 lines: half the buffer, written without waiting out the interval
            records = await sink.wait_for(4)
        assert [r["path"] for r in records] == [f"/api/users/{i}" for i in (1, 2, 3, 4)]
        assert (await client.get("/api/users/5")).status_code == 200
    await trio.sleep(0.3)
    assert len(sink.records()) == 4
    with trio.fail_after(5):  # shutdown writes what waits at once
        await plugin.writer.aclose(10)
    assert [r["path"] for r in sink.records()][-1] == "/api/users/5"


async def test_a_writer_with_nothing_queued_closes_its_sink_at_once(nursery):
    """aclose wakes a writer waiting for its first line: the sink closes within the timeout
    (not once it ran out), and a line put after is dropped."""
    sink, closed = io.BytesIO(), []
    writer = LineWriter(sink, 4, interval=60, close=lambda: closed.append(True))
    nursery.start_soon(writer.run)
    await trio.sleep(0.1)  # the writer waits for a first line
    await writer.aclose(timeout=30)
    assert closed == [True]
    assert not writer.put(b"late\n") and writer.dropped == 1
    assert sink.getvalue() == b""


async def test_file_output_is_reopened_on_reload(nursery, tmp_path):
    path = tmp_path / "access.log"
    upstream = await start_upstream(nursery)
    conf = config(upstream.url, logging=f'output = "{path}"')
    gw = await start_gateway(nursery, conf, plugins=[FakeAuth])
    async with gw.client() as client:
        first = await client.get("/api/users/1")
        await until(lambda: path.exists() and path.read_text().endswith("\n"))
        path.rename(tmp_path / "access.log.1")  # what logrotate does before sending SIGHUP
        await gw.reload(conf)
        second = await client.get("/api/users/2")
    await until(lambda: path.exists() and path.read_text().endswith("\n"))
    (rotated,) = [json.loads(s) for s in (tmp_path / "access.log.1").read_text().splitlines()]
    (line,) = [json.loads(s) for s in path.read_text().splitlines()]
    assert rotated["request_id"] == first.headers["x-request-id"]
    assert line["request_id"] == second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('headers = ["user-agent", "Authorization"]', "headers: Authorization carry credentials and are never logged"),
        ('headers = ["x-token"]\nsensitive_headers = ["x-token"]', "headers: x-token carry credentials"),
        ("sample_rate = 1.5", "sample_rate: must be between 0 and 1, got 1.5"),
        ("buffer = 0", "buffer: must be at least 1, got 0"),
        ('flush_interval = "0s"', "flush_interval: must be at least 0.001"),
        ('exclude_paths = ["/ok", "health"]', "exclude_paths[1]: expected a path starting with /, got 'health'"),
        ('format = "text"', "must be one of 'json'"),
        ('output = "/nonexistent/dir/access.log"', "output: directory /nonexistent/dir does not exist"),
    ],
)
async def test_invalid_settings_are_rejected(nursery, setting, message):
    with pytest.raises(ConfigError) as e:
        await start_gateway(nursery, config("http://127.0.0.1:1", logging=setting), plugins=[FakeAuth])
    assert message in str(e.value)
    assert "logging" in str(e.value)


async def test_request_aggregated_by_the_aggregate_plugin_is_logged(nursery):
    pytest.importorskip("bascule_aggregate")
    sink = MemorySink()
    a = await start_upstream(nursery)
    b = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [plugins.logging]
        [services.a]
        targets = ["{a.url}"]
        [services.b]
        targets = ["{b.url}"]
        [[routes]]
        name = "agg"
        paths = ["/agg"]
        [routes.plugins.aggregate]
        backends = [
            {{ name = "a", service = "a", path = "/one", group = "a" }},
            {{ name = "b", service = "b", path = "/two", group = "b" }},
        ]
    """,
        plugins=[logging_into(sink)],
    )
    async with gw.client() as client:
        r = await client.get("/agg")
    assert r.status_code == 200, r.text
    (line,) = await sink.wait_for(1)
    hops = [a.requests[0].header("traceparent").split("-"), b.requests[0].header("traceparent").split("-")]
    assert hops[0][1] == hops[1][1] == line["trace_id"]
    assert hops[0][2] != hops[1][2] and line["span_id"] in {hops[0][2], hops[1][2]}
    assert (line["route"], line["status"], line["error"]) == ("agg", 200, None)
    assert line["upstream"] in {a.url, b.url}
    calls = sorted(line["upstreams"], key=lambda c: c["service"])
    assert [(c["service"], c["target"], c["status"]) for c in calls] == [("a", a.url, 200), ("b", b.url, 200)]
    assert all(0 <= c["latency_ms"] <= line["latency_ms"] for c in calls)
    assert line["upstream_latency_ms"] is not None and line["bytes_out"] == len(r.content)
    assert line["request_id"] == r.headers["x-request-id"] == a.requests[0].header("x-request-id")


async def test_a_retried_request_logs_every_attempt(nursery):
    async def busy(request: Received) -> Response:
        return Response(503)

    sink = MemorySink()
    bad = await start_upstream(nursery, busy)
    good = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [plugins.logging]
        [services.api]
        targets = ["{bad.url}", "{good.url}"]
        max_failures = 0
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        """,
        plugins=[logging_into(sink)],
    )
    async with gw.client() as client:
        for _ in range(2):  # round-robin: one of the two starts on the busy target
            assert (await client.get("/api/x")).status_code == 200
    lines = await sink.wait_for(2)
    retried = next(line for line in lines if len(line["upstreams"]) == 2)
    first, second = retried["upstreams"]
    assert (first["target"], first["attempt"], first["status"]) == (bad.url, 0, 503)
    assert (second["target"], second["attempt"], second["status"]) == (good.url, 1, 200)
    assert retried["upstream"] == good.url and retried["status"] == 200
    sent = {r.header("traceparent").split("-")[2] for r in [*bad.requests, *good.requests]}
    assert len(sent) == len(bad.requests) + len(good.requests)  # every attempt its own span
    assert retried["span_id"] in {r.header("traceparent").split("-")[2] for r in good.requests}  # the last attempt


class Fields(Plugin):
    """Adds access-log fields, one of which tries to replace the gateway's status."""

    name = "fields"

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        ctx.log_fields["tenant"] = "acme"
        ctx.log_fields["status"] = 999


async def test_plugins_add_fields_but_cannot_replace_the_gateways(nursery):
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream.url, "[routes.plugins.fields]"), plugins=[logging_into(sink), Fields, FakeAuth]
    )
    async with gw.client() as client:
        await client.get("/broken")
        await client.get("/api/users")
    broken, users = await sink.wait_for(2)
    assert (broken["tenant"], broken["status"]) == ("acme", 502)
    assert "tenant" not in users  # only the route the plugin is on
    assert set(broken) == FIELDS | {"tenant"}


class Unusual(Plugin):
    """Adds access-log fields that are not JSON, too large for 64 bits, or text beyond ASCII."""

    name = "unusual"

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        ctx.log_fields.update(big=2**70, when=datetime(2026, 12, 2, tzinfo=UTC), note="one\u2028two")


async def test_every_line_is_one_line_of_ascii_json_whatever_its_values(nursery):
    """A value that is not JSON is logged as its str(); text beyond ASCII is \\u-escaped, so a
    client's header cannot break a line for a reader that splits on U+0085 (str.splitlines)."""
    sink = MemorySink()
    upstream = await start_upstream(nursery)
    extra = "[routes.plugins.unusual]"  # on the route /broken
    gw = await start_gateway(nursery, config(upstream.url, extra), plugins=[logging_into(sink), FakeAuth, Unusual])
    async with gw.client() as client:
        for agent in (b"plain/1", b"odd\x85agent/1"):
            assert (await client.get("/api/users", headers={"user-agent": agent})).status_code == 200
        assert (await client.get("/broken")).status_code == 502
    plain, odd, unusual = await sink.wait_for(3)
    assert bytes(sink.data).isascii()
    assert len(sink.text.splitlines()) == 3
    assert (plain["headers"], odd["headers"]) == ({"user-agent": "plain/1"}, {"user-agent": "odd\x85agent/1"})
    assert (unusual["big"], unusual["when"], unusual["note"]) == (2**70, "2026-12-02 00:00:00+00:00", "one\u2028two")


async def test_operational_log_can_be_json_with_the_access_log_names(nursery):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        upstream = await start_upstream(nursery)
        gw = await start_gateway(
            nursery,
            config(upstream.url, logging='operational_format = "json"'),
            plugins=[logging_into(MemorySink()), FakeAuth],
        )
        logging.getLogger("bascule").warning("service %s: something", "users")
        try:
            raise OSError("boom")
        except OSError:
            logging.getLogger("bascule").exception("it failed", extra={"request_id": "r-1"})
        await gw.reload(config(upstream.url, logging='operational_format = "text"'))  # testing: no "reloaded" line
        logging.getLogger("bascule").info("back to text")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    records = {r["message"]: r for r in (json.loads(line) for line in lines if line.startswith("{"))}
    warning, failure = records["service users: something"], records["it failed"]
    assert set(warning) == {"time", "level", "logger", "message"}
    assert (warning["level"], warning["logger"], warning["message"]) == (
        "warning",
        "bascule",
        "service users: something",
    )
    assert datetime.fromisoformat(warning["time"]).utcoffset().total_seconds() == 0
    assert (failure["request_id"], failure["message"]) == ("r-1", "it failed")
    assert "OSError: boom" in failure["error"]
    assert "INFO back to text" in lines  # the reload restored the formatter it replaced


async def test_invalid_operational_format_is_rejected(nursery):
    with pytest.raises(ConfigError, match="operational_format"):
        await start_gateway(nursery, config("http://127.0.0.1:9", logging='operational_format = "xml"'))
