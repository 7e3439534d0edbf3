"""`bascule schema`: the JSON Schema of plugins.toml agrees with what the gateway accepts."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from bascule.cli import main
from bascule.config import (
    TARGET_URL,
    ConfigError,
    ConsumerSettings,
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
    compile_config,
    parse_config,
)
from bascule.registry import discover
from bascule.runtime import check_config
from bascule.schema import config_schema, type_label
from bascule_sdk import ByteSize, Duration, Plugin, Secret, hookimpl, setting
from bascule_sdk.settings import (
    Converter,
    Model,
    TypeSpec,
    Unsupported,
    model_fields,
    parse_byte_size,
    parse_duration,
    parse_header_name,
    parse_header_value,
    resolve_secret,
    type_spec,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Window:
    size: int = setting(10, "Requests per window.")
    length: Duration = setting(1.0, "Window length.")


@dataclass(frozen=True)
class Everything:
    name: str = setting(doc="A required string.")
    count: int = setting(3, "An integer.")
    ratio: float = setting(0.5, "A number.")
    enabled: bool = setting(True, "A boolean.")
    mode: Literal["fast", "safe"] = setting("safe", "One of two.")
    timeout: Duration = setting(5.0, "A duration.")
    limit: ByteSize = setting(1024, "A size.")
    token: Secret | None = setting(None, "A secret.")
    tags: list[str] = setting([], "Strings.")
    weights: dict[str, int] = setting({}, "Integers by name.")
    window: Window = setting(Window(), "A nested table.")


class Sample(Plugin):
    name = "sample"
    Settings = Everything

    @hookimpl
    async def on_request(self, ctx):
        return None


def gateway_config(plugin_table: str) -> str:
    return f"""
        [services.api]
        targets = ["http://127.0.0.1:9000"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.sample]
        {plugin_table}
    """


def schema_accepts(schema: dict, text: str) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(tomllib.loads(text))


def gateway_accepts(available: dict, text: str) -> bool:
    try:
        parse_config(text, "plugins.toml", available)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    ("table", "valid"),
    [
        ('name = "a"', True),
        ('name = "a"\ncount = 7\nratio = 1\nenabled = false\nmode = "fast"', True),
        ('name = "a"\ntimeout = "250ms"\nlimit = "64KiB"\ntoken = "env:HOME"', True),
        ('name = "a"\ntimeout = 3\nlimit = 2048', True),
        ('name = "a"\ntags = ["x", "y"]\nweights = { a = 1 }\nwindow = { size = 5, length = "1m" }', True),
        ('name = "a"\npriority = 5', True),
        ('name = "a"\nstrip-me = 1', False),
        ("name = 1", False),
        ('name = "a"\ncount = "3"', False),
        ('name = "a"\nenabled = "yes"', False),
        ('name = "a"\nmode = "slow"', False),
        ('name = "a"\ntimeout = "5 parsecs"', False),
        ('name = "a"\nlimit = "a lot"', False),
        ('name = "a"\ntags = "x"', False),
        ('name = "a"\nweights = { a = "heavy" }', False),
        ('name = "a"\nwindow = { size = 5, colour = "red" }', False),
        ('name = "a"\npriority = "high"', False),
    ],
)
def test_schema_agrees_with_the_gateway(table, valid):
    available = discover([Sample], entry_points=False)
    schema = config_schema(available)
    text = gateway_config(table)
    assert gateway_accepts(available, text) is valid
    assert schema_accepts(schema, text) is valid


def test_required_plugin_keys_are_left_to_the_gateway():
    # A route's table is layered over [plugins.sample], which may hold the required key: a
    # schema cannot see across tables, so it accepts what only the gateway can reject.
    available = discover([Sample], entry_points=False)
    assert schema_accepts(config_schema(available), gateway_config(""))
    assert not gateway_accepts(available, gateway_config(""))
    assert gateway_accepts(available, '[plugins.sample]\nname = "a"' + gateway_config(""))


def test_the_schema_is_a_valid_json_schema_with_docs_and_defaults():
    schema = config_schema(discover([Sample], entry_points=False))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["plugins"]["properties"]["sample"] == {"$ref": "#/$defs/plugin.sample"}
    sample = schema["$defs"]["plugin.sample"]
    assert sample["properties"]["timeout"]["description"] == "A duration."
    assert sample["properties"]["timeout"]["default"] == 5.0
    assert sample["properties"]["window"]["properties"]["length"]["description"] == "Window length."
    route = schema["properties"]["routes"]["items"]
    assert route["required"] == ["name", "paths"]
    assert route["properties"]["strip_path"]["description"].startswith("Remove the matched path prefix")


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('[gateway]\nworkers = 2\nmax_body_size = "1MiB"', True),
        ('[gateway]\nworkers = "two"', False),
        ('[gateway]\nlisten_on = "0.0.0.0:80"', False),
        ('[gateway]\nread-timeout = "5s"', True),  # - and _ are the same in keys
        ('[services.a]\ntargets = ["http://x:1", { url = "http://y:2", weight = 2 }]', True),
        ('[services.a]\ntimeout = "5s"', False),  # targets is required
        ('[services.a]\ntargets = ["http://x:1"]\nbalance = "random"', False),
        ('[[routes]]\nname = "r"\nservice = "a"', False),  # paths is required
        ('[[routes]]\nname = "r"\npaths = ["/r"]\nmatch = "regex"', False),
        ("[surprise]\nx = 1", False),
    ],
)
def test_core_sections(text, valid):
    schema = config_schema(discover([Sample], entry_points=False))
    assert schema_accepts(schema, text) is valid


def test_plugin_switches_and_aliases():
    schema = config_schema(discover([Sample], entry_points=False))
    routes = """
        [[routes]]
        name = "r"
        paths = ["/r"]
        [routes.plugins]
        sample = false
        [routes.plugins.second]
        plugin = "sample"
        name = "b"
    """
    assert schema_accepts(schema, routes)
    assert not schema_accepts(schema, routes.replace('plugin = "sample"', 'plugin = "absent"'))
    assert not schema_accepts(schema, routes.replace('name = "b"', "name = 2"))
    assert schema_accepts(schema, '[plugins.second]\nplugin = "sample"\nname = "x"')
    assert not schema_accepts(schema, '[plugins.second]\nname = "x"')  # which plugin is it?
    assert not schema_accepts(schema, "[plugins]\nsample = true")  # true/false only under a route


def test_schema_command_prints_installed_plugins(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    installed = {name for name in discover() if not name.startswith("_")}
    assert set(schema["properties"]["plugins"]["properties"]) == installed


def test_schema_command_checks_a_config_and_writes_a_file(tmp_path, capsys):
    good, bad, out = tmp_path / "good.toml", tmp_path / "bad.toml", tmp_path / "schema.json"
    good.write_text(
        '[services.a]\ntargets = ["http://127.0.0.1:1"]\n[[routes]]\nname = "a"\npaths = ["/a"]\nservice = "a"\n'
    )
    bad.write_text("[gateway]\nworkers = 0\n")
    assert main(["schema", "-c", str(bad)]) == 1
    assert "workers: must be at least 1" in capsys.readouterr().err
    assert main(["schema", "-c", str(good), "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert schema_accepts(schema, good.read_text())


def test_the_default_config_matches_the_schema():
    available = discover()
    text = (ROOT / "plugins.toml").read_text()
    try:
        parse_config(text, "plugins.toml", available)
    except ConfigError as e:
        pytest.skip(f"plugins.toml does not load in this environment: {e}")
    errors = [
        e.message for e in jsonschema.Draft202012Validator(config_schema(available)).iter_errors(tomllib.loads(text))
    ]
    assert errors == []


# -- property: the schema and `bascule validate` accept and reject the same configs ------------------

# Values of each kind, the valid next to the invalid; a declared pattern also draws strings that match it.
VOCABULARY: dict[Any, list[Any]] = {
    bool: [True, False, "yes"],
    int: [-5, -1, 0, 1, 2, 99, 100, 599, 600, 10**6, "3", 1.5],
    float: [-0.5, 0, 0.25, 1, 1.5, "0.5"],
    str: ["", "x", "/x", "api/x", "ip", "header:x-id", "GET", "FETCH", "127.0.0.1:80", "h:99999", True],
    "duration": [
        "0s",
        "250ms",
        "999ms",
        "1000ms",
        "1s",
        "0.5",
        "1.0",
        "0.01m",
        "0.02m",
        "1m",
        "2h",
        "1d",
        0,
        0.5,
        1,
        90,
        -1,
        "soon",
    ],
    "size": ["0", "1", "1000", "1024", "1KB", "1KiB", "64KiB", "1MB", 0, 1023, 1024, -1, "lots"],
    "secret": ["a-literal-secret", 7],
    "header name": ["x-id", "X-Api-Key", "*", "", "a b", "b:c", "é", 5],
    "header value": ["no-store", "max-age=60, public", "a\tb", "", "line\nbreak", "nul\x00", "\x7f", "é", "€", 5],
    "url": [
        "http://127.0.0.1:1",
        "https://svc.internal/base",
        "http://[::1]:8080/",
        "ftp://x",
        "http://:80",
        "http://h:1?q=1",
        "http://h:70000",
    ],
}
# Keys whose rules span several keys or tables, which no per-table schema can state (left to `validate`).
CROSS_CHECKED = {
    GatewaySettings: {"admin", "tls_cert", "tls_key", "trusted_proxies"},  # admin != listen; cert with key; CIDRs
    RouteSettings: {"name", "paths", "service", "plugins", "methods", "websocket"},  # unique; path patterns;
    # a declared service; GET and a service for WebSockets; plugins below
    ConsumerSettings: {"credentials"},  # per plugin
}


@dataclass(frozen=True)
class Bounded:
    limit: int = setting(10, "At least 1.", min=1)
    window: Duration = setting(60.0, "Sub-second windows refused.", min=1)
    burst: ByteSize = setting(4096, "At least 1 KiB.", min=1024)
    ratio: float = setting(0.5, "Between 0 and 1.", min=0, max=1)
    mode: Literal["fast", "safe"] = setting("safe", "One of two.")
    path: str = setting("/", "A path.", pattern="^/", expected="a path")
    codes: list[int] = setting([429], "Statuses.", min=400, max=599, min_items=1)


class BoundedPlugin(Plugin[Bounded]):
    name = "bounded"
    Settings = Bounded

    @hookimpl
    async def on_request(self, ctx):
        return None


def values(tp: Any, meta: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values for a field of type ``tp`` (declared rules ``meta``), valid and not."""
    if get_origin(tp) in (Union, types.UnionType):
        return st.one_of([values(a, meta) for a in get_args(tp) if a is not type(None)])
    if get_origin(tp) is Annotated:
        fn = next(e.fn for e in get_args(tp)[1:] if isinstance(e, Converter))
        kind = {
            parse_duration: "duration",
            parse_byte_size: "size",
            resolve_secret: "secret",
            parse_header_name: "header name",
            parse_header_value: "header value",
        }[fn]
        return st.sampled_from(VOCABULARY[kind])
    if get_origin(tp) is Literal:
        return st.sampled_from([*get_args(tp), "bogus"])
    if get_origin(tp) is list:
        return st.lists(values(get_args(tp)[0], meta), max_size=3) | st.just("not a list")
    if get_origin(tp) is dict:
        return st.dictionaries(st.sampled_from(["a", "b"]), values(get_args(tp)[1], meta), max_size=2)
    if dataclasses.is_dataclass(tp):
        return tables(tp)
    if tp is str and meta.get("pattern") == TARGET_URL:
        return st.sampled_from(VOCABULARY["url"])
    if tp is str and "pattern" in meta:
        return st.sampled_from(VOCABULARY[str]) | st.from_regex(meta["pattern"])
    return st.sampled_from(VOCABULARY.get(tp, [1, "x", [], {}]))  # Any


