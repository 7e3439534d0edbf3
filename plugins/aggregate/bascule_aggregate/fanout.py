"""Calling a route's backends: concurrently, in dependency order, under deadlines.

Each backend starts at once, or as soon as the backends it takes fields from
have answered; of those that start at once, the one expected to answer last
is called first (``Fanout``). All run in one trio nursery under the route's
deadline, each also under its own budget. A required backend's failure
cancels the others: the answer no longer depends on them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus

import trio
from bascule_sdk import Context, Headers, HTTPError, Request

from .settings import AggregateSettings, Backend
from .shaping import MissingField, field_value, nesting_exceeds, shape
from .template import Ref, encode_segment

__all__ = ["ClientInputs", "Fanout", "Outcome"]

log = logging.getLogger("bascule.aggregate")

# What a failed ctx.forward means, in words safe to show a client.
_FORWARD_ERRORS = {502: "unreachable", 503: "busy", 504: "timeout"}


@dataclass
class Outcome:
    """How one backend call ended: its answer (``data`` raw, ``shaped``), or an ``error``.

    ``error`` is a short reason code (``"timeout"``, ``"status"``, ...) and
    ``detail`` a phrase; neither ever holds an internal address.
    """

    status: int = 0
    data: Any = None
    shaped: dict[str, Any] | None = None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self, name: str) -> dict[str, str]:
        """This failure as an entry of the ``errors`` list."""
        entry = {"backend": name, "error": self.error or ""}
        if self.detail:
            entry["detail"] = self.detail
        return entry


class Failed(Exception):
    """A backend call failed for ``error`` (a reason code), with an optional ``detail``."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error, detail)
        self.outcome = Outcome(error=error, detail=detail)


class ClientInputs:
    """The placeholder values taken from the client's request, resolved up front.

    Raises ``HTTPError`` 400 when a query parameter or header that a backend
    needs is missing, so a bad request never reaches a backend.
    """

    def __init__(self, ctx: Context, backends: list[Backend]) -> None:
        self.values: dict[Ref, str] = {}
        query: dict[str, str] | None = None
        for backend in backends:
            for ref in backend.refs:
                if ref.source == "backend" or ref in self.values:
                    continue
                if ref.source == "query" and query is None:
                    query = {}
                    for k, v in parse_qsl(ctx.request.query, keep_blank_values=True):
                        query.setdefault(k, v)
                self.values[ref] = _client_value(ctx, query or {}, ref)


def _client_value(ctx: Context, query: dict[str, str], ref: Ref) -> str:
    if ref.source == "param":
        if ref.name not in ctx.path_params:
            log.error(
                "route %r: aggregate placeholder {%s} is not a path parameter of the route", ctx.route.name, ref.name
            )
            raise HTTPError(500, "The route's aggregation names an unknown path parameter.")
        return unquote(ctx.path_params[ref.name])
    if ref.source == "query":
        if ref.name not in query:
            raise HTTPError(400, f"The query parameter {ref.name!r} is required.")
        return query[ref.name]
    value = ctx.request.headers.get(ref.name)
    if value is None:
        raise HTTPError(400, f"The header {ref.name!r} is required.")
    return value


#: Weight of a backend's newest call in its expected call time (a moving average).
NEWEST = 0.2


