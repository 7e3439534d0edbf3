"""Which bucket a request draws from: key expressions resolved against a request.

A key expression names request facts joined by ``+`` (all must be present)::

    ip                      ctx.client_ip (after [gateway] trusted_proxies)
    consumer                ctx.consumer.name (set by an auth plugin)
    credential              the Authorization field the client sent (hashed)
    route                   the route's name
    header:NAME             a request header (hashed)
    path:PARAM              a path parameter of the route, e.g. path:id
    consumer+path:id        a combination

A chain of expressions (``["consumer", "ip"]``) falls back in order: the first
one whose facts are all present names the bucket.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from urllib.parse import quote

from bascule_sdk import Context
from bascule_sdk.settings import parse_header_name

__all__ = ["KeyChain"]

_FACTS = ("ip", "consumer", "credential", "route")
_SAFE = ":.@-_~"  # kept as they are in a bucket's name, beside letters and digits; the rest percent-encoded
_PLAIN = re.compile(f"[A-Za-z0-9{re.escape(_SAFE)}]*")  # a value that percent-encoding leaves as it is


def _hashed(value: str | None) -> str | None:
    """A fixed-length digest standing in for a value that may be a secret (keys are stored)."""
    if value is None:
        return None
    return hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:32]


def _resolver(part: str) -> Callable[[Context], str | None]:
    if part == "ip":
        return lambda ctx: ctx.client_ip or None
    if part == "consumer":
        return lambda ctx: ctx.consumer.name if ctx.consumer is not None else None
    if part == "credential":
        return lambda ctx: _hashed(ctx.request.headers.get("authorization"))
    if part == "route":
        return lambda ctx: ctx.route.name
    if part.startswith("header:"):
        name = part[len("header:") :]
        return lambda ctx: _hashed(ctx.request.headers.get(name))
    param = part[len("path:") :]
    return lambda ctx: ctx.path_params.get(param)


def _check(part: str) -> None:
    prefix, colon, rest = part.partition(":")
    if part in _FACTS or (colon and prefix == "path" and rest.strip()):
        return
    if colon and prefix == "header" and rest:
        try:
            parse_header_name(rest)
        except ValueError as e:
            raise ValueError(f"key: {part!r}: {e}") from None
        return
    raise ValueError(
        f"key: unknown part {part!r} (use ip, consumer, credential, route, header:NAME or path:PARAM; "
        "join parts with '+')"
    )


class KeyChain:
    """Parsed key expressions, tried in order."""

    def __init__(self, expressions: Sequence[tuple[str, ...]]) -> None:
        self.expressions = tuple(expressions)
        self._resolvers = [[(part, _resolver(part)) for part in parts] for parts in self.expressions]

    @classmethod
    def parse(cls, spec: str | Sequence[str]) -> KeyChain:
        """Parse ``"consumer+ip"`` or ``["consumer", "ip"]``; raise ``ValueError``."""
        items = [spec] if isinstance(spec, str) else list(spec)
        if not items:
            raise ValueError('key: name at least one key, e.g. "ip"')
        expressions = []
        for item in items:
            parts = tuple(_normalise(p) for p in item.split("+"))
            for part in parts:
                _check(part)
            expressions.append(parts)
        return cls(expressions)

    def identify(self, ctx: Context) -> str | None:
        """The bucket identity of ``ctx``'s request, or ``None`` if no expression applies."""
        for expression in self._resolvers:
            values = []
            for part, resolve in expression:
                value = resolve(ctx)
                if value is None:
                    break
                values.append(f"{part}={value if _PLAIN.fullmatch(value) else quote(value, safe=_SAFE)}")
            else:
                return "|".join(values)
        return None

    def __str__(self) -> str:
        return " or ".join("+".join(parts) for parts in self.expressions)


def _normalise(part: str) -> str:
    """``IP`` -> ``ip``, ``Header:X-Tenant`` -> ``header:x-tenant``; a path parameter keeps its case."""
    prefix, colon, rest = part.strip().partition(":")
    prefix = prefix.lower()
    if not colon:
        return prefix
    return f"{prefix}:{rest.strip().lower() if prefix == 'header' else rest.strip()}"
