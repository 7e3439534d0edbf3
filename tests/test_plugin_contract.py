"""The plugin contract fails loudly and exactly: each mistake a plugin author can make
is refused with a message naming the plugin, the hook or the distribution, and the fix."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pluggy
import pytest
from bascule.cli import main
from bascule.config import ConfigError, parse_config
from bascule.pipeline import Pipeline
from bascule.registry import discover
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Context, NoSettings, Plugin, Response, hookimpl, hookspecs, setting
from bascule_sdk.hookspecs import HookKind

ROOT = Path(__file__).resolve().parent.parent

ROUTE = """
[services.api]
targets = ["{url}"]
[[routes]]
name = "api"
paths = ["/api"]
service = "api"
[routes.plugins.{plugin}]
"""


def refusal(cls: type[Plugin[Any]]) -> str:
    """Why ``cls`` is refused: the one line of the config error of a route that enables it."""
    found = discover([cls], entry_points=False)
    assert cls.name not in found
    with pytest.raises(ConfigError) as info:
        parse_config(ROUTE.format(url="http://127.0.0.1:9", plugin=cls.name), "plugins.toml", found)
    (line,) = info.value.lines
    prefix = f'plugins.toml: route "api": plugins.{cls.name}: '
    assert line.startswith(prefix)
    assert line.removeprefix(prefix) == found.broken[cls.name]
    return found.broken[cls.name]


# -- hook signatures and markers ---------------------------------------------------


class WrongArgument(Plugin[NoSettings]):
    name = "wrong-argument"

    @hookimpl
    async def on_request(self, context: Context) -> None:  # the hook's argument is `ctx`
        return None


class Unmarked(Plugin[NoSettings]):
    name = "unmarked"

    async def on_response(self, ctx: Context, response: Response) -> None:  # no @hookimpl: never runs
        response.headers.set("x-unmarked", "1")


class Misspelt(Plugin[NoSettings]):
    name = "misspelt"

    @hookimpl
    async def on_reponse(self, ctx: Context, response: Response) -> None:
        return None


class NotAsync(Plugin[NoSettings]):
    name = "not-async"

    @hookimpl
    def on_log(self, ctx: Context, response: Response) -> None:  # type: ignore[override]
        return None


def test_a_wrong_argument_name_shows_pluggys_message_and_the_allowed_arguments():
    assert refusal(WrongArgument) == (
        f"plugin 'wrong-argument' ({__name__}.WrongArgument): hook on_request: "
        "hookimpl definition: on_request(context: 'Context') -> 'None'; "
        "Argument(s) {'context'} are declared in the hookimpl but can not be found in the hookspec; "
        "on_request accepts any of these arguments: ctx"
    )


def test_a_method_named_like_a_hook_without_hookimpl_is_refused_with_the_fix():
    assert refusal(Unmarked) == (
        f"plugin 'unmarked' ({__name__}.Unmarked): method on_response is named like a hook but lacks "
        "@hookimpl, so it would never run: put @hookimpl (from bascule_sdk import hookimpl) above "
        "'async def on_response', or rename the method if it is not meant as a hook"
    )


def test_a_misspelt_hook_gets_a_suggestion():
    assert refusal(Misspelt) == (
        f"plugin 'misspelt' ({__name__}.Misspelt): @hookimpl method on_reponse is not a hook; "
        "did you mean 'on_response'? (hooks: startup, shutdown, on_request, on_upstream_request, handle, "
        "on_response, on_log, on_websocket_message, on_admin_request)"
    )
    assert refusal(NotAsync) == f"plugin 'not-async' ({__name__}.NotAsync): hook on_log must be 'async def'"


def test_the_hook_table_lists_every_hookspec_and_the_pipeline_runs_its_per_route_hooks():
    """``hookspecs.HOOKS`` is the one hook list: a spec missing from it (a bare ``@hookspec``)
    would escape the contract checks, and ``Pipeline`` has a field for each route hook."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    specs = [name for name in vars(hookspecs) if pm.parse_hookspec_opts(hookspecs, name) is not None]
    assert list(hookspecs.HOOKS) == specs
    per_route = {HookKind.REQUEST, HookKind.WEBSOCKET}
    assert [f.name for f in fields(Pipeline)] == [n for n, kind in hookspecs.HOOKS.items() if kind in per_route]
    assert discover([Everything], entry_points=False)["everything"].hooks == list(hookspecs.HOOKS)


class Everything(Plugin):
    """Implements every hook, in reverse order: ``InstalledPlugin.hooks`` lists them in the table's."""

    name = "everything"

    @hookimpl
    async def on_admin_request(self) -> None: ...

    @hookimpl
    async def on_websocket_message(self) -> None: ...

    @hookimpl
    async def on_log(self) -> None: ...

    @hookimpl
    async def on_response(self) -> None: ...

    @hookimpl
    async def handle(self) -> None: ...

    @hookimpl
    async def on_upstream_request(self) -> None: ...

    @hookimpl
    async def on_request(self) -> None: ...

    @hookimpl
    async def shutdown(self) -> None: ...

    @hookimpl
    async def startup(self) -> None: ...


@dataclass(frozen=True)
class GreetSettings:
    greeting: str = setting("hi", "What to say.")


class Mismatched(Plugin[GreetSettings]):
    name = "mismatched"
    Settings = NoSettings


def test_settings_must_be_the_model_plugin_is_generic_over():
    assert refusal(Mismatched) == (
        f"plugin 'mismatched' ({__name__}.Mismatched): Settings = NoSettings but the class derives "
        "from Plugin[GreetSettings]: make them the same model"
    )


# -- installed distributions ----------------------------------------------------------


