"""docs/grafana-dashboard.json queries only metrics that /metrics serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from bascule.testing import start_gateway
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:bascule|process)_[a-z_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text of the dashboard: panel targets' ``expr`` and template variables' ``query``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


async def test_every_dashboard_query_names_an_exported_metric(nursery):
    gw = await start_gateway(
        nursery,
        """
        [plugins.prometheus]
        [services.api]
        targets = ["http://127.0.0.1:9"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        """,
        admin=True,
    )
    async with httpx.AsyncClient(base_url=gw.admin_url) as scraper:
        text = (await scraper.get("/metrics")).text
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p["targets"] for p in panels), "every panel has a query"
    named = {name for q in queries(dashboard) for name in METRIC.findall(q)}
    assert {"bascule_requests_total", "bascule_request_duration_seconds_bucket"} <= named
    unknown = sorted(named - exported)
    assert not unknown, f"the dashboard queries metrics the gateway does not export: {unknown}"
