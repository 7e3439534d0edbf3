"""``bascule plugin new NAME``: a complete plugin distribution that works out of the box.

The generated project is a starting point a user edits, not a stub: a
``pyproject.toml`` with the ``bascule.plugins`` entry point, a plugin class
with a settings model, a README and tests on real sockets (``bascule.testing``)
that pass as generated. Its example plugin adds a configurable header to every
response of the routes it is enabled on.

The files are those of ``plugin-template/`` in this package: a working plugin
named ``example``, shipped as package data and linted, formatted and
type-checked (strict) with the rest of the code. ``render`` copies them with
each spelling of ``example`` (``PluginNames.spellings``) replaced, as a whole
word, by the new name's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["PluginNames", "ScaffoldError", "create_plugin", "render", "taken_names"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The plugin cannot be created (bad name, directory in the way)."""


@dataclass(frozen=True)
class PluginNames:
    """Every spelling of a plugin's name, derived from the name used in plugins.toml."""

    name: str  # hello-world: the entry-point name, used in plugins.toml

    @property
    def distribution(self) -> str:  # bascule-hello-world
        return f"bascule-{self.name}"

    @property
    def package(self) -> str:  # bascule_hello_world
        return "bascule_" + self.name.replace("-", "_")

    @property
    def cls(self) -> str:  # HelloWorldPlugin
        return "".join(part.capitalize() for part in self.name.split("-")) + "Plugin"

    @property
    def settings(self) -> str:  # HelloWorldSettings
        return self.cls.removesuffix("Plugin") + "Settings"

    @property
    def header(self) -> str:  # x-hello-world: the header the example plugin adds
        return f"x-{self.name}"

    @property
    def tests(self) -> str:  # test_hello_world: the module of its tests
        return "test_" + self.name.replace("-", "_")

    def spellings(self) -> tuple[str, ...]:
        """The spellings above, in one order: the template's are replaced by the new plugin's."""
        return (self.distribution, self.package, self.cls, self.settings, self.header, self.tests, self.name)


_TEMPLATE = PluginNames("example")  # the plugin in plugin-template/


def render(names: PluginNames) -> dict[str, str]:
    """The files of the new distribution, by path relative to its directory."""
    spelling = dict(zip(_TEMPLATE.spellings(), names.spellings(), strict=True))
    word = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(spelling, key=len, reverse=True))) + r")\b")

    def rename(text: str) -> str:
        return word.sub(lambda m: spelling[m[0]], text)

    return {rename(path): rename(text) for path, text in sorted(_template_files(files("bascule") / "plugin-template"))}


def _template_files(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, str]]:
    # What an installation adds beside the files (byte code) is not part of the template.
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _template_files(entry, f"{prefix}{entry.name}/")
        elif entry.is_file() and not entry.name.endswith(".pyc"):
            yield prefix + entry.name, entry.read_text(encoding="utf-8")


def create_plugin(name: str, directory: str | Path | None = None, taken: Mapping[str, str] | None = None) -> Path:
    """Write the distribution of plugin ``name`` into ``directory`` (default ``./bascule-NAME``).

    Raises ``ScaffoldError`` when ``name`` is not a valid plugin name, is
    taken (``taken``: the distribution that holds each taken name; default:
    ``taken_names()``), or the directory exists and is not empty. Returns the directory.
    """
    if not _NAME.match(name):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lower-case letters, digits and single hyphens, "
            "starting with a letter (e.g. 'add-header')"
        )
    holder = (taken_names() if taken is None else taken).get(name)
    if holder is not None:
        raise ScaffoldError(
            f"plugin name {name!r} is taken by {holder}: two plugins of one name cannot be installed together; "
            f"choose another name (e.g. 'my-{name}')"
        )
    names = PluginNames(name)
    target = Path(directory) if directory is not None else Path(names.distribution)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory")
    for relative, text in render(names).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def taken_names() -> dict[str, str]:
    """Plugin names in use, each with the distribution that holds it: the installed
    plugins (refused ones too) and those this repository ships."""
    from .registry import KNOWN_PACKAGES, discover

    found = discover()
    taken = {name: f"the distribution {package}" for name, package in KNOWN_PACKAGES.items()}
    taken |= {name: f"the installed distribution {a.distribution} {a.version}" for name, a in found.items()}
    taken |= {name: f"an installed distribution ({reason})" for name, reason in found.broken.items()}
    return taken
