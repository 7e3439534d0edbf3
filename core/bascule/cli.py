"""The ``bascule`` command.

bascule --version                     print the version
bascule run [-c FILE] [--workers N]   serve
bascule validate [--offline] [--format text|json] FILE
                                      check a config; exit 1 with every error
                                      (--offline: env:/file: secrets are not read)
bascule routes [-c FILE]              each route, its matcher and plugin pipeline
bascule plugins                       installed plugins and the hooks they implement
bascule plugin new NAME [--dir DIR]   create a plugin distribution (default dir ./bascule-NAME)
bascule schema [-c FILE] [-o OUT]     JSON Schema of plugins.toml with the installed plugins' settings
bascule run --config-store URL [--node-id ID] [--state-dir DIR]
                                      serve a config store's newest version (docs/fleet.md)
bascule config push [--offline] [--keep N] FILE --store URL
                                      validate FILE (as validate) and publish it as the next version
bascule config rollback N --store URL publish version N's config again, as the next version
bascule fleet status --store URL [--format text|json]
                                      each gateway's version, error and heartbeat; exit 1 if one is
                                      behind or silent
(--store and --config-store default to $BASCULE_CONFIG_STORE)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bascule_sdk.redis import safe_url

from .admin import describe_plugins, describe_routes
from .config import ConfigError
from .configstore import KEEP, StoreUnavailable, Version, check_store_url, open_store
from .fleet import FleetSettings, default_state_dir, describe_fleet
from .registry import discover
from .runtime import check_config

DEFAULT_CONFIG = "plugins.toml"


def main(argv: list[str] | None = None) -> int:
    """The command; ``bascule routes | head -1`` ends quietly (no traceback) when the reader goes away."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The Python docs' recipe: stdout's reader is gone; nothing more is written to it
        # (also not by the interpreter's final flush), and the exit status says it did not finish.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


def _main(argv: list[str] | None) -> int:
    from .server import _version

    parser = argparse.ArgumentParser(prog="bascule", description="The Bascule API gateway.")
    parser.add_argument("--version", action="version", version=f"bascule {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a config")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    run.add_argument("--workers", type=int, default=None, help="worker processes (default: [gateway] workers)")
    run.add_argument(
        "--config-store", default=None, metavar="URL", help="serve this store's config, not -c (docs/fleet.md)"
    )
    run.add_argument("--node-id", default="", help="this gateway's name in fleet status (default: the host name)")
    run.add_argument("--state-dir", default=None, help="where the last applied config is kept (docs/fleet.md)")
    run.add_argument("--heartbeat", type=float, default=2.0, help="seconds between status reports (default: 2)")
    validate = sub.add_parser("validate", help="check a config file")
    validate.add_argument("file", nargs="?", default=DEFAULT_CONFIG)
    validate.add_argument(
        "--offline",
        action="store_true",
        help="do not read env:/file: secrets (check only how they are written), e.g. in CI",
    )
    validate.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: one JSON object on stdout (docs/config.md)"
    )
    routes = sub.add_parser("routes", help="list routes and their plugin pipelines")
    routes.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    sub.add_parser("plugins", help="list installed plugins, then the refused ones with why")
    plugin = sub.add_parser("plugin", help="plugin development tools")
    plugin_sub = plugin.add_subparsers(dest="action", required=True)
    new = plugin_sub.add_parser("new", help="create a plugin distribution that works out of the box")
    new.add_argument("name", help='the name used in plugins.toml, e.g. "add-header"')
    new.add_argument("--dir", default=None, help="directory to create (default: ./bascule-NAME)")
    schema = sub.add_parser("schema", help="print the JSON Schema of plugins.toml")
    schema.add_argument(
        "-c", "--config", default=None, help="also check that this config is valid (exit 1 with its errors if not)"
    )
    schema.add_argument("-o", "--output", default=None, help="write the schema to this file instead")
    _fleet_parsers(sub)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "run":
        from .server import run as serve

        return serve(args.config, args.workers, _fleet_settings(parser, args))
    if args.command in ("config", "fleet"):
        return _fleet_command(parser, args)
    if args.command == "plugin":
        return _plugin_new(args.name, args.dir)
    if args.command == "schema":
        return _schema(args.config, args.output)
    if args.command == "plugins":
        found = discover()
        for p in describe_plugins(found):
            print(f"{p['name']:<22} {p['version']:<8} {p['distribution']:<28} {', '.join(p['hooks'])}")
        for name, reason in sorted(found.broken.items()):
            print(f"{name:<22} refused: {reason}")
        return 0
    if args.command == "validate":
        return _validate(args.file, offline=args.offline, as_json=args.format == "json")
    try:
        config = check_config(args.config, discover())
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for r in describe_routes(config):
        target = r["service"] or "(handled by a plugin)"
        print(
            f"{r['name']}: {' '.join(r['methods'])} {' '.join(r['paths'])} "
            f"[{r['match']}] hosts={','.join(r['hosts'])} -> {target}"
        )
        for p in r["plugins"]:
            alias = f" (plugin {p['plugin']})" if p["plugin"] != p["instance"] else ""
            print(f"    {p['priority']:>6}  {p['instance']}{alias}")
    return 0


