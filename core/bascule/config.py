"""plugins.toml: parsed with tomllib, validated whole, compiled into ``Config``.

Every problem in the file is collected and raised at once as ``ConfigError``,
one line each, in one form: ``FILE: SECTION: KEY: MESSAGE``, the section being
``gateway``, ``services.NAME``, ``plugins.NAME``, ``consumers.NAME``,
``route "NAME"`` (``routes[N]`` for a route without a name), and the key a
dotted path inside it (``[N]`` for an array item)::

    plugins.toml: route "orders": plugins.rate-limit.limit: expected an integer, got a string ('ten')

A TOML syntax error is ``FILE:LINE:COLUMN: invalid TOML: ...`` with the line shown.

Nothing here opens a socket: a config is valid or not before anything starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bascule_sdk import TOKEN, Consumer
from bascule_sdk.settings import (
    ByteSize,
    Duration,
    Problem,
    Secret,
    SettingsError,
    check,
    describe,
    did_you_mean,
    offline_secrets,
    parse,
    setting,
)

from .registry import InstalledPlugin, not_installed_message
from .routing import RouterEntry

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ConfiguredPlugin",
    "ConfiguredRoute",
    "ConsumerSettings",
    "GatewaySettings",
    "RouteSettings",
    "ServiceSettings",
    "compile_config",
    "layer_plugin_tables",
    "load_config",
    "parse_config",
]

RESERVED_PLUGIN_KEYS = ("plugin", "priority")
# Declared rules (``setting(pattern=...)``), so that ``bascule schema`` states them too.
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ADDRESS = rf"^[^\s]+:{_PORT}$"
TARGET_URL = rf"^https?://(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:{_PORT})?(/[^\s?#]*)?$"
_URL = "an http(s)://host[:port][/path] URL"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a config, as ``bascule validate --format json`` reports it.

    ``where`` is the section (``gateway``, ``services.users``, ``plugins.jwt``,
    ``route "orders"``, ``routes[2]``); ``route`` the route's name when it is
    one; ``line`` and ``column`` (1-based) for a TOML syntax error. Fields not
    known (a problem found after parsing) are ``None``.
    """

    file: str | None
    where: str | None
    key: str | None
    message: str
    route: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        file = self.file
        if file is not None and self.line is not None:
            file = f"{file}:{self.line}:{self.column}"
        return ": ".join(x for x in (file, self.where, self.key, self.message) if x)

    def as_dict(self) -> dict[str, str | int | None]:
        result: dict[str, str | int | None] = {
            "file": self.file,
            "where": self.where,
            "route": self.route,
            "key": self.key,
            "message": self.message,
        }
        if self.line is not None:
            result |= {"line": self.line, "column": self.column}
        return result


