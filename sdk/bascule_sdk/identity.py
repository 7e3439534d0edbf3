"""Identity headers that auth plugins send upstream (``X-Consumer-*``).

The core drops a client's copies on arrival, on every route; an auth plugin
strips again before it writes (another plugin may have added some) and sets
the consumer it authenticated."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from .context import Consumer
from .http import Headers

__all__ = ["header_value", "set_identity", "strip_identity"]

PREFIX = b"x-consumer-"
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def strip_identity(headers: Headers, extra: Iterable[bytes] = ()) -> None:
    """Drop every ``X-Consumer-*`` field and the ``extra`` names (lower-case bytes)."""
    names = frozenset(extra)
    if any(k.startswith(PREFIX) or k in names for k, _ in headers.raw):
        headers.raw = [(k, v) for k, v in headers.raw if not (k.startswith(PREFIX) or k in names)]


def header_value(value: Any) -> str:
    """A claim or name as a header value: arrays comma-joined, objects as JSON.

    Text outside printable ASCII is percent-encoded (as is ``%``), so a value
    can never split or corrupt a header.
    """
    if isinstance(value, list):
        text = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    return quote(text, safe=_PRINTABLE)


def set_identity(headers: Headers, consumer: Consumer, claim_headers: Mapping[str, str] | None = None) -> None:
    """Add ``X-Consumer-Id``, ``-Username``, ``-Groups`` and the chosen claims.

    Call ``strip_identity`` on ``headers`` first: fields are added, not replaced.
    """
    headers.add("x-consumer-id", header_value(consumer.id or consumer.name))
    headers.add("x-consumer-username", header_value(consumer.name))
    if consumer.groups:
        headers.add("x-consumer-groups", header_value(sorted(consumer.groups)))
    for claim, header in (claim_headers or {}).items():
        value = consumer.claims.get(claim)
        if value is not None:
            headers.add(header, header_value(value))
