"""Settings of the ``prometheus`` plugin (``[plugins.prometheus]``)."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import setting

__all__ = ["PrometheusSettings"]


@dataclass(frozen=True)
class PrometheusSettings:
    path: str = setting("/metrics", "Path of the metrics page on the admin listener.")

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"path: must start with /, got {self.path!r}")
