"""Settings of the ``prometheus`` plugin (``[plugins.prometheus]``)."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Duration, setting

__all__ = ["PrometheusSettings"]


@dataclass(frozen=True)
class PrometheusSettings:
    path: str = setting("/metrics", "Path of the metrics page on the admin listener.")
    consumer_label: bool = setting(
        False, "Also count requests by consumer (bascule_consumer_requests_total), up to max_consumers."
    )
    max_consumers: int = setting(100, 'Distinct consumers counted per worker; later ones count as "other".')
    max_plugin_series: int = setting(
        100, 'Label sets of each plugin counter (ctx.count) per worker; later ones count as "other".'
    )
    sync_interval: Duration = setting(
        1.0, "How often each worker copies its upstream state (health, retries, ejections) into the metrics."
    )

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"path: must start with /, got {self.path!r}")
        if self.max_consumers < 1:
            raise ValueError("max_consumers: must be at least 1")
        if self.max_plugin_series < 1:
            raise ValueError("max_plugin_series: must be at least 1")
        if self.sync_interval <= 0:
            raise ValueError("sync_interval: must be positive")