class Fanout:
    """One aggregation: run it with ``await run()``, then read ``outcomes``.

    ``expected``: each backend's recent call time in seconds, by name, shared by a route's
    aggregations and updated by each (a moving average). The backend expected to answer
    last, of those that wait on no other, is called first: the answer waits on it.
    """

    def __init__(
        self,
        settings: AggregateSettings,
        ctx: Context,
        inputs: ClientInputs,
        body: bytes,
        expected: dict[str, float],
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.inputs = inputs
        self.body = body
        self.expected = expected
        self.outcomes: dict[str, Outcome] = {}
        self._done = {b.name: trio.Event() for b in settings.backends}
        self._aborted = False

    async def run(self) -> None:
        """Call every backend; on return each has an outcome.

        A backend cut off by the route's deadline failed with ``"timeout"``;
        one cancelled because a required backend failed, with ``"cancelled"``.
        """
        deadline = trio.current_time() + self.settings.timeout
        first = max(self.settings.roots, key=lambda b: self.expected.get(b.name, 0.0))
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for backend in self.settings.backends:
                    if backend is not first:
                        nursery.start_soon(self._backend, backend, deadline, nursery.cancel_scope)
                # From this task, before the others start: its request leaves first.
                await self._backend(first, deadline, nursery.cancel_scope)
        for backend in self.settings.backends:
            if backend.name not in self.outcomes:
                self.outcomes[backend.name] = Outcome(error="cancelled" if self._aborted else "timeout")

    async def _backend(self, backend: Backend, deadline: float, abort: trio.CancelScope) -> None:
        for name in backend.depends_on:
            await self._done[name].wait()
        outcome = Outcome(error="timeout")
        if failed := [n for n in backend.depends_on if not self.outcomes[n].ok]:
            outcome = Outcome(error="dependency", detail=f"needs {failed[0]!r}, which failed")
        else:
            started = trio.current_time()
            with trio.move_on_at(min(started + self.settings.budget(backend), deadline)):
                try:
                    outcome = await self._call(backend)
                except Failed as e:
                    outcome = e.outcome
            seconds = trio.current_time() - started
            last = self.expected.get(backend.name, seconds)
            self.expected[backend.name] = last + NEWEST * (seconds - last)
        self.outcomes[backend.name] = outcome
        self._done[backend.name].set()
        if not outcome.ok and backend.required:
            self._aborted = True
            abort.cancel()

    async def _call(self, backend: Backend) -> Outcome:
        request = self._request(backend)
        try:
            response = await self.ctx.forward(request, service=backend.service)
            body = await response.read(backend.max_response_size)
        except HTTPError as e:
            if e.status == 413:
                raise Failed("too_large", f"more than {backend.max_response_size} bytes") from None
            if e.status not in _FORWARD_ERRORS:
                log.warning("aggregate backend %r (service %r): %s", backend.name, backend.service, e)
            raise Failed(_FORWARD_ERRORS.get(e.status, "error")) from None
        if not 200 <= response.status < 300 and not self.settings.pass_status:
            raise Failed("status", f"answered {response.status}")
        data = self._parse(backend, response.headers.get("content-type") or "", body)
        try:
            shaped = shape(data, backend)
        except MissingField as e:
            raise Failed("missing_field", str(e)) from None
        return Outcome(status=response.status, data=data, shaped=shaped)

    def _request(self, backend: Backend) -> Request:
        value = self._value
        path = backend.path_template.render(value, encode_segment)
        if any(segment in (".", "..") for segment in path.split("/")):
            raise Failed("invalid_path", "a placeholder made a dot segment")
        query = []
        if backend.forward_query:
            every = "*" in backend.forward_query
            for pair in self.ctx.request.query.split("&"):
                if pair and (every or unquote_plus(pair.partition("=")[0]) in backend.forward_query):
                    query.append(pair)
        for key, template in backend.query_templates:
            query.append(f"{quote(key, safe='')}={template.render(value, _encode_query)}")
        headers = Headers()
        client = self.ctx.request.headers
        names = [*backend.headers, "content-type"] if backend.forward_body else backend.headers
        for name in dict.fromkeys(n.lower() for n in names):
            for v in client.get_all(name):
                headers.add(name, v)
        body = self.body if backend.forward_body else b""
        return Request(backend.method, path, "&".join(query), headers, body)

    def _value(self, ref: Ref) -> str:
        if ref.source != "backend":
            return self.inputs.values[ref]
        try:
            value = field_value(self.outcomes[ref.name].data, ref.field)
        except MissingField:
            raise Failed("missing_field", str(ref)) from None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise Failed("missing_field", f"{ref} is not a string, number or boolean")

    def _parse(self, backend: Backend, content_type: str, body: bytes) -> Any:
        """The answer as JSON (or text, if so configured); ``None`` for an empty body."""
        media = content_type.split(";")[0].strip().lower()
        if not body.strip():
            return None
        if media and media != "application/json" and not media.endswith("+json"):
            return _non_json(backend, body, media)
        try:
            data = json.loads(body)
        except RecursionError:
            raise Failed("too_deep", f"JSON nested deeper than {self.settings.max_depth}") from None
        except ValueError:
            if media:
                raise Failed("invalid_json") from None
            return _non_json(backend, body, "an untyped body")
        if nesting_exceeds(data, self.settings.max_depth):
            raise Failed("too_deep", f"JSON nested deeper than {self.settings.max_depth}")
        return data


def _non_json(backend: Backend, body: bytes, media: str) -> str:
    if backend.non_json == "string":
        return body.decode("utf-8", "replace")
    raise Failed("not_json", f"answered {media}")


def _encode_query(value: str) -> str:
    return quote(value, safe="")
