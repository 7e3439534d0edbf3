"""The stored response selected for a request (RFC 9111 section 4): by URI, by the
request fields its Vary names (section 4.1), and shared with Authorization only when
allowed (section 3.5)."""

from __future__ import annotations

from bascule_sdk import Headers

from .control import parse_vary
from .entry import Entry, Policy, shareable
from .storage import Store

__all__ = ["Variants"]

_MAX_HINTS = 10_000


def _variant(consumer: str, names: tuple[str, ...], headers: Headers) -> str:
    """The store field of the variant for ``headers``'s values of the Vary ``names``."""
    # Normalised: lines combined, whitespace around list members dropped ("1,2" == " 1, 2 ").
    values = [",".join(v.strip() for line in headers.get_all(n) for v in line.split(",")) for n in names]
    return "e" + consumer + "\0" + "\0".join(values)


class Variants:
    """Reads and writes entries of a store by URI key, consumer and Vary.

    A URI's record holds its Vary field names (field ``"v" + consumer``) and one
    entry per variant. The names last seen for each URI are remembered, so a
    lookup usually reads both in one store call.
    """

    def __init__(self) -> None:
        self._hints: dict[str, tuple[str, ...]] = {}

    async def get(self, store: Store, key: str, consumer: str, headers: Headers, now: float) -> Entry | None:
        """The entry of ``key`` for a request with ``headers`` that is kept at ``now``, if any."""
        entry = await self._get(store, key, consumer, headers, now)
        if entry is not None and "authorization" in headers and not shareable(entry.cc):
            return None
        return entry

    async def _get(self, store: Store, key: str, consumer: str, headers: Headers, now: float) -> Entry | None:
        hint = self._hints.get(key, ())
        vary, entry = await store.get(key, ["v" + consumer, _variant(consumer, hint, headers)])
        if not isinstance(vary, str):
            return None
        names = tuple(vary.split(",")) if vary else ()
        if names != hint:
            if len(self._hints) > _MAX_HINTS:
                self._hints.clear()
            self._hints[key] = names
            (entry,) = await store.get(key, [_variant(consumer, names, headers)])
        if not isinstance(entry, Entry) or entry.keep_until <= now:
            return None
        return entry

    async def put(
        self, store: Store, key: str, consumer: str, entry: Entry, headers: Headers, now: float, policy: Policy
    ) -> None:
        """Store ``entry`` as the variant of ``key`` for a request with ``headers``, for as
        long as ``Entry.keep_for`` says."""
        ttl = entry.keep_for(now, policy)
        if ttl <= 0:
            return
        entry.keep_until = now + ttl
        names = parse_vary(entry.view.get_all("vary"))
        self._hints[key] = names
        items: dict[str, str | Entry] = {"v" + consumer: ",".join(names), _variant(consumer, names, headers): entry}
        await store.put(key, items, ttl)
