"""Responses built from stored entries: Age, 304 for conditional requests, 206 for ranges."""

from __future__ import annotations

from bascule_sdk import Headers, Response

from .control import http_date, weak_match
from .entry import Entry

__all__ = ["respond"]

# Fields a 304 answer carries over from the stored 200 (RFC 9110 section 15.4.5).
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified", b"age"}
)

_CONDITIONS = frozenset({b"if-none-match", b"if-modified-since", b"if-range"})  # what respond reads
_NO_CONDITIONS = Headers()  # read, never written


def _not_modified(entry: Entry, conditionals: Headers | None) -> bool:
    """RFC 9110 section 13.2.2 for GET/HEAD: does the client already have ``entry``?"""
    if conditionals is None or entry.status != 200:
        return False
    if (inm := conditionals.get("if-none-match")) is not None:
        return weak_match(inm, entry.header("etag"))
    if (ims := http_date(conditionals.get("if-modified-since"))) is not None:
        # RFC 9111 section 4.3.2: Last-Modified, else Date, else when it was received.
        modified = http_date(entry.header("last-modified")) or http_date(entry.header("date")) or entry.response_time
        return modified <= ims
    return False


def _byte_range(spec: str | None, size: int) -> tuple[int, int] | None:
    """One satisfiable ``bytes=`` range of a ``size``-byte body (RFC 9110 section 14.1.2), else ``None``."""
    if not spec or not spec.startswith("bytes=") or "," in spec or size == 0:
        return None
    first, dash, last = spec[6:].strip().partition("-")
    if (
        not dash
        or not (first.isdigit() or last.isdigit())
        or (first and not first.isdigit())
        or (last and not last.isdigit())
    ):
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n else None
    start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


def respond(entry: Entry, now: float, conditionals: Headers | None, range_: str | None = None) -> Response:
    """The stored response, with its ``Age``: a 304 for a matching conditional request,
    a 206 for a single byte range of a stored 200 (without ``If-Range``)."""
    age = (b"age", str(int(entry.age(now))).encode())  # stored headers never hold Age
    if conditionals is not None and not conditionals.has_any(_CONDITIONS):
        conditionals = _NO_CONDITIONS  # most requests: one pass over the fields, not one per condition
    if _not_modified(entry, conditionals):
        return Response(304, Headers([*(f for f in entry.headers if f[0] in _NOT_MODIFIED_FIELDS), age]), b"")
    headers = Headers([*entry.headers, age])
    body = entry.body
    if entry.status == 200 and conditionals is not None and "if-range" not in conditionals:
        if (span := _byte_range(range_, len(body))) is not None:
            start, end = span
            headers.set("content-range", f"bytes {start}-{end}/{len(body)}")
            headers.set("content-length", str(end - start + 1))
            return Response(206, headers, body[start : end + 1])
    return Response(entry.status, headers, body)
