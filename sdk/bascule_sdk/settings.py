"""Settings models: plain dataclasses, validated once when config is loaded.

A plugin declares its settings as a dataclass. ``parse(Model, data)`` turns the
TOML table into an instance, or raises ``SettingsError`` listing *every*
problem with the dotted key it belongs to. Supported field types: ``str``,
``int``, ``float``, ``bool``, ``Literal[...]``, ``list[T]``, ``dict[str, T]``,
``T | None``, nested dataclasses, and the converters below (``Duration``,
``ByteSize``, ``Secret``) or your own ``Annotated[T, Converter(fn)]``.

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

__all__ = [
    "BinarySecret",
    "ByteSize",
    "Converter",
    "Duration",
    "Problem",
    "Secret",
    "SettingsError",
    "UnresolvedSecret",
    "check",
    "describe",
    "did_you_mean",
    "masked",
    "offline_secrets",
    "parse",
    "parse_byte_size",
    "parse_duration",
    "resolve_secret",
    "secret_bytes",
    "setting",
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
    ``ValueError`` with a message for the user.
    """

    fn: Callable[[Any], Any]
    description: str


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"1m"``, ``"2h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "5s" or "250ms", got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f'expected a duration like "5s" or "250ms", got {value!r}')
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_byte_size(value: Any) -> int:
    """``"64KiB"``, ``"10MB"``, ``"1GiB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f'expected a size like "64KiB" or "10MB", got {value!r}')


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


Duration = Annotated[float, Converter(parse_duration, 'duration ("250ms", "5s", "1m")')]
ByteSize = Annotated[int, Converter(parse_byte_size, 'size ("64KiB", "10MB")')]
Secret = Annotated[str, Converter(resolve_secret, "secret (literal, env:NAME, file:PATH or file+bytes:PATH)")]


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
    hints = typing.get_type_hints(model, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(model) if f.init}
    values: dict[str, Any] = {}
    unknown: list[Problem] = []
    before = len(problems)
    for raw_key, raw in data.items():
        name = raw_key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            hint = did_you_mean(name, fields)
            unknown.append(Problem(_join(prefix, raw_key), f"unknown key{hint} (known keys: {known})"))
            continue
        values[name] = _convert(hints[name], raw, _join(prefix, raw_key), problems)
        _check_bounds(fields[name], hints[name], values[name], raw, _join(prefix, raw_key), problems)
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in values:
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


def _check_bounds(
    field: dataclasses.Field[Any], tp: Any, value: Any, raw: Any, key: str, problems: list[Problem]
) -> None:
    """The rules declared on ``field`` (of type ``tp``; see ``setting``), on ``value`` or each of its items."""
    meta = field.metadata
    if isinstance(value, list) and isinstance(raw, list):
        least = meta.get("min_items", 0)
        if len(value) < least:
            need = "must not be empty" if least == 1 else f"must have at least {least} items, got {len(value)}"
            problems.append(Problem(key, need))
        (tp,) = get_args(tp)[:1] or (Any,)
        for i, (item, raw_item) in enumerate(zip(value, raw, strict=True)):
            _check_value(meta, tp, item, raw_item, f"{key}[{i}]", problems)
    else:
        _check_value(meta, tp, value, raw, key, problems)


def _check_value(meta: Mapping[str, Any], tp: Any, value: Any, raw: Any, key: str, problems: list[Problem]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("min"), meta.get("max")
        unit = _unit(tp)
        too_low = low is not None and not value >= low  # not >=: NaN is out of every range
        too_high = high is not None and not value <= high
        if low is not None and high is not None and (too_low or too_high):
            problems.append(Problem(key, f"must be between {low:g} and {high:g}{unit}, got {raw!r}"))
        elif too_low:
            problems.append(Problem(key, f"must be at least {low:g}{unit}, got {raw!r}"))
        elif too_high:
            problems.append(Problem(key, f"must be at most {high:g}{unit}, got {raw!r}"))
    if isinstance(value, str) and "pattern" in meta and not re.search(meta["pattern"], value):
        shown = "[secret]" if _is_secret(tp) else repr(value)
        problems.append(Problem(key, f"expected {meta.get('expected', 'a match of ' + meta['pattern'])}, got {shown}"))


def _unit(tp: Any) -> str:
    """The unit a bound of a field of type ``tp`` is in: ``"s"`` for a duration, ``" bytes"`` for a size."""
    for arg in (tp, *get_args(tp)):
        if get_origin(arg) is Annotated:
            for extra in get_args(arg)[1:]:
                if isinstance(extra, Converter):
                    units: dict[Callable[[Any], Any], str] = {parse_duration: "s", parse_byte_size: " bytes"}
                    return units.get(extra.fn, "")
    return ""


def _is_secret(tp: Any) -> bool:
    """Whether a field type is (or holds) a ``Secret``: a converter that is ``resolve_secret``."""
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        return any(isinstance(e, Converter) and e.fn is resolve_secret for e in extras) or _is_secret(base)
    return any(_is_secret(arg) for arg in get_args(tp))


def _secrets_of(model: type, values: Mapping[str, Any]) -> Iterator[str]:
    """The resolved secrets among the field values of ``model`` (references excluded)."""
    hints = typing.get_type_hints(model, include_extras=True)
    for name, value in values.items():
        if name in hints and _is_secret(hints[name]):
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


@functools.cache
def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def masked(value: Any, tp: Any = None) -> Any:
    """A JSON-ready view of a settings instance (``tp``: the type of a field's value):
    a dataclass becomes a table of its settings (``init`` fields), and every value of
    a ``Secret``-typed field reads ``[secret]`` (``None`` while unset), in lists and
    tables too. What admin pages show of a plugin's effective settings."""
    if value is None:
        return None
    if (tp is not None and _is_secret(tp)) or isinstance(value, (BinarySecret, UnresolvedSecret)):
        return _REDACTED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        return {
            f.name: masked(getattr(value, f.name, None), hints.get(f.name)) for f in dataclasses.fields(value) if f.init
        }
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


def _convert(tp: Any, raw: Any, key: str, problems: list[Problem]) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Converter):
                try:
                    return extra.fn(raw)
                except ValueError as e:
                    problems.append(Problem(key, str(e)))
                    return None
        return _convert(base, raw, key, problems)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if raw is None and len(args) < len(get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(args[0], raw, key, problems)
        for arg in args:  # first alternative that accepts the value
            trial: list[Problem] = []
            value = _convert(arg, raw, key, trial)
            if not trial:
                return value
        problems.append(Problem(key, f"expected {_type_name(tp)}, got {describe(raw)}"))
        return None
    if origin is Literal:
        choices = get_args(tp)
        if raw not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            problems.append(Problem(key, f"must be one of {allowed}, got {raw!r}"))
        return raw
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(raw, list):
            problems.append(Problem(key, f"expected an array, got {describe(raw)}"))
            return None
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_convert(item, v, f"{key}[{i}]", problems) for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(raw, Mapping):
            problems.append(Problem(key, f"expected a table, got {describe(raw)}"))
            return None
        _, item = get_args(tp) or (str, Any)
        return {k: _convert(item, v, _join(key, k), problems) for k, v in raw.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, raw, key, problems)
    if tp is Any:
        return raw
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if tp in (str, int, float, bool):
        if type(raw) is not tp:
            problems.append(Problem(key, f"expected {_type_name(tp)}, got {describe(raw)}"))
            return None
        return raw
    raise TypeError(f"settings field {key!r} has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    if tp in names:
        return names[tp]
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Annotated:
        for extra in get_args(tp)[1:]:
            if isinstance(extra, Converter):
                return f"a {extra.description}"
    if get_origin(tp) is list:
        return "an array"
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a table"
    return "a value"
