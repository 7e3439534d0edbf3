"""bascule-key-auth: API-key authentication for the Bascule gateway."""

from .plugin import KeyAuthPlugin

__all__ = ["KeyAuthPlugin"]
