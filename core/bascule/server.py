"""Serving: hypercorn's trio worker, signals, reload, and worker processes.

One process: ``serve()`` runs the public listener (and the admin listener, if
configured) under trio. SIGHUP reloads the config; SIGTERM and SIGINT stop
accepting connections and let in-flight requests finish (``graceful_timeout``).

Several processes (``workers > 1``): the parent binds the public socket once
and starts that many worker processes sharing it; the first worker also
serves the admin listener, whose ``POST /reload`` sends SIGHUP to the parent.
The parent forwards SIGHUP/SIGTERM to every worker and replaces a worker that
dies.

Starting (``run``): the config is validated, the TLS files are read and both
listeners are bound before anything is served, so a start-up failure is one
line on stderr (``bascule: cannot listen on 127.0.0.1:8080: address already
in use``) and exit status 1; then a banner is logged: version, config file,
listeners, routes, plugins, workers.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import LifespanFailureError, repr_socket_addr

from . import rundir
from .config import Config, ConfigError, GatewaySettings
from .fleet import FleetAgent, FleetSettings
from .gateway import Gateway
from .registry import InstalledPlugin, discover
from .runtime import check_config, compile_runtime
from .worker import listen

__all__ = ["StartupError", "hypercorn_config", "run", "serve", "settle_heap"]

log = logging.getLogger("bascule")


def hypercorn_config(gw: GatewaySettings, bind: str, *, tls: bool = True) -> HypercornConfig:
    """hypercorn settings for a listener, from ``[gateway]``."""
    c = HypercornConfig()
    c.bind = [bind]
    c.h11_max_incomplete_size = gw.max_header_size
    c.h2_max_header_list_size = gw.max_header_size
    c.keep_alive_timeout = gw.keep_alive_timeout
    # seconds, fractions too: hypercorn annotates it int but only passes it to trio.fail_after
    c.read_timeout = gw.read_timeout or None  # type: ignore[assignment]
    c.graceful_timeout = gw.graceful_timeout
    c.lingering_timeout = gw.lingering_timeout  # type: ignore[attr-defined]  # read by bascule.worker
    c.h2c = gw.h2c  # type: ignore[attr-defined]  # read by bascule.worker
    c.max_body_size = gw.max_body_size  # type: ignore[attr-defined]  # read by bascule.worker
    c.keep_alive_max_requests = 1_000_000
    c.include_date_header = False  # the upstream's Date is forwarded; the gateway adds its own otherwise
    c.include_server_header = False
    c.accesslog = None
    c.errorlog = logging.getLogger("hypercorn.error")
    if tls and gw.tls_cert:
        c.certfile, c.keyfile = gw.tls_cert, gw.tls_key
    return c


#: The cyclic collector's thresholds in a serving process (``gc.set_threshold``): a request
#: allocates a few hundred container objects, nearly all freed by reference counting when it
#: ends; collecting generation 0 every 700 of them (CPython's default) scanned live requests
#: over and over.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_heap() -> None:
    """Collect garbage once, then move every object left to the collector's permanent generation
    (``gc.freeze``), and set ``GC_THRESHOLDS``: collections no longer scan the modules, the config
    and the plugins, which cost every request CPU time and the tail its p99. ``serve`` calls it once
    serving and after each reload closed its old config (``gc.unfreeze`` first: the old config's
    cycles are freed). ``bench/run --cases hypercorn,bare``: bare route 446 -> about 400 CPU
    µs/request, p99/p50 2.6 -> 1.3-1.6."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    path: str | Path,
    available: Mapping[str, InstalledPlugin],
    *,
    sockets: Sockets | None = None,
    admin: bool = True,
    admin_sockets: Sockets | None = None,
    supervised: bool = False,
    fleet: FleetAgent | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the config at ``path`` until SIGTERM/SIGINT; reload on SIGHUP.

    ``sockets``/``admin_sockets``: the listeners, already bound and listening
    (``run`` binds them first); bound here from the config when not given.
    ``supervised``: this is a worker of ``_supervise``, so the admin
    listener's ``POST /reload`` asks the supervisor to reload every worker.
    ``fleet``: follow a config store (``bascule.fleet``; ``path`` is its served file).
    """
    gateway = Gateway(compile_runtime(path, available), retired=settle_heap)
    config = gateway.runtime.config
    stop, serving = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, gateway, path, available, stop, serving)
        async with trio.open_nursery() as servers:
            binds = await servers.start(
                partial(
                    listen,
                    gateway,
                    hypercorn_config(config.gateway, config.gateway.listen),
                    sockets=sockets,
                    shutdown_trigger=stop.wait,
                )
            )
            if admin and config.gateway.admin:
                from .admin import Admin

                admin_app = Admin(gateway, path, available, signal_supervisor=supervised, fleet=fleet)
                binds += await servers.start(
                    partial(
                        listen,
                        admin_app,
                        hypercorn_config(config.gateway, config.gateway.admin, tls=False),
                        sockets=admin_sockets,
                        shutdown_trigger=stop.wait,
                    )
                )
            if fleet is not None:
                reload = partial(_store_reload, gateway, path, available, supervised)
                gateway.start_soon(fleet.run, reload, name="config store")
            settle_heap()
            serving.set()
            task_status.started(binds)
            await stop.wait()
            servers.cancel_scope.deadline = trio.current_time() + config.gateway.graceful_timeout + 5
        nursery.cancel_scope.cancel()  # drained: stop listening for signals


async def _signals(
    gateway: Gateway, path: str | Path, available: Mapping[str, InstalledPlugin], stop: trio.Event, serving: trio.Event
) -> None:
    """SIGTERM/SIGINT: stop (drain). SIGHUP: reload, once the gateway serves (its tasks run from then)."""
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)  # a worker's signals held since its start arrive now
        async for signum in signals:
            if signum != signal.SIGHUP:
                if not stop.is_set():
                    log.info("shutting down: finishing in-flight requests")
                stop.set()
            elif not stop.is_set():
                await serving.wait()
                await gateway.reload_file(path, available, "SIGHUP")


def signal_workers(
    gateway: Gateway, path: str | Path, available: Mapping[str, InstalledPlugin], trigger: str
) -> ConfigError | None:
    """A worker's reload of every worker (``POST /reload``, a config store's version): the file is checked
    here (a refusal recorded as ``Gateway.reload_file`` records one), then SIGHUP goes to the supervisor,
    which forwards it to every worker, each recording its own reload. The error, or None once signalled."""
    try:
        check_config(path, available)  # as each worker's reload will
    except ConfigError as e:
        gateway.reloaded(trigger, path, error=e)
        return e
    os.kill(os.getppid(), signal.SIGHUP)
    return None


async def _store_reload(
    gateway: Gateway, path: str | Path, available: Mapping[str, InstalledPlugin], supervised: bool
) -> str | None:
    """A config store's new version, written to ``path``: reloaded here, or in every worker. The errors, or None."""
    if supervised:
        error = signal_workers(gateway, path, available, "config store")
    else:
        error = await gateway.reload_file(path, available, "config store")
    return None if error is None else str(error)


