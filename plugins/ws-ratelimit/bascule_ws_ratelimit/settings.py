"""The settings of the ws-rate-limit plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bascule_sdk import Duration, setting

__all__ = ["WebSocketRateLimitSettings"]


@dataclass(frozen=True)
class WebSocketRateLimitSettings:
    """``[routes.plugins.ws-rate-limit]``: how many messages one WebSocket may send."""

    limit: int = setting(doc="Messages admitted per window, per socket.", min=1)
    window: Duration = setting(doc='Window of limit, e.g. "1s" or "1m" (at least 1ms).', min=0.001)
    burst: int | None = setting(None, "Messages a socket may send at once after a quiet spell (default: limit).", min=1)
    sender: Literal["client", "service", "both"] = setting("client", "Whose messages are counted.")
    action: Literal["close", "drop"] = setting(
        "close", "Over the limit: close the socket (1008 policy violation), or drop the message."
    )
