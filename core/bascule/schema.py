"""JSON Schema and reference tables for plugins.toml, made from the settings dataclasses.

The dataclasses in ``bascule.config`` and each installed plugin's ``Settings``
(and ``Credentials``) are the single source of truth: ``config_schema`` turns
them into one JSON Schema (draft 2020-12) that editors can validate
plugins.toml against, and ``reference_table`` into the Markdown tables of
``docs/config.md``. A field's description is its ``setting(..., doc)`` text.

Keys accept ``-`` or ``_`` alike (``strip-path`` = ``strip_path``), so both
spellings are in the schema. The rules declared on a field (``setting(min=,
max=, pattern=, min_items=)``) become ``minimum``, ``maximum``, ``pattern`` and
``minItems``, for a duration's or a size's string form too. Each plugin's
table is defined once, under ``$defs``, and referenced wherever it may appear.

What a schema cannot see, ``bascule validate`` alone checks: rules written in
a model's ``__post_init__``, and references across tables (a route's
service, a route's table layered over ``[plugins.X]``, unique route names).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from bascule_sdk import settings
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

# The units of the string forms and their sizes (seconds, bytes): those ``bascule_sdk.settings`` parses.
_DURATION_UNITS = {unit: Fraction(str(size)) for unit, size in settings._DURATION_UNITS.items() if unit}
_SIZE_UNITS = {unit: Fraction(size) for unit, size in settings._SIZE_UNITS.items() if unit}
_UNITS: dict[Callable[[Any], Any], dict[str, Fraction]] = {
    parse_duration: _DURATION_UNITS,
    parse_byte_size: _SIZE_UNITS,
}
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


def _digits_at_least(n: int) -> str:
    """A regex of the digit strings (leading zeros allowed) whose value is at least ``n``."""
    if n <= 0:
        return r"\d+"
    text = str(n)
    longer = rf"0*[1-9]\d{{{len(text)},}}"
    same = [text] + [
        f"{text[:k]}[{int(d) + 1}-9]" + (rf"\d{{{len(text) - k - 1}}}" if k < len(text) - 1 else "")
        for k, d in enumerate(text)
        if d != "9"
    ]
    return f"(?:{longer}|0*(?:{'|'.join(same)}))"


def _decimal_at_least(bound: Fraction) -> str:
    """A regex of the decimals ``D[.F]`` whose value is at least ``bound`` (exact to 1e-12)."""
    if bound <= 0:
        return r"\d+(?:\.\d+)?"
    whole = math.floor(bound)
    rest = bound - whole
    above = rf"{_digits_at_least(whole + 1)}(?:\.\d+)?"
    equal = "0+" if whole == 0 else f"0*{whole}"
    if rest == 0:
        return rf"(?:{above}|{equal}(?:\.\d+)?)"
    digits = str(math.ceil(rest * 10**12)).rjust(12, "0").rstrip("0")
    fraction = [f"{digits[:k]}[{int(d) + 1}-9]\\d*" for k, d in enumerate(digits) if d != "9"]
    fraction.append(rf"{digits}\d*")
    return rf"(?:{above}|{equal}\.(?:{'|'.join(fraction)}))"


def _at_least(schema: dict[str, Any], low: float, units: Mapping[str, Fraction] | None) -> dict[str, Any]:
    """``schema`` (a number, or a duration or size with ``units``) with values below ``low`` refused."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_at_least(a, low, units) for a in schema["anyOf"]]}
    if schema.get("type") in ("integer", "number"):
        return {**schema, "minimum": max(low, schema.get("minimum", low))}
    if schema.get("type") == "string" and units is not None:
        decimals = units is _DURATION_UNITS
        forms = []
        for unit, size in units.items():
            bound = Fraction(str(low)) / size
            number = _decimal_at_least(bound) if decimals else _digits_at_least(math.ceil(bound))
            forms.append(rf"{number}\s*{unit}")
        if decimals:  # a bare number is seconds
            forms.append(_decimal_at_least(Fraction(str(low))))
        else:
            forms.append(_digits_at_least(math.ceil(low)))
        return {**schema, "pattern": rf"^\s*(?:{'|'.join(forms)})\s*$"}
    return schema


