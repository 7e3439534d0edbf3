"""The ``logging`` plugin: a JSON access log and W3C trace-context propagation."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

from bascule_sdk import Context, Gateway, Plugin, Request, Response, hookimpl

from .record import access_record
from .settings import LoggingSettings
from .tracecontext import Trace, new_span_id
from .writer import LineWriter, Sink, open_sink

__all__ = ["AccessLog"]

log = logging.getLogger("bascule.logging")

_DROP_WARNING_INTERVAL = 10.0  # seconds between "lines dropped" warnings


class _RequestState:
    """What the plugin remembers about one request (in ``ctx.state["logging"]``)."""

    __slots__ = ("trace", "sampled", "span_id")

    def __init__(self, trace: Trace | None, sampled: bool) -> None:
        self.trace = trace  # None when trace_context is off
        self.sampled = sampled
        self.span_id: str | None = None  # of the last upstream call


class AccessLog(Plugin[LoggingSettings]):
    """One JSON line per request, written off the request path; W3C trace context upstream.

    ``writer.dropped`` counts lines lost because the sink could not keep up.
    """

    name = "logging"
    priority = 0
    Settings = LoggingSettings

    def __init__(self, settings: LoggingSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.redact = frozenset(n.lower() for n in settings.redact_query)
        self.headers = tuple(h.lower() for h in settings.headers)
        self.writer: LineWriter | None = None
        self._warned_at = float("-inf")

    def open_sink(self) -> tuple[Sink, Callable[[], None] | None]:
        """The sink lines are written to and how to close it (override to log elsewhere)."""
        return open_sink(self.settings.output)

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        sink, close = self.open_sink()
        self.writer = LineWriter(sink, self.settings.buffer, close=close)
        gateway.start_soon(self.writer.run)

    @hookimpl
    async def shutdown(self) -> None:
        if self.writer is not None:
            await self.writer.aclose(self.settings.flush_timeout)

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        state = self._state(ctx)
        if state.trace is None:
            return
        state.span_id = new_span_id()
        request.headers.set("traceparent", state.trace.traceparent(state.span_id))
        if state.trace.tracestate:
            request.headers.set("tracestate", state.trace.tracestate)
        else:
            request.headers.remove("tracestate")

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        if self.writer is None or self._excluded(ctx.request.path):
            return
        state = self._state(ctx)
        if not state.sampled and response.status < 500:
            return
        trace_id = state.trace.trace_id if state.trace else None
        record = access_record(
            ctx, response, trace_id=trace_id, span_id=state.span_id, redact=self.redact, headers=self.headers
        )
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        if not self.writer.put(line.encode()):
            self._warn_dropped(self.writer.dropped)

    def _state(self, ctx: Context) -> _RequestState:
        """The request's sampling decision and trace, made once (by the first hook that asks)."""
        state = ctx.state.get(self.name)
        if state is None:
            rate = self.settings.sample_rate
            sampled = rate >= 1.0 or random.random() < rate
            trace = None
            if self.settings.trace_context:
                headers = ctx.request.headers
                trace = Trace.from_headers(headers.get_all("traceparent"), headers.get_all("tracestate"), sampled)
            state = ctx.state[self.name] = _RequestState(trace, sampled)
        return state

    def _excluded(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.settings.exclude_paths)

    def _warn_dropped(self, dropped: int) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _DROP_WARNING_INTERVAL:
            log.warning("access log: %d lines dropped so far (the sink is too slow)", dropped)
            self._warned_at = now
