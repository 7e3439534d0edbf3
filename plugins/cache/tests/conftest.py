"""Shared fixtures: a controllable clock and a counting upstream."""

from __future__ import annotations

import time

import pytest
from bascule_cache import Cache


class Clock:
    """A wall clock the test moves forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache_cls(clock: Clock) -> type[Cache]:
    """The cache plugin running on the test's clock."""

    class ClockedCache(Cache):
        pass

    ClockedCache.clock = staticmethod(clock)
    return ClockedCache
