"""Resources a gateway process shares across reloads, reference counted (``Gateway.acquire``).

A plugin asks for a resource by key with the function that opens it (an async
context manager, such as ``bascule_sdk.redis.open_redis``). The first holder
opens it; the others, until it is closed, get the same value: two routes or two
configs with the same Redis URL use one client. Each ``Runtime`` (one config)
is a holder: its acquisitions are released together after its plugins'
``shutdown``, and the last release closes the resource (exits the context). A
reload that keeps a key thus keeps its resource: the new config acquires it
before the old one releases it.

The context of a resource is entered and exited in one background task of the
gateway (coredis' clients, like trio's nurseries, must be): a failure to open
raises in ``acquire``; a resource whose context ends on its own (an error) is
logged and forgotten, so that the next ``acquire`` opens a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast

import trio

from .tasks import name_of

__all__ = ["Resources"]

log = logging.getLogger("bascule")

T = TypeVar("T")

Opener = Callable[[], AbstractAsyncContextManager[Any]]


class _Held:
    """One open resource: its value, its holders (one entry per acquisition) and its task's events."""

    def __init__(self, key: Hashable, name: str) -> None:
        self.key = key
        self.name = name  # what logs call it: the opener's name, never the key (it may hold a secret)
        self.value: Any = None
        self.error: BaseException | None = None
        self.holders: list[object] = []
        self.opened = trio.Event()  # value or error set
        self.release = trio.Event()  # the last holder is gone: close
        self.closed = trio.Event()


class Resources:
    """The shared resources of one gateway process; ``start_soon`` runs their tasks until shutdown."""

    def __init__(self, start_soon: Callable[..., None]) -> None:
        self._start_soon = start_soon
        self._held: dict[Hashable, _Held] = {}

    async def acquire(self, key: Hashable, open: Callable[[], AbstractAsyncContextManager[T]], holder: object) -> T:
        """The resource under ``key``, opened with ``open()`` unless open; held by ``holder``
        until ``release(holder)``. Raises what opening it raised."""
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(key, name_of(open))
            self._start_soon(self._hold, held, open, name=f"resource {held.name}")
        held.holders.append(holder)
        await held.opened.wait()
        if held.error is not None:
            held.holders.remove(holder)
            raise held.error
        return cast(T, held.value)

    async def release(self, holder: object) -> None:
        """Release everything ``holder`` acquired; close (and wait for) each resource it held last."""
        for held in list(self._held.values()):
            if holder not in held.holders:
                continue
            held.holders = [h for h in held.holders if h is not holder]
            if not held.holders:
                self._forget(held)
                held.release.set()
                await held.closed.wait()

    def __len__(self) -> int:
        """How many resources are open (or opening)."""
        return len(self._held)

    def _forget(self, held: _Held) -> None:
        if self._held.get(held.key) is held:
            del self._held[held.key]

    async def _hold(self, held: _Held, open: Opener) -> None:
        """Enter the resource's context, hold it until released, exit it. Never raises (the
        supervisor would run it again): a failure is the acquirer's or is logged."""
        try:
            async with open() as held.value:
                held.opened.set()
                await held.release.wait()
        except Exception as e:
            if not held.opened.is_set():
                held.error = e
            else:
                log.error("shared resource %s stopped: %r; the next config to need it opens another", held.name, e)
        finally:
            if not held.opened.is_set() and held.error is None:  # cancelled: the gateway stops
                held.error = RuntimeError(f"the gateway stopped before {held.name} was open")
            self._forget(held)
            held.opened.set()
            held.closed.set()
