"""The config in force and the last reload's outcome, for the admin listener's ``/config/status``.

One ``ConfigStatus`` per process, kept by ``serve`` and told of every reload
(SIGHUP, or ``POST /reload`` in a single process). With several workers each
reloads the same file on the same SIGHUP, but each on its own: a reload may
fail in one worker only, and a worker started to replace one that died reads
the file as it is then. So every worker also writes its status to the run's
scratch directory (``RUN_DIR/config-status/PID.json``, ``bascule.rundir``), and the admin
listener, in the first worker, lists them all (``workers``) and says whether
they serve the same file (``consistent``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import rundir
from .config import Config

__all__ = ["ConfigStatus", "iso"]


def iso(timestamp: float | None) -> str | None:
    """``2026-12-01T15:03:15.123Z``, or ``None``."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ConfigStatus:
    """When the config in force was loaded, and how the last reload went, in this process."""

    def __init__(self, config: Config | None = None, run_dir: str | None = None) -> None:
        """``config``: the one loaded at start; ``run_dir``: where the workers of a run
        publish their status (default: the run directory, ``bascule.rundir``; none for a single process)."""
        self.started_at = self.loaded_at = time.time()
        self.sha256 = config.sha256 if config else ""
        self.last_reload: dict[str, Any] | None = None
        directory = Path(run_dir) if run_dir is not None else rundir.current()
        self.directory = directory / "config-status" if directory else None
        self._publish()

    def reloaded(self, trigger: str, config: Config) -> None:
        """``config`` is in force now (``trigger``: ``SIGHUP`` or ``POST /reload``)."""
        self.loaded_at, self.sha256 = time.time(), config.sha256
        self.last_reload = {"at": iso(self.loaded_at), "trigger": trigger, "ok": True, "errors": []}
        self._publish()

    def rejected(self, trigger: str, errors: Sequence[str]) -> None:
        """A reload failed; the old config stays. ``errors``: one line each (no secrets: see ``ConfigError``)."""
        self.last_reload = {"at": iso(time.time()), "trigger": trigger, "ok": False, "errors": list(errors)}
        self._publish()

    def own(self) -> dict[str, Any]:
        """This process's status."""
        return {
            "pid": os.getpid(),
            "sha256": self.sha256 or None,
            "loaded_at": iso(self.loaded_at),
            "last_reload": self.last_reload,
        }

    def workers(self) -> list[dict[str, Any]]:
        """The status of every live worker of the run (this process's alone without a run directory)."""
        if self.directory is None:
            return [self.own()]
        found = []
        for file in self.directory.glob("*.json"):
            try:
                pid = int(file.stem)
                os.kill(pid, 0)  # a worker that died (and was replaced) drops out
                found.append(json.loads(file.read_text()))
            except ProcessLookupError:
                file.unlink(missing_ok=True)
            except (ValueError, OSError):
                continue  # being replaced, or not ours
        return sorted(found, key=lambda w: w["pid"])

    def describe(self, config: Config, version: str) -> dict[str, Any]:
        """The ``/config/status`` body; ``config`` is the one in force here."""
        workers = self.workers()
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
            "workers": workers,
            "consistent": len({w["sha256"] for w in workers}) <= 1,
        }

    def _publish(self) -> None:
        """Write ``own()`` where the admin worker reads it (atomically: replaced, never half-written)."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f".{os.getpid()}.tmp"
            partial.write_text(json.dumps(self.own()))
            partial.replace(self.directory / f"{os.getpid()}.json")
        except OSError:
            pass  # the run is ending (its directory removed): nobody will ask
