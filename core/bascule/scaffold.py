"""``bascule plugin new NAME``: a complete plugin distribution that works out of the box.

The generated project is a starting point a user edits, not a stub: a
``pyproject.toml`` with the ``bascule.plugins`` entry point, a plugin class
with a settings model, a README and tests on real sockets (``bascule.testing``)
that pass as generated. Its example plugin adds a configurable header to every
response of the routes it is enabled on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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


def render(names: PluginNames) -> dict[str, str]:
    """The files of the new distribution, by path relative to its directory."""
    values = {
        "name": names.name,
        "distribution": names.distribution,
        "package": names.package,
        "cls": names.cls,
        "settings": names.settings,
        "header": names.header,
        "snake": names.name.replace("-", "_"),
    }
    exports = sorted([names.cls, names.settings])
    values["exports"] = ", ".join(exports)
    values["all"] = "[" + ", ".join(f'"{e}"' for e in exports) + "]"
    return {path.format(**values): _fill(text, values) for path, text in _FILES.items()}


def _fill(template: str, values: dict[str, str]) -> str:
    # ``{{name}}`` placeholders: the templates are full of Python/TOML braces.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


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


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{{distribution}}"
version = "0.1.0"
description = "A Bascule gateway plugin: {{name}}."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["bascule-sdk>=0.1"]

[project.optional-dependencies]
test = ["bascule", "pytest", "pytest-trio"]

# The entry point makes the plugin available to plugins.toml as "{{name}}".
[project.entry-points."bascule.plugins"]
{{name}} = "{{package}}:{{cls}}"

[tool.setuptools]
packages = ["{{package}}"]

[tool.pytest.ini_options]
trio_mode = true
addopts = "--import-mode=importlib"
"""

_README = """\
# {{distribution}}

A plugin for the Bascule API gateway.
It adds a header to every response of the routes it is enabled on, including
the gateway's own error responses.

## Install

In the virtualenv where the gateway (`bascule`) is installed, from this folder
(or from a wheel of it, built with `python -m build`):

```sh
pip install .
bascule plugins                   # lists "{{name}}"
```

## Settings

| key | type | default | description |
|---|---|---|---|
| `header` | string | `"{{header}}"` | Name of the response header to add. |
| `value` | string | `"hello"` | Its value. |

## Example

```toml
[[routes]]
name = "users"
paths = ["/api/users"]
service = "users"

[routes.plugins.{{name}}]      # enabled on this route only
value = "hi from the gateway"
```

Use `[plugins.{{name}}]` instead to enable it on every route.

## Develop

`bascule` and `bascule-sdk` are not on PyPI: build their wheels in a clone of
the Bascule repository with `make dist`, and point pip at that `dist/` folder
(here `/path/to/bascule/dist`). In a new virtualenv:

```sh
python3 -m venv .venv
.venv/bin/pip install --find-links /path/to/bascule/dist -e '.[test]'
.venv/bin/pytest
```

In a virtualenv that already has `bascule`, `pip install -e '.[test]'` is enough.

The tests start a real upstream server and a real gateway on free ports
(`bascule.testing`), enable the plugin on one route and check what a client
sees.
"""

_INIT = '''\
"""{{distribution}}: a Bascule gateway plugin."""

from .plugin import {{exports}}

__all__ = {{all}}
'''

_PLUGIN = '''\
"""The {{name}} plugin: adds a configured header to every response of its routes."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Context, HeaderName, HeaderValue, Plugin, Response, hookimpl, setting


@dataclass(frozen=True)
class {{settings}}:
    """``[routes.plugins.{{name}}]`` (or ``[plugins.{{name}}]`` for every route).

    A rule of one value is declared on its field: by its type (HeaderName,
    HeaderValue, Duration...) or its bounds (min=, max=, pattern=); the gateway
    enforces it and ``bascule schema`` states it. A rule that spans several
    fields goes in ``__post_init__`` (raise ``ValueError("key: ...")``).
    """

    header: HeaderName = setting("{{header}}", "Name of the response header to add.")
    value: HeaderValue = setting("hello", "Its value.")


class {{cls}}(Plugin[{{settings}}]):  # Plugin[...]: self.settings is typed
    """Adds ``header: value`` to every response of the routes it is enabled on."""

    name = "{{name}}"
    priority = 50  # conventions: auth 1000, rate limiting 900, cache 100, transformers 50
    Settings = {{settings}}

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        response.headers.set(self.settings.header, self.settings.value)
'''

_TEST = '''\
"""Tests over real sockets: a real upstream, a real gateway, an HTTP client."""

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from {{package}} import {{cls}}


def config(upstream_url: str, plugin_table: str = "") -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]

        [[routes]]
        name = "with"
        paths = ["/with"]
        service = "api"
        [routes.plugins.{{name}}]
        {plugin_table}

        [[routes]]
        name = "without"
        paths = ["/without"]
        service = "api"
    """


async def test_adds_the_header_on_its_route_only(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'value = "hi"'), plugins=[{{cls}}])
    async with gw.client() as client:
        enabled = await client.get("/with/x")
        other = await client.get("/without/x")
    assert enabled.status_code == 200
    assert enabled.headers["{{header}}"] == "hi"
    assert other.status_code == 200
    assert "{{header}}" not in other.headers
    assert [r.path for r in upstream.requests] == ["/with/x", "/without/x"]


async def test_invalid_header_name_is_a_config_error(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    table = 'header = "bad header"'
    with pytest.raises(ConfigError, match="header: expected a header name"):
        await start_gateway(nursery, config(upstream.url, table), plugins=[{{cls}}])
'''

_GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
"""

_FILES = {
    "pyproject.toml": _PYPROJECT,
    "README.md": _README,
    ".gitignore": _GITIGNORE,
    "{package}/__init__.py": _INIT,
    "{package}/plugin.py": _PLUGIN,
    "tests/test_{snake}.py": _TEST,
}