def sometimes(n: int) -> st.SearchStrategy[bool]:
    """True once in ``n`` draws (``st.integers`` would favour its bounds)."""
    return st.sampled_from([False] * (n - 1) + [True])


# Valid values of the required keys that have no default.
REQUIRED = {"targets": ["http://127.0.0.1:1"], "url": "http://127.0.0.1:2"}


def tables(model: type) -> st.SearchStrategy[dict[str, Any]]:
    """Tables of ``model``: its required keys, mostly a few optional ones, rarely a misspelt one."""
    hints = typing.get_type_hints(model, include_extras=True)
    fields = [f for f in dataclasses.fields(model) if f.init and f.name not in CROSS_CHECKED.get(model, set())]
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    optional = [f for f in fields if f not in required]

    @st.composite
    def table(draw: st.DrawFn) -> dict[str, Any]:
        result = {f.name: REQUIRED[f.name] for f in required}
        if required and draw(sometimes(4)):
            result[required[0].name] = draw(values(hints[required[0].name], required[0].metadata))
        count = min(len(optional), draw(st.sampled_from([0, 0, 1, 1, 2])))
        for f in draw(st.lists(st.sampled_from(optional), unique=True, min_size=count, max_size=count)):
            key = f.name.replace("_", "-") if draw(st.booleans()) else f.name
            result[key] = draw(values(hints[f.name], f.metadata))
        if draw(sometimes(20)):
            result[fields[0].name + "x"] = 1  # a misspelt key
        return result

    return table()


