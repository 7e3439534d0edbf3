"""Where a fleet's config lives: numbered versions, a watch for new ones, and each gateway's status.

``ConfigStore`` is the interface; ``RedisConfigStore`` its Redis implementation
(any URL of ``bascule_sdk.redis``: one server, Sentinel or Cluster).
``open_store(url)`` picks the implementation from the URL's scheme: another
store (etcd, say) is one more class with these six methods and one more
scheme there (docs/fleet.md).

Versions only grow: a rollback publishes an earlier version's text again as
a new version, so "the newest version" is always what every gateway should
serve. Every call raises ``StoreUnavailable`` when the store cannot answer.

Redis layout (every key shares the hash tag ``{PREFIX}``: one Cluster slot,
so a publish is one atomic script)::

    {bascule:fleet}:seq          the last version number (INCR)
    {bascule:fleet}:v:N          version N: JSON {version, text, source, pushed_at, rollback_of}
                                 (only the newest ``keep`` are kept)
    {bascule:fleet}:events       a stream: one entry {version: N} per publish (watch: XREAD BLOCK)
    {bascule:fleet}:status       hash node -> its last report (JSON)
    {bascule:fleet}:alive:NODE   the node's heartbeat: expires ``ttl`` seconds after its last report
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import trio
from bascule_sdk.redis import check_redis_url, open_redis, safe_url

__all__ = [
    "ConfigStore",
    "NodeStatus",
    "RedisConfigStore",
    "StoreUnavailable",
    "Version",
    "check_store_url",
    "open_store",
]

KEEP = 100  # versions kept by default (``bascule config push --keep``)


class StoreUnavailable(Exception):
    """The config store did not answer (down, unreachable, too slow)."""


@dataclass(frozen=True)
class Version:
    """One published config."""

    version: int
    text: str
    source: str  # the file it was pushed from, or "rollback"
    pushed_at: float  # Unix time
    rollback_of: int | None = None  # the version whose text this is, for a rollback

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: str | bytes) -> Version:
        return cls(**json.loads(data))


@dataclass
class NodeStatus:
    """What one gateway reports: which version it serves since when, its last error, its heartbeat."""

    node: str  # [--node-id], default HOST:PID
    host: str
    pid: int
    version: int | None = None  # the store's version it serves (None: a local file, or none yet)
    applied_at: float | None = None  # Unix time it started serving ``version``
    last_error: str | None = None  # why the newest version it tried failed here; None once one applies
    error_version: int | None = None  # the version ``last_error`` is about
    store_reachable: bool = True
    heartbeat: float = field(default_factory=time.time)  # Unix time of this report
    alive: bool = True  # read back: False when the heartbeat expired (a silent node)

    def to_json(self) -> str:
        data = asdict(self)
        del data["alive"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, data: str | bytes, *, alive: bool) -> NodeStatus:
        return cls(**json.loads(data), alive=alive)


class ConfigStore(Protocol):
    """Versions, a watch, statuses. Every method raises ``StoreUnavailable`` when the store does not answer."""

    async def publish(self, text: str, *, source: str, rollback_of: int | None = None, keep: int = KEEP) -> int:
        """Store ``text`` as the next version (keeping the newest ``keep``); return its number."""
        ...

    async def current(self) -> Version | None:
        """The newest version; ``None`` before the first publish."""
        ...

    async def get(self, version: int) -> Version | None:
        """Version ``version``; ``None`` if never published or no longer kept."""
        ...

    def watch(self) -> AsyncIterator[int]:
        """The newest version's number now (if any), then each newer one as it is published."""
        ...

    async def report(self, status: NodeStatus, ttl: float) -> None:
        """Record ``status``; the node counts as silent ``ttl`` seconds after its last report."""
        ...

    async def statuses(self) -> list[NodeStatus]:
        """Every node that ever reported, by name (``alive`` False for a silent one)."""
        ...


def check_store_url(url: str) -> None:
    """``ValueError`` unless ``url`` names a store this gateway can use."""
    check_redis_url(url)


