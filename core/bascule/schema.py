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
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from bascule_sdk.settings import (
    Converted,
    Either,
    FieldSpec,
    ListOf,
    Model,
    Nullable,
    Scalar,
    TableOf,
    TypeSpec,
    model_fields,
    parse_byte_size,
    parse_duration,
    type_spec,
)

from .config import (
    ConsumerSettings,
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
)
from .registry import InstalledPlugin

__all__ = ["config_schema", "reference_table", "settings_schema", "type_label", "type_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _default(f: FieldSpec) -> Any:
    """The field's default as a JSON value, or ``MISSING`` (required or not JSON-able)."""
    value = f.default()
    if value is dataclasses.MISSING or dataclasses.is_dataclass(value):
        return dataclasses.MISSING
    try:
        json.dumps(value)
    except TypeError:
        return dataclasses.MISSING
    return value


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one settings field type (see ``bascule_sdk.settings``)."""
    return _schema(type_spec(tp))


def _schema(spec: TypeSpec) -> dict[str, Any]:
    """The JSON Schema of ``spec``: a leaf's own, a composite's made of its parts'."""
    match spec:
        case Nullable():  # TOML has no null: the key is just optional
            return _schema(spec.inner)
        case Either():
            return {"anyOf": [_schema(part) for part in spec.parts]}
        case ListOf():
            return {"type": "array", "items": _schema(spec.item)} if spec.parts else {"type": "array"}
        case TableOf():
            table = {"type": "object", "additionalProperties": _schema(spec.value)}
            return table | ({"propertyNames": _schema(spec.keys)} if spec.keys else {})
        case Model():
            return settings_schema(spec.model)
    return spec.schema


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


def _at_least(schema: dict[str, Any], low: float, converted: Converted | None) -> dict[str, Any]:
    """``schema`` (a number, or a duration or size: ``converted``, with units) with values below ``low`` refused."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_at_least(a, low, converted) for a in schema["anyOf"]]}
    if schema.get("type") in ("integer", "number"):
        return {**schema, "minimum": max(low, schema.get("minimum", low))}
    if schema.get("type") == "string" and converted is not None and converted.by.units:
        base = converted.parts[0]
        decimals = isinstance(base, Scalar) and base.tp is float  # "1.5s"; an integer's: "2KiB"
        forms = []
        for unit, size in converted.by.units.items():
            bound = Fraction(str(low)) / Fraction(str(size))
            number = _decimal_at_least(bound) if decimals else _digits_at_least(math.ceil(bound))
            forms.append(rf"{number}\s*{unit}")
        if decimals:  # a bare number is in the base unit (seconds)
            forms.append(_decimal_at_least(Fraction(str(low))))
        else:
            forms.append(_digits_at_least(math.ceil(low)))
        return {**schema, "pattern": rf"^\s*(?:{'|'.join(forms)})\s*$"}
    return schema


def _constrained(schema: dict[str, Any], spec: TypeSpec, rules: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` of a field of type ``spec`` with the rules of its ``setting(...)``."""
    if isinstance(spec, Nullable):
        spec = spec.inner
    if schema.get("type") == "array":
        if "min_items" in rules:
            schema = {**schema, "minItems": rules["min_items"]}
        item_rules = {key: rule for key, rule in rules.items() if key != "min_items"}
        return {**schema, "items": _constrained(schema.get("items", {}), spec.items, item_rules)}
    converted = spec if isinstance(spec, Converted) else None
    if rules.get("min") is not None:
        schema = _at_least(schema, rules["min"], converted)
    if rules.get("max") is not None:
        schema = _at_most(schema, rules["max"])
    if rules.get("pattern") is not None and converted is None:  # a secret's pattern is for its value, not its reference
        schema = _with_pattern(schema, rules["pattern"])
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


def settings_schema(model: type, *, require: bool = True) -> dict[str, Any]:
    """The JSON Schema of a settings dataclass: an object with exactly its fields.

    ``require=False`` leaves out ``required`` (for tables layered over others).
    """
    properties: dict[str, Any] = {}
    required = []
    for f in model_fields(model).values():
        schema = _constrained(_schema(f.type), f.type, f.rules)
        if f.doc:
            schema["description"] = f.doc
        default = _default(f)
        if default is not dataclasses.MISSING and default is not None:
            schema["default"] = default
        elif f.required:
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


def _plugin_def(available: InstalledPlugin) -> dict[str, Any]:
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


def _plugins_schema(visible: Mapping[str, InstalledPlugin], *, route: bool) -> dict[str, Any]:
    """``[plugins]``, or a route's ``plugins`` table (``route``: ``X = true/false`` too).

    Under the name of an installed plugin, its table; under any other name, a
    table that names its plugin with ``plugin = "..."``, or in a route any
    plugin's table: it may be layered over a ``[plugins.X]`` instance, which
    only ``bascule validate`` can look for.
    """
    switch = [{"type": "boolean"}] if route else []
    properties = {name: {"anyOf": [_ref(name), *switch]} if route else _ref(name) for name in visible}
    aliases = [_ref(name) if route else {**_ref(name), "required": ["plugin"]} for name in visible] + switch
    description = "Plugin instances by name; any other name runs the plugin named by its `plugin` key."
    if route:
        description += " `X = false` switches a global plugin off on this route."
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": {"anyOf": aliases} if aliases else False,
    }


def config_schema(available: Mapping[str, InstalledPlugin]) -> dict[str, Any]:
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
    return type_spec(tp).label


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


def _pretty(spec: TypeSpec, value: Any) -> str:
    """A default as the user would write it: ``"30s"`` rather than ``30.0`` for a duration."""
    converter = spec.converter if isinstance(spec, Converted) else None
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
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in model_fields(model).values():
        if f.required:
            default = "*required*"
        else:
            value = _default(f)
            unset = value is None or value is dataclasses.MISSING
            default = "*unset*" if unset else f"`{_pretty(f.type, value)}`"
        doc = f.doc.replace("|", "\\|")
        rows.append(f"| `{f.name}` | {f.type.label} | {default} | {doc} |")
    return "\n".join(rows) + "\n"
