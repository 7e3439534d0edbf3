"""prometheus-client's multiprocess mode: the metrics of several workers, summed.

prometheus-client decides when first imported whether values live in memory
(one process) or in per-process files under ``PROMETHEUS_MULTIPROC_DIR`` that
the scraping process sums. Under ``bascule run --workers N`` every worker must
use the same, initially empty directory: the gateway's run directory
(``Gateway.run_dir``) provides ``RUN_DIR/prometheus`` in that variable before
the workers start, since it must be set before the import; or set it for the
``bascule run`` process yourself.
"""

from __future__ import annotations

import os
import re

__all__ = ["live_workers", "multiprocess_dir", "sweep_dead_workers"]

_LIVE_GAUGE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
_ANY_FILE = re.compile(r"^\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, or ``None`` (one process)."""
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
