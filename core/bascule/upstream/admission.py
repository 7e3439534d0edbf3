"""Admission to a service: at most ``max_requests`` in flight, a bounded queue behind them.

A request beyond both, or one that waits longer than ``queue_timeout``, is
refused with 503 and ``Retry-After`` at once, so a slow service cannot
make the gateway hold an unbounded number of requests for it.
"""

from __future__ import annotations

import trio
from bascule_sdk import HTTPError

__all__ = ["Admission"]


class Admission:
    """A semaphore with a bounded, timed wait; ``max_requests == 0`` admits everything."""

    def __init__(self, service: str, max_requests: int, max_queue: int, queue_timeout: float) -> None:
        self.service = service
        self.max_requests = max_requests
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._slots = trio.Semaphore(max_requests) if max_requests else None
        self.in_flight = 0
        self.queued = 0
        self.refused = 0

    async def enter(self) -> None:
        """Wait for a slot; raise ``HTTPError`` 503 when the queue is full or the wait too long."""
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await self._wait(slots)
        self.in_flight += 1

    async def _wait(self, slots: trio.Semaphore) -> None:
        if self.queued >= self.max_queue:
            self._refuse("has too many requests waiting")
        self.queued += 1
        try:
            with trio.move_on_after(self.queue_timeout) as wait:
                await slots.acquire()
        finally:
            self.queued -= 1
        if wait.cancelled_caught:
            self._refuse("stayed busy")

    def leave(self) -> None:
        self.in_flight -= 1
        if self._slots is not None:
            self._slots.release()

    def _refuse(self, why: str) -> None:
        self.refused += 1
        raise HTTPError(503, f"The service {self.service!r} {why}; try again shortly.", {"retry-after": "1"})
