"""Per-request context, consumers, and the gateway handle given to ``startup``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .http import Request, Response

__all__ = ["Consumer", "Context", "Gateway", "RouteInfo", "TaskState"]


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
    Set by the upstream client: ``upstream`` (the target URL last called) and
    ``upstream_seconds``. ``error`` holds the text of a gateway-made error.
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
        self._forward = forward

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
