"""The aggregate plugin: answer a route from several backends, merged into one JSON object.

A failed required backend makes the answer a 502 problem (504 when it timed
out), listing the failures under ``errors``. Failed optional backends leave a
200 with what the others answered, an ``errors`` list and
``X-Bascule-Completed: false``.
"""

from __future__ import annotations

import time
from typing import Any

from bascule_sdk import Context, HTTPError, Plugin, Response, hookimpl

from .fanout import ClientInputs, Fanout
from .settings import AggregateSettings
from .shaping import merge

__all__ = ["COMPLETED", "Aggregate"]

COMPLETED = "x-bascule-completed"


class Aggregate(Plugin[AggregateSettings]):
    """Calls the route's backends concurrently and merges their answers."""

    name = "aggregate"
    priority = 10
    Settings = AggregateSettings

    def __init__(self, settings: AggregateSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.expected: dict[str, float] = {}  # each backend's recent call time (``Fanout``)

    @hookimpl
    async def handle(self, ctx: Context) -> Response:
        backends = self.settings.backends
        inputs = ClientInputs(ctx, backends)
        body = await ctx.request.read(None) if any(b.forward_body for b in backends) else b""
        fanout = Fanout(self.settings, ctx, inputs, body, self.expected)
        started = time.perf_counter()
        await fanout.run()
        ctx.upstream_seconds = time.perf_counter() - started  # the calls overlap: their sum would overstate
        outcomes = [(b, fanout.outcomes[b.name]) for b in backends]
        # Calls cancelled because a required backend failed are not failures of their own.
        failures = [(b, o) for b, o in outcomes if not o.ok and o.error != "cancelled"]
        errors = [o.describe(b.name) for b, o in failures]
        if required := [(b, o) for b, o in failures if b.required]:
            ctx.tags["aggregate"] = "failed"
            timed_out = any(o.error == "timeout" for _, o in required)
            names = ", ".join(repr(b.name) for b, _ in required)
            raise HTTPError(504 if timed_out else 502, f"Required backend {names} failed.", extra={"errors": errors})
        merged: dict[str, Any] = {}
        for _, outcome in outcomes:
            if outcome.shaped is not None:
                merge(merged, outcome.shaped)
        if errors:
            merged["errors"] = errors
        ctx.tags["aggregate"] = "partial" if errors else "complete"
        status = outcomes[0][1].status if self.settings.pass_status else 200
        response = Response.json(merged, status)
        response.headers.set(COMPLETED, "false" if errors else "true")
        if errors:
            response.headers.set("cache-control", "no-store")  # never keep a degraded answer
        elif self.settings.cache_control:
            response.headers.set("cache-control", self.settings.cache_control)
        return response