class ConfigError(Exception):
    """An invalid configuration; ``lines`` holds one message per problem, ``problems`` the same, structured."""

    def __init__(self, lines: list[str], problems: list[ConfigProblem] | None = None) -> None:
        self.lines = lines
        self.problems = problems if problems is not None else [ConfigProblem(None, None, None, x) for x in lines]
        super().__init__("\n".join(lines))

    @classmethod
    def of(cls, problems: list[ConfigProblem]) -> ConfigError:
        return cls([str(p) for p in problems], problems)


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: listeners and limits of the gateway itself."""

    listen: str = setting(
        "127.0.0.1:8080", "Address the public listener binds (host:port).", pattern=ADDRESS, expected="host:port"
    )
    admin: str | None = setting(
        None, "Address of the admin listener (health, routes); off if unset.", pattern=ADDRESS, expected="host:port"
    )
    admin_token: Secret | None = setting(None, "Bearer token required on the admin listener, if set (env:/file: too).")
    workers: int = setting(1, "Worker processes sharing the public port.", min=1)
    tls_cert: str | None = setting(None, "PEM certificate file; enables TLS (and HTTP/2 via ALPN).")
    tls_key: str | None = setting(None, "PEM private key file for tls_cert.")
    trusted_proxies: list[str] = setting([], "CIDRs whose X-Forwarded-*/Forwarded/X-Request-ID are believed.")
    max_body_size: ByteSize = setting(10 * 1024 * 1024, "Largest request body accepted, admin too (413 beyond).")
    max_header_size: ByteSize = setting(16 * 1024, "Largest request head (request line + headers) accepted.")
    buffer_size: ByteSize = setting(64 * 1024, "Bodies of known length up to this are buffered, larger ones stream.")
    read_timeout: Duration = setting(30.0, "Longest wait for bytes from a client.")
    keep_alive_timeout: Duration = setting(5.0, "Idle client connections are closed after this.")
    graceful_timeout: Duration = setting(30.0, "On shutdown, in-flight requests get this long to finish.")
    lingering_timeout: Duration = setting(2.0, "A closing connection reads and discards its client's bytes this long.")
    h2c: bool = setting(False, "Accept a cleartext 'Upgrade: h2c' to HTTP/2 (deprecated by RFC 9113 3.1).")

    def __post_init__(self) -> None:
        bad_cidrs = [c for c in self.trusted_proxies if not _is_network(c)]
        check(
            ((self.tls_cert is None) != (self.tls_key is None), "tls_key", "tls_cert and tls_key go together"),
            (self.admin is not None and self.admin == self.listen, "admin", "must differ from listen"),
            (bool(bad_cidrs), "trusted_proxies", f"not CIDRs: {', '.join(map(repr, bad_cidrs))}"),
        )


def _is_network(cidr: str) -> bool:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TargetSettings:
    """One target of a service, written as a table: ``{ url = "...", weight = 2 }``."""

    url: str = setting(
        doc="Base URL of the target: http(s)://host:port[/base/path].", pattern=TARGET_URL, expected=_URL
    )
    weight: int = setting(1, "Relative share of requests (and of hash-ring slots).", min=1)


@dataclass(frozen=True)
class ServiceSettings:
    """``[services.NAME]``: an upstream service, how to reach it, and how to survive its faults."""

    targets: list[str | TargetSettings] = setting(
        doc="Target URLs (strings) or {url, weight} tables.", min_items=1, pattern=TARGET_URL, expected=_URL
    )
    timeout: Duration = setting(30.0, "Total time for a target to start answering (504 beyond).")
    connect_timeout: Duration = setting(5.0, "Time to open a connection to a target.")
    read_timeout: Duration = setting(30.0, "Longest wait between two reads from the upstream.")
    max_connections: int = setting(100, "Connections per target; requests queue beyond it.", min=1)
    pool_timeout: Duration = setting(5.0, "Longest wait for a free connection (503 beyond).")
    keepalive_expiry: Duration = setting(60.0, "Idle upstream connections are closed after this.")
    balance: Literal["round-robin", "least-requests", "hash"] = setting(
        "round-robin",
        "How a target is chosen: weighted round-robin, fewest requests in flight "
        "per weight, or consistent hashing on hash_on (sticky).",
    )
    hash_on: str = setting(
        "ip",
        'Key of balance = "hash": "ip", "consumer" or "header:NAME" (falls back to the client IP when absent).',
        pattern=rf"^(ip|consumer|header:{TOKEN})$",
        expected='"ip", "consumer" or "header:NAME"',
    )
    retries: int = setting(2, "Further attempts, each on another target, after a failed one.", min=0)
    retry_on: list[int] = setting(
        [502, 503, 504], "Upstream statuses that are retried (connection failures always are).", min=100, max=599
    )
    retry_non_idempotent: bool = setting(
        False, "Also retry POST/PATCH after the request was sent (a refused connection is retried for every method)."
    )
    retry_budget: float = setting(0.2, "Retries allowed, as a share of the requests of the last 10 s.", min=0)
    retry_budget_min: int = setting(10, "Retries per second allowed whatever the budget.", min=0)
    max_failures: int = setting(
        5, "Consecutive failures that eject a target (0: never eject; a service's only target never is).", min=0
    )
    fail_on: list[int] = setting(
        [502, 503, 504],
        "Upstream statuses counted as failures (connection errors and timeouts always are).",
        min=100,
        max=599,
    )
    cool_off: Duration = setting(10.0, "How long an ejected target rests before one trial request.")
    health_path: str | None = setting(
        None,
        'Path probed by active health checks, e.g. "/healthz" (off if unset).',
        pattern="^/",
        expected="a path starting with '/'",
    )
    health_interval: Duration = setting(10.0, "Time between two probes of a target.", min=0.001)
    health_timeout: Duration = setting(2.0, "A probe without a 2xx/3xx answer within this fails.")
    healthy_threshold: int = setting(2, "Consecutive passed probes that bring a target back.", min=1)
    unhealthy_threshold: int = setting(3, "Consecutive failed probes that take a target out.", min=1)
    panic_threshold: float = setting(
        0.5,
        "Panic mode below this share of healthy targets (exactly at it: "
        "not): requests go to every target, held out or not (0: never).",
        min=0,
        max=1,
    )
    max_requests: int = setting(0, "Requests in flight to this service at once (0: no limit).", min=0)
    max_queue: int = setting(100, "Requests waiting beyond max_requests; more get 503 + Retry-After.", min=0)
    queue_timeout: Duration = setting(5.0, "Longest wait in that queue (503 + Retry-After beyond).")


@dataclass(frozen=True)
class WebSocketSettings:
    """``[routes.websocket]``: the route proxies WebSocket upgrades (RFC 6455; RFC 8441 over HTTP/2)."""

    max_message_size: ByteSize = setting(
        1024 * 1024, "Largest message either side may send (close 1009 beyond).", min=1
    )
    idle_timeout: Duration = setting(
        300.0, "A socket without a message either way for this long is closed (1001).", min=0.001
    )
    ping_interval: Duration = setting(
        30.0, "The gateway pings the client this often (0: never), so no NAT drops it.", min=0
    )
    max_connections: int = setting(1000, "Open WebSockets on this route at once (503 at the handshake beyond).", min=1)
    max_connections_per_consumer: int = setting(
        0, "Open WebSockets per consumer (client IP without one) on this route (0: no limit; 429 beyond).", min=0
    )


@dataclass(frozen=True)
class RouteSettings:
    """``[[routes]]``: what requests a route matches and where they go."""

    name: str = setting(doc="Unique name, used in logs, metrics and errors.", pattern=".", expected="a name")
    paths: list[str] = setting(
        doc='Paths matched, e.g. "/api/users" or "/rides/{id}".',
        min_items=1,
        pattern="^/",
        expected="a path starting with '/'",
    )
    match: Literal["prefix", "exact"] = setting("prefix", "prefix: the path and below; exact: the path only.")
    methods: list[str] = setting(
        [],
        "Methods matched (all if empty); GET implies HEAD.",
        pattern=f"^({'|'.join(HTTP_METHODS)})$",
        expected=f"a method ({', '.join(HTTP_METHODS)})",
    )
    hosts: list[str] = setting([], 'Host names matched, "*.example.com" allowed (all if empty).')
    service: str | None = setting(None, "Service to proxy to (optional when a plugin handles the route).")
    strip_path: bool = setting(False, "Remove the matched path prefix before forwarding.")
    preserve_host: bool = setting(False, "Send the client's Host upstream instead of the target's.")
    plugins: dict[str, Any] = setting({}, "Plugins on this route: tables layered over [plugins.X], or X = false.")
    websocket: WebSocketSettings | None = setting(None, "Proxy WebSocket upgrades ([routes.websocket]); else refused.")

    def __post_init__(self) -> None:
        check(
            (
                self.websocket is not None and bool(self.methods) and "GET" not in self.methods,
                "methods",
                "must include GET on a route that accepts WebSockets (the handshake is a GET)",
            ),
            (
                self.websocket is not None and self.service is None,
                "websocket",
                "a route that accepts WebSockets needs a service to proxy them to",
            ),
        )


@dataclass(frozen=True)
class ConsumerSettings:
    """``[consumers.NAME]``: a known API client."""

    id: str = setting("", "Stable identifier sent upstream (defaults to the name).")
    groups: list[str] = setting([], "Groups, for ACLs.")
    credentials: dict[str, Any] = setting({}, "Per auth plugin: [consumers.NAME.credentials.<plugin>].")


SECTIONS = ("consumers", "gateway", "plugins", "routes", "services")


@dataclass(frozen=True)
class ConfiguredPlugin:
    """One plugin instance as configured: which installed plugin, its validated settings, its
    priority (``runtime.Runtime`` makes the instance)."""

    instance: str
    plugin: InstalledPlugin
    settings: Any
    priority: int
    key: str  # identity: equal keys share one instance across routes


@dataclass(frozen=True)
class ConfiguredRoute:
    """One ``[[routes]]`` table, validated: its settings and its plugins (compiled into a
    ``runtime.CompiledRoute``)."""

    settings: RouteSettings
    plugins: tuple[ConfiguredPlugin, ...]  # highest priority first

    @property
    def name(self) -> str:
        return self.settings.name


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration."""

    path: str
    gateway: GatewaySettings
    services: Mapping[str, ServiceSettings]
    routes: tuple[ConfiguredRoute, ...]
    consumers: Mapping[str, Consumer]
    available: Mapping[str, InstalledPlugin]
    global_plugins: tuple[str, ...]
    #: Offline (``offline=True``): the checks skipped because they need a secret's value.
    unchecked: tuple[ConfigProblem, ...] = ()
    #: SHA-256 of the file's bytes (``sha256sum FILE``), set by ``load_config``.
    sha256: str = ""


