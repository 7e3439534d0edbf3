"""Response header fields that tell a client its quota.

IETF fields per draft-ietf-httpapi-ratelimit-headers-11 (May 2026), both
Structured Field Lists (RFC 9651) whose items are Strings naming a policy::

    RateLimit-Policy: "10-per-1s";q=10;w=1, "1000-per-1h";q=1000;w=3600
    RateLimit: "10-per-1s";r=7;t=1

``RateLimit-Policy`` lists every policy of the route; ``RateLimit`` reports the
one that decides (see ``Decision.tightest``): ``r`` requests left, ``t`` the
seconds within which no more than ``r`` will be admitted. Legacy fields:
``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``
(seconds until the whole quota is back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bascule_sdk import Headers

from .policy import Decision, Policy

__all__ = ["add_headers", "delay_seconds"]


def delay_seconds(seconds: float) -> int:
    """Whole seconds, rounded up (a client waiting this long is never early)."""
    return max(0, math.ceil(seconds - 1e-6))


def add_headers(headers: Headers, decision: Decision, policies: Sequence[Policy], style: str) -> None:
    """Add the fields of ``style`` ("ietf", "legacy", "both") for ``decision``."""
    tightest = decision.tightest
    if style in ("ietf", "both"):
        # List members: added beside any the upstream (or another instance) sent.
        headers.add("ratelimit-policy", ", ".join(f'"{p.name}";q={p.limit};w={int(p.window)}' for p in policies))
        headers.add(
            "ratelimit", f'"{tightest.policy.name}";r={tightest.remaining};t={delay_seconds(tightest.grows_in)}'
        )
    if style in ("legacy", "both"):
        current = headers.get("x-ratelimit-remaining")
        if current is None or not current.isdigit() or int(current) > tightest.remaining:
            headers.set("x-ratelimit-limit", str(tightest.policy.limit))
            headers.set("x-ratelimit-remaining", str(tightest.remaining))
            headers.set("x-ratelimit-reset", str(delay_seconds(tightest.reset)))
