"""Spans sent over real sockets to a real OTLP/HTTP receiver (conftest.Collector), checked as a tree."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio
import trio.lowlevel
from bascule.testing import Received, eventually, start_gateway, start_upstream
from bascule_opentelemetry import OpenTelemetry
from bascule_sdk import Context, Plugin, Response, hookimpl

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Timed(Plugin):
    """Times a piece of work with ``ctx.phase``, as a plugin's Redis round trip would be."""

    name = "timed"
    priority = 900

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        with ctx.phase("lookup", self.instance, key="k1"):
            await trio.lowlevel.checkpoint()


def otel(endpoint: str, extra: str = "") -> str:
    return f"""
        [plugins.opentelemetry]
        endpoint = "{endpoint}"
        schedule_delay = "10ms"
        service_instance_id = "gw-1"
        {extra}
    """


def api_route(url: str) -> str:
    """Service ``api`` at ``url`` and route ``/api`` to it."""
    return f"""
        [services.api]
        targets = ["{url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
    """


def sent_span(received: Received) -> tuple[str, str, str]:
    _, trace_id, span_id, flags = (received.header("traceparent") or "").split("-")
    return trace_id, span_id, flags


async def test_proxied_request_is_a_server_span_with_a_client_span_named_upstream(nursery, collector, tmp_path):
    upstream = await start_upstream(nursery)
    log_file = tmp_path / "access.log"
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint)
        + f"""
        [plugins.logging]
        output = "{log_file}"
        [services.api]
        targets = ["{upstream.url}/base"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.timed]
        """,
        plugins=[Timed],
    )
    async with gw.client() as client:
        r = await client.get("/api/items?x=1", headers={"traceparent": INCOMING, "tracestate": "congo=t61"})
    assert r.status_code == 200
    trace_id, client_span_id, flags = sent_span(upstream.requests[0])
    assert (trace_id, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "01")  # the client's trace, continued
    assert upstream.requests[0].header("tracestate") == "congo=t61"
    await eventually(lambda: len(collector.trace(trace_id)) == 3)
    spans = {s.kind: s for s in collector.trace(trace_id)}
    server, call, phase = spans["server"], spans["client"], spans["internal"]
    assert server.parent_id == "00f067aa0ba902b7"  # the client's span
    assert call.span_id == client_span_id and call.parent_id == server.span_id
    assert phase.parent_id == server.span_id and phase.name == "lookup"
    assert phase.attributes == {"bascule.plugin": "timed", "key": "k1"}
    assert server.name == "GET api"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == "/api/items"
    assert server.attributes["bascule.request_id"] == r.headers["x-request-id"]
    assert call.attributes["url.full"] == f"{upstream.url}/base/api/items"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["http.request.resend_count"] == 0
    assert call.attributes["bascule.service"] == "api"
    assert server.start <= phase.start <= call.start <= call.end <= server.end
    assert not server.error and not call.error
    assert server.resource["service.name"] == "bascule"
    assert server.resource["service.instance.id"] == "gw-1"
    assert server.resource["service.version"]
    # One trace context for logs and traces: the access log names the same trace and client span.
    await eventually(lambda: log_file.exists() and log_file.read_text().count("\n") == 1)
    line = json.loads(log_file.read_text())
    assert (line["trace_id"], line["span_id"]) == (trace_id, client_span_id)