@st.composite
def plugin_tables(draw: st.DrawFn, *, route: bool, instances: Collection[str] = ()) -> dict[str, Any]:
    """``[plugins]`` or a route's ``plugins``: the plugin by its name, a second instance, a misspelt
    name. ``instances``: the names ``[plugins]`` has, which a route's table may layer over."""
    result: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["bounded", "second", "bounde"]), unique=True, max_size=2)):
        table = draw(tables(Bounded))
        # In a route, a table without `plugin` under a name no plugin has: only `validate` can look
        # for the [plugins.X] instance it layers over. Drawn only where there is one.
        if name != "bounded" and (not draw(sometimes(4)) or (route and name not in instances)):
            table["plugin"] = draw(st.sampled_from(["bounded", "bounded", "absent"]))
        if draw(sometimes(6)):
            table["priority"] = draw(st.sampled_from([5, "high"]))
        # `X = true/false` under a name no plugin has: only `validate` can look for a [plugins.X] it refers to.
        switch = route and name == "bounded" and draw(st.booleans())
        result[name] = draw(st.booleans()) if switch else table
    return result


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {"services": {"svc": draw(tables(ServiceSettings))}}
    if draw(st.booleans()):
        config["gateway"] = draw(tables(GatewaySettings))
    if draw(st.booleans()):
        config["plugins"] = draw(plugin_tables(route=False))
    if draw(st.booleans()):
        config["consumers"] = {"alice": draw(tables(ConsumerSettings))}
    routes = []
    for i in range(draw(st.integers(0, 2))):
        route = draw(tables(RouteSettings)) | {"name": f"r{i}", "paths": [f"/r{i}"], "service": "svc"}
        if draw(st.booleans()):
            route["plugins"] = draw(plugin_tables(route=True, instances=config.get("plugins", {})))
        routes.append(route)
    config["routes"] = routes
    if draw(sometimes(20)):
        config["servces"] = {}
    return config


