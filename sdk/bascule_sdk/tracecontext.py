"""W3C Trace Context (Level 1): parse and write ``traceparent``/``tracestate``.

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<trace-flags: 2 hex>

A valid incoming ``traceparent`` continues the caller's trace; anything else
starts a new one (and the incoming ``tracestate`` is dropped, as the spec
requires). Each upstream call is a new span: a fresh parent-id per hop.

The one place a request's trace context lives is ``ctx.trace``: the first
plugin that handles trace context (opentelemetry, then logging) sets it in
``on_request``, and the gateway's upstream client sends every attempt a
``traceparent`` naming that attempt's span (``UpstreamCall.span_id``).
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .http import Headers

__all__ = ["FIELDS", "MAX_TRACESTATE_MEMBERS", "Trace", "new_span_id", "parse_traceparent", "parse_tracestate"]

#: The trace context's fields, as ``Headers.raw`` names them.
FIELDS = frozenset({b"traceparent", b"tracestate"})

MAX_TRACESTATE_MEMBERS = 32  # W3C Trace Context §3.3.1.1
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_KEY = re.compile(r"^(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$")
_VALUE = re.compile(r"^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$")


class Trace(NamedTuple):
    """The trace a request belongs to.

    ``parent_id`` is the caller's span (``None`` when the gateway started the
    trace); ``flags`` is the two-hex-digit trace-flags field.
    """

    trace_id: str
    parent_id: str | None
    flags: str
    tracestate: str | None = None

    @classmethod
    def start(cls, sampled: bool) -> Trace:
        """A new trace, with the sampled flag set when this request is recorded."""
        return cls(_random_hex(128), None, "01" if sampled else "00")

    @classmethod
    def from_headers(cls, headers: Headers, sampled: bool) -> Trace:
        """Continue the caller's trace if its ``traceparent`` is valid, else start one."""
        if not headers.has_any(FIELDS):  # most requests: one pass over the fields, not one per name
            return cls.start(sampled)
        parsed = parse_traceparent(headers.get_all("traceparent"))
        if parsed is None:
            return cls.start(sampled)
        trace_id, parent_id, flags = parsed
        return cls(trace_id, parent_id, flags, parse_tracestate(headers.get_all("tracestate")))

    def traceparent(self, span_id: str) -> str:
        """The ``traceparent`` value for a hop whose span is ``span_id`` (version 00)."""
        return f"00-{self.trace_id}-{span_id}-{self.flags}"


def parse_traceparent(values: list[str]) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid header, else ``None``.

    Exactly one field is required. Version ``ff`` is invalid; version ``00``
    has exactly four fields; a higher version may append fields, which are
    ignored (the header is re-sent as version 00). All-zero ids are invalid.
    Of the flags only ``sampled`` (the one Level 1 defines) is kept.
    """
    if len(values) != 1:
        return None
    m = _TRACEPARENT.match(values[0].strip(" \t"))
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _INVALID_TRACE_ID or parent_id == _INVALID_SPAN_ID:
        return None
    return trace_id, parent_id, "01" if int(flags, 16) & 1 else "00"  # Level 1 defines only "sampled"


def parse_tracestate(values: list[str]) -> str | None:
    """The combined ``tracestate`` to propagate, or ``None`` if absent or invalid.

    Fields are joined with ``,`` (RFC 9110 list combination); empty members
    are dropped. More than 32 members, a malformed member or a duplicate key
    makes the whole header invalid, and it is not propagated.
    """
    members = [m.strip(" \t") for v in values for m in v.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    keys = set()
    for member in members:
        key, eq, value = member.partition("=")
        if not eq or not _KEY.match(key) or not _VALUE.match(value) or key in keys:
            return None
        keys.add(key)
    return ",".join(members)


def new_span_id() -> str:
    """A random, non-zero 8-byte span id in hex."""
    return _random_hex(64)


def _random_hex(bits: int) -> str:
    """A random non-zero id of ``bits`` bits, in lower-case hex.

    Trace ids need to be unique, not secret: like OpenTelemetry's id generator,
    this uses ``random`` (per process, seeded from the OS), not a system call.
    """
    value = 0
    while not value:
        value = random.getrandbits(bits)
    return value.to_bytes(bits // 8).hex()  # a third of the time of f"{value:0{bits // 4}x}"