def _validate(path: str, *, offline: bool, as_json: bool) -> int:
    """``bascule validate``: exit 0 when valid, 1 with every problem."""
    try:
        config = check_config(path, discover(), offline=offline)
    except ConfigError as e:
        if as_json:
            print(json.dumps({"file": path, "valid": False, "errors": [p.as_dict() for p in e.problems]}, indent=2))
        else:
            print(e, file=sys.stderr)
        return 1
    if as_json:
        result = {
            "file": path,
            "valid": True,
            "errors": [],
            "routes": len(config.routes),
            "services": len(config.services),
        }
        if offline:
            result["unchecked"] = [p.as_dict() for p in config.unchecked]
        print(json.dumps(result, indent=2))
        return 0
    print(f"{path}: valid ({_count(len(config.routes), 'route')}, {_count(len(config.services), 'service')})")
    for p in config.unchecked:
        print(p)
    return 0


def _count(n: int, noun: str) -> str:
    """``"1 route"``, ``"2 routes"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fleet_parsers(sub: Any) -> None:
    store = {"default": os.environ.get("BASCULE_CONFIG_STORE"), "metavar": "URL", "help": "the config store"}
    config = sub.add_parser("config", help="publish configs to a config store").add_subparsers(
        dest="action", required=True
    )
    push = config.add_parser("push", help="validate a config (as validate) and publish it as the next version")
    push.add_argument("file")
    push.add_argument("--store", **store)
    push.add_argument("--offline", action="store_true", help="as validate --offline (the gateways read the secrets)")
    push.add_argument("--keep", type=int, default=KEEP, help=f"versions kept in the store (default {KEEP})")
    rollback = config.add_parser("rollback", help="publish an earlier version again, as the next version")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--store", **store)
    rollback.add_argument("--keep", type=int, default=KEEP, help=f"versions kept in the store (default {KEEP})")
    fleet = sub.add_parser("fleet", help="the gateways that follow a config store").add_subparsers(
        dest="action", required=True
    )
    status = fleet.add_parser("status", help="each gateway's version, last error and heartbeat")
    status.add_argument("--store", **store)
    status.add_argument("--format", choices=("text", "json"), default="text")


def _fleet_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> FleetSettings | None:
    """``bascule run``'s config store options; None without ``--config-store``."""
    url = args.config_store or os.environ.get("BASCULE_CONFIG_STORE")
    if not url:
        return None
    try:
        check_store_url(url)
    except ValueError as e:
        parser.error(f"--config-store: {e}")
    if args.heartbeat <= 0:
        parser.error("--heartbeat: must be more than 0")
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    return FleetSettings(url, state_dir, args.node_id, args.heartbeat)


