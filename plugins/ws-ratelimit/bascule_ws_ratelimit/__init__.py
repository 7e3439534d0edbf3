"""bascule-ws-ratelimit: a message rate limit per WebSocket."""

from .plugin import WebSocketRateLimit
from .settings import WebSocketRateLimitSettings

__all__ = ["WebSocketRateLimit", "WebSocketRateLimitSettings"]
