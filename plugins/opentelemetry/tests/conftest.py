"""A real OTLP/HTTP trace receiver (the `collector` fixture), decoding with opentelemetry-proto."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from bascule.testing import Received, Upstream, start_upstream
from bascule_sdk import Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_INTERNAL: "internal"}


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    error: bool
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Collector:
    """Spans received at ``url`` + ``/v1/traces``; ``upstream.stop.set()`` stops it."""

    upstream: Upstream
    spans: list[ReceivedSpan] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.upstream.url + "/v1/traces"

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def receive(self, request: Received) -> Response:
        assert request.path == "/v1/traces" and request.method == "POST"
        assert request.header("content-type") == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(request.body)
        for rs in export.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            s.name,
                            KINDS.get(s.kind, str(s.kind)),
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            s.status.code == s.status.STATUS_CODE_ERROR,
                            {a.key: _value(a.value) for a in s.attributes},
                            resource,
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return Response(200, {"content-type": "application/x-protobuf", "content-length": str(len(body))}, body)


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


async def start_collector(nursery: trio.Nursery) -> Collector:
    collector = Collector(Upstream())
    collector.upstream = await start_upstream(nursery, lambda r: collector.receive(r))
    return collector


@pytest.fixture
async def collector(nursery: trio.Nursery) -> Collector:
    return await start_collector(nursery)
