"""bascule-prometheus: Prometheus metrics for Bascule, on the admin listener's /metrics."""

from .plugin import Prometheus
from .settings import PrometheusSettings

__all__ = ["Prometheus", "PrometheusSettings"]
