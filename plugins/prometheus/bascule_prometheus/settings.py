"""Settings of the ``prometheus`` plugin (``[plugins.prometheus]``)."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Duration, setting

__all__ = ["PrometheusSettings"]


@dataclass(frozen=True)
class PrometheusSettings:
    path: str = setting(
        "/metrics", "Path of the metrics page on the admin listener.", pattern="^/", expected="a path starting with /"
    )
    consumer_label: bool = setting(
        False, "Also count requests by consumer (bascule_consumer_requests_total), up to max_consumers."
    )
    max_consumers: int = setting(100, 'Distinct consumers counted per worker; later ones count as "other".', min=1)
    max_plugin_series: int = setting(
        100, 'Label sets of each plugin counter (ctx.count) per worker; later ones count as "other".', min=1
    )
    sync_interval: Duration = setting(
        1.0,
        "How often each worker copies its upstream state (health, retries, ejections) into the metrics.",
        min=0.001,
    )
