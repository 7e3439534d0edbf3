"""The base class every plugin derives from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["NoSettings", "Plugin"]

SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True)
class NoSettings:
    """Settings model of a plugin that takes none."""


class Plugin(Generic[SettingsT]):
    """A plugin: a ``name``, a ``priority``, a ``Settings`` model, hook methods.

    Derive from ``Plugin[YourSettings]`` and set ``Settings = YourSettings``:
    ``self.settings`` is then typed as ``YourSettings`` (the gateway checks
    that the two name the same model). A plugin without settings derives from
    ``Plugin[NoSettings]``.

    The gateway makes one instance per route it is enabled on (so settings
    layered per route stay immutable) and passes it the validated settings.
    Hook methods are ``async def`` methods named after the hooks in
    ``bascule_sdk.hookspecs`` and marked with ``@hookimpl``; implement only the
    ones you need.

    ``priority``: higher runs earlier in ``on_request`` (and later in
    ``on_response``, which unwinds like middleware). Conventions: auth 1000,
    ACL 950, rate limiting 900, caching 100, transformers 50, logging 0.
    A route may override it per instance with ``priority = N``.

    ``Credentials`` (optional): a settings model for this plugin's table under
    ``[consumers.NAME.credentials.<plugin name>]``.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0
    Settings: ClassVar[type[Any]] = NoSettings
    Credentials: ClassVar[type[Any] | None] = None

    def __init__(self, settings: SettingsT, *, instance: str | None = None) -> None:
        self.settings: SettingsT = settings
        self.instance: str = instance or self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instance!r}>"
