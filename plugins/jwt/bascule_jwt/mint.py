"""Mint a token for trying the gateway out (not an identity provider).

    python -m bascule_jwt.mint --secret demo-secret-at-least-32-bytes-long --sub alice \
        --scope "orders:read orders:write" --ttl 1h

Signs with an HMAC secret (``--secret``, ``env:NAME`` and ``file:PATH`` work)
or a PEM private key (``--key-file``), and prints the token.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import jwt
from bascule_sdk.settings import parse_duration, resolve_secret

__all__ = ["main", "mint"]


def mint(
    key: str | bytes,
    algorithm: str = "HS256",
    *,
    sub: str,
    ttl: float = 3600.0,
    issuer: str | None = None,
    audience: str | None = None,
    scope: str | None = None,
    kid: str | None = None,
    claims: dict[str, str] | None = None,
    now: float | None = None,
) -> str:
    """A signed token with ``sub``, ``iat``, ``exp`` and the given optional claims."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, object] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    for name, value in (("iss", issuer), ("aud", audience), ("scope", scope)):
        if value is not None:
            payload[name] = value
    payload.update(claims or {})
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bascule_jwt.mint", description=__doc__.split("\n")[0])
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret", help="HMAC secret (literal, env:NAME or file:PATH)")
    key.add_argument("--key-file", help="PEM private key file (RS*, PS*, ES*, EdDSA)")
    parser.add_argument("--alg", default=None, help="algorithm (default HS256 with --secret, RS256 with --key-file)")
    parser.add_argument("--sub", required=True, help="subject: the consumer's id")
    parser.add_argument("--ttl", default="1h", help='lifetime, e.g. "15m", "1h" (default 1h)')
    parser.add_argument("--iss", help="issuer")
    parser.add_argument("--aud", help="audience")
    parser.add_argument("--scope", help='space-separated scopes, e.g. "orders:read orders:write"')
    parser.add_argument("--kid", help="key id header")
    parser.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE", help="extra string claim")
    args = parser.parse_args(argv)
    try:
        if args.secret is not None:
            signing_key: str | bytes = resolve_secret(args.secret)
        else:
            with open(args.key_file, "rb") as f:
                signing_key = f.read()
        claims = dict(c.split("=", 1) for c in args.claim if "=" in c)
        token = mint(
            signing_key,
            args.alg or ("HS256" if args.secret is not None else "RS256"),
            sub=args.sub,
            ttl=parse_duration(args.ttl),
            issuer=args.iss,
            audience=args.aud,
            scope=args.scope,
            kid=args.kid,
            claims=claims,
        )
    except (OSError, ValueError, jwt.PyJWTError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