def load_config(path: str | Path, available: Mapping[str, InstalledPlugin], *, offline: bool = False) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` naming every problem.

    ``offline``: ``env:``/``file:`` secrets are not read, only their syntax is
    checked (``bascule_sdk.settings.offline_secrets``); the checks that need
    their values are listed in ``Config.unchecked``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError.of([ConfigProblem(str(path), None, None, f"cannot read: {e.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError.of([ConfigProblem(str(path), None, None, f"not UTF-8 text (byte {e.start})")]) from None
    config = parse_config(text, str(path), available, offline=offline)
    return dataclasses.replace(config, sha256=hashlib.sha256(data).hexdigest())


def parse_config(
    text: str, filename: str, available: Mapping[str, InstalledPlugin], *, offline: bool = False
) -> Config:
    """Validate TOML ``text`` (``filename`` is only used in messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError.of([_syntax_error(text, filename, str(e))]) from None
    return compile_config(data, filename, available, offline=offline)


def _syntax_error(text: str, filename: str, message: str) -> ConfigProblem:
    """tomllib's ``"... (at line L, column C)"`` as ``FILE:L:C: invalid TOML: ...`` and the line, marked."""
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at is None:  # "(at end of document)"
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        message = message.removesuffix(" (at end of document)") + " at the end of the file"
    else:
        line, column = int(at[1]), int(at[2])
        message = message[: at.start()]
    source = [*text.splitlines(), ""][line - 1].expandtabs(1)
    shown = f"\n    {source}\n    {' ' * (column - 1)}^"
    return ConfigProblem(filename, None, None, f"invalid TOML: {message}{shown}", line=line, column=column)


def compile_config(
    data: dict[str, Any], filename: str, available: Mapping[str, InstalledPlugin], *, offline: bool = False
) -> Config:
    """Validate already-parsed TOML ``data`` (as ``tomllib`` returns it)."""
    if not offline:
        return _Compiler(filename, available).compile(data, filename)
    with offline_secrets() as skipped:
        compiler = _Compiler(filename, available, skipped)
        config = compiler.compile(data, filename)
    return dataclasses.replace(config, unchecked=tuple(compiler.unchecked))


def layer_plugin_tables(global_tables: Mapping[str, Any], route_tables: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The plugin tables in force on one route, by instance name.

    Precedence, lowest first:
    1. ``[plugins.X]`` applies to every route;
    2. ``[routes.plugins.X]`` (a table) enables X on this route, its keys
       layered over the global X's (tables merge key by key, other values
       replace);
    3. ``X = false`` under a route switches a global X off on it
       (``X = true`` enables X with the global or default settings).
    """
    tables = {n: dict(t) for n, t in global_tables.items() if isinstance(t, Mapping)}
    for name, value in route_tables.items():
        if value is False:
            tables.pop(name, None)
        elif value is True:
            tables.setdefault(name, {})
        elif isinstance(value, Mapping):
            tables[name] = _deep_merge(tables.get(name, {}), value)
    return tables


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


class _Compiler:
    def __init__(
        self, filename: str, available: Mapping[str, InstalledPlugin], skipped: list[Problem] | None = None
    ) -> None:
        self.filename = filename
        self.available = available
        self.errors: list[ConfigProblem] = []
        self.configured: dict[str, ConfiguredPlugin] = {}
        self.skipped = skipped  # offline: where offline_secrets() notes the checks it skips
        self.unchecked: list[ConfigProblem] = []

    def problem(self, where: str, key: str, message: str) -> ConfigProblem:
        route = where[len('route "') : -1] if where.startswith('route "') else None
        return ConfigProblem(self.filename, where, key or None, message, route)

    def error(self, where: str, key: str, message: str) -> None:
        problem = self.problem(where, key, message)
        if problem not in self.errors:
            self.errors.append(problem)

    def problems(self, where: str, exc: SettingsError, prefix: str = "") -> None:
        for p in exc.problems:
            self.error(where, ".".join(x for x in (prefix, p.key) if x), p.message)

    def parse(self, where: str, model: type, table: Any, prefix: str = "") -> Any:
        """``parse(model, table)``; offline, the checks it skipped are noted under ``where``."""
        before = len(self.skipped) if self.skipped is not None else 0
        try:
            return parse(model, table)
        finally:
            if self.skipped is not None:
                for p in self.skipped[before:]:
                    self.unchecked.append(self.problem(where, ".".join(x for x in (prefix, p.key) if x), p.message))

    def compile(self, data: dict[str, Any], path: str) -> Config:
        # Each section is checked on its own, so a bad one hides no problem in another.
        for key in data:
            if key not in SECTIONS:
                self.error(key, "", f"unknown key{did_you_mean(key, SECTIONS)} (known keys: {', '.join(SECTIONS)})")
        gateway = self._parse("gateway", GatewaySettings, data.get("gateway", {})) or GatewaySettings()
        services = self._parse_each("services", ServiceSettings, data.get("services", {}))
        consumers = self._parse_each("consumers", ConsumerSettings, data.get("consumers", {}))
        self.service_names = set(data.get("services", {})) if isinstance(data.get("services"), Mapping) else set()
        global_tables = self._global_plugins(self._table("plugins", data.get("plugins", {})))
        routes = data.get("routes", [])
        if not isinstance(routes, list):
            self.error("routes", "", f"expected an array of tables, got {describe(routes)}")
            routes = []
        consumer_objects = self._consumers(consumers)
        compiled = self._routes(routes, global_tables)
        if self.errors:
            raise ConfigError.of(self.errors)
        return Config(
            path=path,
            gateway=gateway,
            services=services,
            routes=tuple(compiled),
            consumers=consumer_objects,
            available=self.available,
            global_plugins=tuple(global_tables),
        )

    def _parse(self, where: str, model: type, table: Any) -> Any:
        try:
            return self.parse(where, model, table)
        except SettingsError as e:
            self.problems(where, e)
            return None

    def _table(self, where: str, value: Any) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        self.error(where, "", f"expected a table, got {describe(value)}")
        return {}

    def _parse_each(self, section: str, model: type, value: Any) -> dict[str, Any]:
        """``[section.NAME]`` tables parsed one by one; the valid ones."""
        parsed = {
            name: self._parse(f"{section}.{name}", model, table) for name, table in self._table(section, value).items()
        }
        return {name: v for name, v in parsed.items() if v is not None}

    def _global_plugins(self, tables: Mapping[str, Any]) -> dict[str, Any]:
        """Global tables, each checked on its own (installed, valid settings)."""
        result = {}
        for name, table in tables.items():
            where = f"plugins.{name}"
            if not isinstance(table, Mapping):
                self.error(where, "", f"expected a table, got {describe(table)}")
                continue
            self._configure(where, name, table)
            result[name] = table
        return result

    def _consumers(self, consumers: Mapping[str, ConsumerSettings]) -> dict[str, Consumer]:
        result = {}
        for name, c in consumers.items():
            creds: dict[str, Any] = {}
            for plugin_name, table in c.credentials.items():
                where = f"consumers.{name}"
                installed = self.available.get(plugin_name)
                if installed is None:
                    self.error(where, f"credentials.{plugin_name}", not_installed_message(plugin_name, self.available))
                    continue
                model = installed.cls.Credentials
                if model is None:
                    self.error(
                        where, f"credentials.{plugin_name}", f"plugin {plugin_name!r} takes no consumer credentials"
                    )
                    continue
                try:
                    creds[plugin_name] = self.parse(where, model, table, f"credentials.{plugin_name}")
                except SettingsError as e:
                    self.problems(where, e, f"credentials.{plugin_name}")
            result[name] = Consumer(name=name, id=c.id or name, groups=frozenset(c.groups), credentials=creds)
        return result

    def _routes(self, raw_routes: list[Any], global_tables: Mapping[str, Any]) -> list[ConfiguredRoute]:
        routes: list[ConfiguredRoute] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_routes):
            label = raw.get("name") if isinstance(raw, Mapping) else None
            where = f'route "{label}"' if isinstance(label, str) else f"routes[{i}]"
            try:
                settings = self.parse(where, RouteSettings, raw)
            except SettingsError as e:
                self.problems(where, e)
                settings = None
            raw = raw if isinstance(raw, Mapping) else {}
            service, plugins = raw.get("service"), raw.get("plugins", {})
            if isinstance(service, str) and service not in self.service_names:
                known = ", ".join(sorted(self.service_names)) or "none"
                hint = did_you_mean(service, self.service_names)
                self.error(where, "service", f"unknown service {service!r}{hint} (services: {known})")
            before = len(self.errors)
            configured = self._route_plugins(where, plugins, global_tables) if isinstance(plugins, Mapping) else []
            if settings is None:
                continue
            plugins_failed = len(self.errors) > before
            if settings.name in seen:
                self.error(where, "name", "another route has the same name")
            seen.add(settings.name)
            for p in settings.paths:
                try:
                    RouterEntry(p, None)
                except ValueError as e:
                    self.error(where, "paths", str(e))
            handles = any("handle" in p.plugin.hooks for p in configured)
            if settings.service is None and not handles and not plugins_failed:
                self.error(where, "service", "required: no plugin on this route handles requests itself")
            routes.append(ConfiguredRoute(settings, tuple(configured)))
        return routes

    def _route_plugins(
        self, where: str, route_tables: Mapping[str, Any], global_tables: Mapping[str, Any]
    ) -> list[ConfiguredPlugin]:
        for name, value in route_tables.items():
            if not isinstance(value, (bool, Mapping)):
                self.error(where, f"plugins.{name}", f"expected a table, true or false, got {describe(value)}")
            elif value is False and name not in global_tables and name not in self.available:
                # true reaches _configure (and its message) below; false would be ignored without a word
                self.error(where, f"plugins.{name}", not_installed_message(name, self.available))
        tables = layer_plugin_tables(global_tables, route_tables)
        configured = []
        for instance, table in tables.items():
            from_route = isinstance(route_tables.get(instance), Mapping)
            plugin = self._configure(
                where if from_route else f"plugins.{instance}",
                instance,
                table,
                global_tables.get(instance) if from_route else None,
            )
            if plugin is not None:
                configured.append(plugin)
        configured.sort(key=lambda p: (-p.priority, p.instance))
        return configured

    def _configure(
        self, where: str, instance: str, table: Mapping[str, Any], inherited: Mapping[str, Any] | None = None
    ) -> ConfiguredPlugin | None:
        """Validate one instance's table; ``inherited`` is the global table a route layered over."""
        prefix = f"plugins.{instance}" if where.startswith("route") else ""
        plugin_name = table.get("plugin", instance)
        installed = self.available.get(plugin_name) if isinstance(plugin_name, str) else None
        if installed is None:
            key = "plugin" if "plugin" in table else ""
            self.error(
                where, ".".join(x for x in (prefix, key) if x), not_installed_message(str(plugin_name), self.available)
            )
            return None
        priority = table.get("priority", installed.cls.priority)
        if not isinstance(priority, int) or isinstance(priority, bool):
            key = ".".join(x for x in (prefix, "priority") if x)
            self.error(where, key, f"expected an integer, got {describe(priority)}")
            return None
        settings_table = {k: v for k, v in table.items() if k not in RESERVED_PLUGIN_KEYS}
        identity = json.dumps([instance, plugin_name, priority, settings_table], sort_keys=True, default=str)
        if identity in self.configured:
            return self.configured[identity]
        try:
            settings = self.parse(where, installed.cls.Settings, settings_table, prefix)
        except SettingsError as e:
            # A bad value the route inherited from [plugins.X] is reported there, once.
            for p in e.problems:
                top_key = p.key.split(".")[0].split("[")[0]
                if inherited is not None and inherited.get(top_key) == table.get(top_key) is not None:
                    self.error(f"plugins.{instance}", p.key, p.message)
                else:
                    self.error(where, ".".join(x for x in (prefix, p.key) if x), p.message)
            return None
        plugin = ConfiguredPlugin(instance, installed, settings, priority, identity)
        self.configured[identity] = plugin
        return plugin


__all__ += ["Problem", "TargetSettings", "WebSocketSettings"]