class StartupError(Exception):
    """Why the gateway cannot start, in one line (``bascule run`` prints it and exits 1)."""


def run(path: str | Path, workers: int | None = None, fleet: FleetSettings | None = None) -> int:
    """Validate and serve ``path``; the ``bascule run`` command. Returns an exit code.

    Every start-up failure is reported in one line per problem on stderr: the
    config's problems, a TLS file that cannot be read, an address that
    cannot be bound. ``fleet``: serve the config store's newest version
    instead (``path`` is not read), or the last one applied if the store is down.
    """
    available = discover()
    agent = None
    if fleet is not None:
        agent = FleetAgent(fleet, available)
        try:
            path = agent.bootstrap()
        except FileNotFoundError as e:
            print(f"bascule: {e}", file=sys.stderr)
            return 1
    try:
        config = check_config(path, available)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    workers = workers or config.gateway.workers
    gw = config.gateway
    try:
        _check_tls(gw)
        public = _bind(hypercorn_config(gw, gw.listen), gw.listen, "")
        admin = _bind(hypercorn_config(gw, gw.admin, tls=False), gw.admin, " (admin)") if gw.admin else None
    except StartupError as e:
        print(f"bascule: {e}", file=sys.stderr)
        return 1
    _banner(config, public, admin, workers)
    if workers > 1:
        return _supervise(path, public, admin, workers, fleet)
    try:
        trio.run(partial(serve, path, available, sockets=public, admin_sockets=admin, fleet=agent))
    except BaseExceptionGroup as group:
        failed = group.subgroup(LifespanFailureError)
        if failed is None:
            raise
        # The gateway logged the plugin's error; its message was handed on by the lifespan.
        print(f"bascule: {path}: the gateway could not start: {_leaf(failed)}", file=sys.stderr)
        return 1
    return 0


