"""JWKS sources: an identity provider's public keys, fetched and kept fresh.

A ``JwksSource`` keeps the last good key set. It is refreshed in the
background every ``jwks_cache_ttl``; a token with an unknown ``kid`` may
trigger one extra fetch, at most once per ``jwks_refetch_interval`` however
many such tokens arrive. A failed fetch (identity provider down, bad
document) keeps the last good set and is retried after the refetch interval.
"""

from __future__ import annotations

import json
import logging
import math

import httpx
import trio

from .keys import VerificationKey, keys_from_jwks
from .settings import JwksConfig

__all__ = ["JwksSource"]

log = logging.getLogger("bascule.jwt")


class JwksSource:
    """The keys of one JWKS URL (for one issuer, or any)."""

    def __init__(self, config: JwksConfig, *, ttl: float, refetch_interval: float, max_size: int) -> None:
        self.url = config.url
        self.issuer = config.issuer
        self.algorithms = tuple(config.algorithms)
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.max_size = max_size
        self.keys: tuple[VerificationKey, ...] = ()
        self.healthy = False  # did the last fetch succeed?
        self._last_fetch = -math.inf  # trio.current_time() of the last attempt
        self._attempts = 0
        self._lock = trio.Lock()

    def find(self, alg: str, kid: str | None, iss: str | None) -> list[VerificationKey]:
        """Known keys that may verify a token with this ``alg``, ``kid`` and ``iss``."""
        return [k for k in self.keys if k.accepts(alg, kid, iss)]

    def serves(self, iss: str | None) -> bool:
        return self.issuer is None or self.issuer == iss

    async def fetch(self, client: httpx.AsyncClient) -> bool:
        """Fetch the key set now; on failure keep the last good one. True on success."""
        self._last_fetch = trio.current_time()
        self._attempts += 1
        try:
            async with client.stream("GET", self.url, headers={"accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_size:
                        raise ValueError(f"document larger than jwks_max_size ({self.max_size} bytes)")
            keys = keys_from_jwks(json.loads(body), self.algorithms, self.issuer, self.url)
            if not keys:
                raise ValueError("no usable signing keys in the document")
        except Exception as e:  # any failure: keep serving the last good set
            self.healthy = False
            log.warning(
                "JWKS %s: fetch failed (%s); keeping %d known keys", self.url, e or type(e).__name__, len(self.keys)
            )
            return False
        self.keys = tuple(keys)
        self.healthy = True
        return True

    async def refetch(self, client: httpx.AsyncClient) -> None:
        """Fetch again for an unknown ``kid``, unless a fetch happened within the refetch interval.

        Callers that arrive while a fetch is in progress wait for it and do not
        fetch again, whatever the interval.
        """
        attempts = self._attempts
        async with self._lock:
            if attempts == self._attempts and trio.current_time() - self._last_fetch >= self.refetch_interval:
                await self.fetch(client)

    async def keep_fresh(self, client: httpx.AsyncClient) -> None:
        """Refresh forever: every ``ttl`` after a success, every refetch interval after a failure."""
        while True:
            delay = self.ttl if self.healthy else min(self.ttl, self.refetch_interval)
            await trio.sleep_until(self._last_fetch + delay)
            async with self._lock:
                if trio.current_time() - self._last_fetch >= delay:
                    await self.fetch(client)
