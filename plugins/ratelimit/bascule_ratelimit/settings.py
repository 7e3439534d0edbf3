"""Settings of the ``rate-limit`` plugin (``[routes.plugins.rate-limit]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bascule_sdk import Duration, Secret, setting
from bascule_sdk.redis import check_redis_url

from .keys import KeyChain
from .policy import Algorithm, Policy

__all__ = ["LimitSettings", "Settings"]

_NAME = r"^[A-Za-z0-9._-]{1,64}$"
_NAMED = "1 to 64 letters, digits, '.', '_' or '-'"
_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


@dataclass(frozen=True)
class LimitSettings:
    """One entry of ``limits``: ``limit`` requests per ``window``."""

    limit: int = setting(doc="Requests admitted per window (at least 1).", min=1)
    window: Duration = setting(doc='Window, a whole number of seconds: "1s", "1m", "1h", "1d".', min=1)
    burst: int | None = setting(None, "GCRA only: requests a full bucket admits at once (default: limit).", min=1)
    name: str | None = setting(
        None, 'Policy name in the RateLimit fields (default e.g. "100-per-1m").', pattern=_NAME, expected=_NAMED
    )
    algorithm: Algorithm | None = setting(None, "This limit's algorithm (default: the plugin's).")


@dataclass(frozen=True)
class Settings:
    """How many requests a client may make, per what key, counted where."""

    limit: int | None = setting(None, "Requests admitted per window (shorthand for a single entry of limits).", min=1)
    window: Duration | None = setting(None, 'Window of limit, a whole number of seconds: "1s", "1m", "1h".', min=1)
    burst: int | None = setting(None, "GCRA only: requests a full bucket admits at once (default: limit).", min=1)
    limits: list[LimitSettings] = setting([], "Several limits at once, e.g. 10 per second and 1000 per hour.")
    algorithm: Algorithm = setting("gcra", "gcra (smooth, with burst), sliding-window or fixed-window.")
    key: str | list[str] = setting(
        "ip",
        'Bucket per: ip, consumer, credential, route, header:NAME, path:PARAM; "a+b" combines, '
        "a list falls back in order.",
    )
    group: str | None = setting(
        None, "Routes naming the same group draw from one budget.", pattern=_NAME, expected=_NAMED
    )
    missing_key: Literal["reject", "allow"] = setting(
        "reject", "When no key of the chain is present: reject (400) or let the request through unlimited."
    )
    backend: Literal["local", "redis"] = setting("local", "local (this process only) or redis (shared).")
    redis_url: Secret = setting(
        "redis://127.0.0.1:6379/0", "Redis URL: redis://, rediss://, redis+sentinel://, redis+cluster:// (env:/file:)."
    )
    redis_timeout: Duration = setting(0.1, "Longest wait for Redis per request; beyond it on_error applies.", min=0.001)
    redis_prefix: str = setting("bascule:rl:", "Prefix of every Redis key.")
    on_error: Literal["fail-open", "fail-closed"] = setting(
        "fail-open", "When Redis fails: admit (logged, tagged) or answer 503."
    )
    headers: Literal["ietf", "legacy", "both", "none"] = setting(
        "ietf", "ietf: RateLimit and RateLimit-Policy; legacy: X-RateLimit-*; both; none."
    )
    local_max_keys: int = setting(100_000, "Most buckets the local backend keeps; least recently used go first.", min=1)

    def __post_init__(self) -> None:
        self.policies()
        KeyChain.parse(self.key)
        if self.backend == "redis":
            try:
                check_redis_url(self.redis_url)
            except ValueError as e:
                raise ValueError(f"redis_url: {e}") from None

    def policies(self) -> tuple[Policy, ...]:
        """The configured limits as policies; raise ``ValueError`` naming the bad key."""
        if self.limits:
            if self.limit is not None or self.window is not None or self.burst is not None:
                raise ValueError("set either limit/window/burst or limits, not both")
            entries = [
                (f"limits[{i}].", e.limit, e.window, e.burst, e.name, e.algorithm) for i, e in enumerate(self.limits)
            ]
        elif self.limit is None or self.window is None:
            raise ValueError('limit and window are required (e.g. limit = 100, window = "1m"), or limits')
        else:
            entries = [("", self.limit, self.window, self.burst, None, None)]
        policies: list[Policy] = []
        for where, limit, window, burst, name, algorithm in entries:
            algorithm = algorithm or self.algorithm
            if window != int(window):  # not declared: a setting states no "multiple of"
                raise ValueError(f"{where}window: must be a whole number of seconds, got {window:g}s")
            if limit > window * 1_000_000:
                raise ValueError(f"{where}limit: at most 1000000 per second of window")
            if burst is not None and algorithm != "gcra":
                raise ValueError(f"{where}burst: only the gcra algorithm has a burst")
            name = name or f"{limit}-per-{_compact(int(window))}"
            if any(p.name == name for p in policies):
                raise ValueError(f"{where}name: another limit is named {name!r}")
            policies.append(Policy(name, algorithm, limit, float(window), burst or limit))
        return tuple(policies)


def _compact(seconds: int) -> str:
    """3600 -> "1h", 90 -> "90s"."""
    for size, unit in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # pragma: no cover (size 1 always divides)