def _constrained(schema: dict[str, Any], tp: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` of a field of type ``tp`` with the rules of its ``setting(...)`` (``meta``)."""
    if get_origin(tp) in (Union, types.UnionType):
        alternatives = [a for a in get_args(tp) if a is not type(None)]
        tp = alternatives[0] if len(alternatives) == 1 else tp
    if schema.get("type") == "array":
        (item,) = get_args(tp)[:1] or (Any,)
        if "min_items" in meta:
            schema = {**schema, "minItems": meta["min_items"]}
        return {**schema, "items": _constrained(schema.get("items", {}), item, {**meta, "min_items": None})}
    converter = _converter(tp)
    units = _UNITS.get(converter) if converter else None
    if meta.get("min") is not None:
        schema = _at_least(schema, meta["min"], units)
    if meta.get("max") is not None:
        schema = _at_most(schema, meta["max"])
    if meta.get("pattern") is not None and converter is None:  # a secret's pattern is for its value, not its reference
        schema = _with_pattern(schema, meta["pattern"])
    return schema


def _with_pattern(schema: dict[str, Any], pattern: str) -> dict[str, Any]:
    if "anyOf" in schema:
        return {**schema, "anyOf": [_with_pattern(a, pattern) for a in schema["anyOf"]]}
    return {**schema, "pattern": pattern} if schema.get("type") == "string" else schema


def _at_most(schema: dict[str, Any], high: float) -> dict[str, Any]:
    """``schema`` with numbers above ``high`` refused (a duration's or size's string form is not bounded)."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_at_most(a, high) for a in schema["anyOf"]]}
    if schema.get("type") in ("integer", "number"):
        return {**schema, "maximum": high}
    return schema


def _converter(tp: Any) -> Callable[[Any], Any] | None:
    """The converter of a field type (``Duration``, ``ByteSize``, ``Secret``...), or ``None``."""
    for arg in (tp, *get_args(tp)):
        if get_origin(arg) is Annotated:
            for extra in get_args(arg)[1:]:
                if isinstance(extra, Converter):
                    return extra.fn
    return None


def settings_schema(model: type, *, require: bool = True) -> dict[str, Any]:
    """The JSON Schema of a settings dataclass: an object with exactly its fields.

    ``require=False`` leaves out ``required`` (for tables layered over others).
    """
    hints = typing.get_type_hints(model, include_extras=True)
    properties: dict[str, Any] = {}
    required = []
    for f in _fields(model):
        schema = _constrained(type_schema(hints[f.name]), hints[f.name], f.metadata)
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


def _plugin_def(available: Available) -> dict[str, Any]:
    """The table of one instance of ``available``, as ``$defs`` holds it (``plugin`` optional)."""
    schema = settings_schema(available.cls.Settings, require=False)
    schema["properties"] = {
        **schema["properties"],
        "plugin": {"const": available.name, "description": "The plugin this instance runs."},
        "priority": {"type": "integer", "description": "Overrides the plugin's priority."},
    }
    schema["description"] = f"{available.name} ({available.distribution} {available.version})"
    return schema


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/plugin.{name}"}


def _plugins_schema(visible: Mapping[str, Available], *, route: bool) -> dict[str, Any]:
    """``[plugins]``, or a route's ``plugins`` table (``route``: ``X = true/false`` too).

    Under the name of an installed plugin, its table; under any other name, a
    table that names its plugin with ``plugin = "..."``.
    """
    switch = [{"type": "boolean"}] if route else []
    properties = {name: {"anyOf": [_ref(name), *switch]} if route else _ref(name) for name in visible}
    aliases = [{**_ref(name), "required": ["plugin"]} for name in visible] + switch
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
    visible = {n: a for n, a in sorted(available.items()) if not n.startswith("_")}
    route = settings_schema(RouteSettings)
    route["properties"]["plugins"] = _plugins_schema(visible, route=True)
    consumer = settings_schema(ConsumerSettings)
    consumer["properties"]["credentials"] = {
        "type": "object",
        "description": "Per auth plugin: [consumers.NAME.credentials.<plugin>].",
        "properties": {
            name: settings_schema(a.cls.Credentials) for name, a in visible.items() if a.cls.Credentials is not None
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
            "plugins": _plugins_schema(visible, route=False),
        },
        "additionalProperties": False,
        "$defs": {f"plugin.{name}": _plugin_def(a) for name, a in visible.items()},
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