@asynccontextmanager
async def open_store(url: str, *, timeout: float = 2.0, prefix: str = "bascule:fleet") -> AsyncIterator[ConfigStore]:
    """The store at ``url``, usable inside the block; each call bounded by ``timeout``.

    Does not wait for the store: a call fails with ``StoreUnavailable`` while it is down.
    """
    check_store_url(url)
    inside = False
    try:
        async with open_redis(url, timeout=timeout + RedisConfigStore.BLOCK) as client:
            inside = True
            yield RedisConfigStore(client, prefix, timeout, url)
            inside = False
    except Exception as e:
        leaf = _leaf(e)  # coredis' client holds a task group: the block's exception comes out in a group
        if isinstance(leaf, StoreUnavailable):
            raise leaf from None
        if inside:  # the block's own exception
            raise
        raise StoreUnavailable(f"{safe_url(url)}: {type(e).__name__}: {e}") from e  # opening or closing


def _leaf(e: BaseException) -> BaseException:
    """The one exception inside nested groups of one (``e`` itself otherwise)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


_PUBLISH = """
-- KEYS: seq, events, version prefix. ARGV: the version's JSON with version 0, keep.
local n = redis.call('INCR', KEYS[1])
local v = cjson.decode(ARGV[1])
v['version'] = n
redis.call('SET', KEYS[3] .. n, cjson.encode(v))
local keep = tonumber(ARGV[2])
if n > keep then redis.call('DEL', KEYS[3] .. (n - keep)) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'version', n)
return n
"""


class RedisConfigStore:
    """``ConfigStore`` on Redis; see the module's docstring for the keys."""

    BLOCK = 5.0  # seconds one XREAD waits for a publish before asking again

    def __init__(self, client: Any, prefix: str, timeout: float, url: str) -> None:
        self.client = client
        self.timeout = timeout
        self.url = safe_url(url)
        tag = "{" + prefix + "}:"
        self._seq, self._events, self._v = tag + "seq", tag + "events", tag + "v:"
        self._status, self._alive = tag + "status", tag + "alive:"

    async def _call(self, fn: Any, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            with trio.fail_after(timeout or self.timeout):
                return await fn(*args, **kwargs)
        except trio.TooSlowError:
            raise StoreUnavailable(f"{self.url}: no answer within {timeout or self.timeout:g} s") from None
        except Exception as e:  # coredis' ConnectionError, TimeoutError, RedisError ...
            raise StoreUnavailable(f"{self.url}: {type(e).__name__}: {e}") from e

    async def publish(self, text: str, *, source: str, rollback_of: int | None = None, keep: int = KEEP) -> int:
        if keep < 1:
            raise ValueError("keep: at least 1")
        draft = Version(0, text, source, time.time(), rollback_of)
        keys = [self._seq, self._events, self._v]
        return int(await self._call(self.client.eval, _PUBLISH, keys=keys, args=[draft.to_json(), keep]))

    async def current(self) -> Version | None:
        latest = await self._call(self.client.get, self._seq)
        return None if latest is None else await self.get(int(latest))

    async def get(self, version: int) -> Version | None:
        data = await self._call(self.client.get, f"{self._v}{version}")
        return None if data is None else Version.from_json(data)

    async def watch(self) -> AsyncIterator[int]:
        # The stream's position first, then the number: a publish in between is read twice, never missed.
        entries = await self._call(self.client.xrevrange, self._events, count=1)
        last_id = entries[0].identifier if entries else "0-0"
        latest = await self._call(self.client.get, self._seq)
        seen = 0 if latest is None else int(latest)
        if seen:
            yield seen
        while True:
            found = await self._call(
                self.client.xread,
                {self._events: last_id},
                block=int(self.BLOCK * 1000),
                timeout=self.timeout + self.BLOCK,
            )
            for entry in (found or {}).get(self._events.encode(), ()):
                last_id = entry.identifier
                number = int(entry.field_values[b"version"])
                if number > seen:
                    seen = number
                    yield number

    async def report(self, status: NodeStatus, ttl: float) -> None:
        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._status, {status.node: status.to_json()})
                pipe.set(self._alive + status.node, "1", px=max(1, int(ttl * 1000)))

        await self._call(write)

    async def statuses(self) -> list[NodeStatus]:
        raw = await self._call(self.client.hgetall, self._status)
        nodes = sorted(k.decode() for k in raw)
        alive = [await self._call(self.client.exists, [self._alive + node]) for node in nodes]
        return [NodeStatus.from_json(raw[n.encode()], alive=bool(a)) for n, a in zip(nodes, alive, strict=True)]