@pytest.mark.slow
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
@example(  # a route layering over the [plugins] instance `second` (no `plugin` key): valid
    {
        "services": {"svc": {"targets": ["http://127.0.0.1:1"]}},
        "plugins": {"bounded": {}, "second": {"plugin": "bounded"}},
        "routes": [{"name": "r0", "paths": ["/r0"], "service": "svc", "plugins": {"bounded": {}, "second": {}}}],
    }
)
def test_the_schema_and_validate_accept_and_reject_the_same_configs(config):
    available = discover([BoundedPlugin], entry_points=False)
    try:
        check_config(compile_config(config, "plugins.toml", available), available)
        errors = []
    except ConfigError as e:
        errors = e.lines
    schema_errors = [e.message for e in jsonschema.Draft202012Validator(config_schema(available)).iter_errors(config)]
    assert (not schema_errors) == (not errors), f"schema: {schema_errors}\nvalidate: {errors}"


@pytest.mark.parametrize(
    ("table", "valid"),
    [
        ('window = "1s"', True),
        ('window = "999ms"', False),
        ('window = "1000ms"', True),
        ('window = "0.01m"', False),
        ('window = "0.0167m"', True),
        ("window = 0.5", False),
        ('burst = "1KiB"', True),
        ('burst = "1KB"', False),
        ("burst = 1023", False),
        ("ratio = 1.5", False),
        ("limit = -5", False),
        ('path = "x"', False),
        ("codes = []", False),
        ("codes = [399]", False),
    ],
)
def test_declared_rules_agree_in_their_string_forms(table, valid):
    available = discover([BoundedPlugin], entry_points=False)
    text = f'[plugins.bounded]\n{table}\n[services.a]\ntargets = ["http://127.0.0.1:1"]\n'
    assert gateway_accepts(available, text) is valid
    assert schema_accepts(config_schema(available), text) is valid


