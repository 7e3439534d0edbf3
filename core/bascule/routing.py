"""Route matching: a segment trie, so lookup cost follows the path, not the route count.

A route path is a list of segments; ``{name}`` matches any one non-empty
segment and captures it. With ``match = "prefix"`` (the default) a route also
matches every path below it (at a segment boundary: ``/api/users`` matches
``/api/users/7`` but not ``/api/usersX``); with ``match = "exact"`` only the
path itself (a trailing slash is ignored).

Precedence, when several routes match a request, the most specific wins:

1. a route whose ``hosts`` match the request's host beats one without hosts;
2. then the route that matched more path segments;
3. then an exact route beats a prefix route;
4. then more literal segments beat ``{param}`` segments;
5. then a route with ``methods`` beats one without;
6. then the route declared first.

Routes that match the path but not the method answer 405 with ``Allow`` only
when no route matches both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Match", "Router", "RouterEntry", "split_path"]

T = TypeVar("T")


def split_path(path: str) -> list[str]:
    """Segments of a normalised path, empty ones dropped."""
    return [s for s in path.split("/") if s]


@dataclass(frozen=True)
class RouterEntry(Generic[T]):
    """An entry of the ``Router``: one path of one route, with what the route matches on besides the
    path (methods, hosts), and ``target``, what a match returns (the compiled route)."""

    path: str
    target: T
    exact: bool = False
    methods: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    order: int = 0
    segments: tuple[str, ...] = field(init=False)
    params: tuple[tuple[int, str], ...] = field(init=False)
    rank: tuple[int, ...] = field(init=False, repr=False)  # sort key of the precedence rules

    def __post_init__(self) -> None:
        segments = tuple(split_path(self.path))
        params: list[tuple[int, str]] = []
        for i, seg in enumerate(segments):
            if seg.startswith("{") and seg.endswith("}"):
                name = seg[1:-1]
                if not name.isidentifier():
                    raise ValueError(f"invalid parameter {seg!r} in path {self.path!r}")
                if name in (p for _, p in params):
                    raise ValueError(f"parameter {seg!r} appears twice in path {self.path!r}")
                params.append((i, name))
            elif "{" in seg or "}" in seg:
                raise ValueError(f"a parameter must be a whole segment in path {self.path!r}")
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "params", tuple(params))
        literal = len(segments) - len(params)
        rank = (bool(self.hosts), len(segments), self.exact, literal, bool(self.methods), -self.order)
        object.__setattr__(self, "rank", rank)

    @property
    def depth(self) -> int:
        return len(self.segments)

    def matches_host(self, host: str) -> bool:
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True)
class Match(Generic[T]):
    """The outcome of a lookup: a target, or why there is none."""

    entry: RouterEntry[T] | None
    params: dict[str, str]
    allowed: frozenset[str] = frozenset()  # set when the path matched but not the method

    @property
    def target(self) -> T | None:
        return self.entry.target if self.entry else None


class _Node(Generic[T]):
    __slots__ = ("static", "param", "exact", "prefix")

    def __init__(self) -> None:
        self.static: dict[str, _Node[T]] = {}
        self.param: _Node[T] | None = None
        self.exact: list[RouterEntry[T]] = []
        self.prefix: list[RouterEntry[T]] = []


class Router(Generic[T]):
    """Maps (host, method, path) to a route target, most specific first."""

    def __init__(self, entries: Sequence[RouterEntry[T]]) -> None:
        self._root: _Node[T] = _Node()
        for entry in entries:
            node = self._root
            for seg in entry.segments:
                if seg.startswith("{"):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.static.setdefault(seg, _Node())
            (node.exact if entry.exact else node.prefix).append(entry)
        self._sort(self._root)

    def _sort(self, node: _Node[T]) -> None:
        node.exact.sort(key=lambda p: p.rank, reverse=True)
        node.prefix.sort(key=lambda p: p.rank, reverse=True)
        for child in node.static.values():
            self._sort(child)
        if node.param:
            self._sort(node.param)

    def match(self, method: str, path: str, host: str = "") -> Match[T]:
        """Find the most specific route for a normalised path.

        ``Match.entry`` is None when nothing matches; ``Match.allowed`` is
        then non-empty if some route matched the path but not the method.
        """
        segments = split_path(path)
        candidates: list[RouterEntry[T]] = []
        self._collect(self._root, segments, 0, candidates)
        best: RouterEntry[T] | None = None
        best_rank: tuple[int, ...] = ()
        allowed: set[str] = set()
        for entry in candidates:
            if entry.hosts and not entry.matches_host(host):
                continue
            if entry.methods and method not in entry.methods:
                allowed |= entry.methods
                continue
            if best is None or entry.rank > best_rank:
                best, best_rank = entry, entry.rank
        if best is None:
            return Match(None, {}, frozenset(allowed))
        return Match(best, {name: segments[i] for i, name in best.params})

    def _collect(self, node: _Node[T], segments: list[str], depth: int, out: list[RouterEntry[T]]) -> None:
        out.extend(node.prefix)
        if depth == len(segments):
            out.extend(node.exact)
            return
        child = node.static.get(segments[depth])
        if child is not None:
            self._collect(child, segments, depth + 1, out)
        if node.param is not None:
            self._collect(node.param, segments, depth + 1, out)
