"""The run directory: scratch space shared by the workers of one ``bascule run --workers N``.

The supervising process creates it empty before starting the workers and
removes it when the run ends; the workers find it through the environment
variable ``ENV``, which they inherit. A single process has none. Plugins see
it as ``Gateway.run_dir``; the core keeps each worker's config status there
(``bascule.configstatus``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ENV", "created", "current"]

#: The one name of the variable that hands the run directory to the workers.
ENV = "BASCULE_RUN_DIR"
_PROMETHEUS = "PROMETHEUS_MULTIPROC_DIR"


def current() -> Path | None:
    """This process's run directory, or ``None`` (a single process)."""
    path = os.environ.get(ENV)
    return Path(path) if path else None


@contextmanager
def created() -> Iterator[Path]:
    """Create the run directory and hand it to the processes started inside the block; remove it after."""
    path = Path(tempfile.mkdtemp(prefix="bascule-run-"))
    before = {name: os.environ.get(name) for name in (ENV, _PROMETHEUS)}
    os.environ[ENV] = str(path)
    # prometheus_client chooses its multiprocess mode (values in files, summed at each scrape)
    # when first imported, from this variable: before a plugin could read Gateway.run_dir. So
    # the run directory provides it here, the one place, unless the operator set one.
    if before[_PROMETHEUS] is None:
        (path / "prometheus").mkdir()
        os.environ[_PROMETHEUS] = str(path / "prometheus")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
