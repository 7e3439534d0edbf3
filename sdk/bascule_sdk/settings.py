"""Settings models: plain dataclasses, validated once when config is loaded.

A plugin declares its settings as a dataclass. ``parse(Model, data)`` turns the
TOML table into an instance, or raises ``SettingsError`` listing *every*
problem with the dotted key it belongs to. Supported field types: ``str``,
``int``, ``float``, ``bool``, ``Literal[...]``, ``list[T]``, ``dict[str, T]``,
``T | None``, nested dataclasses, and the converters below (``Duration``,
``ByteSize``, ``Secret``, ``HeaderName``, ``HeaderValue``) or your own
``Annotated[T, Converter(fn)]``; a table's keys may be converted too
(``dict[HeaderName, HeaderValue]``). Each
type is decoded once into a ``TypeSpec`` (``type_spec``), and each model's
keys into ``FieldSpec``s (``model_fields``): ``parse`` converts with them,
``bascule schema`` and the docs describe the same specs.

    @dataclass(frozen=True)
    class Settings:
        limit: int = setting(100, "Requests admitted per window.")
        window: Duration = setting(60.0, 'Window length, e.g. "1m".')

Rules of one value are declared on the field, so that ``bascule schema``
states them too: ``setting(100, "doc", min=1)`` (``min``/``max``, inclusive,
for numbers, durations in seconds and sizes in bytes), ``pattern=`` (a
regular expression a string must match, ``expected=`` naming it in
messages) and ``min_items=`` (for a list, whose items the others then
apply to). Other rules go in ``__post_init__``: raise
``ValueError("key: message")`` for one problem (reported under ``key``), or
``SettingsError`` with ``Problem(key, message)`` items to report several at
once, each under its own key (``check`` builds one).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import datetime
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from .http import TOKEN

__all__ = [
    "AnyValue",
    "BinarySecret",
    "ByteSize",
    "Choice",
    "Converted",
    "Converter",
    "Duration",
    "Either",
    "FieldSpec",
    "HeaderName",
    "HeaderValue",
    "ListOf",
    "Model",
    "Nullable",
    "Problem",
    "Scalar",
    "Secret",
    "SettingsError",
    "TableOf",
    "TypeSpec",
    "UnresolvedSecret",
    "Unsupported",
    "check",
    "describe",
    "did_you_mean",
    "masked",
    "model_fields",
    "offline_secrets",
    "parse",
    "parse_byte_size",
    "parse_duration",
    "parse_header_name",
    "parse_header_value",
    "resolve_secret",
    "secret_bytes",
    "setting",
    "type_spec",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One invalid value: ``key`` is a dotted path inside the section."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SettingsError(ValueError):
    """Raised by ``parse`` with every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def check(*rules: tuple[bool, str, str]) -> None:
    """Raise ``SettingsError`` for every ``(failed, key, message)`` rule that failed.

    check((self.workers < 1, "workers", "must be at least 1"),
          (self.port > 65535, "port", "must be at most 65535"))
    """
    problems = [Problem(key, message) for failed, key, message in rules if failed]
    if problems:
        raise SettingsError(problems)


