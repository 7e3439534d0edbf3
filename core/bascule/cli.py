"""The ``bascule`` command.

    bascule run [-c FILE] [--workers N]   serve
    bascule validate FILE                 check a config; exit 1 with every error
    bascule routes [-c FILE]              each route, its matcher and plugin pipeline
    bascule plugins                       installed plugins and the hooks they implement
"""

from __future__ import annotations

import argparse
import logging
import sys

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
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "run":
        from .server import run as serve

        return serve(args.config, args.workers)
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
        print(f"{r['name']}: {' '.join(r['methods'])} {' '.join(r['paths'])} "
              f"[{r['match']}] hosts={','.join(r['hosts'])} -> {target}")
        for p in r["plugins"]:
            alias = f" (plugin {p['plugin']})" if p["plugin"] != p["instance"] else ""
            print(f"    {p['priority']:>6}  {p['instance']}{alias}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
