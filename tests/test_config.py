"""Config validation: every problem reported at once, each naming file, section or route, and key."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from bascule import ConfigError, parse_config
from bascule.config import layer_plugin_tables
from bascule.registry import discover
from bascule_sdk import Duration, Plugin, hookimpl, setting

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LimitSettings:
    limit: int = setting(10, "Requests per window.", min=1)
    window: Duration = setting(60.0, "Window length.", min=1)


class Limit(Plugin):
    name = "limit"
    priority = 900
    Settings = LimitSettings

    @hookimpl
    async def on_request(self, ctx):
        return None


AVAILABLE = discover([Limit], entry_points=False)

SERVICE = """
[services.users]
targets = ["http://127.0.0.1:9001"]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf/plugins.toml", AVAILABLE)
    return info.value.lines


def test_valid_config_compiles():
    config = parse_config(
        SERVICE
        + """
        [plugins.limit]
        limit = 5
        [[routes]]
        name = "users"
        paths = ["/api/users"]
        service = "users"
        [routes.plugins.limit]
        window = "1m"
    """,
        "plugins.toml",
        AVAILABLE,
    )
    (route,) = config.routes
    (spec,) = route.plugins
    assert (spec.instance, spec.settings.limit, spec.settings.window, spec.priority) == ("limit", 5, 60.0, 900)


def test_every_problem_is_reported_once_with_its_location():
    assert errors("""
        [gateway]
        listen = "nope"
        workers = 0
        [services.users]
        targets = ["http://127.0.0.1:1"]
        timeout = "soon"
        [plugins.limit]
        window = "forever"
        [plugins.jwt]
        [[routes]]
        name = "users"
        paths = ["api/users"]
        service = "userz"
        colour = "red"
        [routes.plugins.limit]
        limit = "ten"
        [routes.plugins.burst]
        plugin = "limit"
        priority = "high"
        [[routes]]
        paths = ["/y"]
        service = "users"
        [consumers.alice]
        groups = "admins"
    """) == [
        "conf/plugins.toml: gateway: listen: expected host:port, got 'nope'",
        "conf/plugins.toml: gateway: workers: must be at least 1, got 0",
        'conf/plugins.toml: services.users: timeout: expected a duration like "5s" or "250ms", got \'soon\'',
        "conf/plugins.toml: consumers.alice: groups: expected an array, got a string ('admins')",
        'conf/plugins.toml: plugins.limit: window: expected a duration like "5s" or "250ms", got \'forever\'',
        f"conf/plugins.toml: plugins.jwt: plugin 'jwt' is not installed (pip install {ROOT / 'plugins' / 'jwt'});"
        " installed plugins: limit",
        "conf/plugins.toml: route \"users\": paths[0]: expected a path starting with '/', got 'api/users'",
        'conf/plugins.toml: route "users": colour: unknown key (known keys: hosts, match, methods, name, paths,'
        " plugins, preserve_host, service, strip_path, websocket)",
        "conf/plugins.toml: route \"users\": service: unknown service 'userz'; did you mean 'users'? (services: users)",
        "conf/plugins.toml: route \"users\": plugins.limit.limit: expected an integer, got a string ('ten')",
        "conf/plugins.toml: route \"users\": plugins.burst.priority: expected an integer, got a string ('high')",
        "conf/plugins.toml: routes[1]: name: required key is missing",
    ]


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\n",
            'route "a": service: required: no plugin on this route handles requests itself',
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a/{x}/{x}']\nservice = 'users'\n",
            "route \"a\": paths: parameter '{x}' appears twice in path '/a/{x}/{x}'",
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\nmethods = ['FETCH']\n",
            'route "a": methods[0]: expected a method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE, CONNECT),'
            " got 'FETCH'",
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\nmatch = 'regex'\n",
            "route \"a\": match: must be one of 'prefix', 'exact', got 'regex'",
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\n[routes.plugins]\nlimit = 3\n",
            'route "a": plugins.limit: expected a table, true or false, got an integer (3)',
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\n[routes.plugins.limit]\nburst = 1\n",
            'route "a": plugins.limit.burst: unknown key (known keys: limit, window)',
        ),
        ("[gateway]\ntrusted_proxies = ['10.0.0.0/8', 'lan']\n", "gateway: trusted_proxies: not CIDRs: 'lan'"),
        ("[gateway]\ntls_cert = 'cert.pem'\n", "gateway: tls_key: tls_cert and tls_key go together"),
        (
            "[gatway]\nlisten = '1.2.3.4:80'\n",
            "gatway: unknown key; did you mean 'gateway'? (known keys: consumers, gateway, plugins, routes, services)",
        ),
        (
            "[consumers.bob.credentials.limit]\n",
            "consumers.bob: credentials.limit: plugin 'limit' takes no consumer credentials",
        ),
        ("[services.users]\ntargets = []\n", "services.users: targets: must not be empty"),
    ],
)
def test_each_kind_of_error(snippet, message):
    text = snippet if snippet.startswith("[services") else SERVICE + snippet
    assert errors(text) == [f"conf/plugins.toml: {message}"]


