"""Verification keys, each bound to the algorithms it may verify (RFC 8725 §3.1).

A token's ``alg`` header only ever *selects among* the algorithms a key was
bound to when it was loaded; it never decides how a key is used. An HMAC
secret can therefore never be handed an RSA public key, and ``none`` (in any
casing) is not an algorithm at all here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from bascule_sdk.settings import secret_bytes
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

__all__ = [
    "ALGORITHMS",
    "VerificationKey",
    "check_algorithms",
    "key_from_jwk",
    "key_from_pem",
    "key_from_secret",
    "keys_from_jwks",
]

log = logging.getLogger("bascule.jwt")

# Algorithm -> the kind of key it needs ("oct" is a shared secret).
ALGORITHMS: dict[str, str] = {
    "HS256": "oct",
    "HS384": "oct",
    "HS512": "oct",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "EdDSA": "OKP",
}
_DEFAULT_ALGORITHM = {
    "oct": "HS256",
    "RSA": "RS256",
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "OKP": "EdDSA",
}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_PRIVATE = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key object ready for PyJWT, the algorithms it may verify, and its scope.

    A key with a ``kid`` verifies only tokens naming it; one without, only
    tokens without a ``kid``. ``issuer`` None trusts the key for any accepted
    issuer.
    """

    key: Any
    algorithms: frozenset[str]
    kid: str | None = None
    issuer: str | None = None

    def accepts(self, alg: str, kid: str | None, iss: str | None) -> bool:
        return alg in self.algorithms and self.kid == kid and (self.issuer is None or self.issuer == iss)


def key_kind(key: Any) -> str:
    """``"oct"``, ``"RSA"``, ``"P-256"``/``"P-384"``/``"P-521"`` or ``"OKP"``."""
    if isinstance(key, bytes):
        return "oct"
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        return _CURVES[key.curve.name]
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def check_algorithms(algorithms: Iterable[str], kind: str, key: Any = None) -> frozenset[str]:
    """Validate that every algorithm fits a key of ``kind``; default to the kind's one."""
    algs = frozenset(algorithms) or frozenset({_DEFAULT_ALGORITHM[kind]})
    for alg in sorted(algs):
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})")
        if ALGORITHMS[alg] != kind:
            raise ValueError(f"algorithm {alg} does not fit this key (type {kind})")
        if kind == "oct" and len(key or b"") < _HMAC_MIN_BYTES[alg]:
            raise ValueError(f"an {alg} secret must be at least {_HMAC_MIN_BYTES[alg]} bytes (RFC 7518 §3.2)")
    return algs


def key_from_secret(
    secret: str, algorithms: Iterable[str], kid: str | None = None, issuer: str | None = None
) -> VerificationKey:
    """An HMAC secret: its UTF-8 text, or the exact bytes of a ``file+bytes:PATH`` secret."""
    raw = secret_bytes(secret)
    return VerificationKey(raw, check_algorithms(algorithms, "oct", raw), kid, issuer)


def key_from_pem(
    pem: str, algorithms: Iterable[str], kid: str | None = None, issuer: str | None = None
) -> VerificationKey:
    """A PEM public key, certificate, or private key (only its public half is kept)."""
    data = secret_bytes(pem)
    key: PublicKeyTypes  # any type loads; key_kind refuses those no JWT algorithm uses
    try:
        if b"CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY" in data:
            key = load_pem_private_key(data, password=None).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError):  # cryptography's message may quote a byte of the key and its offset
        raise ValueError("cannot load the PEM key: not a PEM public key, certificate or private key") from None
    return VerificationKey(key, check_algorithms(algorithms, key_kind(key), key), kid, issuer)


def key_from_jwk(
    jwk: Mapping[str, Any] | str, algorithms: Iterable[str] = (), issuer: str | None = None, *, from_url: bool = False
) -> VerificationKey:
    """A JWK (RFC 7517), as a mapping or JSON text.

    Its ``alg`` member, if any, binds it (and must be among ``algorithms``
    when those are given). From a JWKS URL (``from_url``), ``algorithms`` is
    an allow-list: a key without ``alg`` is bound to those that fit its type,
    and symmetric keys are refused.
    """
    data = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
    if not isinstance(data, dict):
        raise ValueError("a JWK must be a JSON object")
    kty = data.get("kty")
    if kty == "oct" and from_url:
        raise ValueError("symmetric (oct) keys are not accepted from a JWKS URL")
    try:
        key = jwt.PyJWK(data, algorithm=_any_alg(kty, data)).key
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot load the JWK: {e}") from None
    if isinstance(key, _PRIVATE):
        key = key.public_key()
    kind = key_kind(key)
    algs = list(algorithms)
    if "alg" in data:
        if algs and data["alg"] not in algs:
            raise ValueError(f"the key's alg {data['alg']!r} is not among the allowed algorithms")
        algs = [data["alg"]]
    elif from_url:
        algs = [a for a in algs if ALGORITHMS.get(a) == kind]
        if not algs:
            raise ValueError(f"no allowed algorithm fits a {kind} key")
    kid = data.get("kid")
    return VerificationKey(key, check_algorithms(algs, kind, key), kid if isinstance(kid, str) else None, issuer)


def _any_alg(kty: Any, data: Mapping[str, Any]) -> str:
    """An algorithm PyJWK can load the key with (binding is decided separately)."""
    if kty == "EC":
        crv = data.get("crv")
        curves = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
        return curves.get(crv, "ES256") if isinstance(crv, str) else "ES256"
    return {"oct": "HS256", "RSA": "RS256", "OKP": "EdDSA"}.get(kty, "RS256")


def keys_from_jwks(document: Any, algorithms: Iterable[str], issuer: str | None, url: str) -> list[VerificationKey]:
    """The usable signing keys of a JWKS document; unusable ones are logged and skipped.

    A key with an ``alg`` member is bound to it; one without is bound to the
    given ``algorithms`` that fit its type. Keys whose ``use`` is not ``sig``
    and symmetric keys are skipped. Raises ``ValueError`` if the document is
    not a JWKS.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS document (expected {"keys": [...]})')
    allowed = list(algorithms)
    keys = []
    for i, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            keys.append(key_from_jwk(jwk, allowed, issuer, from_url=True))
        except ValueError as e:
            log.warning("JWKS %s: skipping key %d (kid %r): %s", url, i, jwk.get("kid"), e)
    return keys