async def test_aggregated_request_has_a_client_span_per_backend(nursery, collector):
    pytest.importorskip("bascule_aggregate")
    a = await start_upstream(nursery)
    b = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint)
        + f"""
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
    )
    async with gw.client() as client:
        r = await client.get("/agg")
    assert r.status_code == 200, r.text
    (ta, sa, _), (tb, sb, _) = sent_span(a.requests[0]), sent_span(b.requests[0])
    assert ta == tb and sa != sb
    await eventually(lambda: len(collector.trace(ta)) == 3)
    spans = collector.trace(ta)
    (server,) = [s for s in spans if s.kind == "server"]
    calls = {s.attributes["bascule.service"]: s for s in spans if s.kind == "client"}
    assert server.parent_id == ""  # the gateway started the trace
    assert (calls["a"].span_id, calls["b"].span_id) == (sa, sb)
    assert calls["a"].parent_id == calls["b"].parent_id == server.span_id
    assert calls["a"].attributes["url.full"] == f"{a.url}/one"
    assert calls["b"].attributes["url.full"] == f"{b.url}/two"


async def test_retried_request_has_a_client_span_per_attempt(nursery, collector):
    async def busy(request: Received) -> Response:
        return Response(503)

    bad = await start_upstream(nursery, busy)
    good = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint)
        + f"""
        [services.api]
        targets = ["{bad.url}", "{good.url}"]
        max_failures = 0
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        """,
    )
    async with gw.client() as client:
        for _ in range(2):  # round-robin: one of the two starts on the busy target
            assert (await client.get("/api/x")).status_code == 200
    first = bad.requests[0]
    trace_id, bad_span, _ = sent_span(first)
    retry = next(r for r in good.requests if sent_span(r)[0] == trace_id)
    assert sent_span(retry)[1] != bad_span  # each attempt is its own span
    await eventually(lambda: len(collector.trace(trace_id)) == 3)
    spans = collector.trace(trace_id)
    (server,) = [s for s in spans if s.kind == "server"]
    attempts = sorted((s for s in spans if s.kind == "client"), key=lambda s: s.attributes["http.request.resend_count"])
    assert [s.span_id for s in attempts] == [bad_span, sent_span(retry)[1]]
    assert [s.parent_id for s in attempts] == [server.span_id] * 2
    assert [s.attributes["http.response.status_code"] for s in attempts] == [503, 200]
    assert [s.attributes["http.request.resend_count"] for s in attempts] == [0, 1]
    assert [s.error for s in attempts] == [True, False]
    assert attempts[0].end <= attempts[1].start
    assert server.attributes["http.response.status_code"] == 200 and not server.error


async def test_sampling_is_parent_based_on_a_ratio(nursery, collector):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint, "sample_ratio = 0.0") + api_route(upstream.url),
    )
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    async with gw.client() as client:
        await client.get("/api/new")  # a new trace: ratio 0, not recorded
        await client.get("/api/unsampled", headers={"traceparent": unsampled})
        await client.get("/api/sampled", headers={"traceparent": INCOMING})  # the caller records: so do we
    flags = [sent_span(r)[2] for r in upstream.requests]
    assert flags == ["00", "00", "01"]
    await eventually(lambda: len(collector.spans) == 2)
    assert {s.trace_id for s in collector.spans} == {"4bf92f3577b34da6a3ce929d0e0e4736"}


async def test_untrusted_trace_context_is_not_continued(nursery, collector):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint, "continue_trace = false") + api_route(upstream.url),
    )
    async with gw.client() as client:
        await client.get("/api/x", headers={"traceparent": INCOMING, "tracestate": "congo=t61"})
    trace_id, _, flags = sent_span(upstream.requests[0])
    assert trace_id != "4bf92f3577b34da6a3ce929d0e0e4736" and flags == "01"
    assert upstream.requests[0].header("tracestate") is None
    await eventually(lambda: len(collector.trace(trace_id)) == 2)
    (server,) = [s for s in collector.trace(trace_id) if s.kind == "server"]
    assert server.parent_id == ""


async def test_a_stopped_collector_costs_requests_nothing_and_is_logged_once(nursery, collector, caplog):
    upstream = await start_upstream(nursery)
    endpoint = collector.endpoint
    collector.upstream.stop.set()  # the collector is down: its port refuses connections
    gw = await start_gateway(
        nursery,
        otel(endpoint, 'export_timeout = "200ms"\nretry_interval = "50ms"') + api_route(upstream.url),
    )
    caplog.set_level(logging.INFO, logger="bascule.opentelemetry")
    async with gw.client() as client:
        for i in range(20):
            assert (await client.get(f"/api/{i}")).status_code == 200
            await trio.sleep(0.02)  # spread over several export batches
    plugin = next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, OpenTelemetry))
    assert plugin.exporter is not None
    await eventually(lambda: plugin.exporter is not None and plugin.exporter.failures >= 2, timeout=20)
    warnings = [r for r in caplog.records if "cannot export spans" in r.getMessage()]
    assert len(warnings) == 1 and endpoint in warnings[0].getMessage()
    assert collector.spans == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('endpoint = "localhost:4318"', "endpoint: expected an http:// or https:// URL, got 'localhost:4318'"),
        ('endpoint = "http://:4318/v1/traces"', "endpoint: expected an http:// or https:// URL"),
        ("sample_ratio = 1.5", "sample_ratio: must be between 0 and 1, got 1.5"),
        ("max_queue_size = 0", "max_queue_size: must be at least 1, got 0"),
        ("max_queue_size = 10\nmax_export_batch_size = 11", "max_export_batch_size: must be at most max_queue_size"),
        ('service_name = ""', "service_name: expected a name, got ''"),
    ],
)
async def test_invalid_settings_are_rejected(nursery, setting, message):
    from bascule.config import ConfigError

    with pytest.raises(ConfigError) as e:
        await start_gateway(nursery, f"[plugins.opentelemetry]\n{setting}\n[[routes]]\nname='r'\npaths=['/r']\n")
    assert message in str(e.value)


async def test_a_plugin_speaks_to_traces_logs_and_metrics(nursery, collector, tmp_path):
    """The rate-limit plugin as the model: its Redis round trip is a span (ctx.phase), the quota
    left an access-log field (ctx.log_fields), a violated policy a counter (ctx.count)."""
    pytest.importorskip("bascule_ratelimit")
    from bascule.testing import RedisServer

    upstream = await start_upstream(nursery)
    log_file = tmp_path / "access.log"
    with RedisServer() as redis:
        gw = await start_gateway(
            nursery,
            otel(collector.endpoint)
            + f"""
            [plugins.logging]
            output = "{log_file}"
            [plugins.prometheus]
            [services.api]
            targets = ["{upstream.url}"]
            [[routes]]
            name = "limited"
            paths = ["/limited"]
            service = "api"
            [routes.plugins.rate-limit]
            backend = "redis"
            redis_url = "{redis.url}"
            limit = 1
            window = "1h"
            """,
            admin=True,
        )
        async with gw.client() as client:
            assert (await client.get("/limited")).status_code == 200
            assert (await client.get("/limited")).status_code == 429
        violations = 'bascule_plugin_rate_limit_violations_total{policy="1-per-1h",route="limited"} 1.0'
        async with httpx.AsyncClient(base_url=gw.admin_url) as admin:
            with trio.fail_after(10):  # counted in on_log, after the client had its answer
                while violations not in (await admin.get("/metrics")).text:  # noqa: ASYNC110 - polls over HTTP
                    await trio.sleep(0.01)
    await eventually(lambda: len([s for s in collector.spans if s.name == "redis"]) == 2)
    for span in [s for s in collector.spans if s.name == "redis"]:
        (server,) = [s for s in collector.trace(span.trace_id) if s.kind == "server"]
        assert span.parent_id == server.span_id and span.kind == "internal"
        assert span.attributes == {"bascule.plugin": "rate-limit", "db.system": "redis"}
        assert server.start <= span.start <= span.end <= server.end
    await eventually(lambda: log_file.exists() and log_file.read_text().count("\n") == 2)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(line["status"], line["rate_limit_remaining"]) for line in lines] == [(200, 0), (429, 0)]


def test_readme_lists_every_setting():
    import dataclasses
    import re
    from pathlib import Path

    from bascule_opentelemetry import OpenTelemetrySettings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Settings\n", 1)[1]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert listed == [f.name for f in dataclasses.fields(OpenTelemetrySettings)]


async def test_a_key_set_fetched_during_a_request_is_a_span(nursery, collector):
    """The jwt plugin refetches its JWKS for an unknown kid inside the request: a "jwks fetch" span."""
    pytest.importorskip("bascule_jwt")
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    key_set: dict[str, list[dict]] = {"keys": [{**public, "kid": "old", "alg": "RS256"}]}

    async def jwks(request: Received) -> Response:
        return Response.json(key_set)

    idp = await start_upstream(nursery, jwks)
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        otel(collector.endpoint)
        + f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.jwt]
        jwks = [{{ url = "{idp.url}/jwks" }}]
        jwks_refetch_interval = "0s"
        """,
    )
    key_set["keys"] = [{**public, "kid": "new", "alg": "RS256"}]  # the identity provider rotates
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, key, algorithm="RS256", headers={"kid": "new"})
    async with gw.client() as client:
        r = await client.get("/api/x", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert len(idp.requests) == 2  # at start-up, and for the unknown kid
    trace_id = sent_span(upstream.requests[0])[0]
    await eventually(lambda: len(collector.trace(trace_id)) == 3)
    spans = {s.kind: s for s in collector.trace(trace_id)}
    fetch, server = spans["internal"], spans["server"]
    assert (fetch.name, fetch.parent_id, fetch.attributes) == ("jwks fetch", server.span_id, {"bascule.plugin": "jwt"})
    assert server.start <= fetch.start <= fetch.end <= spans["client"].start
