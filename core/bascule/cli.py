"""The ``bascule`` command.

bascule run [-c FILE] [--workers N]   serve
bascule validate FILE                 check a config; exit 1 with every error
bascule routes [-c FILE]              each route, its matcher and plugin pipeline
bascule plugins                       installed plugins and the hooks they implement
bascule plugin new NAME [--dir DIR]   create a plugin distribution (default dir ./bascule-NAME)
bascule schema [-c FILE] [-o OUT]     JSON Schema of plugins.toml with the installed plugins' settings
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .admin import describe_plugins, describe_routes
from .config import ConfigError, load_config
from .gateway import Runtime
from .registry import discover

DEFAULT_CONFIG = "plugins.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bascule", description="The Bascule API gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a config")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    run.add_argument("--workers", type=int, default=None, help="worker processes (default: [gateway] workers)")
    validate = sub.add_parser("validate", help="check a config file")
    validate.add_argument("file", nargs="?", default=DEFAULT_CONFIG)
    routes = sub.add_parser("routes", help="list routes and their plugin pipelines")
    routes.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    sub.add_parser("plugins", help="list installed plugins")
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
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "run":
        from .server import run as serve

        return serve(args.config, args.workers)
    if args.command == "plugin":
        return _plugin_new(args.name, args.dir)
    if args.command == "schema":
        return _schema(args.config, args.output)
    if args.command == "plugins":
        for p in describe_plugins(discover()):
            print(f"{p['name']:<22} {p['version']:<8} {p['distribution']:<28} {', '.join(p['hooks'])}")
        return 0
    path = args.file if args.command == "validate" else args.config
    try:
        config = load_config(path, discover())
        Runtime(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    if args.command == "validate":
        print(f"{path}: valid ({len(config.routes)} routes, {len(config.services)} services)")
        return 0
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
            Runtime(load_config(config, available))
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
