"""Settings of the ``logging`` plugin (``[plugins.logging]``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from bascule_sdk import Duration, HeaderName, setting

__all__ = ["SENSITIVE_HEADERS", "LoggingSettings"]

SENSITIVE_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "apikey",
)
SECRET_QUERY_PARAMS = (
    "access_token",
    "api_key",
    "apikey",
    "code",
    "id_token",
    "key",
    "password",
    "refresh_token",
    "secret",
    "sig",
    "signature",
    "token",
)


@dataclass(frozen=True)
class LoggingSettings:
    format: Literal["json"] = setting("json", "Line format: one JSON object per request.")
    output: str = setting("stdout", '"stdout", "stderr", or a file path (appended to; reopened on reload).')
    buffer: int = setting(10_000, "Lines queued for the writer; when full, lines are dropped and counted.", min=1)
    flush_interval: Duration = setting(
        0.1,
        "Longest a line waits to be written with the others (sooner once half of buffer is queued).",
        min=0.001,
    )
    flush_timeout: Duration = setting(5.0, "On shutdown or reload, how long queued lines may take to write.")
    sample_rate: float = setting(
        1.0, "Fraction of requests logged, 0.0 to 1.0; 5xx responses are always logged.", min=0, max=1
    )
    exclude_paths: list[str] = setting(
        [],
        'Paths not logged, with everything below them (e.g. "/healthz").',
        pattern="^/",
        expected="a path starting with /",
    )
    redact_query: list[str] = setting(
        list(SECRET_QUERY_PARAMS), 'Query parameters whose values are logged as "REDACTED"; "*" for all.'
    )
    headers: list[HeaderName] = setting(
        ["user-agent"], 'Request headers logged (under "headers"); credentials can never be listed.'
    )
    sensitive_headers: list[HeaderName] = setting(
        list(SENSITIVE_HEADERS), "Headers that may never be logged (add your API-key header here)."
    )
    trace_context: bool = setting(True, "Propagate W3C traceparent/tracestate upstream, a new span per hop.")
    operational_format: Literal["text", "json"] = setting(
        "text", 'The gateway\'s own log: "text", or "json" with the access log\'s field names (time, level...).'
    )

    def __post_init__(self) -> None:
        if self.output not in ("stdout", "stderr"):
            _check_writable(self.output)
        never = {h.lower() for h in (*SENSITIVE_HEADERS, *self.sensitive_headers)}
        if leaked := sorted(h for h in self.headers if h.lower() in never):
            raise ValueError(f"headers: {', '.join(leaked)} carry credentials and are never logged")


def _check_writable(path: str) -> None:
    """Fail at config load, not at start-up or reload, when the log file cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"output: directory {directory} does not exist")
    if not os.access(path if os.path.exists(path) else directory, os.W_OK):
        raise ValueError(f"output: {path} is not writable")
