"""A gateway fed from a config store (``bascule run --config-store URL``), and the fleet's status.

The gateway serves ``STATE_DIR/config.toml``, the last config it applied,
kept with its version in ``STATE_DIR/applied.json``. ``FleetAgent``:

- ``bootstrap()`` (before serving): fetch the store's newest version and, if
  it is valid here, make it the served file; if the store does not answer (or
  the version is invalid here) the file already there is served: a gateway
  starts while its store is down. No file and no store: ``StartupError``.
- ``run()`` (a supervised background task): watch the store; each new version
  is checked on this host (``runtime.check_config``: plugins instantiated, as ``bascule
  validate`` does), written to the served file and applied through the same
  reload as SIGHUP. A version that fails here is logged and reported
  (``last_error``); the previous file is put back and stays served. A lost
  store is logged once; the agent reconnects (``RETRY``) and catches up with
  the newest version when it is back.
- heartbeats: every ``heartbeat`` seconds a ``NodeStatus``, which expires
  after ``3 * heartbeat`` (the node is then *silent* in ``bascule fleet status``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from bascule_sdk.redis import safe_url

from .config import ConfigError, parse_config
from .configstore import ConfigStore, NodeStatus, StoreUnavailable, Version, open_store
from .registry import InstalledPlugin
from .runtime import check_config
from .tasks import Backoff

__all__ = ["RETRY", "FleetAgent", "FleetSettings", "default_state_dir", "describe_fleet", "iso"]

log = logging.getLogger("bascule.fleet")

RETRY = Backoff(base=0.2, cap=5.0)  # reconnecting to a lost store


def default_state_dir() -> Path:
    """``$BASCULE_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else ``$XDG_STATE_HOME/bascule``."""
    for name in ("BASCULE_STATE_DIR", "STATE_DIRECTORY"):
        if os.environ.get(name):
            return Path(os.environ[name].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "bascule"


@dataclass(frozen=True)
class FleetSettings:
    """``bascule run --config-store URL [--node-id ID] [--state-dir DIR] [--heartbeat S]``."""

    store: str
    state_dir: Path
    node: str = ""  # default: this host's name
    heartbeat: float = 2.0  # seconds between reports; silent after 3 of them
    timeout: float = 2.0  # longest wait for one answer of the store

    @property
    def path(self) -> Path:
        """The config file served: the last one applied."""
        return self.state_dir / "config.toml"


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (``...Z``), ``None`` for ``None``."""
    from datetime import UTC, datetime

    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FleetAgent:
    """This gateway's side of the config store (see the module's docstring)."""

    def __init__(self, settings: FleetSettings, available: Mapping[str, InstalledPlugin]) -> None:
        self.settings = settings
        self.available = available
        self.latest: int | None = None  # the newest version the store announced
        self.status = NodeStatus(settings.node or socket.gethostname(), socket.gethostname(), os.getpid())
        applied = self._read_applied()
        if applied is not None:
            self.status.version, self.status.applied_at = applied

    # -- the served file ------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.settings.path

    def _read_applied(self) -> tuple[int | None, float | None] | None:
        """(version, applied_at) of the served file, from applied.json when it matches the file."""
        try:
            text = self.path.read_bytes()
            meta = json.loads((self.settings.state_dir / "applied.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("sha256") != hashlib.sha256(text).hexdigest():
            return None, None  # a file written by hand: served, its version unknown
        return meta.get("version"), meta.get("applied_at")

    def _write(self, name: str, data: bytes) -> None:
        """Replace ``STATE_DIR/name`` atomically (a crash leaves the old or the new file, whole);
        readable by this user only, as a config may hold literal secrets."""
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.settings.state_dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.settings.state_dir / name)

    def _record_applied(self, version: Version) -> None:
        data = version.text.encode()
        now = time.time()
        meta = {"version": version.version, "applied_at": now, "store": safe_url(self.settings.store)}
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        self._write("applied.json", json.dumps(meta).encode())
        self.status.version, self.status.applied_at = version.version, now
        self.status.last_error = self.status.error_version = None

    def _failed(self, version: int, error: str) -> None:
        served = "none applied yet" if self.status.version is None else f"version {self.status.version} stays"
        log.error("config version %d cannot be applied here (%s):\n%s", version, served, error)
        self.status.last_error, self.status.error_version = error, version

    def _check(self, version: Version) -> str | None:
        """Why ``version`` cannot run on this host (as ``bascule validate``), or None."""
        try:
            name = f"{safe_url(self.settings.store)} version {version.version}"
            check_config(parse_config(version.text, name, self.available), self.available)
        except ConfigError as e:
            return str(e)
        return None

    # -- start-up --------------------------------------------------------------

    def bootstrap(self) -> Path:
        """Make the store's newest version the served file if it is valid here; return the file to serve.

        Raises ``FileNotFoundError`` (with the reason) when there is nothing to serve.
        """
        try:
            newest = trio.run(self._fetch_newest)
        except StoreUnavailable as e:
            self.status.store_reachable = False
            log.warning("config store unreachable (%s); serving the last applied config, %s", e, self._served())
            newest = None
        if newest is not None and self._served_text() == newest.text.encode():
            if newest.version != self.status.version:
                self._record_applied(newest)
        elif newest is not None:
            error = self._check(newest)
            if error is None:
                self._write(self.path.name, newest.text.encode())
                self._record_applied(newest)
            else:
                self._failed(newest.version, error)
        if not self.path.exists():
            store = f"the config store {safe_url(self.settings.store)}"
            if not self.status.store_reachable:
                why = f"{store} is unreachable"
            elif self.status.last_error:
                why = f"version {self.status.error_version} of {store} cannot run here:\n{self.status.last_error}\n"
            else:
                why = f"{store} has no config yet"
            raise FileNotFoundError(f"{why}, and {self.path} (the last config applied) does not exist")
        return self.path

    def _served_text(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def _served(self) -> str:
        return f"version {self.status.version} from {self.path}" if self.path.exists() else "none"

    async def _fetch_newest(self) -> Version | None:
        async with open_store(self.settings.store, timeout=self.settings.timeout) as store:
            newest = await store.current()
            self.latest = newest.version if newest else None
            return newest

    # -- serving ----------------------------------------------------------------

    async def run(self, reload: Callable[[], Awaitable[str | None]]) -> None:
        """Follow the store until cancelled.

        ``reload()`` applies the served file (the SIGHUP reload) and returns its errors, or None.
        """
        failures = 0
        while True:
            try:
                async with open_store(self.settings.store, timeout=self.settings.timeout) as store:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._heartbeat, store)
                        async for number in store.watch():
                            failures = 0
                            self._reachable()
                            self.latest = number
                            await self._apply(store, number, reload)
            except* StoreUnavailable as group:
                failures += 1
                if self.status.store_reachable:
                    self.status.store_reachable = False
                    lost = group.exceptions[0]
                    while isinstance(lost, BaseExceptionGroup):
                        lost = lost.exceptions[0]
                    log.warning("config store lost (%s); serving version %s till it is back", lost, self.status.version)
            await trio.sleep(RETRY.delay(max(1, failures)))

    def _reachable(self) -> None:
        if not self.status.store_reachable:
            self.status.store_reachable = True
            log.warning("config store %s is back", safe_url(self.settings.store))

    async def _heartbeat(self, store: ConfigStore) -> None:
        while True:
            self.status.heartbeat = time.time()
            await store.report(self.status, 3 * self.settings.heartbeat)
            self._reachable()
            await trio.sleep(self.settings.heartbeat)

    async def _apply(self, store: ConfigStore, number: int, reload: Callable[[], Awaitable[str | None]]) -> None:
        version = await store.get(number)
        if version is None:  # no longer kept: a newer one is on its way
            return
        served = self._served_text()
        if served == version.text.encode():  # served already (e.g. the store was wiped and pushed to again)
            if number != self.status.version:
                self._record_applied(version)
            return
        error = self._check(version)
        if error is None:
            self._write(self.path.name, version.text.encode())
            error = await reload()
            if error is None:
                self._record_applied(version)
                log.info("applied config version %d", number)
            elif served is not None:
                self._write(self.path.name, served)
        if error is not None:
            self._failed(number, error)
        self.status.heartbeat = time.time()
        await store.report(self.status, 3 * self.settings.heartbeat)

    def describe(self) -> dict[str, Any]:
        """``GET /fleet`` on the admin listener: this gateway's status."""
        s = self.status
        return {
            "node": s.node,
            "host": s.host,
            "pid": s.pid,
            "store": safe_url(self.settings.store),
            "store_reachable": s.store_reachable,
            "version": s.version,
            "latest": self.latest,
            "behind": self.latest is not None and s.version != self.latest,
            "applied_at": iso(s.applied_at),
            "last_error": s.last_error,
            "error_version": s.error_version,
            "heartbeat": iso(s.heartbeat),
            "state_dir": str(self.settings.state_dir),
        }


def describe_fleet(current: Version | None, statuses: list[NodeStatus]) -> list[dict[str, Any]]:
    """``bascule fleet status``: each node's report, flagged ``behind`` (not on the newest version) or ``silent``."""
    newest = current.version if current else None
    return [
        {
            "node": s.node,
            "host": s.host,
            "pid": s.pid,
            "version": s.version,
            "applied_at": iso(s.applied_at),
            "last_error": s.last_error,
            "error_version": s.error_version,
            "heartbeat": iso(s.heartbeat),
            "behind": newest is not None and s.version != newest,
            "silent": not s.alive,
        }
        for s in statuses
    ]
