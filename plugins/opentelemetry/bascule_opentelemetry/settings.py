"""Settings of the ``opentelemetry`` plugin (``[plugins.opentelemetry]``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from bascule_sdk import Duration, setting

__all__ = ["OpenTelemetrySettings"]


@dataclass(frozen=True)
class OpenTelemetrySettings:
    endpoint: str = setting("http://127.0.0.1:4318/v1/traces", "OTLP/HTTP (protobuf) traces URL of the collector.")
    service_name: str = setting("bascule", "Resource attribute service.name.")
    service_instance_id: str = setting(
        "", "Resource attribute service.instance.id; empty: host name and process id (one per worker)."
    )
    sample_ratio: float = setting(
        1.0, "Share of new traces recorded, 0.0 to 1.0; a continued trace follows the caller's sampled flag."
    )
    continue_trace: bool = setting(
        True, "Continue a valid incoming traceparent; false: every request starts its own trace (untrusted clients)."
    )
    export_timeout: Duration = setting(10.0, "How long one export (a batch) may take, retries included.")
    retry_interval: Duration = setting(
        5.0, "While the collector fails, how often an export is tried; spans in between are dropped unsent."
    )
    schedule_delay: Duration = setting(5.0, "Longest wait before queued spans are exported.")
    max_queue_size: int = setting(2048, "Spans queued for export; when full, new spans are dropped.")
    max_export_batch_size: int = setting(512, "Spans sent in one export request.")

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint: expected an http:// or https:// URL, got {self.endpoint!r}")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio: must be between 0.0 and 1.0, got {self.sample_ratio}")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size: must be at least 1")
        if not 1 <= self.max_export_batch_size <= self.max_queue_size:
            raise ValueError("max_export_batch_size: must be between 1 and max_queue_size")
        if self.retry_interval <= 0:
            raise ValueError("retry_interval: must be positive")
        if not self.service_name:
            raise ValueError("service_name: must not be empty")
