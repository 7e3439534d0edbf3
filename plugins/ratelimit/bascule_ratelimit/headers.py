"""Response header fields that tell a client its quota.

IETF fields per draft-ietf-httpapi-ratelimit-headers-11 (May 2026), both
Structured Field Lists (RFC 9651) whose items are Strings naming a policy::

    RateLimit-Policy: "10-per-1s";q=10;w=1, "1000-per-1h";q=1000;w=3600
    RateLimit: "10-per-1s";r=7;t=1

``RateLimit-Policy`` lists every policy of the route; ``RateLimit`` reports the
one that decides (see ``Decision.tightest``): ``r`` requests left, ``t`` the
seconds within which no more than ``r`` will be admitted.

A quota is what a client "may consume within a time window" (draft §2), so
``r`` never exceeds ``q``. A GCRA policy whose ``burst`` differs from its
``limit`` is a bucket of ``burst`` requests refilled at ``limit / window``: it
is advertised as ``q=burst`` and ``w`` the seconds a full refill takes
(``burst * window / limit``, rounded up, as ``w`` has no sub-second precision,
§3.1.3), so ``q / w`` is the configured rate and a full bucket reads
``r = q - 1`` after a request. Legacy fields:
``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``
(seconds until the whole quota is back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bascule_sdk import Headers

from .policy import Decision, Policy

__all__ = ["add_headers", "advertised", "delay_seconds", "policy_field"]


def delay_seconds(seconds: float) -> int:
    """Whole seconds, rounded up (a client waiting this long is never early)."""
    return max(0, math.ceil(seconds - 1e-6))


def advertised(policy: Policy) -> tuple[int, int]:
    """``(q, w)`` of ``policy``: its limit and window, or with a burst its bucket and refill time."""
    if policy.burst == policy.limit:
        return policy.limit, int(policy.window)
    refill = policy.burst * policy.window / policy.limit
    return policy.burst, max(1, math.ceil(refill - 1e-9))


def policy_field(policies: Sequence[Policy]) -> str:
    """The ``RateLimit-Policy`` value of ``policies``: the same on every response (built once)."""
    items = []
    for p in policies:
        q, w = advertised(p)
        items.append(f'"{p.name}";q={q};w={w}')
    return ", ".join(items)


def add_headers(headers: Headers, decision: Decision, advertised_policies: bytes, style: str) -> None:
    """Add the fields of ``style`` ("ietf", "legacy", "both") for ``decision``; ``advertised_policies`` is the
    route's ``policy_field``, encoded."""
    tightest = decision.tightest
    quota, _ = advertised(tightest.policy)
    remaining = min(tightest.remaining, quota)  # never more than the quota (the bucket)
    if style in ("ietf", "both"):
        # List members: added beside any the upstream (or another instance) sent. Raw: a policy's
        # name is a token (settings) and the rest digits, so there is nothing for Headers.add to refuse.
        now = f'"{tightest.policy.name}";r={remaining};t={delay_seconds(tightest.grows_in)}'
        headers.raw += ((b"ratelimit-policy", advertised_policies), (b"ratelimit", now.encode()))
    if style in ("legacy", "both"):
        current = headers.get("x-ratelimit-remaining")
        if current is None or not current.isdigit() or int(current) > remaining:
            headers.set("x-ratelimit-limit", str(quota))
            headers.set("x-ratelimit-remaining", str(remaining))
            headers.set("x-ratelimit-reset", str(delay_seconds(tightest.reset)))
