"""Settings of the ``cache`` plugin (``[routes.plugins.cache]`` in plugins.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bascule_sdk import ByteSize, Duration, HeaderName, Secret, setting
from bascule_sdk.redis import check_redis_url

from .entry import Policy
from .keys import Keys

__all__ = ["CacheSettings"]


@dataclass(frozen=True)
class CacheSettings:
    backend: Literal["memory", "redis"] = setting("memory", 'Where entries live: "memory" (this process) or "redis".')
    redis_url: Secret | None = setting(
        None, 'Redis URL when backend = "redis": redis://, rediss://, redis+sentinel://, redis+cluster://.'
    )
    redis_timeout: Duration = setting(0.25, "Time limit of one Redis call; beyond it the request bypasses the cache.")
    key_prefix: str = setting("bascule:cache:", "Prefix of the Redis keys.")
    max_size: ByteSize = setting(
        64 * 1024**2, "Total size of the in-process cache, in bytes (least recently used URIs are evicted first)."
    )
    max_object_size: ByteSize = setting(
        1024**2, "Largest body stored; larger or unknown-length bodies stream through uncached."
    )
    methods: list[str] = setting(
        ["GET", "HEAD"],
        "Methods answered from the cache (GET and/or HEAD; HEAD is answered from a stored GET).",
        pattern="^(GET|HEAD)$",
        expected="GET or HEAD (only their responses can be cached)",
    )
    statuses: list[int] | None = setting(
        None,
        "Response statuses that may be stored; unset: every final "
        "status but 206 and 304 (with explicit freshness, or heuristic "
        "freshness for the ones cacheable by default).",
        min=200,
        max=599,
    )
    content_types: list[str] = setting([], 'Media types that may be stored (e.g. "application/json"); empty: any.')
    default_ttl: Duration = setting(
        0.0,
        "Freshness of a cacheable-by-default response that states none "
        "(no max-age, s-maxage, Expires or Last-Modified).",
    )
    heuristic_max: Duration = setting(86400.0, "Cap of heuristic freshness (10% of the time since Last-Modified).")
    keep_stale: Duration = setting(
        3600.0, "How long a stale entry with a validator is kept for revalidation and stale-if-error."
    )
    request_cache_control: bool = setting(
        True, "Honour the client's Cache-Control (no-cache, max-age, min-fresh, max-stale, only-if-cached, no-store)."
    )
    query_params: list[str] | None = setting(
        None, "Query parameters in the key (sorted); unset: the whole query string as sent."
    )
    ignore_query_params: list[str] = setting([], "Query parameters left out of the key (e.g. utm_source).")
    per_consumer: bool = setting(False, "Key entries by the authenticated consumer too (personalised routes).")
    store_set_cookie: bool = setting(
        False, "Store responses carrying Set-Cookie (the Set-Cookie field itself is never stored)."
    )
    coalesce: bool = setting(True, "Concurrent misses for one URI wait for a single upstream request.")
    coalesce_timeout: Duration = setting(5.0, "How long a coalesced request waits before going upstream itself.")
    uncacheable_ttl: Duration = setting(
        10.0,
        "After a response that could not be stored, misses of its URI go "
        "upstream at once (no coalescing) for this long.",
    )
    purge_path: str = setting("/cache/purge", "Admin listener path of the purge endpoint.")
    targeted_cache_control: HeaderName | list[HeaderName] | None = setting(
        None,
        'Targeted cache-control fields (RFC 9213) this cache obeys, e.g. "CDN-Cache-Control"; a list is '
        "tried in order. The first valid one replaces Cache-Control and Expires for this cache; unset: off.",
    )

    def __post_init__(self) -> None:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError('redis_url is required when backend = "redis"')
        if self.redis_url:
            try:
                check_redis_url(self.redis_url)
            except ValueError as e:
                raise ValueError(f"redis_url: {e}") from None
        if self.max_object_size > self.max_size and self.backend == "memory":
            raise ValueError("max_object_size cannot exceed max_size")
        if self.statuses is not None and {206, 304} & set(self.statuses):
            raise ValueError("statuses: 206 and 304 responses cannot be stored")
        self.targets()

    def policy(self) -> Policy:
        """The storage and freshness rules these settings set."""
        return Policy(
            self.default_ttl,
            self.heuristic_max,
            self.targets(),
            statuses=frozenset(self.statuses) if self.statuses is not None else None,
            content_types=frozenset(t.lower() for t in self.content_types),
            store_set_cookie=self.store_set_cookie,
            keep_stale=self.keep_stale,
            max_object_size=self.max_object_size,
        )

    def keys(self) -> Keys:
        """The cache keys with these settings' query parameter selection."""
        query_params = frozenset(self.query_params) if self.query_params is not None else None
        return Keys(query_params, frozenset(self.ignore_query_params))

    def targets(self) -> tuple[str, ...]:
        """``targeted_cache_control`` as lower-cased field names; ``ValueError`` when one is not a targeted field."""
        names = self.targeted_cache_control
        names = [names] if isinstance(names, str) else names or []
        for name in names:
            if name.lower() in ("cache-control", "expires"):
                raise ValueError(f"targeted_cache_control: {name!r} is not a targeted field")
        return tuple(dict.fromkeys(n.lower() for n in names))
