"""Token verification: signature, claims, consumer, and the verified-token cache."""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import trio
from bascule_sdk import Consumer
from cachetools import LRUCache

from .jwks import JwksSource
from .keys import ALGORITHMS, VerificationKey
from .settings import Credentials, Settings, as_list

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = ["TokenError", "Verified", "Verifier"]

Timed = Callable[[], AbstractContextManager[Any]]  # wraps timed work: ctx.phase(...), or nothing

_JWS_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

# What a client is told about a rejected token: fixed phrases, never token content.
_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not valid yet."),
    (jwt.InvalidIssuerError, "The token's issuer is not accepted."),
    (jwt.InvalidAudienceError, "The token's audience is not accepted."),
    (jwt.InvalidSignatureError, "The token's signature is invalid."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not allowed."),
)


class TokenError(Exception):
    """A token that must be rejected with 401 ``invalid_token``; ``str()`` is safe to show."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid token stands for; cached by token hash."""

    consumer: Consumer | None  # None: no declared consumer matched and require_consumer is set
    scopes: frozenset[str]
    expires: float  # exp as a Unix time (inf without exp)


class Verifier:
    """Verifies tokens against the configured keys and JWKS sources.

    With JWKS sources: ``open()`` creates the HTTP client and fetches every
    JWKS once (failures are logged, not raised), ``keep_fresh()`` refreshes
    them until cancelled, ``aclose()`` closes the client.
    """

    def __init__(self, settings: Settings, plugin_name: str = "jwt") -> None:
        self.settings = settings
        self.plugin_name = plugin_name
        self.static: tuple[VerificationKey, ...] = tuple(k.loaded for k in settings.keys)
        self.sources = tuple(
            JwksSource(
                c,
                ttl=settings.jwks_cache_ttl,
                refetch_interval=settings.jwks_refetch_interval,
                max_size=settings.jwks_max_size,
            )
            for c in settings.jwks
        )
        self._issuer_bound = any(k.issuer for k in self.static) or any(s.issuer for s in self.sources)
        self._declared: dict[tuple[str | None, str], Consumer] = {}
        self._client: httpx.AsyncClient | None = None
        # token hash -> (monotonic time the entry lapses, Verified). Each entry holds its own expiry:
        # a TTLCache reads its timer and walks its expiry list on every lookup.
        self._cache: LRUCache[bytes, tuple[float, Verified]] | None = None
        if settings.cache_size and settings.cache_ttl:
            self._cache = LRUCache(settings.cache_size)
        self._options: Options = {"require": list(settings.require), "verify_aud": bool(settings.audiences)}

    def bind_consumers(self, consumers: Mapping[str, Consumer]) -> None:
        """Index declared consumers by the (issuer, subject) pairs of their jwt credentials."""
        declared = {}
        for consumer in consumers.values():
            creds: Credentials | None = consumer.credentials.get(self.plugin_name)
            if creds is not None:
                for subject in creds.subjects:
                    declared[(creds.issuer, subject)] = consumer
        self._declared = declared

    async def open(self) -> None:
        if not self.sources:
            return
        self._client = httpx.AsyncClient(timeout=self.settings.jwks_timeout, follow_redirects=False)
        async with trio.open_nursery() as nursery:
            for source in self.sources:
                nursery.start_soon(source.fetch, self._client)

    async def keep_fresh(self) -> None:
        assert self._client is not None, "open() first"
        async with trio.open_nursery() as nursery:
            for source in self.sources:
                nursery.start_soon(source.keep_fresh, self._client)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def verify(self, token: str, timed: Timed = nullcontext) -> Verified:
        """The ``Verified`` for ``token``, from the cache when seen before; else ``TokenError``.

        ``timed()`` wraps a key-set refetch the token triggers (``ctx.phase``: a span in traces).
        """
        now = time.time()
        key = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                lapses, hit = cached
                if lapses <= time.monotonic():
                    del self._cache[key]  # verified again below, with today's keys
                elif hit.expires + self.settings.leeway > now:
                    return hit
                else:
                    del self._cache[key]
                    raise TokenError("The token has expired.")
        verified = await self._verify(token, now, timed)
        if self._cache is not None:
            self._cache[key] = (time.monotonic() + self.settings.cache_ttl, verified)
        return verified

    async def _verify(self, token: str, now: float, timed: Timed) -> Verified:
        if not _JWS_COMPACT.match(token):  # only well-formed (ASCII) tokens are ever cached
            raise TokenError("The token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss") if self._issuer_bound else None
        except jwt.PyJWTError:
            raise TokenError("The token is malformed.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:  # "none" in any casing ends here
            raise TokenError("The token's algorithm is not allowed.")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("The token is malformed.")
        if not isinstance(iss, str | None):
            raise TokenError("The token's issuer is not accepted.")
        keys = self._candidates(alg, kid, iss)
        if not keys and kid is not None and self.sources:
            with timed():
                await self._refetch(alg, iss)
            keys = self._candidates(alg, kid, iss)
        if not keys:
            raise TokenError("No known key can verify the token.")
        claims = self._decode(token, alg, keys)
        return self._verified(claims, now)

    def _candidates(self, alg: str, kid: str | None, iss: str | None) -> list[VerificationKey]:
        keys = [k for k in self.static if k.accepts(alg, kid, iss)]
        for source in self.sources:
            keys += source.find(alg, kid, iss)
        return keys

    async def _refetch(self, alg: str, iss: str | None) -> None:
        """One throttled refetch of every JWKS that could hold the unknown ``kid``."""
        assert self._client is not None, "open() first"
        async with trio.open_nursery() as nursery:
            for source in self.sources:
                if source.serves(iss) and alg in source.algorithms:
                    nursery.start_soon(source.refetch, self._client)

    def _decode(self, token: str, alg: str, keys: list[VerificationKey]) -> dict[str, Any]:
        s = self.settings
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=s.audiences or None,
                    issuer=s.issuers or None,
                    leeway=s.leeway,
                    options=self._options,
                )
            except jwt.InvalidSignatureError:
                continue  # another key with the same kid/alg may match
            except jwt.PyJWTError as e:
                # The signature held; a time claim that is not a number fails PyJWT's checks
                # with a vaguer message ("expired" for a string in the past, "lacks" for null).
                description = _numeric_date_error(_unverified_claims(token))
                if description is None and isinstance(e, jwt.MissingRequiredClaimError):
                    description = f"The token lacks the required claim {e.claim}."
                raise TokenError(description or _describe(e)) from None
            else:
                if description := _numeric_date_error(claims):
                    raise TokenError(description)
                return claims
        raise TokenError("The token's signature is invalid.")

    def _verified(self, claims: dict[str, Any], now: float) -> Verified:
        s = self.settings
        exp = claims.get("exp")
        expires = float(exp) if exp is not None else math.inf
        if s.max_lifetime is not None:
            iat = claims.get("iat")
            start = float(iat) if iat is not None else now
            if expires - start > s.max_lifetime + s.leeway:
                raise TokenError("The token's lifetime is longer than allowed.")
        sub, iss = claims.get("sub"), claims.get("iss")
        frozen = MappingProxyType(claims)
        consumer = None
        if isinstance(sub, str):
            consumer = self._declared.get((iss if isinstance(iss, str) else None, sub)) or self._declared.get(
                (None, sub)
            )
        if consumer is not None:
            consumer = replace(consumer, claims=frozen)
        elif not s.require_consumer:
            if not isinstance(sub, str) or not sub:
                raise TokenError("The token lacks the required claim sub.")
            consumer = Consumer(name=sub, id=sub, groups=frozenset(as_list(claims.get(s.groups_claim))), claims=frozen)
        return Verified(consumer, frozenset(as_list(claims.get(s.scope_claim))), expires)


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload as parsed, without any check; empty when it does not parse."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}


def _numeric_date_error(claims: Mapping[str, Any]) -> str | None:
    """What is wrong with ``exp``, ``nbf`` or ``iat`` when one is not a NumericDate, else ``None``.

    RFC 7519 §2: a NumericDate is a JSON number. PyJWT runs ``int()`` on these
    claims, which accepts ``"1999999999"`` and ``true``; Python's ``json`` also
    reads ``NaN``, ``Infinity`` and ``1e400`` (as inf). A string, boolean, null,
    array or object, a non-finite number, or an integer beyond a double is refused.
    """
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"The token's {name} claim is not a NumericDate (a JSON number)."
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a double
            finite = False
        if not finite:
            return f"The token's {name} claim is not a finite NumericDate."
    return None


def _describe(error: Exception) -> str:
    for kind, text in _DESCRIPTIONS:
        if isinstance(error, kind):
            return text
    return "The token is malformed."