# -- the bundled plugins: a rule of one value is declared on its field, so the schema states it ---------

BUNDLED = (
    "acl",
    "aggregate",
    "cache",
    "cors",
    "jwt",
    "key-auth",
    "logging",
    "opentelemetry",
    "prometheus",
    "rate-limit",
    "request-transformer",
    "ws-rate-limit",
)
HMAC_SECRET = "k" * 32


@dataclass(frozen=True)
class Part:
    """One settings model of a bundled plugin, where it sits, and a valid table of it."""

    plugin: str
    path: tuple[str | int, ...]  # ("credentials",): a consumer's credentials; ("backends", 0): a list item
    base: dict[str, Any]
    # Keys whose rule spans several keys, a table elsewhere, or that no setting() can state (see below).
    skip: frozenset[str] = frozenset()
    around: dict[str, Any] | None = None  # a nested part: the plugin's table around it (default: its base)

    @property
    def credentials(self) -> bool:
        return self.path == ("credentials",)

    def model(self, available: Mapping[str, Any]) -> type:
        cls = available[self.plugin].cls
        if self.credentials:
            return cls.Credentials
        model = cls.Settings
        for step in self.path:
            if isinstance(step, str):  # a nested table, or (then an index) a list of tables
                tp = typing.get_type_hints(model)[step]
                model = get_args(tp)[0] if get_origin(tp) is list else tp
        return model


def part_config(part: Part, table: dict[str, Any]) -> dict[str, Any]:
    """A whole config with ``table`` in its place: under a route, or a consumer's credentials."""
    route: dict[str, Any] = {"name": "r", "paths": ["/r"], "service": "svc"}
    config: dict[str, Any] = {"services": {"svc": {"targets": ["http://127.0.0.1:1"]}}, "routes": [route]}
    settings = next(p for p in PARTS if p.plugin == part.plugin and p.path == ()).base
    settings = settings if part.around is None else part.around
    if part.credentials:
        config["consumers"] = {"alice": {"credentials": {part.plugin: table}}}
        route["plugins"] = {part.plugin: settings}
        return config
    inner: Any = table
    for step in reversed(part.path):
        inner = [inner] if isinstance(step, int) else settings | {step: inner}
    route["plugins"] = {part.plugin: inner}
    return config


