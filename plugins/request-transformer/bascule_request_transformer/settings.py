"""Settings of the request-transformer plugin: rules for headers, query parameters and the path."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import HeaderName, HeaderValue, setting

from .template import Template

__all__ = ["FieldRules", "HeaderRules", "TransformerSettings"]


@dataclass(frozen=True)
class FieldRules:
    """What to do to header fields or query parameters, applied in this order."""

    remove: list[str] = setting([], "Names to drop.")
    rename: dict[str, str] = setting({}, "old = new: move values to a new name (replacing it), if present.")
    replace: dict[str, str] = setting({}, "name = template: set the value only if the name is present.")
    add: dict[str, str] = setting({}, "name = template: set the value only if the name is absent.")

    def names(self) -> list[str]:
        return [*self.remove, *self.rename, *self.rename.values(), *self.replace, *self.add]

    def templates(self) -> dict[str, Template]:
        return {value: Template.parse(value) for value in (*self.replace.values(), *self.add.values())}

    @property
    def empty(self) -> bool:
        return not (self.remove or self.rename or self.replace or self.add)


@dataclass(frozen=True)
class HeaderRules(FieldRules):
    """``FieldRules`` for header fields: names are header names, templates header values."""

    remove: list[HeaderName] = setting([], "Names to drop.")
    rename: dict[HeaderName, HeaderName] = setting(
        {}, "old = new: move values to a new name (replacing it), if present."
    )
    replace: dict[HeaderName, HeaderValue] = setting({}, "name = template: set the value only if the name is present.")
    add: dict[HeaderName, HeaderValue] = setting({}, "name = template: set the value only if the name is absent.")


@dataclass(frozen=True)
class TransformerSettings:
    """``[routes.plugins.request-transformer]``: how to rewrite the request sent upstream."""

    path: str | None = setting(
        None,
        'Upstream path template, e.g. "/v2/users/{id}{rest}"; unset keeps the path.',
        pattern="^/[^?# \\t\\r\\n]*$",
        expected="a path starting with '/', without '?', '#' or whitespace (use query rules)",
    )
    headers: HeaderRules = setting(HeaderRules(), "Header rules: [routes.plugins.request-transformer.headers].")
    query: FieldRules = setting(FieldRules(), "Query parameter rules: [...request-transformer.query].")

    def __post_init__(self) -> None:
        for name in self.query.names():
            if not name:
                raise ValueError("query: a parameter name cannot be empty")
        if self.path is None and self.headers.empty and self.query.empty:
            raise ValueError("nothing to do: set path, or rules under headers or query")