def test_invalid_toml_is_file_line_column_with_the_line_shown():
    assert errors('[services.users]\ntargets = ["http://127.0.0.1:9001"]\n[gateway\nlisten = 1') == [
        "conf/plugins.toml:3:9: invalid TOML: Expected ']' at the end of a table declaration\n"
        "    [gateway\n"
        "            ^"
    ]
    assert errors("[gateway]\nlisten = ") == [
        "conf/plugins.toml:2:10: invalid TOML: Invalid value at the end of the file\n    listen = \n             ^"
    ]


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\nstrip-pth = true\n",
            "route \"a\": strip-pth: unknown key; did you mean 'strip_path'? (known keys: hosts, match, methods,"
            " name, paths, plugins, preserve_host, service, strip_path, websocket)",
        ),
        (
            "[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\n[routes.plugins.limt]\nlimit = 1\n",
            "route \"a\": plugins.limt: plugin 'limt' is not installed; installed plugins: limit;"
            " did you mean 'limit'?",
        ),
        (
            # false would switch off nothing: a misspelt name is an error, not a no-op
            "[plugins.limit]\n[[routes]]\nname = 'a'\npaths = ['/a']\nservice = 'users'\n"
            "[routes.plugins]\nlimt = false\n",
            "route \"a\": plugins.limt: plugin 'limt' is not installed; installed plugins: limit;"
            " did you mean 'limit'?",
        ),
        (
            "[servces.users]\n",
            "servces: unknown key; did you mean 'services'? (known keys: consumers, gateway,"
            " plugins, routes, services)",
        ),
        ("[gateway]\nworkers = 1.5\n", "gateway: workers: expected an integer, got a number (1.5)"),
        (
            "[gateway]\nlisten = 1979-05-27\n",
            "gateway: listen: expected a string, got a date (datetime.date(1979, 5, 27))",
        ),
        ("routes = 3\n", "routes: expected an array of tables, got an integer (3)"),
        # Rules declared on the settings (setting(min=..., pattern=...)): each item under its own key.
        (
            "[services.more]\ntargets = ['http://a:1', 'http://b:1?x=1']\n",
            "services.more: targets[1]: expected an http(s)://host[:port][/path] URL, got 'http://b:1?x=1'",
        ),
        ("[plugins.limit]\nlimit = -5\n", "plugins.limit: limit: must be at least 1, got -5"),
        ("[plugins.limit]\nwindow = '500ms'\n", "plugins.limit: window: must be at least 1s, got '500ms'"),
        (
            "[services.more]\ntargets = ['http://a:1']\nhealth_interval = '0s'\n",
            "services.more: health_interval: must be at least 0.001s, got '0s'",
        ),
        (
            "[services.more]\ntargets = ['http://a:1']\nretry_on = [502, 700]\n",
            "services.more: retry_on[1]: must be between 100 and 599, got 700",
        ),
    ],
)
def test_messages_suggest_and_name_toml_types(snippet, message):
    text = SERVICE + snippet if snippet.startswith("[") else snippet + SERVICE  # a top-level key goes first
    assert errors(text) == [f"conf/plugins.toml: {message}"]


