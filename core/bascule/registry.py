"""Plugin discovery: installed plugin classes, by name.

Plugins are found through the ``bascule.plugins`` entry-point group; the
entry point's name is the name used in plugins.toml and its value the plugin
class (``bascule_jwt:JWTPlugin``). Built-in plugins of the core are listed
here too, so the core uses its own contract.
"""

from __future__ import annotations

import inspect
import logging
import re
import traceback
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
from bascule_sdk import Plugin, hookspecs
from bascule_sdk.settings import did_you_mean

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_PACKAGES",
    "Discovered",
    "InstalledPlugin",
    "PluginLoadError",
    "check_contract",
    "discover",
]

ENTRY_POINT_GROUP = "bascule.plugins"

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
    "opentelemetry": "bascule-opentelemetry",
    "ws-rate-limit": "bascule-ws-ratelimit",
}

log = logging.getLogger("bascule")

# Reads @hookimpl marks (pluggy's public ``parse_hookimpl_opts``); holds no plugin.
_marks = pluggy.PluginManager(hookspecs.PROJECT)


def implements(cls: type, hook: str) -> bool:
    """Whether ``cls`` has a method ``hook`` marked ``@hookimpl``."""
    return _marks.parse_hookimpl_opts(cls, hook) is not None


class PluginLoadError(Exception):
    """A plugin class breaks the hook contract; the message says where and how to fix it."""


@dataclass(frozen=True)
class InstalledPlugin:
    """An installed plugin class and where it came from."""

    name: str
    cls: type[Plugin]
    distribution: str
    version: str

    @cached_property
    def hooks(self) -> list[str]:
        """The hooks the class implements, in phase order."""
        return [name for name in hookspecs.HOOKS if implements(self.cls, name)]


class Discovered(dict[str, InstalledPlugin]):
    """The usable plugins by name; ``broken`` holds, by name, why each unusable one is refused
    (it failed to import, breaks the hook contract, or two distributions declare its name)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: dict[str, str] = {}


def discover(extra: Iterable[type[Plugin[Any]]] = (), entry_points: bool = True) -> Discovered:
    """Every installed plugin by name: entry points, then ``extra`` classes (which override them).

    An entry point that fails to import or breaks the contract is logged and
    refused, not fatal (it would otherwise stop every gateway on the machine): a
    config that names it gets the reason as its error. So is a name declared by
    two distributions, naming both, and an ``extra`` class that breaks the contract.
    """
    found = Discovered()
    declared: dict[str, list[str]] = {}
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "an unknown distribution"
            if dist in declared.setdefault(ep.name, []):
                continue  # one distribution seen twice on sys.path
            declared[ep.name].append(dist)
            if len(declared[ep.name]) > 1:
                both = " and ".join(declared[ep.name])
                found.broken[ep.name] = f"plugin {ep.name!r} is declared by two distributions, {both}: uninstall one"
                found.pop(ep.name, None)
                continue
            try:
                cls = ep.load()
            except Exception as e:
                last = traceback.format_exception_only(e)[-1].strip()
                found.broken[ep.name] = f"plugin {ep.name!r} ({dist}) failed to import: {last}"
                log.exception("cannot load plugin %r from %s (%s)", ep.name, ep.value, dist)
                continue
            try:
                if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                    raise PluginLoadError(f"entry point {ep.value} is not a bascule_sdk.Plugin subclass")
                check_contract(cls, ep.name)
            except PluginLoadError as e:
                found.broken[ep.name] = f"{e} ({dist})"
                log.error("plugin %r refused: %s", ep.name, found.broken[ep.name])
                continue
            name, version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
            found[ep.name] = InstalledPlugin(ep.name, cls, name, version)
    for cls in extra:
        found.pop(cls.name, None)
        found.broken.pop(cls.name, None)
        try:
            check_contract(cls)
        except PluginLoadError as e:
            found.broken[cls.name] = str(e)
            continue
        found[cls.name] = InstalledPlugin(cls.name, cls, cls.__module__.split(".")[0], "local")
    return found


def check_contract(cls: type[Plugin[Any]], name: str | None = None) -> None:
    """Raise ``PluginLoadError`` unless ``cls`` keeps the hook contract of ``bascule_sdk.hookspecs``.

    The checks: pluggy's own validation (hook names, argument names), every
    hook ``async def``, no method named like a hook without ``@hookimpl``
    (it would silently never run), ``Settings`` the model of ``Plugin[...]``.
    """
    label = f"plugin {name or getattr(cls, 'name', cls.__name__)!r} ({cls.__module__}.{cls.__qualname__})"
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    probe = cls.__new__(cls)  # an instance, unconfigured: pluggy sees bound methods, as in PluginSet
    try:
        pm.register(probe, name=label)
    except pluggy.PluginValidationError as e:
        raise PluginLoadError(f"{label}: {_explain(str(e))}") from None
    for hook in pm.get_hookcallers(probe) or ():
        if not hook.has_spec():
            hint = did_you_mean(hook.name, hookspecs.HOOKS)
            raise PluginLoadError(
                f"{label}: @hookimpl method {hook.name} is not a hook{hint} (hooks: {', '.join(hookspecs.HOOKS)})"
            )
        for impl in hook.get_hookimpls():
            if not inspect.iscoroutinefunction(impl.function):
                raise PluginLoadError(f"{label}: hook {hook.name} must be 'async def'")
    for hook_name in hookspecs.HOOKS:
        if callable(getattr(cls, hook_name, None)) and not implements(cls, hook_name):
            raise PluginLoadError(
                f"{label}: method {hook_name} is named like a hook but lacks @hookimpl, so it would never run: "
                f"put @hookimpl (from bascule_sdk import hookimpl) above 'async def {hook_name}', "
                "or rename the method if it is not meant as a hook"
            )
    declared = _settings_argument(cls)
    if declared is not None and declared is not cls.Settings:
        raise PluginLoadError(
            f"{label}: Settings = {cls.Settings.__qualname__} but the class derives from "
            f"Plugin[{getattr(declared, '__qualname__', declared)}]: make them the same model"
        )


def _settings_argument(cls: type) -> Any:
    """``X`` of the nearest ``Plugin[X]`` base of ``cls``, or ``None``."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is Plugin:
                (argument,) = typing.get_args(base)
                return None if isinstance(argument, typing.TypeVar) or argument is Any else argument
    return None


def _explain(message: str) -> str:
    """pluggy's validation message on one line, naming the hook and the arguments it allows."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    hook = re.search(r"for hook '(\w+)'", lines[0]) if lines else None
    if hook is None:
        return "; ".join(lines)
    spec = getattr(hookspecs, hook[1], None)
    allowed = ", ".join(inspect.signature(spec).parameters) if spec is not None else ""
    accepts = f"; {hook[1]} accepts any of these arguments: {allowed or 'none'}" if spec is not None else ""
    return f"hook {hook[1]}: " + "; ".join(lines[1:]) + accepts


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


def not_installed_message(name: str, available: Mapping[str, InstalledPlugin]) -> str:
    """The error text for a plugin name that is not usable: why it was refused, or that it is not installed."""
    broken = getattr(available, "broken", {})
    if name in broken:
        return str(broken[name])
    installed = sorted(n for n in available if not n.startswith("_"))
    hint = install_hint(name)
    return (
        f"plugin {name!r} is not installed{f' ({hint})' if hint else ''}; "
        f"installed plugins: {', '.join(installed) or 'none'}{did_you_mean(name, [*installed, *broken])}"
    )
