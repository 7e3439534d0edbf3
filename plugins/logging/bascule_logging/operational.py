"""The operational log (the gateway's own messages) as JSON lines, if so configured.

Field names follow the access log: ``time`` (RFC 3339, UTC, milliseconds),
``level``, ``logger``, ``message``, ``error`` (the traceback of a logged
exception, else absent) and ``request_id`` where the message carries one
(``extra={"request_id": ...}``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from .record import rfc3339, to_json

__all__ = ["JsonFormatter", "use_format"]

_ORIGINAL = "logging.operational_formatters"  # gateway.shared key: the formatters before JSON


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := getattr(record, "request_id", None)) is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return to_json(line).decode()


def use_format(fmt: Literal["text", "json"], shared: dict[str, Any]) -> None:
    """Format the root logger's handlers' output as ``fmt``.

    The formatters in place before the first switch to JSON are kept in
    ``shared`` (the gateway's state across reloads), so a reload back to
    ``"text"`` restores them.
    """
    handlers = logging.getLogger().handlers
    if fmt == "json":
        shared.setdefault(_ORIGINAL, {id(h): h.formatter for h in handlers})
        formatter = JsonFormatter()
        for h in handlers:
            h.setFormatter(formatter)
    elif (original := shared.pop(_ORIGINAL, None)) is not None:
        for h in handlers:
            if id(h) in original:
                h.setFormatter(original[id(h)])
