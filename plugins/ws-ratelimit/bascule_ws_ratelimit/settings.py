"""The settings of the ws-rate-limit plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bascule_sdk import Duration, setting
from bascule_sdk.settings import check

__all__ = ["WebSocketRateLimitSettings"]


@dataclass(frozen=True)
class WebSocketRateLimitSettings:
    """``[routes.plugins.ws-rate-limit]``: how many messages one WebSocket may send."""

    limit: int = setting(doc="Messages admitted per window, per socket.")
    window: Duration = setting(doc='Window of limit, e.g. "1s" or "1m".')
    burst: int | None = setting(None, "Messages a socket may send at once after a quiet spell (default: limit).")
    sender: Literal["client", "service", "both"] = setting("client", "Whose messages are counted.")
    action: Literal["close", "drop"] = setting(
        "close", "Over the limit: close the socket (1008 policy violation), or drop the message."
    )

    def __post_init__(self) -> None:
        check(
            (self.limit < 1, "limit", "must be at least 1"),
            (self.window <= 0, "window", "must be positive"),
            (self.burst is not None and self.burst < 1, "burst", "must be at least 1"),
        )