def install(site: Path, distribution: str, module: str, source: str, entry_points: dict[str, str]) -> None:
    """A distribution as pip leaves it in site-packages: its module and its .dist-info."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[bascule.plugins]\n{lines}")


GOOD = """
    from bascule_sdk import NoSettings, Plugin, Response, hookimpl

    class Stamp(Plugin[NoSettings]):
        name = "stamp"

        @hookimpl
        async def on_response(self, response: Response) -> None:
            response.headers.set("x-stamp", "1")
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site-packages directory on ``sys.path`` for this test only."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def validate(tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    path = tmp_path / "plugins.toml"
    path.write_text(config)
    status = main(["validate", "--format", "json", str(path)])
    return status, json.loads(capsys.readouterr().out)["errors"]


def test_two_distributions_declaring_one_name_are_refused_naming_both(site, tmp_path, capsys):
    install(site, "acme-stamp", "acme_stamp_a", GOOD, {"stamp": "acme_stamp_a:Stamp"})
    install(site, "other-stamp", "acme_stamp_b", GOOD, {"stamp": "acme_stamp_b:Stamp"})
    found = discover()
    assert "stamp" not in found
    (message,) = [m for n, m in found.broken.items() if n == "stamp"]
    assert (
        message == "plugin 'stamp' is declared by two distributions, acme-stamp 1.0 and other-stamp 1.0: uninstall one"
    )
    status, errors = validate(tmp_path, ROUTE.format(url="http://127.0.0.1:9", plugin="stamp"), capsys)
    assert status == 1
    assert [(e["where"], e["key"], e["message"]) for e in errors] == [('route "api"', "plugins.stamp", message)]


def test_a_plugin_that_fails_to_import_is_reported_with_its_error_and_distribution(site, tmp_path, capsys):
    broken = "import acme_missing_dependency_xyz\n"
    install(site, "acme-broken", "acme_broken", broken, {"broken": "acme_broken:Broken"})
    install(site, "acme-stamp", "acme_stamp_c", GOOD, {"stamp": "acme_stamp_c:Stamp"})
    status, errors = validate(tmp_path, ROUTE.format(url="http://127.0.0.1:9", plugin="broken"), capsys)
    assert status == 1
    assert [e["message"] for e in errors] == [
        "plugin 'broken' (acme-broken 1.0) failed to import: "
        "ModuleNotFoundError: No module named 'acme_missing_dependency_xyz'"
    ]
    # The other plugins of the machine still load: a broken distribution stops no gateway that does not use it.
    assert "stamp" in discover()


def test_an_installed_plugin_that_breaks_the_contract_is_refused_when_a_config_names_it(site, tmp_path, capsys):
    unmarked = GOOD.replace("        @hookimpl\n", "")
    install(site, "acme-unmarked", "acme_unmarked", unmarked, {"stamp": "acme_unmarked:Stamp"})
    status, errors = validate(tmp_path, ROUTE.format(url="http://127.0.0.1:9", plugin="stamp"), capsys)
    assert status == 1
    assert [e["message"] for e in errors] == [
        "plugin 'stamp' (acme_unmarked.Stamp): method on_response is named like a hook but lacks @hookimpl, "
        "so it would never run: put @hookimpl (from bascule_sdk import hookimpl) above 'async def on_response', "
        "or rename the method if it is not meant as a hook (acme-unmarked 1.0)"
    ]


def test_plugin_new_refuses_a_name_that_is_taken(site, tmp_path, capsys):
    install(site, "acme-stamp", "acme_stamp_d", GOOD, {"stamp": "acme_stamp_d:Stamp"})
    for name, holder in (
        ("jwt", "the installed distribution bascule-jwt 0.1.0"),
        ("stamp", "the installed distribution acme-stamp 1.0"),
    ):
        assert main(["plugin", "new", name, "--dir", str(tmp_path / name)]) == 1
        assert capsys.readouterr().err == (
            f"bascule plugin new: plugin name {name!r} is taken by {holder}: two plugins of one name cannot be "
            f"installed together; choose another name (e.g. 'my-{name}')\n"
        )
        assert not (tmp_path / name).exists()


# -- what a hook returns -----------------------------------------------------------------


class ReturnsADict(Plugin[NoSettings]):
    name = "returns-a-dict"

    @hookimpl
    async def on_request(self, ctx: Context) -> Any:
        return {"status": 200}  # a Response was meant


class ReturnsText(Plugin[NoSettings]):
    name = "returns-text"

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> Any:
        return "done"


@pytest.mark.parametrize(
    ("cls", "hook", "kind"),
    [(ReturnsADict, "on_request", "builtins.dict"), (ReturnsText, "on_response", "builtins.str")],
)
async def test_a_hook_returning_something_else_is_a_500_problem_naming_plugin_hook_and_type(
    nursery, caplog, cls, hook, kind
):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, ROUTE.format(url=upstream.url, plugin=cls.name), plugins=[cls])
    async with gw.client() as client:
        r = await client.get("/api/x")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["request_id"] == r.headers["x-request-id"]
    assert problem["detail"] == "The gateway failed to process this request."
    (record,) = [x for x in caplog.records if x.levelno == logging.ERROR]
    assert record.getMessage() == f"plugin {cls.name!r} failed in {hook} (request {problem['request_id']})"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == (
        f"hook {hook} of plugin {cls.name!r} returned {kind}, expected a bascule_sdk.Response or None"
    )


# -- types -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sdk_wheel_ships_py_typed(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path), str(ROOT / "sdk")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("bascule_sdk-*.whl")
    assert "bascule_sdk/py.typed" in zipfile.ZipFile(wheel).namelist()
