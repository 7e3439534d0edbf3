"""bascule-jwt: JWT bearer-token authentication for the Bascule gateway."""

from .plugin import JWTPlugin

__all__ = ["JWTPlugin"]
