"""The config in force and the last reload's outcome, for the admin listener's ``/config/status``.

One ``ConfigStatus`` per process, kept by ``serve`` and told of every reload
(SIGHUP, or ``POST /reload`` in a single process); with several workers each
reloads the same file on the same SIGHUP, and the admin listener (in the
first worker) reports its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import Config

__all__ = ["ConfigStatus", "iso"]


def iso(timestamp: float | None) -> str | None:
    """``2026-12-01T15:03:15.123Z``, or ``None``."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ConfigStatus:
    """When the config in force was loaded, and how the last reload went."""

    loaded_at: float = field(default_factory=time.time)
    started_at: float = field(default_factory=time.time)
    last_reload: dict[str, Any] | None = None

    def reloaded(self, trigger: str) -> None:
        """A new config is in force (``trigger``: ``SIGHUP`` or ``POST /reload``)."""
        self.loaded_at = time.time()
        self.last_reload = {"at": iso(self.loaded_at), "trigger": trigger, "ok": True, "errors": []}

    def rejected(self, trigger: str, errors: Sequence[str]) -> None:
        """A reload failed; the old config stays. ``errors``: one line each (no secrets: see ``ConfigError``)."""
        self.last_reload = {"at": iso(time.time()), "trigger": trigger, "ok": False, "errors": list(errors)}

    def describe(self, config: Config, version: str) -> dict[str, Any]:
        """The ``/config/status`` body for ``config``, the one in force."""
        return {
            "path": str(config.path),
            "sha256": config.sha256 or None,
            "loaded_at": iso(self.loaded_at),
            "started_at": iso(self.started_at),
            "version": version,
            "pid": os.getpid(),
            "routes": len(config.routes),
            "services": len(config.services),
            "last_reload": self.last_reload,
        }
