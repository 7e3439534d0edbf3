"""The ``logging`` plugin: a JSON access log, W3C trace context, a JSON operational log."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from bascule_sdk import Context, Gateway, Plugin, Response, hookimpl
from bascule_sdk.tracecontext import Trace

from .operational import use_format
from .record import access_record, to_json
from .settings import LoggingSettings
from .writer import LineWriter, Sink, open_sink

__all__ = ["AccessLog"]

log = logging.getLogger("bascule.logging")

_DROP_WARNING_INTERVAL = 10.0  # seconds between "lines dropped" warnings


class AccessLog(Plugin[LoggingSettings]):
    """One JSON line per request, written off the request path; W3C trace context upstream.

    Trace context: in ``on_request`` the plugin sets ``ctx.trace`` from the
    client's ``traceparent`` (or a new trace) unless a plugin before it (the
    opentelemetry plugin) did; the gateway then sends each upstream attempt a
    ``traceparent`` naming that attempt's span.

    ``writer.dropped`` counts lines lost because the sink could not keep up.
    """

    name = "logging"
    priority = 0
    Settings = LoggingSettings

    def __init__(self, settings: LoggingSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.redact = frozenset(n.lower() for n in settings.redact_query)
        self.headers = tuple(h.lower() for h in settings.headers)
        self.exclude = tuple((p, p.rstrip("/") + "/") for p in settings.exclude_paths)  # (path, what is below it)
        self.writer: LineWriter | None = None
        self._warned_at = float("-inf")

    def open_sink(self) -> tuple[Sink, Callable[[], None] | None]:
        """The sink lines are written to and how to close it (override to log elsewhere)."""
        return open_sink(self.settings.output)

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        sink, close = self.open_sink()
        s = self.settings
        self.writer = LineWriter(sink, s.buffer, interval=s.flush_interval, close=close, format=self.line)
        gateway.start_soon(self.writer.run)
        use_format(self.settings.operational_format, gateway.shared)

    @hookimpl
    async def shutdown(self) -> None:
        if self.writer is not None:
            await self.writer.aclose(self.settings.flush_timeout)

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        self._sampled(ctx)

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        if self.writer is None or self._excluded(ctx.request.path):
            return
        if not self._sampled(ctx) and response.status < 500:
            return
        if not self.writer.put(access_record(ctx, response, headers=self.headers, redact=self.redact)):
            self._warn_dropped(self.writer.dropped)

    def line(self, record: dict[str, Any]) -> bytes:
        """The access-log line of a request's ``access_record`` (made by the writer task, in batches)."""
        return to_json(record) + b"\n"

    def _sampled(self, ctx: Context) -> bool:
        """Whether the request is logged, decided once (by the first hook that asks);
        sets ``ctx.trace`` then, unless trace context is off or a plugin already did."""
        sampled = ctx.state.get(self.name)
        if sampled is None:
            rate = self.settings.sample_rate
            sampled = ctx.state[self.name] = rate >= 1.0 or random.random() < rate
            if self.settings.trace_context and ctx.trace is None:
                ctx.trace = Trace.from_headers(ctx.request.headers, sampled)
        return bool(sampled)

    def _excluded(self, path: str) -> bool:
        return bool(self.exclude) and any(path == p or path.startswith(below) for p, below in self.exclude)

    def _warn_dropped(self, dropped: int) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _DROP_WARNING_INTERVAL:
            log.warning("access log: %d lines dropped so far (the sink is too slow)", dropped)
            self._warned_at = now
