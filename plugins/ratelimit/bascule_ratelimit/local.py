"""The in-process backend: exact for one process, memory bounded.

Buckets live in a ``cachetools.LRUCache``: each holds the time its quota is
whole again, after which it counts as absent, and beyond ``max_keys`` the least
recently used is forgotten (that client starts afresh). A decision makes no ``await``, so under trio it
is atomic: no other request of this process runs between check and consume.
The clock is injectable (``clock()`` returns seconds) for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from cachetools import LRUCache

from .policy import Algorithm, Decision, Outcome, Policy

__all__ = ["LocalBackend"]

Clock = Callable[[], float]
# A check returns its outcome and, if it admits, how to consume: -> (expires_at, state).
Check = tuple[Outcome, Callable[[], tuple[float, Any]] | None]


def gcra(p: Policy, tat: float | None, now: float) -> Check:
    """Generic cell rate algorithm: the state is the theoretical arrival time (TAT).

    One request is due every ``interval``; a bucket may run ``burst - 1``
    intervals ahead. ``wait`` is how long until this request would fit.
    """
    interval = p.window / p.limit
    tat = max(tat if tat is not None else now, now)
    wait = (tat - now) - (p.burst - 1) * interval
    if wait > 1e-9:
        return Outcome(p, False, 0, wait, tat - now), None
    remaining = int(-wait / interval + 1e-9)
    new_tat = tat + interval
    return Outcome(p, True, remaining, (remaining + 1) * interval + wait, new_tat - now), lambda: (new_tat, new_tat)


def fixed_window(p: Policy, state: tuple[int, float] | None, now: float) -> Check:
    """A counter for a window that starts with the bucket's first request."""
    count, ends = state if state is not None and state[1] > now else (0, now + p.window)
    left = ends - now
    if count >= p.limit:
        return Outcome(p, False, 0, left, left), None
    return Outcome(p, True, p.limit - count - 1, left, left), lambda: (ends, (count + 1, ends))


def sliding_window(p: Policy, log: deque[float] | None, now: float) -> Check:
    """The times of admitted requests in the last window (exact; memory O(limit))."""
    log = log if log is not None else deque()
    while log and log[0] <= now - p.window:
        log.popleft()
    n = len(log)
    if n >= p.limit:
        return Outcome(p, False, 0, log[n - p.limit] + p.window - now, log[-1] + p.window - now), None

    def consume() -> tuple[float, Any]:
        log.append(now)
        return now + p.window, log

    oldest = log[0] if log else now
    return Outcome(p, True, p.limit - n - 1, oldest + p.window - now, p.window), consume


# The state argument is what the check last stored for the bucket (its own type per algorithm).
CHECKS: dict[Algorithm, Callable[[Policy, Any, float], Check]] = {
    "gcra": gcra,
    "fixed-window": fixed_window,
    "sliding-window": sliding_window,
}


class LocalBackend:
    """Buckets of one process (the plugin shares one per gateway: ``Gateway.acquire``)."""

    def __init__(self, max_keys: int, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.buckets: LRUCache[str, tuple[float, Any]] = LRUCache(max_keys)  # key -> (whole again at, state)

    @classmethod
    @asynccontextmanager
    async def opened(cls, max_keys: int, clock: Clock = time.monotonic) -> AsyncIterator[LocalBackend]:
        """A new backend, for ``Gateway.acquire`` (nothing to close: its buckets go with it)."""
        yield cls(max_keys, clock)

    async def decide(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        """Check the request against every policy; consume all quotas or none."""
        now = self.clock()
        outcomes: list[Outcome] = []
        to_consume: list[tuple[str, Callable[[], tuple[float, Any]]]] = []
        for key, policy in zip(keys, policies, strict=True):
            held = self.buckets.get(key)
            outcome, consume = CHECKS[policy.algorithm](policy, held[1] if held and held[0] > now else None, now)
            outcomes.append(outcome)
            if consume is not None:  # a check that admits always says how to consume
                to_consume.append((key, consume))
        allowed = len(to_consume) == len(outcomes)
        if allowed:
            for key, consume in to_consume:
                self.buckets[key] = consume()
        return Decision(allowed, tuple(outcomes))
