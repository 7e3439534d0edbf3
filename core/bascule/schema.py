"""JSON Schema and reference tables for plugins.toml, made from the settings dataclasses.

The dataclasses in ``bascule.config`` and each installed plugin's ``Settings``
(and ``Credentials``) are the single source of truth: ``config_schema`` turns
them into one JSON Schema (draft 2020-12) that editors can validate
plugins.toml against, and ``reference_table`` into the Markdown tables of
``docs/config.md``. A field's description is its ``setting(..., doc)`` text.

Keys accept ``-`` or ``_`` alike (``strip-path`` = ``strip_path``), so both
spellings are in the schema.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from bascule_sdk.settings import Converter, parse_byte_size, parse_duration, resolve_secret

from .config import (
    ConsumerSettings,
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
)
from .registry import Available

__all__ = ["config_schema", "reference_table", "settings_schema", "type_label", "type_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_DURATION = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
    ],
}
_BYTE_SIZE = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$"},
    ],
}
_SECRET = {"type": "string"}
_CONVERTERS: dict[Callable[[Any], Any], dict[str, Any]] = {
    parse_duration: _DURATION,
    parse_byte_size: _BYTE_SIZE,
    resolve_secret: _SECRET,
}
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _fields(model: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(model) if f.init]


def _default(f: dataclasses.Field) -> Any:
    """The field's default as a JSON value, or ``MISSING`` (required or not JSON-able)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if dataclasses.is_dataclass(value):
        return dataclasses.MISSING
    try:
        json.dumps(value)
    except TypeError:
        return dataclasses.MISSING
    return value


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one settings field type (see ``bascule_sdk.settings``)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Converter):
                schema = dict(_CONVERTERS.get(extra.fn, {}))
                schema["description"] = extra.description
                return schema
        return type_schema(base)
    if origin in (Union, types.UnionType):
        alternatives = [a for a in get_args(tp) if a is not type(None)]
        if len(alternatives) == 1:  # ``T | None``: TOML has no null, the key is just optional
            return type_schema(alternatives[0])
        return {"anyOf": [type_schema(a) for a in alternatives]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (list, tuple) or tp in (list, tuple):
        args = get_args(tp)
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        args = get_args(tp)
        return {"type": "object", "additionalProperties": type_schema(args[1]) if args else {}}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return settings_schema(tp)
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    return {}  # Any


def settings_schema(model: type, *, require: bool = True) -> dict[str, Any]:
    """The JSON Schema of a settings dataclass: an object with exactly its fields.

    ``require=False`` leaves out ``required`` (for tables layered over others).
    """
    hints = typing.get_type_hints(model, include_extras=True)
    properties: dict[str, Any] = {}
    required = []
    for f in _fields(model):
        schema = type_schema(hints[f.name])
        if f.metadata.get("doc"):
            schema["description"] = f.metadata["doc"]
        default = _default(f)
        if default is not dataclasses.MISSING and default is not None:
            schema["default"] = default
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        properties[f.name] = schema
        if "_" in f.name:
            properties[f.name.replace("_", "-")] = schema
    result: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if model.__doc__ and not model.__doc__.startswith(f"{model.__name__}("):
        result["description"] = model.__doc__.strip().splitlines()[0]
    if require and required:
        result["required"] = required
    return result


def _plugin_table(available: Available, *, named: bool) -> dict[str, Any]:
    """An instance table of ``available``; ``named``: the instance's name is the plugin's."""
    schema = settings_schema(available.cls.Settings, require=False)
    schema["properties"] = dict(schema["properties"])
    schema["properties"]["priority"] = {"type": "integer", "description": "Overrides the plugin's priority."}
    if named:
        schema["properties"]["plugin"] = {"const": available.name}
    else:
        schema["properties"]["plugin"] = {"const": available.name, "description": "The plugin this instance runs."}
        schema["required"] = ["plugin"]
    schema["description"] = f"{available.name} ({available.distribution} {available.version})"
    return schema


def _plugins_schema(available: Mapping[str, Available], *, route: bool) -> dict[str, Any]:
    visible = {n: a for n, a in sorted(available.items()) if not n.startswith("_")}
    switch = [{"type": "boolean"}] if route else []
    properties = {
        name: {"anyOf": [_plugin_table(a, named=True), *switch]} if route else _plugin_table(a, named=True)
        for name, a in visible.items()
    }
    aliases = [_plugin_table(a, named=False) for a in visible.values()]
    if route:  # the `plugin` key may come from the global table this one is layered over
        for schema in aliases:
            schema.pop("required")
    aliases += switch
    description = "Plugin instances by name; any other name runs the plugin named by its `plugin` key."
    if route:
        description += " `X = false` switches a global plugin off on this route."
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": {"anyOf": aliases} if aliases else False,
    }


