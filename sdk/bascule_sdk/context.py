"""Per-request context, consumers, and the gateway handle given to ``startup``."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .http import Request, Response
from .tracecontext import Trace

__all__ = ["Consumer", "Context", "Gateway", "Phase", "RouteInfo", "TaskState", "UpstreamCall"]

T = TypeVar("T")

_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Consumer:
    """A known API client, declared under ``[consumers.NAME]`` in plugins.toml.

    ``credentials`` maps a plugin name to that plugin's credential table for
    this consumer (already validated against the plugin's ``Credentials``).
    Auth plugins may also build consumers on the fly (e.g. from JWT claims).
    """

    name: str
    id: str = ""
    groups: frozenset[str] = frozenset()
    credentials: Mapping[str, Any] = field(default_factory=dict)
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteInfo:
    """What a plugin may know about the matched route."""

    name: str
    service: str | None
    plugins: tuple[str, ...] = ()


@dataclass(slots=True)
class UpstreamCall:
    """One attempt to send a request to a target, recorded by the gateway in ``ctx.upstream_calls``.

    One per attempt: a proxied request makes one, an aggregated one one per
    backend, and every retry one more (``attempt`` 0 is the first try).
    ``started`` is ``time.perf_counter()`` when the attempt began; ``seconds``
    runs until the response head arrived or the attempt failed (``None`` while
    in flight). It ends with a ``status`` or an ``error``: ``"connect"``
    (refused or unreachable), ``"timeout"``, ``"protocol"`` (broken answer),
    ``"busy"`` (no free connection), ``"request"`` (the gateway could not write the
    request: a plugin's invalid field; nothing was sent), ``"cancelled"``. ``span_id`` is the span
    the gateway named in the ``traceparent`` it sent (``None`` without
    ``ctx.trace``).
    """

    service: str
    target: str
    method: str
    path: str
    attempt: int
    started: float
    span_id: str | None = None
    seconds: float | None = None
    status: int | None = None
    error: str | None = None

    def end(self, status: int | None = None, error: str | None = None) -> None:
        """Record how the attempt ended (the gateway calls it)."""
        self.seconds = time.perf_counter() - self.started
        self.status = status
        self.error = error


@dataclass(slots=True)
class Phase:
    """A timed piece of a plugin's work for one request, recorded with ``ctx.phase``."""

    name: str
    plugin: str
    started: float
    seconds: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


Forwarder = Callable[["Context", Request, "str | None"], Awaitable[Response]]


class Context:
    """State of one request, shared by every hook that runs for it.

    Set by the core: ``request`` (the client's request, path normalised),
    ``request_id``, ``route``, ``path_params``, ``matched_path`` (the leading
    part of ``request.path`` the route's pattern matched), ``client_ip``
    (after trusted proxies), ``started`` (``time.perf_counter()`` at arrival).
    Set by plugins: ``consumer`` (auth), ``state`` (anything, keyed by your
    plugin's name), ``tags`` (short facts for logs and metrics, e.g.
    ``tags["cache"] = "HIT"``).
    Set by the upstream client: ``upstream`` (the target URL last called),
    ``upstream_seconds`` and ``upstream_calls`` (every attempt, an
    ``UpstreamCall`` each). ``error`` holds the text of a gateway-made error.
    ``trace``: the request's W3C trace (``bascule_sdk.tracecontext``), set in
    ``on_request`` by the first plugin that handles trace context; when set,
    each upstream call is sent a ``traceparent`` naming its own span.

    Observability for plugins: ``log_fields`` (fields added to the access-log
    line), ``phase(...)`` (time a piece of work: a span in traces) and
    ``count(...)`` (a bounded counter in ``/metrics``).
    Set by the core after sending: ``bytes_sent`` (response body bytes the
    client was sent; ``on_log`` reads it).
    """

    __slots__ = (
        "request",
        "request_id",
        "route",
        "path_params",
        "matched_path",
        "client_ip",
        "started",
        "consumer",
        "state",
        "tags",
        "upstream",
        "upstream_seconds",
        "error",
        "bytes_sent",
        "trace",
        "upstream_calls",
        "log_fields",
        "phases",
        "counts",
        "_forward",
    )

    def __init__(
        self,
        request: Request,
        *,
        request_id: str,
        route: RouteInfo,
        path_params: dict[str, str] | None = None,
        matched_path: str = "",
        client_ip: str = "",
        started: float = 0.0,
        forward: Forwarder | None = None,
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.route = route
        self.path_params = path_params or {}
        self.matched_path = matched_path
        self.client_ip = client_ip
        self.started = started
        self.consumer: Consumer | None = None
        self.state: dict[str, Any] = {}
        self.tags: dict[str, Any] = {}
        self.upstream: str | None = None
        self.upstream_seconds: float | None = None
        self.error: str | None = None
        self.bytes_sent: int | None = None
        self.trace: Trace | None = None
        self.upstream_calls: list[UpstreamCall] = []
        self.log_fields: dict[str, Any] = {}
        self.phases: list[Phase] = []
        self.counts: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self._forward = forward

    @contextmanager
    def phase(self, name: str, plugin: str, **attributes: Any) -> Iterator[Phase]:
        """Time the work in the ``with`` block as a phase of this request.

        ``with ctx.phase("redis", self.instance, command="EVALSHA"):`` records a
        ``Phase`` in ``ctx.phases`` (its ``error`` is the exception's type name if
        the block raised; the exception propagates). The opentelemetry plugin
        exports each phase as a child span of the request's span.
        """
        record = Phase(name, plugin, time.perf_counter(), attributes=attributes)
        self.phases.append(record)
        try:
            yield record
        except BaseException as e:
            record.error = type(e).__name__
            raise
        finally:
            record.seconds = time.perf_counter() - record.started

    def count(self, metric: str, **labels: str) -> None:
        """Count one event of ``metric`` for this request, with ``labels``.

        The prometheus plugin exports it as the counter ``bascule_plugin_<metric>_total``
        with a ``route`` label and ``labels``. Keep label values to a small fixed
        set: the plugin caps the series of each metric (``max_plugin_series``)
        and counts the overflow under the value ``"other"``. ``metric`` and the
        label names: lower-case letters, digits and ``_`` (``ValueError``
        otherwise; ``route`` is the gateway's); always the same label names.
        """
        if not _METRIC_NAME.match(metric):
            raise ValueError(f"metric name {metric!r}: use lower-case letters, digits and _")
        for name in labels:
            if not _METRIC_NAME.match(name) or name == "route":
                raise ValueError(f"label {name!r} of {metric!r}: use lower-case letters, digits and _, not 'route'")
        self.counts.append((metric, tuple(sorted((k, str(v)) for k, v in labels.items()))))

    async def forward(self, request: Request, service: str | None = None) -> Response:
        """Send ``request`` to ``service`` (default: the route's) and return its response.

        Runs the route's ``on_upstream_request`` hooks on ``request`` first,
        then the gateway's header hygiene (hop-by-hop removal, ``Host``,
        forwarded headers, request id). Raises ``HTTPError`` 502/503/504 when
        the service cannot answer. The caller owns the response: send it on,
        or ``await response.aclose()``.
        """
        if self._forward is None:
            raise RuntimeError("this context is not attached to a gateway")
        return await self._forward(self, request, service)


@dataclass(frozen=True)
class TaskState:
    """A supervised background task and its health, as ``Gateway.tasks()`` reports it.

    ``name``: given to ``start_soon`` (default: the function's qualified
    name). ``plugin``: the instance name of the plugin that started it
    (``None`` for the gateway's own tasks). ``failures``: exceptions since it
    was started. ``consecutive_failures``: failures since its last healthy
    run; 0 means healthy. ``last_error``: the last failure (kept after it
    recovers). ``failing_since``: wall-clock time (``time.time()``) of the
    first failure of the current series, ``None`` while healthy.
    """

    name: str
    plugin: str | None = None
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    failing_since: float | None = None

    @property
    def failing(self) -> bool:
        """Whether it failed and has not run long enough since to count as recovered."""
        return self.consecutive_failures > 0


class Gateway(Protocol):
    """What ``startup(gateway)`` receives: the running gateway, seen by a plugin."""

    consumers: Mapping[str, Consumer]
    #: State that outlives one config: kept across reloads, shared by every plugin
    #: instance of this gateway process. Key it by your plugin's name.
    shared: dict[str, Any]

    @property
    def run_dir(self) -> Path | None:
        """A directory shared by the worker processes of one ``bascule run --workers N``
        (created empty for the run, removed when it ends), for state summed or
        coordinated across them; ``None`` in a single process."""
        ...

    async def acquire(self, key: Hashable, open: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """The resource of this gateway process under ``key``, shared and reference counted.

        The first acquisition of ``key`` enters ``open()`` (an async context
        manager, e.g. ``partial(bascule_sdk.redis.open_redis, url, timeout=t)``) in
        a background task of the gateway and returns what it yields; later ones,
        by any plugin instance and any config, get the same value while it is
        open. Your acquisitions are released after your config's ``shutdown``
        hooks ran (a reload retiring it, or the gateway stopping); the last
        release exits the context (closes it). So a reload that keeps the key
        keeps the resource. Put in ``key`` everything that makes two resources
        differ (a URL, a timeout), prefixed by your plugin's name; it is never
        logged. Raises what ``open()`` raised; a resource whose context ends on
        its own (an error, logged) is opened anew by the next acquisition.
        """
        ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Run ``fn(*args)`` in the background, supervised, until the gateway shuts down.

        An exception ends that run only: it is logged with its traceback,
        ``name`` (default: ``fn``'s qualified name) and your plugin's instance
        name, and ``fn(*args)`` is called again after a delay that doubles
        with each failure in a row (exponential backoff, reset once a run
        lasts long enough). It never stops the gateway or another task.
        Returning normally ends the task for good. At shutdown the task is
        cancelled (``trio.Cancelled``: clean up in ``finally``). A failing
        task is listed by ``tasks()`` and the admin listener's ``/readyz``.
        """
        ...

    def tasks(self) -> Sequence[TaskState]:
        """Every supervised background task of this process (not only yours), as of now."""
        ...

    def connection_errors(self) -> int:
        """Client connections of this process closed on an error that escaped them.

        Each was logged ("connection error from PEER") and ended that connection
        only; a rising count is a bug to report, never an outage.
        """
        ...

    def upstreams(self) -> Mapping[str, Mapping[str, Any]]:
        """The services of the running config as this process sees them, by name.

        The document of the admin listener's ``/upstreams``: per service
        ``retries``, ``retries_refused`` (retry budget exhausted), ``refused``
        (admission), ``queued``, ``in_flight``, ``panic``, and per target
        ``url``, ``state`` (healthy, ejected, half-open, unhealthy),
        ``ejections``, ``requests``, ``failures``. Counters count since the
        service was created (a reload keeps an unchanged service).
        """
        ...

    def reloads(self) -> Mapping[str, int]:
        """Config reloads this process attempted, by result: ``{"success": n, "failure": m}``."""
        ...
