"""The ``rate-limit`` plugin: admit, or answer 429, before anything goes upstream."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import ClassVar
from urllib.parse import quote

from bascule_sdk import Context, Gateway, HTTPError, Plugin, Response, hookimpl

from .headers import add_headers, delay_seconds, policy_field
from .keys import KeyChain
from .local import LocalBackend
from .policy import Decision
from .redis import BackendError, RedisBackend
from .settings import Settings as RateLimitSettings

__all__ = ["QUOTA_EXCEEDED", "RateLimit"]

log = logging.getLogger("bascule.ratelimit")

#: Problem type of a 429, registered by draft-ietf-httpapi-ratelimit-headers.
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


class RateLimit(Plugin[RateLimitSettings]):
    """Limit how often each client may call a route.

    ``on_request`` draws one request from the client's bucket under every
    configured limit at once (all or nothing) and raises a 429 when any limit
    is spent; ``on_response`` adds the RateLimit fields to every response it
    decided on, 429s included. ``ctx.tags["rate_limit"]`` records "allowed",
    "rejected", "error" (backend failed) or "unlimited" (no key applied).
    """

    name = "rate-limit"
    priority = 900
    Settings = RateLimitSettings
    #: Clock of the local backend (seconds). Tests replace it on a subclass.
    clock: ClassVar[Callable[[], float]] = time.monotonic

    def __init__(self, settings: RateLimitSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.policies = settings.policies()
        # A bucket per policy; the algorithm is part of its name, as each keeps a different state.
        self._suffixes = [f"{p.name}:{p.algorithm}" for p in self.policies]
        self._policy_field = policy_field(self.policies).encode()
        self._buckets: dict[str, str] = {}  # each route's bucket prefix, by route name
        self.keys = KeyChain.parse(settings.key)
        self.backend: LocalBackend | RedisBackend | None = None
        self.failures = 0  # decisions the backend could not make
        self._failing = False

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        # One backend per settings in the gateway, shared by routes and kept across reloads
        # (a reload that keeps them resets no budget); the gateway closes it once unused.
        s = self.settings
        if s.backend == "redis":
            redis = partial(RedisBackend.opened, s.redis_url, s.redis_timeout)
            self.backend = await gateway.acquire(("rate-limit", "redis", s.redis_url, s.redis_timeout), redis)
        else:
            clock = type(self).clock
            local = partial(LocalBackend.opened, s.local_max_keys, clock)
            self.backend = await gateway.acquire(("rate-limit", "local", s.local_max_keys, clock), local)

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        identity = self.keys.identify(ctx)
        if identity is None:
            if self.settings.missing_key == "allow":
                ctx.tags["rate_limit"] = "unlimited"
                return
            raise HTTPError(400, f"This route limits requests per {self.keys}; the request carries none.")
        decision = await self._decide(ctx, identity)
        if decision is None:
            return
        ctx.state[self.instance] = decision
        ctx.log_fields["rate_limit_remaining"] = decision.tightest.remaining  # an access-log field
        if decision.allowed:
            ctx.tags["rate_limit"] = "allowed"
            return
        ctx.tags["rate_limit"] = "rejected"
        for policy in decision.violated:  # bascule_plugin_rate_limit_violations_total{route, policy}
            ctx.count("rate_limit_violations", policy=policy)
        retry_after = max(1, delay_seconds(decision.tightest.grows_in))
        raise HTTPError(
            429,
            f"Too many requests; retry in {retry_after} s.",
            {"retry-after": str(retry_after)},
            type=QUOTA_EXCEEDED,
            title="Quota Exceeded",
            extra={"violated-policies": decision.violated},
        )

    async def _decide(self, ctx: Context, identity: str) -> Decision | None:
        """The backend's decision, or ``None`` when it failed and the route fails open."""
        s = self.settings
        bucket = f"{self._bucket(ctx.route.name)}{identity}}}:"
        assert self.backend is not None, "startup did not run"
        keys = [bucket + suffix for suffix in self._suffixes]
        try:
            if s.backend == "redis":  # a Redis round trip is a span of the request's trace (the opentelemetry plugin)
                with ctx.phase("redis", self.instance, **{"db.system": "redis"}):
                    decision = await self.backend.decide(keys, self.policies)
            else:  # local: no span, and no context manager to enter per request
                decision = await self.backend.decide(keys, self.policies)
        except BackendError as e:
            self.failures += 1
            ctx.tags["rate_limit"] = "error"
            closed = s.on_error == "fail-closed"
            if not self._failing:
                self._failing = True
                log.warning(
                    "rate-limit %r: backend failed (%s); failing %s until it works again",
                    self.instance,
                    e,
                    "closed (503)" if closed else "open (requests admitted)",
                )
            if closed:
                raise HTTPError(503, "Rate limiting is unavailable; try again shortly.", {"retry-after": "1"}) from None
            return None
        if self._failing:
            self._failing = False
            log.info("rate-limit %r: backend works again (%d decisions failed so far)", self.instance, self.failures)
        return decision

    def _bucket(self, route: str) -> str:
        """The start of the Redis/local key of ``route``'s buckets (the client's identity follows)."""
        prefix = self._buckets.get(route)
        if prefix is None:
            s = self.settings
            scope = f"group={s.group}" if s.group else f"route={quote(route, safe='')}"
            prefix = self._buckets[route] = f"{s.redis_prefix}{{{scope}/{self.instance}|"
        return prefix

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        decision: Decision | None = ctx.state.get(self.instance)
        if decision is not None and self.settings.headers != "none":
            add_headers(response.headers, decision, self._policy_field, self.settings.headers)
