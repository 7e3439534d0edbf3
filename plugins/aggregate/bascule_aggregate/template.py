"""Templates for backend paths and query values, e.g. ``/customers/{orders.customer_id}``.

A placeholder names where its value comes from:

- ``{ride}``: the route's path parameter ``ride``;
- ``{query.page}``: the client's query parameter ``page`` (its first value);
- ``{header.accept-language}``: the client's request header;
- ``{orders.customer_id}``: a field of the earlier backend ``orders``'s JSON
  response (dotted path; a number indexes an array: ``{orders.items.0.id}``).

Templates are parsed once, when the config is loaded; a malformed one is a
config error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

__all__ = ["CLIENT_SOURCES", "Ref", "Template", "encode_segment"]

Source = Literal["param", "query", "header", "backend"]
CLIENT_SOURCES = ("query", "header")  # reserved prefixes: no backend may use these names
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Ref:
    """What one placeholder refers to."""

    source: Source
    name: str  # parameter, query or header name, or the backend's name
    field: tuple[str, ...] = ()  # path inside a backend's response

    def __str__(self) -> str:
        if self.source in ("query", "header"):
            return f"{self.source}.{self.name}"
        return ".".join((self.name, *self.field))


def _ref(text: str, where: str) -> Ref:
    head, dot, rest = text.partition(".")
    if not dot:
        if not text.isidentifier():
            raise ValueError(f"{where}: {{{text}}} is not a valid path parameter name")
        return Ref("param", text)
    if not head or not rest:
        raise ValueError(f"{where}: {{{text}}} is not a valid placeholder")
    if head == "query":  # the CLIENT_SOURCES, one by one so that each is a Source
        return Ref("query", rest)
    if head == "header":
        return Ref("header", rest.lower())
    field = tuple(rest.split("."))
    if not head.isidentifier() or not all(field):
        raise ValueError(f"{where}: {{{text}}} is not a valid backend field reference")
    return Ref("backend", head, field)


class Template:
    """A string with ``{placeholders}``, parsed once."""

    __slots__ = ("parts", "refs", "text")

    def __init__(self, text: str, where: str = "template") -> None:
        self.text = text
        parts: list[str | Ref] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(text[pos : m.start()])
            parts.append(_ref(m.group(1), where))
            pos = m.end()
        parts.append(text[pos:])
        for part in parts:
            if isinstance(part, str) and ("{" in part or "}" in part):
                raise ValueError(f"{where}: unbalanced brace in {text!r}")
        self.parts = tuple(p for p in parts if p != "")
        self.refs = tuple(p for p in self.parts if isinstance(p, Ref))

    def render(self, value: Callable[[Ref], str], encode: Callable[[str], str] = str) -> str:
        """Fill the placeholders: ``value(ref)`` gives each, ``encode`` escapes it."""
        return "".join(p if isinstance(p, str) else encode(value(p)) for p in self.parts)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


# RFC 3986 pchar: unreserved, sub-delims, ":" and "@" stay; everything else is escaped.
_PCHAR_SAFE = "!$&'()*+,;=:@"


def encode_segment(value: str) -> str:
    """Percent-encode ``value`` as (part of) one path segment.

    A ``/`` never splits the segment, and a value of ``.`` or ``..`` is
    escaped so that it cannot walk up the backend's path.
    """
    encoded = quote(value, safe=_PCHAR_SAFE)
    if encoded in (".", ".."):
        return encoded.replace(".", "%2E")
    return encoded