def _fleet_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``bascule config push|rollback`` and ``bascule fleet status``."""
    import trio

    if not args.store:
        parser.error("--store URL (or $BASCULE_CONFIG_STORE) is required")
    try:
        check_store_url(args.store)
    except ValueError as e:
        parser.error(f"--store: {e}")
    if getattr(args, "keep", 1) < 1:
        parser.error("--keep: at least 1")
    try:
        if args.command == "fleet":
            return trio.run(_fleet_status, args.store, args.format == "json")
        if args.action == "rollback":
            return _rollback(args.store, args.version, args.keep)
        if _validate(args.file, offline=args.offline, as_json=False):
            print(f"{args.file}: not pushed", file=sys.stderr)
            return 1
        text = Path(args.file).read_text(encoding="utf-8")
        return trio.run(_publish, args.store, text, args.file, None, args.keep)
    except StoreUnavailable as e:
        print(f"bascule: the config store does not answer: {e}", file=sys.stderr)
        return 1


async def _publish(url: str, text: str, source: str, rollback_of: int | None, keep: int) -> int:
    async with open_store(url) as store:
        version = await store.publish(text, source=source, rollback_of=rollback_of, keep=keep)
    again = f" (version {rollback_of} again)" if rollback_of is not None else ""
    print(f"published {source} as version {version}{again} to {safe_url(url)}")
    return 0


async def _get(url: str, number: int) -> Version | None:
    async with open_store(url) as store:
        return await store.get(number)


def _rollback(url: str, number: int, keep: int) -> int:
    """Version ``number`` validated here (as ``validate``) and published again."""
    import tempfile

    import trio

    version = trio.run(_get, url, number)
    if version is None:
        print(f"bascule: {safe_url(url)} keeps no version {number}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"version-{number}.toml")
        path.write_text(version.text, encoding="utf-8")
        if _validate(str(path), offline=False, as_json=False):
            print(f"version {number}: not pushed", file=sys.stderr)
            return 1
    return trio.run(_publish, url, version.text, "rollback", number, keep)


async def _fleet_status(url: str, as_json: bool) -> int:
    async with open_store(url) as store:
        current = await store.current()
        nodes = describe_fleet(current, await store.statuses())
    if as_json:
        print(json.dumps({"store": safe_url(url), "version": current and current.version, "nodes": nodes}, indent=2))
    else:
        print(f"{safe_url(url)}: version {current.version if current else '(none)'}, {len(nodes)} gateways")
        for n in nodes:
            flags = [flag for flag in ("behind", "silent") if n[flag]]
            print(
                f"{n['node']:<24} version {n['version']!s:<5} applied {n['applied_at'] or '-':<24} "
                f"heartbeat {n['heartbeat']}{'  ' + ' '.join(f.upper() for f in flags) if flags else ''}"
            )
            if n["last_error"]:
                print(f"    version {n['error_version']} failed here: {n['last_error']}")
    return 1 if any(n["behind"] or n["silent"] for n in nodes) else 0


def _plugin_new(name: str, directory: str | None) -> int:
    import shlex

    from .scaffold import PluginNames, ScaffoldError, create_plugin

    try:
        target = create_plugin(name, directory)
    except ScaffoldError as e:
        print(f"bascule plugin new: {e}", file=sys.stderr)
        return 1
    names = PluginNames(name)
    print(f"Created {names.distribution} in {target}/ (plugin {name!r}, class {names.package}.{names.cls}).")
    print("Next:")
    # This interpreter's pip: bascule and bascule-sdk, not on PyPI, are already installed there.
    python = shlex.quote(sys.executable)
    print(f"    cd {shlex.quote(str(target))} && {python} -m pip install -e '.[test]' && {python} -m pytest")
    print(f"    then enable it on a route in plugins.toml: [routes.plugins.{name}]")
    return 0


def _schema(config: str | None, output: str | None) -> int:
    from .schema import config_schema

    available = discover()
    if config is not None:
        try:
            check_config(config, available)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
    text = json.dumps(config_schema(available), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