@dataclass(frozen=True)
class Converter:
    """Marks an ``Annotated`` type whose TOML value is converted by ``fn``.

    ``fn`` receives the raw TOML value and returns the Python value, or raises
    ``ValueError`` with a message for the user. ``description`` names the type
    in messages and (up to its `` (``) in docs; ``schema`` is the JSON Schema of
    the TOML values ``fn`` accepts (``{}``: not stated). A quantity written as
    a string ``"<number>[unit]"`` (a decimal if the type is ``float``; no unit:
    the base unit) lists its ``units`` with their sizes in the base unit, which
    ``unit`` names in messages (``"s"``, ``" bytes"``): a declared ``min``/``max``
    is in that unit, and ``bascule schema`` states ``min`` for each string form.
    """

    fn: Callable[[Any], Any]
    description: str
    schema: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    units: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)
    unit: str = ""


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    expected: str | None = None,
    min_items: int | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a one-line description (used by docs and schema).

    Declared rules, which ``parse`` enforces and ``bascule schema`` states:
    ``min``/``max``, inclusive bounds of a number (a duration's seconds, a
    size's bytes); ``pattern``, a regular expression (``re.search``) a string
    must match, ``expected`` saying what it is in messages (``"host:port"``);
    for a list, these apply to each item, and ``min_items`` is its least length.
    Mutable defaults (lists, dicts) are copied per instance.
    """
    metadata: dict[str, Any] = {"doc": doc}
    rules = {"min": min, "max": max, "pattern": pattern, "expected": expected, "min_items": min_items}
    metadata.update({key: rule for key, rule in rules.items() if rule is not None})
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(rf"^\s*(\d+(?:\.\d+)?)\s*({'|'.join(_DURATION_UNITS)})?\s*$")


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"1m"``, ``"2h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "5s" or "250ms", got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * (_DURATION_UNITS[m.group(2)] if m.group(2) else 1.0)
    else:
        raise ValueError(f'expected a duration like "5s" or "250ms", got {value!r}')
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}
_SIZE = re.compile(rf"^\s*(\d+)\s*({'|'.join(_SIZE_UNITS)})?\s*$")


def parse_byte_size(value: Any) -> int:
    """``"64KiB"``, ``"10MB"``, ``"1GiB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(m.group(1)) * (_SIZE_UNITS[m.group(2)] if m.group(2) else 1)
    raise ValueError(f'expected a size like "64KiB" or "10MB", got {value!r}')


_FIELD_NAME = re.compile(rf"^{TOKEN}$")
# RFC 9110 5.5 field-value: visible characters, SP, HTAB and obs-text (bytes 0x80-0xFF, as Latin-1).
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")


def parse_header_name(value: Any) -> str:
    """An RFC 9110 field name (a token: ``X-Api-Key``), as written."""
    if not isinstance(value, str):
        raise ValueError(f"expected a header name, got {describe(value)}")
    if not _FIELD_NAME.match(value):
        raise ValueError(f"expected a header name (letters, digits and !#$%&'*+-.^_`|~), got {value!r}")
    return value


def parse_header_value(value: Any) -> str:
    """An RFC 9110 field value: no CR, LF, NUL or other control character (a tab is
    allowed), nothing beyond U+00FF. Messages never quote it (it may be a credential)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a header value (a string), got {describe(value)}")
    if not _FIELD_VALUE.match(value):
        raise ValueError("a header value cannot hold CR, LF, NUL, another control character or one beyond U+00FF")
    return value


class UnresolvedSecret(str):
    """An ``env:NAME``/``file:PATH`` reference left unresolved by ``offline_secrets()``.

    Its text is the reference itself, never a secret.
    """


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Within ``offline_secrets()``: the settings checks skipped because they need a secret's value.
_offline: contextvars.ContextVar[list[Problem] | None] = contextvars.ContextVar("bascule_offline", default=None)


@contextlib.contextmanager
def offline_secrets() -> Iterator[list[Problem]]:
    """Parse settings without reading ``env:``/``file:`` secrets (``bascule validate --offline``).

    Inside the block a secret reference is only checked for its syntax and
    parses to an ``UnresolvedSecret`` (the reference text). A model whose own
    check (``__post_init__``) fails while one of its fields holds such a
    reference is not reported: that check needs the secret's value. The list
    yielded collects one ``Problem`` per skipped check.
    """
    skipped: list[Problem] = []
    token = _offline.set(skipped)
    try:
        yield skipped
    finally:
        _offline.reset(token)


class BinarySecret(str):
    """A secret read byte for byte (``file+bytes:PATH``): ``data`` holds the exact bytes.

    As text it reads as the standard base64 of those bytes (so two such secrets
    are equal when their bytes are); a plugin that needs key bytes calls
    ``secret_bytes`` instead of encoding the text. Its ``repr`` shows only the length.
    """

    data: bytes

    def __new__(cls, data: bytes) -> BinarySecret:
        self = super().__new__(cls, base64.b64encode(data).decode("ascii"))
        self.data = bytes(data)
        return self

    def __getnewargs__(self) -> tuple[bytes]:  # type: ignore[override]  # pickle, copy: rebuilt from the bytes
        return (self.data,)

    def __repr__(self) -> str:
        return f"BinarySecret(<{len(self.data)} bytes>)"


def secret_bytes(value: str) -> bytes:
    """The bytes of a resolved secret: exact for ``file+bytes:PATH``, else its text as UTF-8.

    For key material (an HMAC key): ``file+bytes:`` keeps every byte, a
    trailing newline or bytes that are not UTF-8 included.
    """
    return value.data if isinstance(value, BinarySecret) else value.encode()


def resolve_secret(value: Any) -> str:
    """A literal string, ``"env:NAME"``, ``"file:PATH"`` or ``"file+bytes:PATH"``.

    - ``env:NAME``: the environment variable's value.
    - ``file:PATH``: the file's UTF-8 text, its trailing newline(s) dropped.
    - ``file+bytes:PATH``: the file's bytes exactly (binary key material), as a
      ``BinarySecret``; ``secret_bytes(value)`` gives the bytes.

    A missing variable or unreadable file is an error naming it; the secret
    itself never appears in a message (``parse`` also removes it from the
    messages of a model's own checks). Within ``offline_secrets()`` a reference
    is not resolved (see there).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a string, env:NAME, file:PATH or file+bytes:PATH, got {describe(value)}")
    offline = _offline.get() is not None
    if value.startswith("env:"):
        name = value[4:]
        if offline:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{value!r} does not name an environment variable (env:NAME, NAME of A-Z, 0-9, _)")
            return UnresolvedSecret(value)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    for prefix in ("file:", "file+bytes:"):
        if not value.startswith(prefix):
            continue
        path = value[len(prefix) :]
        if offline:
            if not path.strip():
                raise ValueError(f"{value!r} does not name a file ({prefix}PATH)")
            return UnresolvedSecret(value)
        try:
            if prefix == "file+bytes:":
                with open(path, "rb") as binary:
                    return BinarySecret(binary.read())
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\n")
        except OSError as e:
            raise ValueError(f"cannot read secret file {path}: {e.strerror}") from None
        except UnicodeDecodeError:  # its message would quote a byte of the secret
            raise ValueError(f"secret file {path} is not UTF-8 text") from None
    return value


Duration = Annotated[
    float,
    Converter(
        parse_duration,
        'duration ("250ms", "5s", "1m")',
        schema={"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}]},
        units=_DURATION_UNITS,
        unit="s",
    ),
]
ByteSize = Annotated[
    int,
    Converter(
        parse_byte_size,
        'size ("64KiB", "10MB")',
        schema={"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE.pattern}]},
        units=_SIZE_UNITS,
        unit=" bytes",
    ),
]
Secret = Annotated[
    str,
    Converter(resolve_secret, "secret (literal, env:NAME, file:PATH or file+bytes:PATH)", schema={"type": "string"}),
]

HeaderName = Annotated[
    str,
    Converter(
        parse_header_name,
        'header name ("X-Api-Key")',
        schema={"type": "string", "pattern": _FIELD_NAME.pattern},
    ),
]
HeaderValue = Annotated[
    str,
    Converter(
        parse_header_value,
        "header value (no CR, LF, NUL or other control character)",
        schema={"type": "string", "pattern": _FIELD_VALUE.pattern},
    ),
]


# -- The type grammar: each settings field type, decoded once ---------------------------------------


@dataclass(frozen=True, eq=False)
class TypeSpec:
    """A settings field type, decoded once from its annotation by ``type_spec``.

    ``convert`` turns a TOML value into the field's value, appending a
    ``Problem`` for each invalid part; ``name`` is what messages call the type
    (``"an integer"``), ``label`` what docs call it (``"list of string"``),
    ``schema`` the JSON Schema of a leaf (``bascule schema`` composes those of
    lists, tables, unions and models from their parts). ``parts`` are the specs
    of its type arguments.
    """

    parts: tuple[TypeSpec, ...] = ()

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        return raw

    @property
    def name(self) -> str:
        return "a value"

    @property
    def label(self) -> str:
        return "any"

    @property
    def schema(self) -> dict[str, Any]:
        return {}

    @property
    def converter(self) -> Converter | None:
        """The converter of a ``Duration``, ``ByteSize``, ``Secret``... (``None`` for the others)."""
        return None

    @property
    def unit(self) -> str:
        """The unit of a declared ``min``/``max`` in messages."""
        return ""

    @property
    def items(self) -> TypeSpec:
        """The type the declared rules of a field apply to when its value is a list: an item's."""
        return self

    @property
    def secret(self) -> bool:
        """Whether a value of this type is (or holds) a ``Secret``."""
        return any(part.secret for part in self.parts)


@dataclass(frozen=True, eq=False)
class AnyValue(TypeSpec):
    """``Any``: the TOML value as it is."""


@dataclass(frozen=True, eq=False, kw_only=True)
class Unsupported(TypeSpec):
    """A type settings cannot hold (a computed ``init=False`` field's): ``convert`` raises ``TypeError``."""

    tp: Any

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        raise TypeError(f"settings field {key!r} has an unsupported type {self.tp!r}")

    @property
    def label(self) -> str:
        return str(getattr(self.tp, "__name__", str(self.tp)))


_SCALARS: dict[type, tuple[str, str]] = {
    str: ("a string", "string"),
    int: ("an integer", "integer"),
    float: ("a number", "number"),
    bool: ("a boolean", "boolean"),
}


@dataclass(frozen=True, eq=False, kw_only=True)
class Scalar(TypeSpec):
    """``str``, ``int``, ``float`` (an integer is accepted) or ``bool``: exactly that TOML type."""

    tp: type

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        if self.tp is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if type(raw) is not self.tp:
            problems.append(Problem(key, f"expected {self.name}, got {describe(raw)}"))
            return None
        return raw

    @property
    def name(self) -> str:
        return _SCALARS[self.tp][0]

    @property
    def label(self) -> str:
        return _SCALARS[self.tp][1]

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": _SCALARS[self.tp][1]}


@dataclass(frozen=True, eq=False, kw_only=True)
class Choice(TypeSpec):
    """``Literal[...]``: one of ``choices``."""

    choices: tuple[Any, ...]

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        if raw not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            problems.append(Problem(key, f"must be one of {allowed}, got {raw!r}"))
        return raw

    @property
    def name(self) -> str:
        return " or ".join(repr(c) for c in self.choices)

    @property
    def label(self) -> str:
        return " \\| ".join(f'`"{c}"`' if isinstance(c, str) else f"`{c}`" for c in self.choices)

    @property
    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}


@dataclass(frozen=True, eq=False, kw_only=True)
class ListOf(TypeSpec):
    """``list[T]`` (``tuple[T, ...]``: as a tuple): an array of ``item``s (``parts[0]``; none: any)."""

    as_tuple: bool = False

    @property
    def item(self) -> TypeSpec:
        return self.parts[0] if self.parts else _ANY

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        if not isinstance(raw, list):
            problems.append(Problem(key, f"expected an array, got {describe(raw)}"))
            return None
        item = self.item
        items = [item.convert(v, f"{key}[{i}]", problems) for i, v in enumerate(raw)]
        return tuple(items) if self.as_tuple else items

    @property
    def name(self) -> str:
        return "an array"

    @property
    def label(self) -> str:
        return f"list of {self.item.label}" if self.parts else "list"

    @property
    def items(self) -> TypeSpec:
        return self.item


@dataclass(frozen=True, eq=False)
class TableOf(TypeSpec):
    """``dict[str, T]``: a table of ``value``s (``parts[-1]``; none: any)."""

    @property
    def value(self) -> TypeSpec:
        return self.parts[-1] if self.parts else _ANY

    @property
    def keys(self) -> TypeSpec | None:
        """The converter of the keys (``dict[HeaderName, T]``), or ``None``: any string."""
        return self.parts[0] if len(self.parts) == 2 and isinstance(self.parts[0], Converted) else None

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        if not isinstance(raw, Mapping):
            problems.append(Problem(key, f"expected a table, got {describe(raw)}"))
            return None
        value, keys = self.value, self.keys
        table = {}
        for k, v in raw.items():
            where = _join(key, k)
            table[k if keys is None else keys.convert(k, where, problems)] = value.convert(v, where, problems)
        return table

    @property
    def name(self) -> str:
        return "a table"

    @property
    def label(self) -> str:
        if isinstance(self.value, AnyValue):
            return "table"
        return f"table of {self.keys.label} = {self.value.label}" if self.keys else f"table of {self.value.label}"


@dataclass(frozen=True, eq=False, kw_only=True)
class Model(TypeSpec):
    """A nested settings dataclass: a table of its keys (see ``model_fields``)."""

    model: type

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        return _parse_dataclass(self.model, raw, key, problems)

    @property
    def name(self) -> str:
        return "a table"

    @property
    def label(self) -> str:
        return "table"


@dataclass(frozen=True, eq=False)
class Nullable(TypeSpec):
    """``T | None`` (``parts[0]`` is ``T``'s): TOML has no null, so the key is just optional."""

    @property
    def inner(self) -> TypeSpec:
        return self.parts[0]

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        return None if raw is None else self.inner.convert(raw, key, problems)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def converter(self) -> Converter | None:
        return self.inner.converter

    @property
    def unit(self) -> str:
        return self.inner.unit

    @property
    def items(self) -> TypeSpec:
        return self.inner.items


@dataclass(frozen=True, eq=False)
class Either(TypeSpec):
    """``A | B``: the value of the first alternative (``parts``) that accepts it."""

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        for part in self.parts:
            trial: list[Problem] = []
            value = part.convert(raw, key, trial)
            if not trial:
                return value
        problems.append(Problem(key, f"expected {self.name}, got {describe(raw)}"))
        return None

    @property
    def name(self) -> str:
        return " or ".join(part.name for part in self.parts)

    @property
    def label(self) -> str:
        return " or ".join(part.label for part in self.parts)


@dataclass(frozen=True, eq=False, kw_only=True)
class Converted(TypeSpec):
    """``Annotated[T, Converter(fn, ...)]``: ``fn`` converts the value (``parts[0]`` is ``T``'s)."""

    by: Converter

    def convert(self, raw: Any, key: str, problems: list[Problem]) -> Any:
        try:
            return self.by.fn(raw)
        except ValueError as e:
            problems.append(Problem(key, str(e)))
            return None

    @property
    def name(self) -> str:
        return f"a {self.by.description}"

    @property
    def label(self) -> str:
        return self.by.description.split(" (")[0]

    @property
    def schema(self) -> dict[str, Any]:
        return {**self.by.schema, "description": self.by.description}

    @property
    def converter(self) -> Converter:
        return self.by

    @property
    def unit(self) -> str:
        return self.by.unit

    @property
    def secret(self) -> bool:
        return self.by.fn is resolve_secret or super().secret


_ANY = AnyValue()


@functools.cache
def type_spec(tp: Any) -> TypeSpec:
    """The ``TypeSpec`` of a settings field type (see the module's list of supported types)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Annotated:
        by = next((extra for extra in args[1:] if isinstance(extra, Converter)), None)
        return type_spec(args[0]) if by is None else Converted((type_spec(args[0]),), by=by)
    if origin in (Union, types.UnionType):
        alternatives = tuple(type_spec(a) for a in args if a is not type(None))
        either = alternatives[0] if len(alternatives) == 1 else Either(alternatives)
        return Nullable((either,)) if len(alternatives) < len(args) else either
    if origin is Literal:
        return Choice(choices=args)
    if origin in (list, tuple) or tp in (list, tuple):
        return ListOf(_arg_specs(args), as_tuple=origin is tuple)
    if origin is dict or tp is dict:
        return TableOf(_arg_specs(args))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return Model(model=tp)
    if tp in _SCALARS:
        return Scalar(tp=tp)
    if tp is Any:
        return _ANY
    return Unsupported(_arg_specs(args), tp=tp)


def _arg_specs(args: tuple[Any, ...]) -> tuple[TypeSpec, ...]:
    """The specs of type arguments (``...`` and unhashable ones, such as a ``Callable``'s, left out)."""
    try:
        return tuple(type_spec(a) for a in args if a is not Ellipsis)
    except TypeError:
        return ()


@dataclass(frozen=True, eq=False)
class FieldSpec:
    """One key of a settings model: its dataclass field, its type, whether it must be
    given (no default), its description and its declared rules (see ``setting``)."""

    field: dataclasses.Field[Any]
    type: TypeSpec
    required: bool
    doc: str
    rules: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.field.name

    def default(self) -> Any:
        """The default value (a fresh one from a factory), or ``dataclasses.MISSING``."""
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return dataclasses.MISSING


_RULES = ("min", "max", "pattern", "expected", "min_items")


@functools.cache
def model_fields(model: type) -> dict[str, FieldSpec]:
    """The keys of a settings dataclass (its ``init`` fields) by field name."""
    hints = typing.get_type_hints(model, include_extras=True)
    return {
        f.name: FieldSpec(
            field=f,
            type=type_spec(hints[f.name]),
            required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            doc=f.metadata.get("doc", ""),
            rules={key: f.metadata[key] for key in _RULES if key in f.metadata},
        )
        for f in dataclasses.fields(model)
        if f.init
    }


def parse(model: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build ``model`` from a TOML table; raise ``SettingsError`` listing all problems.

    Unknown keys are errors. Keys use ``-`` or ``_`` interchangeably
    (``strip-path`` and ``strip_path`` both fill ``strip_path``).
    """
    problems: list[Problem] = []
    value: T = _parse_dataclass(model, data or {}, prefix, problems)
    if problems:
        raise SettingsError(problems)
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word`` (``-`` and ``_`` alike), or ``""``."""
    by_form = {c.replace("-", "_"): c for c in choices}
    close = difflib.get_close_matches(word.replace("-", "_"), list(by_form), n=1, cutoff=0.75)
    return f"; did you mean {by_form[close[0]]!r}?" if close else ""


def _parse_dataclass(model: type, data: Any, prefix: str, problems: list[Problem]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(Problem(prefix, f"expected a table, got {describe(data)}"))
        return None
    fields = model_fields(model)
    values: dict[str, Any] = {}
    unknown: list[Problem] = []
    before = len(problems)
    for raw_key, raw in data.items():
        name = raw_key.replace("-", "_")
        f = fields.get(name)
        if f is None:
            known = ", ".join(sorted(fields)) or "none"
            hint = did_you_mean(name, fields)
            unknown.append(Problem(_join(prefix, raw_key), f"unknown key{hint} (known keys: {known})"))
            continue
        key = _join(prefix, raw_key)
        values[name] = f.type.convert(raw, key, problems)
        if f.rules:
            _check_rules(f, values[name], raw, key, problems)
    for name, f in fields.items():
        if f.required and name not in values:
            problems.append(Problem(_join(prefix, name), "required key is missing"))
    if len(problems) > before:
        problems.extend(unknown)
        return None
    value = _build(model, values, prefix, problems)
    problems.extend(unknown)
    return None if unknown else value


def _build(model: type, values: dict[str, Any], prefix: str, problems: list[Problem]) -> Any:
    try:
        return model(**values)
    except SettingsError as e:
        found = [Problem(_join(prefix, p.key), p.message) for p in e.problems]
    except (ValueError, TypeError) as e:
        found = [_keyed(model, prefix, str(e))]
    hidden = list(_secrets_of(model, values))
    if hidden:  # a check's message (or a library's, quoted) must not carry a secret it looked at
        found = [Problem(p.key, _redact(p.message, hidden)) for p in found]
    skipped = _offline.get()
    unresolved = sorted(set(_unresolved(values)))
    if skipped is not None and unresolved:
        # Offline: this check may have failed only for want of the secrets' values.
        skipped.append(Problem(prefix, f"not checked offline: needs the value of {', '.join(unresolved)}"))
        return _unchecked(model, values)
    problems.extend(found)
    return None


def _keyed(model: type, prefix: str, message: str) -> Problem:
    """A check's ``"key: message"`` as a problem under ``key`` when ``key`` (``name``,
    ``name[1]``, ``name.sub``) starts with a field of ``model``."""
    key, sep, rest = message.partition(": ")
    names = {f.name for f in dataclasses.fields(model)}
    base = re.match(r"[A-Za-z_][\w-]*(?=$|[\[.])", key)
    if sep and base is not None and base[0].replace("-", "_") in names:
        return Problem(_join(prefix, key), rest)
    return Problem(prefix, message)


def _check_rules(f: FieldSpec, value: Any, raw: Any, key: str, problems: list[Problem]) -> None:
    """The rules declared on ``f`` (see ``setting``), on ``value`` or each of its items."""
    if isinstance(value, list) and isinstance(raw, list):
        least = f.rules.get("min_items", 0)
        if len(value) < least:
            need = "must not be empty" if least == 1 else f"must have at least {least} items, got {len(value)}"
            problems.append(Problem(key, need))
        item = f.type.items
        for i, (each, raw_item) in enumerate(zip(value, raw, strict=True)):
            _check_value(f.rules, item, each, raw_item, f"{key}[{i}]", problems)
    else:
        _check_value(f.rules, f.type, value, raw, key, problems)


def _check_value(
    rules: Mapping[str, Any], spec: TypeSpec, value: Any, raw: Any, key: str, problems: list[Problem]
) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = rules.get("min"), rules.get("max")
        unit = spec.unit
        too_low = low is not None and not value >= low  # not >=: NaN is out of every range
        too_high = high is not None and not value <= high
        if low is not None and high is not None and (too_low or too_high):
            problems.append(Problem(key, f"must be between {low:g} and {high:g}{unit}, got {raw!r}"))
        elif too_low:
            problems.append(Problem(key, f"must be at least {low:g}{unit}, got {raw!r}"))
        elif too_high:
            problems.append(Problem(key, f"must be at most {high:g}{unit}, got {raw!r}"))
    if isinstance(value, str) and "pattern" in rules and not re.search(rules["pattern"], value):
        shown = "[secret]" if spec.secret else repr(value)
        problems.append(
            Problem(key, f"expected {rules.get('expected', 'a match of ' + rules['pattern'])}, got {shown}")
        )


def _secrets_of(model: type, values: Mapping[str, Any]) -> Iterator[str]:
    """The resolved secrets among the field values of ``model`` (references excluded)."""
    fields = model_fields(model)
    for name, value in values.items():
        if name in fields and fields[name].type.secret:
            for text in _strings(value):
                if not isinstance(text, UnresolvedSecret):
                    yield text
                    if isinstance(text, BinarySecret):
                        yield text.data.decode("latin-1")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)


_REDACTED = "[secret]"
_FRAGMENT = 8  # a run of this many characters of a secret is never shown


def masked(value: Any, tp: Any = None) -> Any:
    """A JSON-ready view of a settings instance (``tp``: the type of a field's value, or its ``TypeSpec``):
    a dataclass becomes a table of its settings (``init`` fields), and every value of
    a ``Secret``-typed field reads ``[secret]`` (``None`` while unset), in lists and
    tables too. What admin pages show of a plugin's effective settings."""
    if value is None:
        return None
    spec = tp if tp is None or isinstance(tp, TypeSpec) else type_spec(tp)
    if (spec is not None and spec.secret) or isinstance(value, (BinarySecret, UnresolvedSecret)):
        return _REDACTED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: masked(getattr(value, name, None), f.type) for name, f in model_fields(type(value)).items()}
    if isinstance(value, Mapping):
        return {str(k): masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((masked(v) for v in value), key=str)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf or nan
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _redact(message: str, secrets: list[str]) -> str:
    """``message`` with every run of ``_FRAGMENT`` or more characters of a secret (a whole
    secret shorter than that) replaced by ``[secret]``."""
    hidden = [False] * len(message)
    for secret in secrets:
        size = min(_FRAGMENT, len(secret))
        if size < 4:  # too short to tell from ordinary text; such a secret is refused anyway
            continue
        for i in range(len(message) - size + 1):
            if message[i : i + size] in secret:
                hidden[i : i + size] = [True] * size
    if not any(hidden):
        return message
    out: list[str] = []
    for i, char in enumerate(message):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append(_REDACTED)
    return "".join(out)


def _unresolved(value: Any) -> Iterator[str]:
    """The ``UnresolvedSecret`` references in a field value (lists and tables included)."""
    if isinstance(value, UnresolvedSecret):
        yield str(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _unresolved(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _unresolved(v)


def _unchecked(model: type, values: dict[str, Any]) -> Any:
    """An instance of ``model`` holding ``values`` (and defaults) without running its checks."""
    instance: Any = object.__new__(model)
    for f in dataclasses.fields(model):
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue  # computed by the check (init=False): absent
        object.__setattr__(instance, f.name, value)
    return instance


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "a table"),
    (list, "an array"),
    (datetime.datetime, "a date-time"),
    (datetime.date, "a date"),
    (datetime.time, "a time"),
)


def describe(value: Any) -> str:
    """A TOML value as a message names it: ``a string ('ten')``, ``a table``; never a Python type name."""
    kind = next((name for tp, name in _KINDS if isinstance(value, tp)), "a value")
    if isinstance(value, (Mapping, list)):
        return kind
    return f"{kind} ({value!r})"[:120]
