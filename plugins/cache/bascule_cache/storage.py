"""Where entries live: in this process (bounded by bytes) or in Redis (shared).

A store keeps one *record* per primary key (the request URI). A record maps
field names to values: the ``Vary`` field list of a URI (a ``str``) and its
variants (``Entry``). Deleting a record drops every variant, which is what
invalidation after an unsafe method needs. Every call may raise
``StoreUnavailable``; the plugin then bypasses the cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import trio
from bascule_sdk.redis import open_redis
from cachetools import LRUCache

from .entry import Entry
from .settings import CacheSettings

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreUnavailable", "opened", "store_key", "uri_path"]

log = logging.getLogger("bascule.cache")

Value = str | Entry


class StoreUnavailable(Exception):
    """The backend cannot answer (Redis down or too slow)."""


def uri_path(key: str) -> str:
    """The path part of a primary key ``scheme://host/path?query``."""
    _, _, rest = key.partition("://")
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


class Store(Protocol):
    async def get(self, key: str, fields: list[str]) -> list[Value | None]: ...
    async def put(self, key: str, items: dict[str, Value], ttl: float) -> None: ...
    async def delete(self, keys: list[str]) -> int: ...
    async def purge_prefix(self, prefix: str) -> int: ...
    async def clear(self) -> int: ...


def _value_size(value: Value) -> int:
    if isinstance(value, Entry):
        return len(value.body) + sum(len(k) + len(v) + 16 for k, v in value.headers) + 200
    return len(value) + 50


class _Record:
    __slots__ = ("fields", "until", "size")

    def __init__(self, fields: dict[str, Value], until: float, key: str) -> None:
        self.fields = fields
        self.until = until
        self.size = len(key) + sum(len(f) + _value_size(v) for f, v in fields.items())


class MemoryStore:
    """Records in an LRU map bounded by their total size in bytes.

    A record larger than ``max_size`` is not stored. ``clock`` gives the
    time records expire by.
    """

    def __init__(self, max_size: int, clock: Callable[[], float]) -> None:
        self.records: LRUCache[str, _Record] = LRUCache(max_size, getsizeof=lambda r: r.size)
        self.clock = clock

    @property
    def size(self) -> int:
        """Bytes in use (as accounted by the LRU bound)."""
        return int(self.records.currsize)

    def _live(self, key: str) -> _Record | None:
        record = self.records.get(key)
        if record is not None and record.until <= self.clock():
            del self.records[key]
            return None
        return record

    async def get(self, key: str, fields: list[str]) -> list[Value | None]:
        record = self._live(key)
        if record is None:
            return [None] * len(fields)
        return [record.fields.get(f) for f in fields]

    async def put(self, key: str, items: dict[str, Value], ttl: float) -> None:
        record = self._live(key)
        until = self.clock() + ttl
        fields = dict(record.fields) if record else {}
        fields.update(items)
        new = _Record(fields, max(until, record.until) if record else until, key)
        try:
            self.records[key] = new
        except ValueError:  # larger than the whole cache
            self.records.pop(key, None)

    async def delete(self, keys: list[str]) -> int:
        return sum(self.records.pop(k, None) is not None for k in keys)

    async def purge_prefix(self, prefix: str) -> int:
        doomed = [k for k in list(self.records) if uri_path(k).startswith(prefix)]
        return await self.delete(doomed)

    async def clear(self) -> int:
        count = len(self.records)
        self.records.clear()
        return count


_PUT = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class RedisStore:
    """Records as Redis hashes under ``prefix + key``, shared by every gateway using it.

    ``client``: an open coredis client (see ``opened``). Each command is bounded
    by ``timeout``; a failure raises ``StoreUnavailable``. Memory is bounded by
    the Redis server's own ``maxmemory`` policy.
    """

    def __init__(self, client: Any, prefix: str, timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.ready = True  # until its client is closed
        self.healthy = True

    async def _call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        import coredis.exceptions

        if not self.ready:
            raise StoreUnavailable("the Redis client is not running")
        try:
            with trio.fail_after(timeout or self.timeout):
                result = await fn()
        except (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as e:
            if self.healthy:
                log.warning("cache: Redis unavailable, bypassing the cache: %r", e)
                self.healthy = False
            raise StoreUnavailable(str(e)) from None
        if not self.healthy:
            log.warning("cache: Redis is back")
            self.healthy = True
        return result

    async def get(self, key: str, fields: list[str]) -> list[Value | None]:
        raw = await self._call(lambda: self.client.hmget(self.prefix + key, fields))
        return [_decode(f, v) for f, v in zip(fields, raw, strict=True)]

    async def put(self, key: str, items: dict[str, Value], ttl: float) -> None:
        args: list[Any] = [str(max(1, int(ttl * 1000)))]
        for f, v in items.items():
            args += [f, v.encode() if isinstance(v, Entry) else v.encode("latin-1")]
        await self._call(lambda: self.client.eval(_PUT, keys=[self.prefix + key], args=args))

    async def delete(self, keys: list[str]) -> int:
        if not keys:
            return 0
        return int(
            await self._call(lambda: self.client.delete([self.prefix + k for k in keys]), max(self.timeout, 10.0))
        )

    async def _keys(self) -> list[str]:
        async def scan() -> list[str]:
            return [k.decode("latin-1") async for k in self.client.scan_iter(match=self.prefix + "*", count=1000)]

        return [k[len(self.prefix) :] for k in await self._call(scan, max(self.timeout, 30.0))]

    async def purge_prefix(self, prefix: str) -> int:
        return await self.delete([k for k in await self._keys() if uri_path(k).startswith(prefix)])

    async def clear(self) -> int:
        return await self.delete(await self._keys())


def _decode(field: str, value: bytes | None) -> Value | None:
    """A Redis hash value as stored by ``RedisStore.put``; ``None`` if unreadable."""
    if value is None:
        return None
    try:
        return Entry.decode(value) if field.startswith("e") else value.decode("latin-1")
    except (ValueError, KeyError, TypeError, IndexError):
        log.warning("cache: unreadable entry in Redis (field %r); treated as missing", field)
        return None


@asynccontextmanager
async def opened(s: CacheSettings, clock: Callable[[], float], stores: set[Store]) -> AsyncIterator[Store]:
    """The store that settings ``s`` name, open inside the block and in ``stores`` meanwhile.

    A Redis store holds one client (``bascule_sdk.redis``; one server, a Sentinel
    service or a Cluster), which does not wait for the server.
    """
    store: MemoryStore | RedisStore
    async with AsyncExitStack() as stack:
        if s.backend == "redis":
            client = await stack.enter_async_context(open_redis(s.redis_url or "", timeout=s.redis_timeout))
            store = RedisStore(client, s.key_prefix, s.redis_timeout)
        else:
            store = MemoryStore(s.max_size, clock)
        stores.add(store)
        try:
            yield store
        finally:
            stores.discard(store)
            if isinstance(store, RedisStore):
                store.ready = False


def store_key(s: CacheSettings) -> tuple[Any, ...]:
    """What makes two cache instances' stores one (``Gateway.acquire``'s key): the backend settings."""
    if s.backend == "redis":
        return ("cache", "redis", s.redis_url, s.key_prefix, s.redis_timeout)
    return ("cache", "memory", s.max_size)
