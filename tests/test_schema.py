"""`bascule schema`: the JSON Schema of plugins.toml agrees with what the gateway accepts."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from bascule.cli import main
from bascule.config import ConfigError, parse_config
from bascule.registry import discover
from bascule.schema import config_schema
from bascule_sdk import ByteSize, Duration, Plugin, Secret, hookimpl, setting

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
