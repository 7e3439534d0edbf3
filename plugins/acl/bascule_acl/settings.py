"""Settings of the ``acl`` plugin."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import setting

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """``[routes.plugins.acl]``: which consumer groups may use the route.

    A consumer in any ``deny`` group is refused; otherwise, when ``allow`` is
    set, the consumer must be in one of its groups.
    """

    allow: list[str] = setting([], "Groups admitted (empty: every group not denied).")
    deny: list[str] = setting([], "Groups refused, even if also allowed.")

    def __post_init__(self) -> None:
        if not self.allow and not self.deny:
            raise ValueError("give allow or deny (or both) as lists of groups")
        both = sorted(set(self.allow) & set(self.deny))
        if both:
            raise ValueError(f"groups both allowed and denied: {', '.join(both)}")