# A rule of one value that no setting() can state stays in __post_init__, listed here with why; every
# other key is drawn below, so a rule of one value written only in __post_init__ fails the property.
UNDECLARABLE = {
    ("cache", "statuses"): "206 and 304 are refused inside the declared range",
    ("cache", "targeted_cache_control"): "a name or a list of names, minus Cache-Control and Expires",
    ("cache", "redis_url"): "a secret, checked as a Redis URL once resolved",
    ("key-auth", "keys"): 'each "sha256:<hex>": a pattern would quote a key pasted unhashed in its message',
    ("logging", "output"): "a writable file",
    ("rate-limit", "window"): "a whole number of seconds",
    ("rate-limit", "key"): "a key chain (ip, header:NAME, a+b...)",
    ("request-transformer", "headers"): "names and templates inside tables",
    ("request-transformer", "query"): "names inside tables",
    ("aggregate", "query"): "templates",
    ("aggregate", "path"): "a template whose characters outside placeholders are percent-encoded",
    ("aggregate", "mapping"): "renames of top-level fields (table keys and values)",
    ("jwt", "claim_headers"): "header names as table values",
}
PARTS = (
    Part("jwt", ("credentials",), {"subjects": ["alice"]}),
    Part("key-auth", ("credentials",), {"keys": ["sha256:" + "0" * 64]}, frozenset({"keys"})),
    Part("acl", (), {"allow": ["staff"]}, frozenset({"allow"})),  # allow or deny, never both
    Part(
        "aggregate",
        (),
        {"backends": [{"name": "a", "service": "svc"}]},
        frozenset({"backends", "pass_status"}),  # names unique, placeholders; passing a status needs one backend
    ),
    Part(
        "aggregate",
        ("backends", 0),
        {"name": "a", "service": "svc"},
        # a declared service; placeholders name route parameters and earlier backends; within the route's
        # timeout; allow or deny
        frozenset({"service", "path", "query", "mapping", "timeout", "deny"}),
    ),
    Part(
        "cache",
        (),
        {},
        frozenset({"backend", "redis_url", "max_size", "max_object_size", "statuses", "targeted_cache_control"}),
    ),
    Part("cors", (), {}, frozenset({"credentials"})),  # credentials need explicit origins
    Part(
        "jwt",
        (),
        {"keys": [{"secret": HMAC_SECRET}]},
        # at least one key or JWKS; a header, cookie or query; a declared consumer
        frozenset({"keys", "jwks", "header", "anonymous", "claim_headers"}),
    ),
    Part("jwt", ("jwks", 0), {"url": "https://idp.example/jwks"}),
    Part("key-auth", (), {}, frozenset({"headers", "anonymous"})),  # a header, query or scheme; a declared consumer
    Part("logging", (), {}, frozenset({"output", "headers", "sensitive_headers"})),  # credentials never logged
    Part("opentelemetry", (), {}, frozenset({"max_queue_size", "max_export_batch_size"})),  # batch within the queue
    Part("prometheus", (), {}),
    Part(
        "rate-limit",
        (),
        {"limit": 10, "window": "1m"},
        # limit/window/burst or limits; at most 1000000 per second; burst with gcra only; Redis
        frozenset({"window", "limits", "burst", "key", "backend", "redis_url"}),
    ),
    Part("rate-limit", ("limits", 0), {"limit": 10, "window": "1m"}, frozenset({"window", "burst"}), around={}),
    Part("request-transformer", (), {"path": "/v2"}, frozenset({"path", "headers", "query"})),  # path parameters
    Part("ws-rate-limit", (), {"limit": 10, "window": "1s"}),
)


def settings_models(model: type) -> list[type]:
    """``model`` and the models nested in it (as a table or a list of tables)."""
    found = [model]
    hints = typing.get_type_hints(model)
    for tp in (hints[f.name] for f in dataclasses.fields(model) if f.init):
        inner = get_args(tp)[0] if get_origin(tp) is list else tp
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            found += settings_models(inner)
    return found


def test_every_bundled_settings_model_is_drawn():
    available = discover()
    assert set(BUNDLED) <= set(available)
    drawn = {part.model(available) for part in PARTS}
    for name in BUNDLED:
        cls = available[name].cls
        for model in settings_models(cls.Settings) + (settings_models(cls.Credentials) if cls.Credentials else []):
            # jwt's keys: exactly one of secret, pem, jwk, each checked as a key; field rules: all.
            if model.__name__ not in ("KeyConfig", "FieldRules", "HeaderRules"):
                assert model in drawn, f"{name}: {model.__name__} is not drawn by the property test"
    for part in PARTS:
        names = {f.name for f in dataclasses.fields(part.model(available))}
        assert part.skip <= names, f"{part.plugin} {part.path}: no key(s) {sorted(part.skip - names)}"
    for plugin, key in UNDECLARABLE:
        assert any(p.plugin == plugin and key in p.skip for p in PARTS), (plugin, key)


