"""One Redis connection from one URL: a single server, Sentinel or Cluster (coredis' own support).

Shared by the rate-limit and cache plugins and the config store; coredis is
imported only when a client is opened (plugins that use Redis depend on it).
A plugin holds its client as a resource of the gateway, kept across reloads
that keep its URL: ``gateway.acquire(key, partial(open_redis, url, timeout=t))``::

    redis://[:PASSWORD@]HOST:PORT/DB            one server (rediss:// over TLS, unix:///PATH)
    redis+sentinel://[:PASSWORD@]H1:P1,H2:P2/SERVICE[/DB]
                                                the primary of SERVICE, as the sentinels
                                                name it; followed through a failover
    redis+cluster://[:PASSWORD@]H1:P1,H2:P2     a Redis Cluster, from any of its nodes

The password (of the data nodes; sentinels without one) may come from an
``env:``/``file:`` secret like the whole URL. Through a Sentinel failover,
commands fail (the caller's ``on_error``) until the sentinels have promoted
a replica; the next connection goes to the new primary. In a Cluster, the
keys of one command must share a hash tag (``{...}``): one slot, one node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

__all__ = ["SCHEMES", "RedisURL", "check_redis_url", "open_redis", "safe_url"]

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True)
class RedisURL:
    """A parsed ``redis+sentinel://`` or ``redis+cluster://`` URL (``kind`` "sentinel" or "cluster")."""

    kind: str
    nodes: tuple[tuple[str, int], ...]
    password: str | None
    service: str | None = None
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """Parse ``url``; ``ValueError`` saying what is wrong (quoting nothing of ``url``: it may be a secret)."""
        scheme, _, rest = url.partition("://")
        kind = scheme.removeprefix("redis+")
        if kind not in ("sentinel", "cluster"):
            raise ValueError(f"expected one of {', '.join(SCHEMES)}")
        userinfo, at, rest = rest.rpartition("@")
        password = unquote(userinfo.partition(":")[2]) or None if at else None
        hosts, _, path = rest.partition("/")
        nodes = []
        for node in hosts.split(","):
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"a {kind.title()} URL lists HOST:PORT,HOST:PORT... (each with its port)")
            nodes.append((host.strip("[]"), int(port)))
        parts = [p for p in path.split("/") if p]
        if kind == "cluster":
            if parts:
                raise ValueError("a Cluster URL takes no /DB (a Cluster has one database)")
            return cls(kind, tuple(nodes), password)
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError("a Sentinel URL ends with /SERVICE or /SERVICE/DB (the name the Sentinels monitor)")
        return cls(kind, tuple(nodes), password, parts[0], int(parts[1]) if len(parts) == 2 else 0)


def check_redis_url(url: str) -> None:
    """``ValueError`` unless ``url`` is one of the forms above."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"expected a URL starting with {', '.join(SCHEMES)}")
    if url.startswith("redis+"):
        RedisURL.parse(url)


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and status pages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


@asynccontextmanager
async def open_redis(url: str, *, timeout: float, **options: Any) -> AsyncIterator[Any]:
    """A coredis client for ``url``, open inside the block (coredis' clients live in ``async with``).

    ``timeout`` bounds connecting and each reply; coredis does not retry
    (the caller decides: a request applies its ``on_error``), except in a
    Cluster, where its retries are how it learns a new slot map. ``options`` go
    to the client (e.g. ``decode_responses``). Does not wait for a server.
    """
    import coredis
    from coredis.connection import TCPLocation
    from coredis.retry import NoRetryPolicy

    common: dict[str, Any] = {"connect_timeout": timeout, "stream_timeout": timeout, **options}
    if not url.startswith("redis+"):
        async with coredis.Redis.from_url(url, retry_policy=NoRetryPolicy(), **common) as client:
            yield client
        return
    parsed = RedisURL.parse(url)
    locations = [TCPLocation(host, port) for host, port in parsed.nodes]
    if parsed.kind == "cluster":
        # coredis' own retry policy here: its retries report connection errors, which is what makes
        # the client re-read the slot map after a failover (the caller's timeout still bounds a call).
        cluster = coredis.RedisCluster(startup_nodes=locations, password=parsed.password, **common)
        async with cluster:
            yield cluster
        return
    sentinel_options = {"connect_timeout": timeout, "stream_timeout": timeout}
    async with coredis.Sentinel(locations, sentinel_kwargs=sentinel_options, **common) as sentinel:
        assert parsed.service is not None
        primary = sentinel.primary_for(parsed.service, db=parsed.db, password=parsed.password)
        async with primary:
            yield primary
