"""Settings of the ``opentelemetry`` plugin (``[plugins.opentelemetry]``)."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Duration, setting

__all__ = ["OpenTelemetrySettings"]

# http(s)://[user@]host[:port][/path][?query]: a URL with a host name.
_HTTP_URL = r"^https?://([^\s/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:[0-9]{1,5})?([/?][^\s#]*)?$"


@dataclass(frozen=True)
class OpenTelemetrySettings:
    endpoint: str = setting(
        "http://127.0.0.1:4318/v1/traces",
        "OTLP/HTTP (protobuf) traces URL of the collector.",
        pattern=_HTTP_URL,
        expected="an http:// or https:// URL",
    )
    service_name: str = setting("bascule", "Resource attribute service.name.", pattern=".", expected="a name")
    service_instance_id: str = setting(
        "", "Resource attribute service.instance.id; empty: host name and process id (one per worker)."
    )
    sample_ratio: float = setting(
        1.0,
        "Share of new traces recorded, 0.0 to 1.0; a continued trace follows the caller's sampled flag.",
        min=0,
        max=1,
    )
    continue_trace: bool = setting(
        True, "Continue a valid incoming traceparent; false: every request starts its own trace (untrusted clients)."
    )
    export_timeout: Duration = setting(10.0, "How long one export (a batch) may take, retries included.")
    retry_interval: Duration = setting(
        5.0, "While the collector fails, how often an export is tried; spans in between are dropped unsent.", min=0.001
    )
    schedule_delay: Duration = setting(5.0, "Longest wait before queued spans are exported.")
    max_queue_size: int = setting(2048, "Spans queued for export; when full, new spans are dropped.", min=1)
    max_export_batch_size: int = setting(512, "Spans sent in one export request (at most max_queue_size).", min=1)

    def __post_init__(self) -> None:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size: must be at most max_queue_size")
