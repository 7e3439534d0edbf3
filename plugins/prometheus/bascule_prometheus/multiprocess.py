"""Choosing prometheus-client's multiprocess mode, before prometheus_client is imported.

prometheus-client decides at import time whether values live in memory (one
process) or in per-process files under ``PROMETHEUS_MULTIPROC_DIR`` that the
scraping process sums. Under ``bascule run --workers N`` every worker must use
the same, initially empty directory: set ``PROMETHEUS_MULTIPROC_DIR`` for the
``bascule run`` process yourself, or let the core's per-run directory
(``BASCULE_RUN_DIR``, shared by the workers of one run) provide one.
"""

from __future__ import annotations

import os
import re

__all__ = ["configure_environment", "live_workers", "multiprocess_dir", "sweep_dead_workers"]

_LIVE_GAUGE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
_ANY_FILE = re.compile(r"^\w+?_(\d+)\.db$")


def configure_environment() -> str | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` from ``BASCULE_RUN_DIR`` if only the latter is set.

    Returns the multiprocess directory in effect, or ``None`` (one process).
    """
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and (run_dir := os.environ.get("BASCULE_RUN_DIR")):
        path = os.path.join(run_dir, "prometheus")
        os.makedirs(path, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return multiprocess_dir()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def sweep_dead_workers(path: str) -> None:
    """Drop the live gauges (requests in flight) of worker processes that are gone."""
    from prometheus_client import multiprocess

    for name in os.listdir(path) if os.path.isdir(path) else ():
        if (m := _LIVE_GAUGE.match(name)) and not _alive(int(m.group(1))):
            multiprocess.mark_process_dead(int(m.group(1)), path)


def live_workers(path: str) -> list[int]:
    """The process ids that wrote metrics under ``path`` and are still running."""
    pids = (
        {int(m.group(1)) for name in os.listdir(path) if (m := _ANY_FILE.match(name))} if os.path.isdir(path) else set()
    )
    return sorted(pid for pid in pids if _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
