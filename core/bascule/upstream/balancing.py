"""Choosing a target for a request: weighted round-robin, least requests, consistent hash.

A balancer is built once per service from its targets (anything with
``weight``, ``in_use`` and ``health``) and answers ``pick(now, key, tried,
panic)``: the next target that is available (any target in ``panic`` mode)
and not in ``tried``, or ``None`` when there is none. A pick looks at one
target in the usual case (round-robin, hash) or at each target once (least
requests), and allocates nothing but a key's hash while every target is up.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["Balancer", "ConsistentHash", "LeastRequests", "RoundRobin", "make_balancer"]


class _Health(Protocol):
    def available(self, now: float) -> bool: ...


class Target(Protocol):
    @property
    def weight(self) -> int: ...
    @property
    def health(self) -> _Health: ...
    @property
    def in_use(self) -> int: ...


T = TypeVar("T", bound=Target)


class Balancer(Protocol[T]):
    def pick(self, now: float, key: str | None, tried: Collection[T], panic: bool = False) -> T | None: ...


class RoundRobin(Generic[T]):
    """Smooth weighted round-robin (nginx's): weights 5,1,1 give a a b a c a a, not a a a a a b c."""

    def __init__(self, targets: Sequence[T]) -> None:
        self.order = _smooth_order(targets)
        self._next = 0

    def pick(self, now: float, key: str | None, tried: Collection[T], panic: bool = False) -> T | None:
        order, n = self.order, len(self.order)
        for step in range(n):
            target = order[(self._next + step) % n]
            if (panic or target.health.available(now)) and target not in tried:
                self._next = (self._next + step + 1) % n
                return target
        return None


class LeastRequests(Generic[T]):
    """The target with the fewest requests in flight per unit of weight; ties rotate."""

    def __init__(self, targets: Sequence[T]) -> None:
        self.targets = list(targets)
        self._start = 0

    def pick(self, now: float, key: str | None, tried: Collection[T], panic: bool = False) -> T | None:
        targets, n = self.targets, len(self.targets)
        self._start = (self._start + 1) % n
        best, best_load = None, 0.0
        for i in range(n):
            target = targets[(self._start + i) % n]
            if target in tried or not (panic or target.health.available(now)):
                continue
            load = target.in_use / target.weight
            if best is None or load < best_load:
                best, best_load = target, load
        return best


class ConsistentHash(Generic[T]):
    """A hash ring with ``points`` virtual nodes per unit of weight.

    The same key reaches the same target while it is available; when it is
    not, the key moves to the next target on the ring, and only keys of a
    removed target move. Without a key, requests go round-robin.
    """

    def __init__(self, targets: Sequence[T], points: int = 100) -> None:
        ring = sorted(
            (_hash(f"{getattr(t, 'url', i)}#{n}"), i) for i, t in enumerate(targets) for n in range(points * t.weight)
        )
        self.hashes = [h for h, _ in ring]
        self.owners = [targets[i] for _, i in ring]
        self.fallback = RoundRobin(targets)
        self.distinct = len(targets)

    def pick(self, now: float, key: str | None, tried: Collection[T], panic: bool = False) -> T | None:
        if key is None:
            return self.fallback.pick(now, key, tried, panic)
        start = bisect.bisect(self.hashes, _hash(key))
        owners, n = self.owners, len(self.owners)
        seen: set[int] | None = None  # made only when the key's owner is out
        for step in range(n):
            target = owners[(start + step) % n]
            if seen is not None and id(target) in seen:
                continue
            if (panic or target.health.available(now)) and target not in tried:
                return target
            if seen is None:
                seen = set()
            seen.add(id(target))
            if len(seen) == self.distinct:
                break
        return None


def make_balancer(kind: str, targets: Sequence[T]) -> Balancer[T]:
    """The balancer named by a service's ``balance`` setting."""
    if kind == "least-requests":
        return LeastRequests(targets)
    if kind == "hash":
        return ConsistentHash(targets)
    return RoundRobin(targets)


def _hash(key: str) -> int:
    # Stable across processes (unlike hash()), so every worker agrees.
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _smooth_order(targets: Sequence[T]) -> list[T]:
    total = sum(t.weight for t in targets)
    current = [0] * len(targets)
    order = []
    for _ in range(total):
        for i, t in enumerate(targets):
            current[i] += t.weight
        best = max(range(len(targets)), key=current.__getitem__)
        current[best] -= total
        order.append(targets[best])
    return order
