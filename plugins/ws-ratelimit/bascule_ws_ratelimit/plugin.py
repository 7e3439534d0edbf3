"""The ``ws-rate-limit`` plugin: GCRA over the messages of each WebSocket."""

from __future__ import annotations

import trio
from bascule_sdk import DROP, Context, Plugin, WebSocketClose, WebSocketMessage, hookimpl

from .settings import WebSocketRateLimitSettings

__all__ = ["WebSocketRateLimit"]

POLICY_VIOLATION = 1008  # RFC 6455 7.4.1


class WebSocketRateLimit(Plugin[WebSocketRateLimitSettings]):
    """Admits ``limit`` messages per ``window`` on each socket (GCRA: evenly spaced,
    with a burst of ``burst`` after a quiet spell); closes the socket with 1008 or
    drops the message beyond. The count is the socket's own: it lives in
    ``ctx.state`` and ends with the socket. ``ctx.tags["rate_limit"]`` is
    ``"rejected"`` once a message was refused, so the access log and the
    metrics show it.
    """

    name = "ws-rate-limit"
    priority = 900  # before plugins that change or meter messages, as rate-limit is for requests
    Settings = WebSocketRateLimitSettings

    def __init__(self, settings: WebSocketRateLimitSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.interval = settings.window / settings.limit  # the spacing of admitted messages
        self.tolerance = self.interval * ((settings.burst or settings.limit) - 1)

    @hookimpl
    async def on_websocket_message(self, ctx: Context, message: WebSocketMessage) -> object:
        if self.settings.sender != "both" and message.sender != self.settings.sender:
            return None
        now = trio.current_time()
        due = max(ctx.state.get(self.instance, now), now)  # GCRA's theoretical arrival time
        if due - now > self.tolerance:
            ctx.tags["rate_limit"] = "rejected"
            if self.settings.action == "drop":
                return DROP
            raise WebSocketClose(POLICY_VIOLATION, "message rate limit exceeded")
        ctx.state[self.instance] = due + self.interval
        return None
