"""Health of upstream targets: a passive circuit breaker, active probes, panic mode.

Passive (every service): ``max_failures`` consecutive failures of a target
(refused or broken connection, timeout, a status in ``fail_on``) eject it
for ``cool_off``. The first request after that is its trial (half-open): a
success closes the breaker, a failure ejects the target for another cool-off.
A service's only target is never ejected (its failures are still counted).

Active (``health_path`` set): each target is probed every
``health_interval``; ``unhealthy_threshold`` failed probes in a row take it
out, ``healthy_threshold`` passed probes in a row bring it back. The two are
independent: a target receives traffic only when neither holds it out.

Panic mode (Envoy's): a target is *healthy* while its breaker is closed and
its probes pass. While fewer than ``panic_threshold`` of a service's targets
are healthy (exactly that share is not panic), requests are balanced over
all its targets, held out or not; a success there closes a target's breaker.
Entering and leaving panic mode are logged once each.

Every check is O(1) per request: a few attribute reads and a clock read.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

__all__ = ["EJECTED", "HALF_OPEN", "HEALTHY", "UNHEALTHY", "ServiceHealth", "TargetHealth"]

log = logging.getLogger("bascule.upstream")

HEALTHY = "healthy"
EJECTED = "ejected"  # by the passive breaker, for cool_off
HALF_OPEN = "half-open"  # cool-off over, one trial request in flight
UNHEALTHY = "unhealthy"  # by active health checks


class ServiceHealth:
    """How many of a service's targets are healthy, and whether it is in panic mode.

    Kept up to date by its targets' ``TargetHealth`` as they change state, so
    that a request only reads ``panic``.
    """

    __slots__ = ("name", "targets", "threshold", "healthy", "panic", "panic_requests")

    def __init__(self, name: str, targets: int, threshold: float) -> None:
        self.name = name
        self.targets = targets
        self.threshold = threshold
        self.healthy = targets
        self.panic = False
        self.panic_requests = 0  # requests balanced in panic mode, retries included

    def changed(self, delta: int) -> None:
        """A target became healthy (+1) or stopped being healthy (-1)."""
        self.healthy += delta
        panic = self.healthy / self.targets < self.threshold
        if panic and not self.panic:
            log.warning(
                "service %s enters panic mode: %d of %d targets healthy, below %g; balancing over all targets",
                self.name,
                self.healthy,
                self.targets,
                self.threshold,
            )
        elif self.panic and not panic:
            log.info("service %s leaves panic mode: %d of %d targets healthy", self.name, self.healthy, self.targets)
        self.panic = panic


class TargetHealth:
    """Breaker state and counters of one target; reports to its service's ``ServiceHealth``."""

    __slots__ = (
        "url",
        "max_failures",
        "cool_off",
        "service",
        "state",
        "consecutive_failures",
        "ejected_until",
        "probe_down",
        "probe_streak",
        "requests",
        "failures",
        "ejections",
    )

    def __init__(self, url: str, max_failures: int, cool_off: float, service: ServiceHealth | None = None) -> None:
        self.url = url
        self.max_failures = max_failures  # 0: never eject
        self.cool_off = cool_off
        self.service = service
        self.state = HEALTHY  # of the passive breaker
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.probe_down = False  # held out by active checks
        self.probe_streak = 0  # consecutive probe results of the same kind (+passed / -failed)
        self.requests = 0
        self.failures = 0  # in all
        self.ejections = 0

    def available(self, now: float) -> bool:
        """Whether the target may take a request now (a trial included)."""
        if self.probe_down:
            return False
        return self.state is HEALTHY or (self.state is EJECTED and now >= self.ejected_until)

    def begin(self, now: float) -> None:
        """A request was sent to the target; the first after a cool-off is the trial."""
        self.requests += 1
        if self.state is EJECTED and now >= self.ejected_until:
            self.state = HALF_OPEN

    def succeeded(self) -> None:
        """A request to the target succeeded: the breaker closes."""
        self.consecutive_failures = 0
        if self.state is not HEALTHY:
            log.info("target %s is healthy again", self.url)
            self.state = HEALTHY
            if not self.probe_down:
                self._report(1)

    def failed(self, now: float) -> None:
        """A request to the target failed: counted, and the target ejected at ``max_failures`` in a row."""
        self.failures += 1
        self.consecutive_failures += 1
        if self.state is EJECTED or not self.max_failures:
            return  # requests sent before the ejection (or in panic mode) may still fail
        if self.state is HALF_OPEN or self.consecutive_failures >= self.max_failures:
            if self.state is HEALTHY:
                log.warning("target %s ejected after %d failures", self.url, self.consecutive_failures)
                if not self.probe_down:
                    self._report(-1)
            self.state = EJECTED
            self.ejected_until = now + self.cool_off
            self.ejections += 1

    def abandoned(self) -> None:
        """The request ended with no verdict (cancelled): allow another trial."""
        if self.state is HALF_OPEN:
            self.state = EJECTED

    def probed(self, passed: bool, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """Record one active probe."""
        if passed:
            self.probe_streak = max(self.probe_streak, 0) + 1
            if self.probe_down and self.probe_streak >= healthy_threshold:
                log.info("target %s passes its health checks again", self.url)
                self.probe_down = False
                if self.state is HEALTHY:
                    self._report(1)
        else:
            self.probe_streak = min(self.probe_streak, 0) - 1
            if not self.probe_down and -self.probe_streak >= unhealthy_threshold:
                log.warning("target %s fails its health checks", self.url)
                self.probe_down = True
                if self.state is HEALTHY:
                    self._report(-1)

    def _report(self, delta: int) -> None:
        if self.service is not None:
            self.service.changed(delta)

    def describe(self, now: float) -> dict[str, Any]:
        """State and counters, for the admin listener."""
        if self.probe_down:
            state = UNHEALTHY
        elif self.state is EJECTED and now >= self.ejected_until:
            state = HALF_OPEN  # the next request is the trial
        else:
            state = self.state
        return {
            "state": state,
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "failures": self.failures,
            "ejections": self.ejections,
            "ejected_for": round(max(self.ejected_until - now, 0.0), 3) if state == EJECTED else 0.0,
        }


def now() -> float:
    """The clock of the breaker (trio's, so tests may use a mock clock)."""
    return trio.current_time()
