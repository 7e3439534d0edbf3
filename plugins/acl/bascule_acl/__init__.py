"""bascule-acl: allow or deny routes by consumer group, for the Bascule gateway."""

from .plugin import ACLPlugin

__all__ = ["ACLPlugin"]
