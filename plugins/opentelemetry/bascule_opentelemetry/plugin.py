"""The ``opentelemetry`` plugin: a span tree per request, exported over OTLP/HTTP.

Per request: a SERVER span from arrival until the response was sent; a CLIENT
span per upstream attempt (each aggregation backend, each retry: its
``http.request.resend_count``), named in the ``traceparent`` that attempt
carried; an INTERNAL span per phase a plugin timed with ``ctx.phase`` (a
Redis round trip, a key-set fetch). The children are recorded from the
request's records (``ctx.upstream_calls``, ``ctx.phases``) once it is logged,
with their own start and end times: nothing is done per attempt on the
request path but the gateway's recording.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from bascule_sdk import Context, Gateway, Plugin, Response, UpstreamCall, hookimpl
from bascule_sdk.tracecontext import Trace, parse_traceparent, parse_tracestate
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from .export import PresetIds, ReportingExporter, make_provider
from .settings import OpenTelemetrySettings

__all__ = ["OpenTelemetry"]

log = logging.getLogger("bascule.opentelemetry")

_SPAN = "opentelemetry"  # ctx.state key: the request's server span


class Exporting:
    """One provider and its export thread, shared by the plugin instances with the same settings."""

    def __init__(self, settings: OpenTelemetrySettings) -> None:
        self.provider: TracerProvider
        self.provider, self.ids, self.exporter = make_provider(settings)
        tracer = self.provider.get_tracer("bascule")
        assert isinstance(tracer, Tracer)
        self.tracer = tracer
        self.users = 0


class OpenTelemetry(Plugin[OpenTelemetrySettings]):
    """Traces every request of the routes it is enabled on (see the module docstring).

    Owns the request's trace context when enabled: sets ``ctx.trace`` in
    ``on_request`` (before any other plugin: highest priority) from the
    server span, which continues the client's ``traceparent`` if
    ``continue_trace`` is on and it is valid.
    """

    name = "opentelemetry"
    priority = 10_000  # first in, last out: the server span covers every other plugin's work
    Settings = OpenTelemetrySettings
    exporting: Exporting | None = None

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        shared: dict[str, Exporting] = gateway.shared.setdefault(self.name, {})
        key = repr(self.settings)
        if key not in shared:
            shared[key] = Exporting(self.settings)
        self.exporting = shared[key]
        self.exporting.users += 1
        self._shared = shared

    @hookimpl
    async def shutdown(self) -> None:
        exporting = self.exporting
        if exporting is None:
            return
        exporting.users -= 1
        if exporting.users == 0:  # no config uses these settings any more (a reload keeps them in use)
            self._shared.pop(repr(self.settings), None)
            await trio.to_thread.run_sync(exporting.provider.shutdown, abandon_on_cancel=True)

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if self.exporting is None or _SPAN in ctx.state:
            return
        request = ctx.request
        parent = self._parent(ctx)
        span = self.exporting.tracer.start_span(
            f"{request.method} {ctx.route.name}" if ctx.route.name else request.method,
            context=trace.set_span_in_context(parent) if parent is not None else None,
            kind=SpanKind.SERVER,
            start_time=_epoch_ns(ctx.started),
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                "url.scheme": request.scheme,
                "server.address": request.host,
                "client.address": ctx.client_ip,
                "http.route": ctx.matched_path or request.path,
                "bascule.route": ctx.route.name,
                "bascule.request_id": ctx.request_id,
            },
        )
        ctx.state[_SPAN] = span
        sc = span.get_span_context()
        tracestate = parent.get_span_context().trace_state.to_header() if parent is not None else None
        ctx.trace = Trace(
            f"{sc.trace_id:032x}",
            f"{parent.get_span_context().span_id:016x}" if parent is not None else None,
            "01" if sc.trace_flags.sampled else "00",
            tracestate or None,
        )

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        span = ctx.state.pop(_SPAN, None)
        exporting = self.exporting
        if span is None or exporting is None:
            return
        if not span.is_recording():  # not sampled: nothing to record
            span.end()
            return
        to_epoch = time.time_ns() - int(time.perf_counter() * 1e9)  # perf_counter -> epoch ns, now
        parent = trace.set_span_in_context(span)
        for call in ctx.upstream_calls:
            self._client_span(exporting, parent, call, to_epoch)
        for phase in ctx.phases:
            start = to_epoch + int(phase.started * 1e9)
            child = exporting.tracer.start_span(
                phase.name,
                context=parent,
                kind=SpanKind.INTERNAL,
                start_time=start,
                attributes={"bascule.plugin": phase.plugin, **_attributes(phase.attributes)},
            )
            if phase.error is not None:
                child.set_attribute("error.type", phase.error)
                child.set_status(Status(StatusCode.ERROR))
            child.end(start + int((phase.seconds or 0.0) * 1e9))
        if ctx.consumer is not None:
            span.set_attribute("bascule.consumer", ctx.consumer.name)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_attribute("error.type", str(response.status))
            span.set_status(Status(StatusCode.ERROR, ctx.error))
        span.end()

    def _parent(self, ctx: Context) -> NonRecordingSpan | None:
        """The client's span, from a valid ``traceparent`` (parsed by the SDK's one parser), if trusted."""
        if not self.settings.continue_trace:
            return None
        headers = ctx.request.headers
        parsed = parse_traceparent(headers.get_all("traceparent"))
        if parsed is None:
            return None
        trace_id, parent_id, flags = parsed
        state = parse_tracestate(headers.get_all("tracestate"))
        return NonRecordingSpan(
            SpanContext(
                int(trace_id, 16),
                int(parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(flags, 16)),
                trace_state=TraceState.from_header([state]) if state else None,
            )
        )

    @staticmethod
    def _client_span(exporting: Exporting, parent: otel_context.Context, call: UpstreamCall, to_epoch: int) -> None:
        start = to_epoch + int(call.started * 1e9)
        ids: PresetIds = exporting.ids
        ids.next_span_id = int(call.span_id, 16) if call.span_id else None
        try:
            child = exporting.tracer.start_span(
                f"{call.method} {call.service}",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=start,
                attributes={
                    "http.request.method": call.method,
                    "url.full": call.target.rstrip("/") + call.path,
                    "server.address": _host(call.target),
                    "http.request.resend_count": call.attempt,
                    "bascule.service": call.service,
                },
            )
        finally:
            ids.next_span_id = None
        if call.status is not None:
            child.set_attribute("http.response.status_code", call.status)
        if call.error is not None or (call.status or 0) >= 500:
            child.set_attribute("error.type", call.error or str(call.status))
            child.set_status(Status(StatusCode.ERROR))
        child.end(start + int((call.seconds or 0.0) * 1e9))

    @property
    def exporter(self) -> ReportingExporter | None:
        """The exporter of this instance's spans (its ``failures`` and ``exported`` counts)."""
        return self.exporting.exporter if self.exporting else None


def _epoch_ns(perf: float) -> int:
    """``time.perf_counter()`` value ``perf`` as wall-clock nanoseconds."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit(":", 1)[0]


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Span attribute values: str, bool, int and float as they are, anything else as text."""
    return {k: v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in values.items()}
