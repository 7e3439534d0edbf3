"""Supervised background tasks: a failing task is restarted, never the end of the others.

Every background task of the gateway (plugins' tasks, active health checks,
the retiring of an old config) runs under the gateway's ``Supervisor``:

- an exception (not ``trio.Cancelled``) ends that run only: it is logged with
  the traceback, the task's name and its plugin, and the task is called again
  after the ``Backoff`` delay;
- returning normally ends the task for good;
- cancellation ends it cleanly: gateway shutdown, or a cancel scope of the
  task's own (cancelled, say, when the config that started it retires);
- a task is *failing* from a failure until a run of it has lasted
  ``Backoff.reset_after`` seconds (or it returned): ``states()`` reports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from bascule_sdk import TaskState

__all__ = ["Backoff", "Supervisor", "name_of"]

log = logging.getLogger("bascule")


@dataclass(frozen=True)
class Backoff:
    """When a failed task runs again: ``base`` seconds after its first failure in
    a row, doubling with each further one, at most ``cap``. A run that lasts
    ``reset_after`` seconds ends the series: the task is healthy again."""

    base: float = 0.1
    cap: float = 30.0
    reset_after: float = 30.0

    def delay(self, consecutive: int) -> float:
        """Seconds to wait after the ``consecutive``-th failure in a row (1, 2, ...)."""
        return min(self.cap, self.base * 2.0 ** min(consecutive - 1, 64))


class _Task:
    """The mutable record behind a ``TaskState``."""

    def __init__(self, name: str, plugin: str | None) -> None:
        self.name = name
        self.plugin = plugin
        self.failures = 0
        self.consecutive = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None  # wall clock
        self.running = False
        self.run_started = 0.0  # trio clock

    def settle(self, now: float, reset_after: float) -> None:
        """Forget the failure series once the current run has lasted ``reset_after``."""
        if self.running and self.consecutive and now - self.run_started >= reset_after:
            self.consecutive, self.failing_since = 0, None

    def state(self) -> TaskState:
        return TaskState(self.name, self.plugin, self.failures, self.consecutive, self.last_error, self.failing_since)


class Supervisor:
    """Runs background tasks inside ``running()``, restarting the ones that fail."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()  # read at each failure: may be replaced at any time
        self._nursery: trio.Nursery | None = None
        self._tasks: set[_Task] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Tasks may start inside this block; those still running are cancelled when it ends."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None, plugin: str | None = None
    ) -> None:
        """Run ``fn(*args)`` supervised; ``name`` defaults to ``fn``'s qualified name.

        Raises ``RuntimeError`` outside ``running()``.
        """
        if self._nursery is None:
            raise RuntimeError("background tasks can only start while the gateway runs")
        task = _Task(name or name_of(fn), plugin)
        self._tasks.add(task)
        self._nursery.start_soon(self._supervise, task, fn, args, name=task.name)

    def states(self) -> list[TaskState]:
        """Every task still running or waiting to restart, by plugin then name."""
        now = trio.current_time()
        for task in self._tasks:
            task.settle(now, self.backoff.reset_after)
        return sorted((t.state() for t in self._tasks), key=lambda s: (s.plugin or "", s.name))

    async def _supervise(self, task: _Task, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            while True:
                task.running, task.run_started = True, trio.current_time()
                try:
                    await fn(*args)
                    return
                except Exception as e:
                    delay = self._failed(task, e)
                finally:
                    task.running = False
                await trio.sleep(delay)
        finally:
            self._tasks.discard(task)

    def _failed(self, task: _Task, error: Exception) -> float:
        """Record and log a failure; return the delay before the next run."""
        task.settle(trio.current_time(), self.backoff.reset_after)
        task.failures += 1
        task.consecutive += 1
        task.last_error = f"{type(error).__name__}: {error}"
        if task.failing_since is None:
            task.failing_since = time.time()
        delay = self.backoff.delay(task.consecutive)
        log.error(
            "background task %r%s failed (%d in a row); restarting in %.3g s",
            task.name,
            f" of plugin {task.plugin!r}" if task.plugin else "",
            task.consecutive,
            delay,
            exc_info=error,
        )
        return delay


def name_of(fn: Callable[..., Any]) -> str:
    """A function's qualified name (a ``partial``'s function's): what logs call a task."""
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or repr(fn)
