"""Limits and the outcome of checking a request against them.

A ``Policy`` is one configured limit (``limit`` requests per ``window``). A
backend checks one request against every policy of its route at once and
returns a ``Decision``: admitted only if every policy admits it, and then
every policy's quota is consumed; otherwise nothing is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["ALGORITHMS", "Algorithm", "Decision", "Outcome", "Policy"]

Algorithm = Literal["gcra", "sliding-window", "fixed-window"]
ALGORITHMS: tuple[Algorithm, ...] = ("gcra", "sliding-window", "fixed-window")


@dataclass(frozen=True, slots=True)
class Policy:
    """``limit`` requests per ``window`` seconds, counted by ``algorithm``.

    ``burst`` (GCRA only, else equal to ``limit``): how many requests a full
    bucket admits at once.
    """

    name: str
    algorithm: Algorithm
    limit: int
    window: float
    burst: int


class Outcome(NamedTuple):
    """One policy's verdict on one request (a ``NamedTuple``, as ``Decision``: made per request,
    it is immutable at less than half a frozen dataclass's cost).

    ``remaining``: requests this policy would still admit now.
    ``grows_in``: seconds until ``remaining`` next increases (when rejected:
    until this request would be admitted).
    ``reset``: seconds until the whole quota is back.
    """

    policy: Policy
    allowed: bool
    remaining: int
    grows_in: float
    reset: float


class Decision(NamedTuple):
    """The verdict of every policy; the request is admitted if all admit it."""

    allowed: bool
    outcomes: tuple[Outcome, ...]

    @property
    def tightest(self) -> Outcome:
        """The outcome that decides: the violated one with the longest wait, or
        else the one with the fewest requests left (the longest wait on a tie)."""
        if len(self.outcomes) == 1:
            return self.outcomes[0]
        candidates = [o for o in self.outcomes if not o.allowed] or self.outcomes
        return min(candidates, key=lambda o: (o.remaining, -o.grows_in))

    @property
    def violated(self) -> list[str]:
        """Names of the policies that rejected the request."""
        return [o.policy.name for o in self.outcomes if not o.allowed]
