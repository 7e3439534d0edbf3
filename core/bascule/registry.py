"""Plugin discovery: installed plugin classes, by name.

Plugins are found through the ``bascule.plugins`` entry-point group; the
entry point's name is the name used in plugins.toml and its value the plugin
class (``bascule_jwt:JWTPlugin``). Built-in plugins of the core are listed
here too, so the core uses its own contract.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

from bascule_sdk import Plugin, hookspecs

__all__ = ["ENTRY_POINT_GROUP", "KNOWN_PACKAGES", "Available", "discover"]

ENTRY_POINT_GROUP = "bascule.plugins"
HOOKS = (
    "startup",
    "shutdown",
    "on_request",
    "on_upstream_request",
    "handle",
    "on_response",
    "on_log",
    "on_websocket_message",
    "on_admin_request",
)

# Names a user may write before installing the distribution that provides them.
KNOWN_PACKAGES = {
    "jwt": "bascule-jwt",
    "key-auth": "bascule-key-auth",
    "acl": "bascule-acl",
    "rate-limit": "bascule-ratelimit",
    "cache": "bascule-cache",
    "aggregate": "bascule-aggregate",
    "logging": "bascule-logging",
    "prometheus": "bascule-prometheus",
    "cors": "bascule-cors",
    "request-transformer": "bascule-request-transformer",
    "ws-rate-limit": "bascule-ws-ratelimit",
}

log = logging.getLogger("bascule")


@dataclass(frozen=True)
class Available:
    """An installed plugin class and where it came from."""

    name: str
    cls: type[Plugin]
    distribution: str
    version: str

    @cached_property
    def hooks(self) -> list[str]:
        """The hooks the class implements, in phase order."""
        return [name for name in HOOKS if hasattr(getattr(self.cls, name, None), f"{hookspecs.PROJECT}_impl")]


def discover(extra: Iterable[type[Plugin]] = (), entry_points: bool = True) -> dict[str, Available]:
    """Every installed plugin by name: entry points, then ``extra`` classes.

    An entry point that fails to import is logged and skipped (it would
    otherwise stop every gateway on the machine); if a config then names it,
    config validation reports it as not installed.
    """
    found: dict[str, Available] = {}
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            try:
                cls = ep.load()
            except Exception:
                log.exception("cannot load plugin %r from %s", ep.name, ep.value)
                continue
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                log.error("entry point %r (%s) is not a bascule_sdk.Plugin subclass", ep.name, ep.value)
                continue
            found[ep.name] = Available(ep.name, cls, dist.name if dist else "?", dist.version if dist else "?")
    for cls in extra:
        found[cls.name] = Available(cls.name, cls, cls.__module__.split(".")[0], "local")
    return found


def install_hint(name: str) -> str:
    """A ``pip install`` command that provides plugin ``name``; ``""`` for a name this repository does not ship.

    The distributions are not on PyPI. When this bascule runs from a checkout
    of the repository, the command installs the plugin's folder of that
    checkout; otherwise it installs from ``DIST``, the folder of wheels that
    ``make dist`` writes (``dist/`` of the repository).
    """
    distribution = KNOWN_PACKAGES.get(name)
    if distribution is None:
        return ""
    folder = Path(__file__).resolve().parents[2] / "plugins" / distribution.removeprefix("bascule-")
    if (folder / "pyproject.toml").is_file():
        return f"pip install {folder}"
    return f"pip install --find-links DIST {distribution}, DIST being the dist/ folder that make dist builds"


def not_installed_message(name: str, available: Mapping[str, Available]) -> str:
    """The error text for a plugin name that is not installed."""
    installed = ", ".join(sorted(n for n in available if not n.startswith("_"))) or "none"
    hint = install_hint(name)
    return f"plugin {name!r} is not installed{f' ({hint})' if hint else ''}; installed plugins: {installed}"
