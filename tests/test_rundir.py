"""The run directory (``Gateway.run_dir``): one per ``bascule run --workers N``, none for a single process."""

from __future__ import annotations

from pathlib import Path

import pytest
from bascule import rundir
from bascule.testing import start_gateway
from bascule_sdk import Gateway, Plugin, hookimpl


class Seer(Plugin):
    """Records the run directory its gateway reports."""

    name = "seer"
    seen: list[Path | None] = []

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        type(self).seen.append(gateway.run_dir)


CONFIG = """
    [plugins.seer]
    [services.api]
    targets = ["http://127.0.0.1:9"]
    [[routes]]
    name = "r"
    paths = ["/"]
    service = "api"
"""


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv(rundir.ENV, raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    Seer.seen = []


async def test_a_single_process_has_no_run_directory(nursery):
    await start_gateway(nursery, CONFIG, plugins=[Seer])
    assert Seer.seen == [None]


async def test_the_run_directory_is_created_empty_for_the_run_and_removed_after(nursery):
    with rundir.created() as path:
        assert sorted(p.name for p in path.iterdir()) == ["prometheus"]  # prometheus-client's, set before import
        await start_gateway(nursery, CONFIG, plugins=[Seer])  # as a worker started in the block sees it
        assert Seer.seen == [path]
    assert not path.exists()
    assert rundir.current() is None
