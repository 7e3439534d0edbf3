"""Upstream state, reloads, build info, capped labels, plugins' counters, and the documented list."""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import httpx
import pytest
import trio
from bascule.testing import Received, eventually, start_gateway, start_upstream
from bascule_prometheus.metrics import metrics
from bascule_sdk import Consumer, Context, Headers, Plugin, Request, Response, RouteInfo, hookimpl
from prometheus_client.parser import text_string_to_metric_families

README = Path(__file__).resolve().parent.parent / "README.md"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(admin_url: str) -> Samples:
    async with httpx.AsyncClient(base_url=admin_url) as scraper:
        r = await scraper.get("/metrics")
    assert r.status_code == 200
    return parse(r.text)


class NamedConsumer(Plugin):
    """Stands in for an auth plugin: the consumer named in ``x-consumer``."""

    name = "named-consumer"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if name := ctx.request.headers.get("x-consumer"):
            ctx.consumer = Consumer(name)


class Verdicts(Plugin):
    """Counts a verdict per request with ``ctx.count``, as a plugin's own metric."""

    name = "verdicts"

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        ctx.count("demo_verdicts", verdict=ctx.request.headers.get("x-verdict", "none"))


def service(name: str, targets: list[str], extra: str = "") -> str:
    quoted = ", ".join(f'"{t}"' for t in targets)
    return f"""
        [services.{name}]
        targets = [{quoted}]
        {extra}
        [[routes]]
        name = "{name}"
        paths = ["/{name}"]
        service = "{name}"
    """


