"""bascule-opentelemetry: OpenTelemetry traces of Bascule's requests, exported over OTLP/HTTP."""

from .plugin import OpenTelemetry
from .settings import OpenTelemetrySettings

__all__ = ["OpenTelemetry", "OpenTelemetrySettings"]