def _leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _reason(e: OSError) -> str:
    """``address already in use``: the OS's message, as the tail of a sentence."""
    reason = e.strerror or str(e)
    return reason[:1].lower() + reason[1:]


def _check_tls(gw: GatewaySettings) -> None:
    """The certificate and key can be read and go together."""
    if not (gw.tls_cert and gw.tls_key):
        return
    for key, file in (("tls_cert", gw.tls_cert), ("tls_key", gw.tls_key)):
        try:
            with open(file, "rb"):
                pass
        except OSError as e:
            raise StartupError(f"cannot read {key} {file}: {_reason(e)}") from None
    try:
        hypercorn_config(gw, gw.listen).create_ssl_context()
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise StartupError(f"cannot load tls_cert {gw.tls_cert} with tls_key {gw.tls_key}: {e}") from None


def _bind(hc: HypercornConfig, address: str, label: str) -> Sockets:
    """The listener's sockets, bound and listening; ``StartupError`` naming the address if not."""
    try:
        sockets = hc.create_sockets()
    except OSError as e:
        raise StartupError(f"cannot listen on {address}{label}: {_reason(e)}") from None
    for s in sockets.secure_sockets + sockets.insecure_sockets:
        try:
            s.listen(hc.backlog)
        except OSError as e:
            raise StartupError(f"cannot listen on {address}{label}: {_reason(e)}") from None
    return sockets


def _urls(sockets: Sockets) -> str:
    urls = [f"https://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.secure_sockets]
    urls += [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets]
    return ", ".join(urls)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bascule")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _banner(config: Config, public: Sockets, admin: Sockets | None, workers: int) -> None:
    plugins = {p.instance for route in config.routes for p in route.plugins} | set(config.global_plugins)
    log.info(
        "bascule %s: %s: %d route%s, %d plugin%s enabled, %d worker%s",
        _version(),
        config.path,
        len(config.routes),
        "" if len(config.routes) == 1 else "s",
        len(plugins),
        "" if len(plugins) == 1 else "s",
        workers,
        "" if workers == 1 else "s",
    )
    log.info("public listener %s; admin listener %s", _urls(public), _urls(admin) if admin else "off")


_HELD = {signal.SIGHUP, signal.SIGTERM}  # a worker's signals, held while it starts


def _supervise(
    path: str | Path, sockets: Sockets, admin: Sockets | None, workers: int, fleet: FleetSettings | None = None
) -> int:
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(index: int) -> None:
        # The first worker serves the admin listener too, on the sockets bound here.
        first = index == 0
        # ... and follows the config store, if any: the others reload on the SIGHUP it has sent here.
        args = (str(path), sockets, first, admin if first else None, fleet if first else None)
        p = ctx.Process(target=_worker, args=args, daemon=False)
        # Until serve's handlers are in place, a SIGHUP or SIGTERM forwarded to a starting worker would
        # kill it (their default action): it inherits them blocked, and _signals releases them.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        procs[index] = p

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    # A scratch directory shared by this run's workers (bascule.rundir), removed when the run ends.
    with rundir.created():
        for i in range(workers):
            start(i)
        while True:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if not p.is_alive():
                    if stopping:
                        procs.pop(i)
                    else:
                        log.error("worker %d exited with %s; starting a new one", i, p.exitcode)
                        start(i)
            if stopping and not procs:
                return 0


def _worker(
    path: str, sockets: Sockets, admin: bool, admin_sockets: Sockets | None = None, fleet: FleetSettings | None = None
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for s in sockets.secure_sockets + sockets.insecure_sockets:
        s.listen(2048)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    available = discover()
    agent = FleetAgent(fleet, available) if fleet else None
    trio.run(
        partial(
            serve,
            path,
            available,
            sockets=sockets,
            admin=admin,
            admin_sockets=admin_sockets,
            supervised=True,
            fleet=agent,
        )
    )