def test_secrets_from_env_and_file(tmp_path, monkeypatch):
    from bascule_sdk.settings import Secret

    @dataclass(frozen=True)
    class KeySettings:
        key: Secret = setting(doc="A secret.")

    class Keyed(Plugin):
        name = "keyed"
        Settings = KeySettings

        @hookimpl
        async def on_request(self, ctx):
            return None

    available = discover([Keyed], entry_points=False)
    secret_file = tmp_path / "key"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("BASCULE_TEST_KEY", "from-env")
    for value, expected in (
        ("env:BASCULE_TEST_KEY", "from-env"),
        (f"file:{secret_file}", "from-file"),
        ("literal", "literal"),
    ):
        config = parse_config(
            SERVICE
            + f"""
            [plugins.keyed]
            key = "{value}"
            [[routes]]
            name = "a"
            paths = ["/a"]
            service = "users"
        """,
            "plugins.toml",
            available,
        )
        assert config.routes[0].plugins[0].settings.key == expected
    with pytest.raises(ConfigError) as info:
        parse_config(SERVICE + '[plugins.keyed]\nkey = "env:BASCULE_UNSET_VAR"\n', "plugins.toml", available)
    assert info.value.lines == ["plugins.toml: plugins.keyed: key: environment variable BASCULE_UNSET_VAR is not set"]
    binary = tmp_path / "binary-key"
    binary.write_bytes(b"\x9f\xfe\x01secret")
    with pytest.raises(ConfigError) as info:
        parse_config(SERVICE + f'[plugins.keyed]\nkey = "file:{binary}"\n', "plugins.toml", available)
    # No byte of the secret in the message (the decoder's own message quoted one).
    assert info.value.lines == [f"plugins.toml: plugins.keyed: key: secret file {binary} is not UTF-8 text"]


@pytest.mark.parametrize(
    ("global_tables", "route_tables", "expected"),
    [
        ({"a": {"x": 1}}, {}, {"a": {"x": 1}}),  # global applies everywhere
        ({}, {"a": {"x": 1}}, {"a": {"x": 1}}),  # route-only
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}),  # route keys layered over global
        (
            {"a": {"t": {"p": 1, "q": 2}}},
            {"a": {"t": {"q": 3}}},
            {"a": {"t": {"p": 1, "q": 3}}},
        ),  # tables merge key by key
        ({"a": {"l": [1, 2]}}, {"a": {"l": [3]}}, {"a": {"l": [3]}}),  # arrays replace
        ({"a": {"x": 1}}, {"a": False}, {}),  # X = false switches global off
        ({"a": {"x": 1}}, {"a": True}, {"a": {"x": 1}}),  # X = true keeps global settings
        ({}, {"a": True}, {"a": {}}),  # X = true with defaults
        ({"a": {"x": 1}}, {"b": {"plugin": "a"}}, {"a": {"x": 1}, "b": {"plugin": "a"}}),  # second instance
    ],
)
def test_plugin_table_precedence(global_tables, route_tables, expected):
    assert layer_plugin_tables(global_tables, route_tables) == expected


def test_identical_settings_share_one_instance():
    config = parse_config(
        SERVICE
        + """
        [plugins.limit]
        limit = 5
        [[routes]]
        name = "a"
        paths = ["/a"]
        service = "users"
        [[routes]]
        name = "b"
        paths = ["/b"]
        service = "users"
        [[routes]]
        name = "c"
        paths = ["/c"]
        service = "users"
        [routes.plugins.limit]
        limit = 6
    """,
        "plugins.toml",
        AVAILABLE,
    )
    a, b, c = (r.plugins[0] for r in config.routes)
    assert a is b
    assert c is not a and c.settings.limit == 6
