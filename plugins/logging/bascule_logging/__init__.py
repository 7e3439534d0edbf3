"""bascule-logging: a JSON access log and W3C trace-context propagation for Bascule."""

from .plugin import AccessLog
from .settings import LoggingSettings

__all__ = ["AccessLog", "LoggingSettings"]
