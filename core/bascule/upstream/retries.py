"""The retry budget of a service: retries cannot multiply load under an outage.

Over a sliding window of ten one-second buckets, a service may retry
``ratio`` of the requests it received plus ``min_per_second`` retries per
second (Finagle's and Linkerd's budget). Counting a request is O(1);
asking for a retry sums the ten buckets.
"""

from __future__ import annotations

__all__ = ["RetryBudget"]

WINDOW = 10  # seconds, one bucket each


class RetryBudget:
    """Requests and retries of the last ``WINDOW`` seconds."""

    def __init__(self, ratio: float, min_per_second: int) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self._second = [-1] * WINDOW
        self._requests = [0] * WINDOW
        self._retries = [0] * WINDOW
        self.spent = 0  # retries granted, ever
        self.refused = 0  # retries refused, ever

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % WINDOW
        if self._second[i] != second:
            self._second[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def request(self, now: float) -> None:
        """Count one request (not a retry)."""
        self._requests[self._bucket(now)] += 1

    def allows(self, now: float) -> bool:
        """Whether one more retry fits the budget now (counted as refused if not)."""
        self._bucket(now)
        oldest = int(now) - WINDOW
        live = [j for j in range(WINDOW) if self._second[j] > oldest]
        requests = sum(self._requests[j] for j in live)
        retries = sum(self._retries[j] for j in live)
        if retries < self.min_per_second * WINDOW + self.ratio * requests:
            return True
        self.refused += 1
        return False

    def spend(self, now: float) -> None:
        """Count one retry."""
        self._retries[self._bucket(now)] += 1
        self.spent += 1