@pytest.mark.parametrize("part", PARTS, ids=lambda p: "/".join(map(str, (p.plugin, *p.path))))
def test_the_table_each_bundled_part_is_drawn_from_is_valid(part):
    available = discover()
    check_config(compile_config(part_config(part, part.base), "plugins.toml", available), available)


def violations(tp: Any, meta: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """Values breaking each rule declared on a field (of type ``tp``), with the message they get."""
    if get_origin(tp) in (Union, types.UnionType):
        alternatives = [a for a in get_args(tp) if a is not type(None)]
        if len(alternatives) > 1:  # a schema cannot state a rule of one alternative: none is declared on these
            assert not {"min", "max", "pattern", "min_items"} & set(meta), f"a rule on {tp}"
            return []
        (tp,) = alternatives
    if get_origin(tp) is list:
        items = violations(get_args(tp)[0], {**meta, "min_items": None})
        empty = [([], "must not be empty" if meta.get("min_items") == 1 else "must have at least")]
        return (empty if meta.get("min_items") else []) + [([value], message) for value, message in items]
    found: list[tuple[Any, str]] = []
    whole = tp is int or tp is ByteSize
    low, high = meta.get("min"), meta.get("max")
    if low is not None:
        found.append((low - 1 if whole else (low / 2 if low > 0 else low - 0.5), "must be "))
    if high is not None:
        found.append((high + 1 if whole else high + 0.5, "must be "))
    if "pattern" in meta:
        candidates = ["", " ", "a b", "x\ny", "?", "a..b", "x", "/x", "ftp://x", "query", '"q"', "HS256"]
        bad = next(c for c in candidates if not re.search(meta["pattern"], c))
        found.append((bad, f"expected {meta['expected']}"))
    return found


def declared_violations() -> list[tuple[Part, str, Any, str]]:
    available = discover()
    cases = []
    for part in PARTS:
        model = part.model(available)
        hints = typing.get_type_hints(model, include_extras=True)
        for f in dataclasses.fields(model):
            for value, message in violations(hints[f.name], f.metadata) if f.init else []:
                cases.append((part, f.name, value, message))
    return cases


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    declared_violations(),
    ids=lambda x: "/".join(map(str, (x.plugin, *x.path))) if isinstance(x, Part) else repr(x)[:30],
)
def test_a_value_breaking_a_declared_rule_of_a_bundled_plugin_is_refused_by_both(part, key, value, message):
    available = discover()
    config = part_config(part, part.base | {key: value})
    with pytest.raises(ConfigError) as e:
        check_config(compile_config(config, "plugins.toml", available), available)
    (line,) = e.value.lines
    assert f".{key}" in line or f"{key}" in line.split(": ")[2], line
    assert message in line, line
    assert not jsonschema.Draft202012Validator(config_schema(available)).is_valid(config)


def test_the_bundled_plugins_declare_their_bounds():
    # The issue's examples: rate-limit's limit and windows, refused by the schema as by validate.
    available = discover()
    part = next(p for p in PARTS if p.plugin == "rate-limit" and p.path == ())
    schema = jsonschema.Draft202012Validator(config_schema(available))
    for table in ({"limit": 0, "window": "1m"}, {"limit": 10, "window": "500ms"}, {"limit": 10, "window": 0.5}):
        assert not schema.is_valid(part_config(part, table)), table
        with pytest.raises(ConfigError, match="must be at least"):
            compile_config(part_config(part, table), "plugins.toml", available)


