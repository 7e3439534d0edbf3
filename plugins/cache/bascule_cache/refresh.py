"""Background revalidation of stale entries (RFC 5861 ``stale-while-revalidate``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bascule_sdk import Context, Gateway, Headers, Request

from .entry import Entry, Policy, read_entry

__all__ = ["Refresher"]

log = logging.getLogger("bascule.cache")

#: Stores a refreshed entry: ``(key, consumer, entry, request headers)``.
StoreFn = Callable[[str, str, Entry, Headers], Awaitable[None]]


class Refresher:
    """Replays the upstream request of a stale entry in the background, at most one
    at a time per key and consumer, and stores what comes back."""

    def __init__(self, policy: Policy, clock: Callable[[], float], store: StoreFn) -> None:
        self.policy, self.clock, self.store = policy, clock, store
        self._running: set[tuple[str, str]] = set()

    def soon(self, gateway: Gateway | None, ctx: Context, key: str, consumer: str, entry: Entry) -> None:
        """Start refreshing ``entry`` unless it cannot be replayed or already is refreshing."""
        if entry.upstream is None or gateway is None or (key, consumer) in self._running:
            return
        self._running.add((key, consumer))
        gateway.start_soon(self._refresh, ctx, key, consumer, entry, ctx.request.headers.copy())

    async def _refresh(self, ctx: Context, key: str, consumer: str, entry: Entry, headers: Headers) -> None:
        try:
            path, query, keep_host = entry.upstream or ("", "", False)
            if not keep_host:
                headers.remove("host")
            entry.validate_with(headers)
            request_time = self.clock()
            response = await ctx.forward(Request("GET", path, query, headers))
            try:
                now = self.clock()
                if response.status == 304:
                    new: Entry | None = entry.merged(response.headers, request_time, now, self.policy)
                else:
                    new = await read_entry(headers, response, request_time, now, self.policy)
                if new is not None:
                    new.upstream = entry.upstream
                    await self.store(key, consumer, new, headers)
            finally:
                await response.aclose()
        except Exception as e:
            log.warning("cache: background refresh of %s failed: %r", key, e)
        finally:
            self._running.discard((key, consumer))