async def test_upstream_retries_ejections_budget_and_admission(nursery):
    async def busy(request: Received) -> Response:
        return Response(503)

    release = trio.Event()

    async def held(request: Received) -> Response:
        await release.wait()
        return Response.json({"ok": True})

    bad, good = await start_upstream(nursery, busy), await start_upstream(nursery)
    bad2, good2 = await start_upstream(nursery, busy), await start_upstream(nursery)
    slow = await start_upstream(nursery, held)
    gw = await start_gateway(
        nursery,
        "[plugins.prometheus]\n"
        + service("flaky", [bad.url, good.url], 'max_failures = 1\ncool_off = "1h"')
        + service("stingy", [bad2.url, good2.url], "max_failures = 0\nretry_budget = 0.0\nretry_budget_min = 0")
        + service("tight", [slow.url], 'max_requests = 1\nmax_queue = 0\nread_timeout = "30s"'),
        admin=True,
    )
    assert gw.admin_url is not None
    before = await scrape(gw.admin_url)
    statuses: list[int] = []
    async with gw.client(timeout=30) as client:
        for _ in range(2):  # round-robin: one of the two starts on the busy target
            statuses.append((await client.get("/flaky/x")).status_code)
            statuses.append((await client.get("/stingy/x")).status_code)

        async def hold() -> None:
            statuses.append((await client.get("/tight/held")).status_code)

        async with trio.open_nursery() as holding:
            holding.start_soon(hold)
            await eventually(lambda: bool(slow.requests))
            statuses.append((await client.get("/tight/refused")).status_code)  # no slot, no queue
            release.set()
    assert sorted(statuses) == [200, 200, 200, 200, 503, 503]
    after = await scrape(gw.admin_url)

    def counted(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert counted("bascule_upstream_retries_total", service="flaky") == 1
    assert counted("bascule_upstream_ejections_total", service="flaky", target=bad.url) == 1
    assert value(after, "bascule_upstream_target_state", service="flaky", target=bad.url, state="ejected") == 1
    assert value(after, "bascule_upstream_target_state", service="flaky", target=bad.url, state="healthy") == 0
    assert value(after, "bascule_upstream_target_state", service="flaky", target=good.url, state="healthy") == 1
    assert counted("bascule_upstream_retry_budget_exhausted_total", service="stingy") == 1
    assert counted("bascule_upstream_retries_total", service="stingy") == 0
    assert counted("bascule_upstream_admission_rejections_total", service="tight") == 1
    assert value(after, "bascule_upstream_queued", service="tight") == 0
    assert value(after, "bascule_upstream_panic", service="flaky") == 0
    assert counted("bascule_upstream_attempts_total", service="flaky", target=bad.url, outcome="503") == 1
    assert counted("bascule_upstream_attempts_total", service="flaky", target=good.url, outcome="200") == 2


async def test_reloads_are_counted_and_logged(nursery, tmp_path, monkeypatch, caplog):
    upstream = await start_upstream(nursery)
    config = "[plugins.prometheus]\n" + service("api", [upstream.url])
    gw = await start_gateway(nursery, config, admin=True)
    assert gw.admin_url is not None
    monkeypatch.chdir(tmp_path)  # the admin listener reloads ./plugins.toml
    caplog.set_level(logging.INFO, logger="bascule")
    before = await scrape(gw.admin_url)
    async with httpx.AsyncClient(base_url=gw.admin_url) as admin:
        (tmp_path / "plugins.toml").write_text("[[routes]]\nname = 1\n")
        assert (await admin.post("/reload")).status_code == 400
        (tmp_path / "plugins.toml").write_text(textwrap.dedent(config))
        assert (await admin.post("/reload")).status_code == 200
    after = await scrape(gw.admin_url)
    assert (
        value(after, "bascule_reloads_total", result="failure")
        - value(before, "bascule_reloads_total", result="failure")
        == 1
    )
    assert (
        value(after, "bascule_reloads_total", result="success")
        - value(before, "bascule_reloads_total", result="success")
        == 1
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("reload rejected, the old config stays") for m in messages)
    assert "reloaded plugins.toml" in messages


async def test_build_info_and_process_metrics(nursery):
    from importlib.metadata import version

    gw = await start_gateway(nursery, "[plugins.prometheus]\n" + service("api", ["http://127.0.0.1:9"]), admin=True)
    assert gw.admin_url is not None
    samples = await scrape(gw.admin_url)
    ((labels, info),) = [(dict(k[1]), v) for k, v in samples.items() if k[0] == "bascule_build_info"]
    assert info == 1 and labels["version"] == version("bascule") and labels["python"]
    assert value(samples, "process_resident_memory_bytes") > 0
    assert not [name for name, _ in samples if name.endswith("_created")]


async def test_consumer_label_is_opt_in_and_capped(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        """
        [plugins.prometheus]
        consumer_label = true
        max_consumers = 2
        [plugins.named-consumer]
        """
        + service("api", [upstream.url]),
        plugins=[NamedConsumer],
        admin=True,
    )
    assert gw.admin_url is not None
    before = await scrape(gw.admin_url)
    async with gw.client() as client:
        for name in ["alice", "bob", "carol", "dave", "alice", ""]:
            await client.get("/api/x", headers={"x-consumer": name} if name else {})
    after = await scrape(gw.admin_url)
    counted = {
        c: value(after, "bascule_consumer_requests_total", route="api", consumer=c)
        - value(before, "bascule_consumer_requests_total", route="api", consumer=c)
        for c in ["alice", "bob", "carol", "dave", "other", ""]
    }
    assert counted == {"alice": 2, "bob": 1, "carol": 0, "dave": 0, "other": 2, "": 1}


async def test_plugins_count_their_own_bounded_series(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        """
        [plugins.prometheus]
        max_plugin_series = 2
        [plugins.verdicts]
        """
        + service("api", [upstream.url]),
        plugins=[Verdicts],
        admin=True,
    )
    assert gw.admin_url is not None
    async with gw.client() as client:
        for verdict in ["yes", "no", "maybe", "perhaps", "yes"]:
            await client.get("/api/x", headers={"x-verdict": verdict})
    samples = await scrape(gw.admin_url)
    name = "bascule_plugin_demo_verdicts_total"
    got = {dict(labels)["verdict"]: v for (n, labels), v in samples.items() if n == name}
    assert got == {"yes": 2, "no": 1, "other": 2}


def documented_metrics() -> set[str]:
    """The metric names in the README's metrics table (first column)."""
    section = README.read_text(encoding="utf-8").split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))


async def test_documented_metrics_are_exactly_the_served_ones(nursery):
    metrics()  # every family exists once the plugin has started; served even before it has a sample
    gw = await start_gateway(nursery, "[plugins.prometheus]\n" + service("api", ["http://127.0.0.1:9"]), admin=True)
    async with httpx.AsyncClient(base_url=gw.admin_url) as scraper:
        text = (await scraper.get("/metrics")).text
    served = {f.name for f in text_string_to_metric_families(text)}
    served = {n for n in served if not n.startswith("bascule_plugin_")}  # plugins' own counters (ctx.count)
    # Families are named without the counter's _total; the table names the series as PromQL sees them.
    documented = {re.sub(r"_total$", "", n) for n in documented_metrics()}
    assert documented == served


@pytest.mark.parametrize(
    ("metric", "labels"), [("Bad-Name", {}), ("ok", {"route": "x"}), ("ok", {"Bad": "x"}), ("", {})]
)
def test_ctx_count_refuses_names_that_cannot_be_series(metric, labels):
    ctx = Context(Request("GET", "/", "", Headers(), b""), request_id="r", route=RouteInfo("r", None))
    with pytest.raises(ValueError, match="lower-case letters"):
        ctx.count(metric, **labels)
    assert ctx.counts == []


def test_readme_lists_every_setting():
    import dataclasses

    from bascule_prometheus import PrometheusSettings

    table = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert listed == [f.name for f in dataclasses.fields(PrometheusSettings)]