def config_schema(available: Mapping[str, Available]) -> dict[str, Any]:
    """The JSON Schema of a whole plugins.toml, with ``available`` plugins' settings."""
    route = settings_schema(RouteSettings)
    route["properties"]["plugins"] = _plugins_schema(available, route=True)
    consumer = settings_schema(ConsumerSettings)
    consumer["properties"]["credentials"] = {
        "type": "object",
        "description": "Per auth plugin: [consumers.NAME.credentials.<plugin>].",
        "properties": {
            name: settings_schema(a.cls.Credentials)
            for name, a in sorted(available.items())
            if a.cls.Credentials is not None
        },
        "additionalProperties": False,
    }
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "Bascule gateway configuration (plugins.toml)",
        "type": "object",
        "properties": {
            "gateway": settings_schema(GatewaySettings),
            "services": {
                "type": "object",
                "description": "Upstream services by name.",
                "additionalProperties": settings_schema(ServiceSettings),
            },
            "routes": {"type": "array", "description": "Routes, in declaration order.", "items": route},
            "consumers": {
                "type": "object",
                "description": "Known API clients by name.",
                "additionalProperties": consumer,
            },
            "plugins": _plugins_schema(available, route=False),
        },
        "additionalProperties": False,
    }


# -- Markdown reference --------------------------------------------------------


def type_label(tp: Any) -> str:
    """A short human name for a settings type: ``duration``, ``list of string``..."""
    origin = get_origin(tp)
    if origin is Annotated:
        for extra in get_args(tp)[1:]:
            if isinstance(extra, Converter):
                return extra.description.split(" (")[0]
        return type_label(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return " or ".join(type_label(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return " \\| ".join(f'`"{c}"`' if isinstance(c, str) else f"`{c}`" for c in get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        args = get_args(tp)
        return f"list of {type_label(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        args = get_args(tp)
        return f"table of {type_label(args[1])}" if args and args[1] is not Any else "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    if tp is Any:
        return "any"
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _pretty(tp: Any, value: Any) -> str:
    """A default as the user would write it: ``"30s"`` rather than ``30.0`` for a duration."""
    converter = next((e for e in get_args(tp)[1:] if isinstance(e, Converter)), None)
    if converter is not None and converter.fn is parse_duration and isinstance(value, (int, float)):
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if value >= size and value % size == 0:
                return f'"{int(value // size)}{unit}"'
        return f'"{round(value * 1000)}ms"' if value else '"0s"'
    if converter is not None and converter.fn is parse_byte_size and isinstance(value, int):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and value % size == 0:
                return f'"{value // size}{unit}"'
    return _toml_value(value)


def reference_table(model: type) -> str:
    """A Markdown table of ``model``'s keys: key, type, default, description."""
    hints = typing.get_type_hints(model, include_extras=True)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in _fields(model):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            default = "*required*"
        else:
            value = _default(f)
            unset = value is None or value is dataclasses.MISSING
            default = "*unset*" if unset else f"`{_pretty(hints[f.name], value)}`"
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {type_label(hints[f.name])} | {default} | {doc} |")
    return "\n".join(rows) + "\n"
