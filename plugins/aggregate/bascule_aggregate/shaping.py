"""Shaping one backend's JSON answer, and merging the answers of several.

Per backend, in this order:

1. ``target``: take the sub-object at a dotted path (missing: the backend failed);
2. ``allow`` / ``deny``: keep only, or drop, fields at dotted paths; a path
   that meets an array applies to each of its elements;
3. ``mapping``: rename top-level fields (a renamed field replaces a field
   that already had the new name);
4. an array answer is wrapped as ``{collection: [...]}``, steps 2-3 applying
   to each of its objects;
5. ``group``: the result goes under that key. Without a group, an answer that
   is not an object goes under the backend's name, and an empty answer adds
   nothing.

Merge rule: answers are merged in the order the backends are listed. When two
answers hold the same key, two objects are merged key by key (recursively);
any other clash is won by the backend listed later.

Nothing here mutates its input: a backend's raw answer stays intact for the
backends that use its fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .settings import Backend

__all__ = ["MissingField", "field_value", "merge", "nesting_exceeds", "shape"]

Path = tuple[str, ...]


class MissingField(LookupError):
    """A dotted path names nothing in the answer."""


def field_value(data: Any, path: Path) -> Any:
    """The value at ``path``; an all-digit part indexes an array."""
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise MissingField(".".join(path))
    return data


def nesting_exceeds(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _split(paths: tuple[Path, ...]) -> tuple[set[str], dict[str, tuple[Path, ...]]]:
    """Top-level keys named whole, and the sub-paths under the others."""
    whole = {p[0] for p in paths if len(p) == 1}
    below: dict[str, list[Path]] = {}
    for p in paths:
        if len(p) > 1 and p[0] not in whole:
            below.setdefault(p[0], []).append(p[1:])
    return whole, {k: tuple(v) for k, v in below.items()}


def _allow(data: Any, paths: tuple[Path, ...]) -> Any:
    if isinstance(data, list):
        return [_allow(item, paths) for item in data]
    if not isinstance(data, dict):
        return data
    whole, below = _split(paths)
    kept = {}
    for key, value in data.items():
        if key in whole:
            kept[key] = value
        elif key in below and isinstance(value, (dict, list)):
            kept[key] = _allow(value, below[key])
    return kept


def _deny(data: Any, paths: tuple[Path, ...]) -> Any:
    if isinstance(data, list):
        return [_deny(item, paths) for item in data]
    if not isinstance(data, dict):
        return data
    whole, below = _split(paths)
    return {key: _deny(value, below[key]) if key in below else value for key, value in data.items() if key not in whole}


def _fields(data: Any, backend: Backend) -> Any:
    """Steps 2 and 3 on one object."""
    if backend.allow_paths:
        data = _allow(data, backend.allow_paths)
    elif backend.deny_paths:
        data = _deny(data, backend.deny_paths)
    if backend.mapping and isinstance(data, dict):
        renamed = {backend.mapping[k]: v for k, v in data.items() if k in backend.mapping}
        data = {k: v for k, v in data.items() if k not in backend.mapping and k not in renamed} | renamed
    return data


def shape(data: Any, backend: Backend) -> dict[str, Any]:
    """The object ``backend`` contributes to the merged answer.

    Raises ``MissingField`` when ``target`` names nothing.
    """
    if data is None and backend.group is None:
        return {}  # an empty answer adds nothing
    if backend.target_path:
        data = field_value(data, backend.target_path)
    if isinstance(data, list):
        data = {backend.collection: [_fields(item, backend) for item in data]}
    else:
        data = _fields(data, backend)
    if backend.group is not None:
        return {backend.group: data}
    if isinstance(data, dict):
        return data
    return {backend.name: data}


def merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Merge ``data`` into ``into`` by the module's rule (objects merge, else later wins)."""
    for key, value in data.items():
        present = into.get(key)
        if isinstance(present, dict) and isinstance(value, dict):
            merged = dict(present)
            merge(merged, value)
            into[key] = merged
        else:
            into[key] = value
