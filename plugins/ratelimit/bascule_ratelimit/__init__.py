"""bascule-ratelimit: exact rate limits for Bascule routes, in-process or on Redis.

[routes.plugins.rate-limit]
limit = 100
window = "1m"
key = ["consumer", "ip"]
"""

from .plugin import QUOTA_EXCEEDED, RateLimit

__all__ = ["QUOTA_EXCEEDED", "RateLimit"]
