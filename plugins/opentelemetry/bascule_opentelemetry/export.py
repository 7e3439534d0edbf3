"""The tracer provider: sampling, resource, batched export off the request path.

Spans of finished requests go into the ``BatchSpanProcessor``'s bounded queue
(O(1), never blocks); its own thread sends them to the collector in batches.
A collector that is down or slow only fills that queue (new spans are dropped
when it is full): the request path never waits for it. While it fails, one
export is tried per ``retry_interval`` and the batches in between are dropped
unencoded, so a dead collector does not cost the encoding of every span
either. A failing collector is logged once when exports start failing and once
when they succeed again, not per batch (the exporter's own per-batch messages
are silenced).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .settings import OpenTelemetrySettings

__all__ = ["PresetIds", "ReportingExporter", "make_provider"]

log = logging.getLogger("bascule.opentelemetry")
# Per-batch errors and retry notices; ReportingExporter reports state changes instead.
logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter").setLevel(logging.CRITICAL)


class PresetIds(RandomIdGenerator):
    """Random ids, except the span id set in ``next_span_id`` for the next span started.

    The gateway names an upstream attempt's span in the ``traceparent`` it sends
    (``UpstreamCall.span_id``) before the span is recorded; the span must carry
    that id. Set and used within one synchronous call (``start_span``), so no
    other span can take it.
    """

    next_span_id: int | None = None

    def generate_span_id(self) -> int:
        preset, self.next_span_id = self.next_span_id, None
        return preset if preset is not None else super().generate_span_id()


class ReportingExporter(SpanExporter):
    """Wraps an exporter: logs once when exports start failing and once when they
    recover; while failing, tries one export per ``retry_interval`` seconds and
    drops the batches in between without sending (or encoding) them.

    ``failures`` counts failed exports (batches), ``exported`` spans sent,
    ``dropped`` spans dropped unsent while failing.
    """

    def __init__(self, exporter: SpanExporter, endpoint: str, retry_interval: float) -> None:
        self.exporter = exporter
        self.endpoint = endpoint
        self.retry_interval = retry_interval
        self.failing = False
        self.failures = 0
        self.exported = 0
        self.dropped = 0
        self._failed_at = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.failing and time.monotonic() - self._failed_at < self.retry_interval:
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.exporter.export(spans)
        except Exception as e:  # an exporter bug must not end the export thread
            result = SpanExportResult.FAILURE
            log.debug("span export raised", exc_info=e)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            if self.failing:
                self.failing = False
                log.info("traces: the collector at %s accepts spans again", self.endpoint)
        else:
            self.failures += 1
            self._failed_at = time.monotonic()
            if not self.failing:
                self.failing = True
                log.warning(
                    "traces: cannot export spans to %s; dropping them until it answers (logged once)", self.endpoint
                )
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def make_provider(settings: OpenTelemetrySettings) -> tuple[TracerProvider, PresetIds, ReportingExporter]:
    """A provider with parent-based ratio sampling, the gateway's resource and batched OTLP/HTTP export."""
    resource = Resource.create(
        {
            SERVICE_NAME: settings.service_name,
            SERVICE_VERSION: _version(),
            SERVICE_INSTANCE_ID: settings.service_instance_id or f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    ids = PresetIds()
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        resource=resource,
        id_generator=ids,
        shutdown_on_exit=True,  # spans still queued are sent at exit
    )
    exporter = ReportingExporter(
        OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout),
        settings.endpoint,
        settings.retry_interval,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay * 1000,
            max_export_batch_size=settings.max_export_batch_size,
            export_timeout_millis=settings.export_timeout * 1000,
        )
    )
    return provider, ids, exporter


def _version() -> str:
    try:
        return version("bascule")
    except PackageNotFoundError:
        return "unknown"
