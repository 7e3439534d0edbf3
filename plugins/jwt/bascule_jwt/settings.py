"""Settings of the ``jwt`` plugin and its consumer credentials."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bascule_sdk import TOKEN, ByteSize, Duration, HeaderName, Secret, setting

from .keys import ALGORITHMS, VerificationKey, key_from_jwk, key_from_pem, key_from_secret

__all__ = ["Credentials", "JwksConfig", "KeyConfig", "Settings"]

_SCHEME = rf"^{TOKEN}$|^$"  # an RFC 9110 auth-scheme (a token), or '' (none)
_NO_QUOTES = r'^[^"\\]*$'  # a quoted-string's content, as we write it: no quote, no backslash
_SCOPE = r'^[^ "\\]+$'  # RFC 6749 §3.3 scope-token
ASYMMETRIC = [alg for alg, kind in ALGORITHMS.items() if kind != "oct"]


@dataclass(frozen=True)
class KeyConfig:
    """A key given in the config: exactly one of ``secret``, ``pem``, ``jwk``."""

    secret: Secret | None = setting(None, "HMAC secret (literal, env:NAME or file:PATH), at least 32 bytes.")
    pem: Secret | None = setting(None, "PEM public key or certificate (usually file:PATH).")
    jwk: Secret | None = setting(None, "One JWK as JSON text (literal, env:NAME or file:PATH).")
    algorithms: list[str] = setting([], "Algorithms this key verifies; default: HS256, RS256, ES256... by key type.")
    kid: str | None = setting(None, "Verify tokens whose kid is this (default: tokens without a kid).")
    issuer: str | None = setting(None, "Only for tokens from this iss (default: any accepted issuer).")
    loaded: VerificationKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [name for name in ("secret", "pem", "jwk") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a key needs exactly one of secret, pem or jwk")
        if given == ["secret"]:
            key = key_from_secret(self.secret or "", self.algorithms, self.kid, self.issuer)
        elif given == ["pem"]:
            key = key_from_pem(self.pem or "", self.algorithms, self.kid, self.issuer)
        else:
            try:
                key = key_from_jwk(self.jwk or "", self.algorithms, self.issuer)
            except ValueError as e:  # includes JSON syntax errors
                raise ValueError(f"jwk: {e}") from None
            if self.kid is not None:
                key = VerificationKey(key.key, key.algorithms, self.kid, key.issuer)
        object.__setattr__(self, "loaded", key)


@dataclass(frozen=True)
class JwksConfig:
    """A JWKS URL of an identity provider."""

    url: str = setting(
        doc="The JWKS document URL (https:// in production).", pattern="^https?://", expected="an http(s) URL"
    )
    issuer: str | None = setting(None, "Use these keys only for tokens whose iss is this (default: any).")
    algorithms: list[str] = setting(
        ASYMMETRIC,
        "Allowed algorithms; binds keys that lack an alg member.",
        pattern=f"^({'|'.join(ASYMMETRIC)})$",
        expected=f"an asymmetric algorithm (JWKS keys are public keys: {', '.join(ASYMMETRIC)})",
    )


@dataclass(frozen=True)
class Settings:
    """``[routes.plugins.jwt]``: where tokens come from, which keys and claims are accepted."""

    keys: list[KeyConfig] = setting([], "Keys given in the config.")
    jwks: list[JwksConfig] = setting([], "JWKS URLs (several identity providers: one entry each, with issuer).")
    jwks_cache_ttl: Duration = setting(600.0, "How long a fetched key set is used before a background refresh.")
    jwks_refetch_interval: Duration = setting(30.0, "At most one fetch per JWKS in this interval for unknown kids.")
    jwks_timeout: Duration = setting(5.0, "Timeout of one JWKS fetch.")
    jwks_max_size: ByteSize = setting(256 * 1024, "Largest JWKS document accepted.")
    issuers: list[str] = setting([], "Accepted iss values (empty: any).")
    audiences: list[str] = setting([], "The token's aud must contain one of these (empty: aud not checked).")
    require: list[str] = setting(["exp"], "Claims every token must carry.")
    leeway: Duration = setting(60.0, "Clock skew allowed on exp, nbf and iat.")
    max_lifetime: Duration | None = setting(None, "Reject tokens whose exp - iat is longer than this.")
    scopes: list[str] = setting(
        [],
        "Scopes the token must all carry on this route (else 403).",
        pattern=_SCOPE,
        expected="a scope (RFC 6749 §3.3)",
    )
    scope_claim: str = setting("scope", "Claim holding scopes: a space-separated string or an array.")
    groups_claim: str = setting("groups", "Claim holding groups of a consumer built from the token.")
    header: HeaderName | Literal[""] = setting("Authorization", "Request header carrying the token ('' to disable).")
    scheme: str = setting(
        "Bearer", "Auth scheme expected in header ('' for the bare token).", pattern=_SCHEME, expected="an auth-scheme"
    )
    cookie: str = setting("", "Cookie carrying the token ('' to disable).")
    query: str = setting("", "Query parameter carrying the token ('' to disable).")
    max_token_size: ByteSize = setting(8192, "Longer tokens are rejected with 401 before any parsing.", min=16)
    anonymous: str = setting("", "Consumer name used when a request carries no token ('' : 401).")
    require_consumer: bool = setting(False, "Reject (403) valid tokens that match no declared consumer.")
    claim_headers: dict[str, HeaderName] = setting({}, "Claims forwarded upstream: claim name = header name.")
    realm: str = setting(
        "bascule", "realm of the WWW-Authenticate challenge.", pattern=_NO_QUOTES, expected="no quotes or backslashes"
    )
    cache_size: int = setting(10_000, "Verified tokens kept in memory (0 disables the cache).", min=0)
    cache_ttl: Duration = setting(300.0, "Longest a verified token is trusted without re-verifying (never past exp).")

    def __post_init__(self) -> None:
        if not self.keys and not self.jwks:
            raise ValueError("give at least one key (keys) or JWKS URL (jwks)")
        if not (self.header or self.cookie or self.query):
            raise ValueError("one of header, cookie or query must name where the token is")


@dataclass(frozen=True)
class Credentials:
    """``[consumers.NAME.credentials.jwt]``: which tokens identify this consumer.

    A verified token whose ``sub`` is in ``subjects`` (and, if ``issuer`` is
    set, whose ``iss`` equals it) is this consumer.
    """

    subjects: list[str] = setting(doc="Token sub values of this consumer.", min_items=1)
    issuer: str | None = setting(None, "Only tokens from this iss (default: any accepted issuer).")


def as_list(value: Any) -> list[str]:
    """A claim holding names: an array of strings, or one space-separated string."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
