"""bascule-prometheus: Prometheus metrics for Bascule, on the admin listener's /metrics."""

from .multiprocess import configure_environment

configure_environment()  # must run before prometheus_client is first imported

from .plugin import Prometheus  # noqa: E402
from .settings import PrometheusSettings  # noqa: E402

__all__ = ["Prometheus", "PrometheusSettings"]
