"""Settings of the aggregate plugin: the route's deadline and its backends."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from bascule_sdk import ByteSize, Duration, HeaderName, HeaderValue, setting

from .template import CLIENT_SOURCES, Ref, Template

__all__ = ["MAX_DEPTH_LIMIT", "AggregateSettings", "Backend"]

MAX_DEPTH_LIMIT = 256  # the most nesting max_depth may allow (shaping recurses per level)
_PATH_CHARS = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")  # RFC 3986 path characters
_DOTTED = r"^[^.]+(\.[^.]+)*$"  # a field path: "data.ride"
_NAME = rf"^(?!({'|'.join(CLIENT_SOURCES)})$)[A-Za-z_][A-Za-z0-9_]*$"  # placeholders name it: {name.field}


@dataclass(frozen=True)
class Backend:
    """``[[routes.plugins.aggregate.backends]]``: one call and how its answer is shaped."""

    name: str = setting(
        doc="Names the backend in errors and in other backends' {name.field} placeholders.",
        pattern=_NAME,
        expected="a name of letters, digits and _ (not a digit first), other than 'query' and 'header'",
    )
    service: str = setting(doc="The [services.*] entry to call.")
    path: str = setting(
        "/",
        'Path under the service\'s target, with placeholders: "/{ride}/location".',
        pattern="^/[^?#]*$",
        expected="a path starting with '/' (query parameters go under 'query')",
    )
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = setting("GET", "Method to send.")
    query: dict[str, str] = setting({}, "Query parameters to send; values may hold placeholders.")
    forward_query: list[str] = setting([], 'Client query parameters copied as they are ("*": all).')
    headers: list[HeaderName] = setting([], "Client request headers copied to this backend.")
    forward_body: bool = setting(False, "Send the client's body (and Content-Type) to this backend.")
    timeout: Duration | None = setting(None, "This backend's budget (default: the route's timeout).", min=0.001)
    required: bool = setting(True, "A failure fails the whole request (502/504) instead of a partial answer.")
    max_response_size: ByteSize = setting(1 << 20, "Largest response body read; larger is a failure.")
    non_json: Literal["error", "string"] = setting("error", "A non-JSON answer is a failure, or kept as a string.")
    group: str | None = setting(None, "Put the shaped answer under this key.", pattern=".", expected="a key")
    target: str | None = setting(
        None,
        'Take only this sub-object of the answer (dotted path: "data.ride").',
        pattern=_DOTTED,
        expected="a dotted field path",
    )
    allow: list[str] = setting(
        [], "Keep only these fields (dotted paths).", pattern=_DOTTED, expected="a dotted field path"
    )
    deny: list[str] = setting([], "Drop these fields (dotted paths).", pattern=_DOTTED, expected="a dotted field path")
    mapping: dict[str, str] = setting({}, 'Rename top-level fields: { old = "new" }.')
    collection: str = setting("collection", "Key an array answer is wrapped under.", pattern=".", expected="a key")

    path_template: Template = field(init=False, repr=False, compare=False)
    query_templates: tuple[tuple[str, Template], ...] = field(init=False, repr=False, compare=False)
    target_path: tuple[str, ...] = field(init=False, repr=False, compare=False)
    allow_paths: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    deny_paths: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    refs: tuple[Ref, ...] = field(init=False, repr=False, compare=False)
    depends_on: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.allow and self.deny:
            raise ValueError("allow and deny cannot be combined: list the fields to keep, or those to drop")
        for old, new in self.mapping.items():
            if not old or not new or "." in old or "." in new:
                raise ValueError(f"mapping: {old!r} = {new!r}: mapping renames top-level fields (no dots)")
        put = object.__setattr__
        put(self, "path_template", Template(self.path, "path"))
        for part in self.path_template.parts:
            if isinstance(part, str) and not _PATH_CHARS.match(part):
                raise ValueError(f"path: {self.path!r} has characters that must be percent-encoded")
        put(self, "query_templates", tuple((k, Template(v, f"query.{k}")) for k, v in self.query.items()))
        put(self, "target_path", tuple(self.target.split(".")) if self.target is not None else ())
        put(self, "allow_paths", tuple(tuple(p.split(".")) for p in self.allow))
        put(self, "deny_paths", tuple(tuple(p.split(".")) for p in self.deny))
        # Every placeholder, and the backends whose answers this one needs first.
        refs = self.path_template.refs + tuple(r for _, t in self.query_templates for r in t.refs)
        put(self, "refs", refs)
        put(self, "depends_on", tuple(dict.fromkeys(r.name for r in refs if r.source == "backend")))


@dataclass(frozen=True)
class AggregateSettings:
    """``[routes.plugins.aggregate]``."""

    backends: list[Backend] = setting(doc="The calls to make; answers are merged in this order.", min_items=1)
    timeout: Duration = setting(
        5.0, "Deadline for the whole aggregation; every backend's budget fits inside.", min=0.001
    )
    max_depth: int = setting(
        32, f"Deepest JSON nesting accepted from a backend (at most {MAX_DEPTH_LIMIT}).", min=1, max=MAX_DEPTH_LIMIT
    )
    pass_status: bool = setting(False, "Answer with the backend's status (single-backend routes only).")
    cache_control: HeaderValue | None = setting(None, "Cache-Control of a complete answer (a partial one is no-store).")

    roots: tuple[Backend, ...] = field(init=False, repr=False, compare=False)  # those that wait on no other

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(b for b in self.backends if not b.depends_on))
        if self.pass_status and len(self.backends) != 1:
            raise ValueError("pass_status: only a route with a single backend can pass its status through")
        seen: set[str] = set()
        for i, b in enumerate(self.backends):
            where = f"backends[{i}]"
            if b.name in seen:
                raise ValueError(f"{where}.name: another backend is named {b.name!r}")
            if b.timeout is not None and b.timeout > self.timeout:
                raise ValueError(
                    f"{where}.timeout: {b.timeout:g}s is longer than the route's timeout ({self.timeout:g}s)"
                )
            for dep in b.depends_on:
                if dep not in seen:
                    raise ValueError(f"{where}: a placeholder {{{dep}.…}} must name a backend listed before {b.name!r}")
            seen.add(b.name)

    def budget(self, backend: Backend) -> float:
        """Seconds ``backend`` may take once it starts (the route's deadline still applies)."""
        return backend.timeout if backend.timeout is not None else self.timeout