@st.composite
def part_tables(draw: st.DrawFn) -> tuple[Part, dict[str, Any]]:
    """A bundled plugin's part: its valid table with a few keys drawn (valid or not), rarely a misspelt one."""
    part = draw(st.sampled_from(PARTS))
    model = part.model(discover())
    hints = typing.get_type_hints(model, include_extras=True)
    drawable = [f for f in dataclasses.fields(model) if f.init and f.name not in part.skip]
    table = dict(part.base)
    count = min(len(drawable), draw(st.sampled_from([1, 1, 2, 3])))
    for f in draw(st.lists(st.sampled_from(drawable), unique=True, min_size=count, max_size=count)) if count else []:
        key = f.name.replace("_", "-") if draw(st.booleans()) else f.name
        table.pop(f.name, None)
        table[key] = draw(values(hints[f.name], f.metadata))
    if draw(sometimes(20)):
        table["colour"] = "red"
    return part, table


@pytest.mark.slow
@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(part_tables())
def test_the_schema_and_validate_agree_on_the_bundled_plugins(drawn):
    part, table = drawn
    available = discover()
    config = part_config(part, table)
    try:
        check_config(compile_config(config, "plugins.toml", available), available)
        errors = []
    except ConfigError as e:
        errors = e.lines
    schema_errors = [e.message for e in jsonschema.Draft202012Validator(config_schema(available)).iter_errors(config)]
    assert (not schema_errors) == (not errors), f"{part.plugin} {table}\nschema: {schema_errors}\nvalidate: {errors}"


# -- the type grammar: one spec per type, which parse, the schema and the docs all read ----------------


MASS_UNITS = {"g": 0.001, "kg": 1.0, "t": 1000.0}
MASS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|kg|t)?\s*$")


def parse_mass(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and (m := MASS.match(value)):
        return float(m[1]) * MASS_UNITS.get(m[2] or "kg", 1.0)
    raise ValueError(f'expected a mass like "250g" or "2kg", got {value!r}')


Mass = Annotated[
    float,
    Converter(
        parse_mass,
        'mass ("250g", "2kg")',
        schema={"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": MASS.pattern}]},
        units=MASS_UNITS,
        unit=" kg",
    ),
]


@dataclass(frozen=True)
class Parcel:
    weight: Mass = setting(2.0, "At least a kilogram.", min=1)


class ParcelPlugin(Plugin[Parcel]):
    name = "parcel"
    Settings = Parcel

    @hookimpl
    async def on_request(self, ctx):
        return None


@pytest.mark.parametrize(
    ("value", "valid"),
    [('"1000g"', True), ('"999g"', False), ('"1t"', True), ('"1"', True), ('"0.5"', False), ("0.5", False)],
)
def test_a_plugin_s_own_converter_carries_its_schema_and_units(value, valid):
    # The converter states what it accepts and in which units, so a declared bound reaches its string form.
    available = discover([ParcelPlugin], entry_points=False)
    text = f'[plugins.parcel]\nweight = {value}\n[services.a]\ntargets = ["http://127.0.0.1:1"]\n'
    assert gateway_accepts(available, text) is valid
    assert schema_accepts(config_schema(available), text) is valid
    assert type_label(Mass) == "mass"
    if not valid:
        with pytest.raises(ConfigError, match=r"weight: must be at least 1 kg"):
            parse_config(text, "plugins.toml", available)


def unsupported(spec: TypeSpec, seen: set[type]) -> list[str]:
    """The types in ``spec`` (nested models included) that settings cannot hold."""
    if isinstance(spec, Unsupported):
        return [repr(spec.tp)]
    if isinstance(spec, Model):
        if spec.model in seen:
            return []
        seen.add(spec.model)
        return [bad for f in model_fields(spec.model).values() for bad in unsupported(f.type, seen)]
    return [bad for part in spec.parts for bad in unsupported(part, seen)]


def test_every_setting_of_core_and_the_bundled_plugins_has_a_supported_type():
    # An unsupported type would only fail when a user first sets that key.
    available = discover()
    models = [GatewaySettings, ServiceSettings, RouteSettings, ConsumerSettings]
    for name in BUNDLED:
        models += [m for m in (available[name].cls.Settings, available[name].cls.Credentials) if m is not None]
    seen: set[type] = set()
    assert [bad for model in models for bad in unsupported(type_spec(model), seen)] == []
    assert len(seen) > len(models)  # nested models were walked too
