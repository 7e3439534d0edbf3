"""bascule-cache: an RFC 9111 shared HTTP cache for Bascule routes."""

from .plugin import Cache, Status
from .settings import CacheSettings

__all__ = ["Cache", "CacheSettings", "Status"]
