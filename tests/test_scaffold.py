"""`bascule plugin new`: the generated distribution is complete and its tests pass as generated."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from bascule.cli import main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_generates_a_complete_distribution(tmp_path, capsys):
    target = tmp_path / "bascule-add-header"
    assert main(["plugin", "new", "add-header", "--dir", str(target)]) == 0
    assert "Created bascule-add-header" in capsys.readouterr().out
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        ".gitignore",
        "README.md",
        "bascule_add_header/__init__.py",
        "bascule_add_header/plugin.py",
        "pyproject.toml",
        "tests/test_add_header.py",
    ]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "bascule-add-header"
    assert project["project"]["dependencies"] == ["bascule-sdk>=0.1"]
    assert project["project"]["entry-points"]["bascule.plugins"] == {"add-header": "bascule_add_header:AddHeaderPlugin"}
    assert project["tool"]["setuptools"]["packages"] == ["bascule_add_header"]
    readme = (target / "README.md").read_text()
    for key in ("`header`", "`value`", "[routes.plugins.add-header]"):
        assert key in readme
    # bascule is not on PyPI: the develop steps say where pip finds it (run as written in test_e2e_wheels).
    assert "pip install --find-links /path/to/bascule/dist -e '.[test]'" in readme
    # The template is a plugin named "example": every spelling of that name is replaced.
    for path in target.rglob("*"):
        assert "example" not in str(path.relative_to(target)).lower()
        assert path.is_dir() or "example" not in path.read_text().lower(), path


@pytest.mark.slow
def test_generated_code_is_lint_clean_and_its_tests_pass(tmp_path):
    target = tmp_path / "bascule-greet"
    assert main(["plugin", "new", "greet", "--dir", str(target)]) == 0
    lint = subprocess.run(
        [BIN / "ruff", "check", "--no-cache", "--config", ROOT / "pyproject.toml", target],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
    env = {**os.environ, "PYTHONPATH": str(target)}  # as after `pip install -e .`
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


@pytest.mark.slow
def test_generated_plugin_type_checks_with_its_settings_typed(tmp_path):
    target = tmp_path / "bascule-greet"
    assert main(["plugin", "new", "greet", "--dir", str(target)]) == 0

    # As from installed wheels: the workspace is installed editable (an import hook mypy cannot
    # follow), so mypy reads the sources; errors inside the core are not the plugin's.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n[mypy-bascule.*]\nfollow_imports = silent\n")

    def mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MYPYPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT / "core")])}
        command = [BIN / "mypy", "--no-incremental", "--config-file", config, *paths]
        return subprocess.run(command, cwd=target, env=env, capture_output=True, text=True, timeout=300)

    checked = mypy(target / "bascule_greet", target / "tests")
    assert checked.returncode == 0, checked.stdout
    # self.settings is the settings model, not Any: a misspelt setting is a type error.
    plugin = target / "bascule_greet" / "plugin.py"
    plugin.write_text(plugin.read_text().replace("self.settings.value)", "self.settings.valeu)"))
    misspelt = mypy(target / "bascule_greet")
    assert misspelt.returncode == 1
    assert 'error: "GreetSettings" has no attribute "valeu"' in misspelt.stdout


def test_default_directory_is_named_after_the_distribution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "new", "x2"]) == 0
    assert (tmp_path / "bascule-x2" / "bascule_x2" / "plugin.py").is_file()
    assert "class X2Plugin(Plugin[X2Settings]):" in (tmp_path / "bascule-x2" / "bascule_x2" / "plugin.py").read_text()


@pytest.mark.parametrize("name", ["Add-Header", "add_header", "x-", "a--b", "9lives", "", "bascule plugin"])
def test_invalid_names_are_refused(tmp_path, capsys, name):
    assert main(["plugin", "new", name, "--dir", str(tmp_path / "p")]) == 1
    assert f"invalid plugin name {name!r}" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_an_existing_directory_is_never_overwritten(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert main(["plugin", "new", "greet", "--dir", str(target)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_the_installed_wheel_generates_the_same_plugin(tmp_path):
    # The template is package data: a wheel installed as users install it (not editable) has it.
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", tmp_path, ROOT / "core"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("bascule-*.whl")
    assert "bascule/plugin-template/bascule_example/plugin.py" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel]
    assert subprocess.run(install, capture_output=True, text=True).returncode == 0
    # Byte code beside the template's modules, as pip writes it, is not part of the plugin.
    assert compileall.compile_dir(site / "bascule" / "plugin-template", quiet=1, force=True)
    assert list((site / "bascule" / "plugin-template").rglob("*.pyc"))

    # Its dependencies are this environment's; the installed bascule comes first on the path.
    command = "import sys, bascule, bascule.cli; print(bascule.__file__); sys.exit(bascule.cli.main(sys.argv[1:]))"
    generated = subprocess.run(
        [sys.executable, "-c", command, "plugin", "new", "greet", "--dir", tmp_path / "installed"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert generated.stdout.startswith(str(site / "bascule" / "__init__.py"))
    assert main(["plugin", "new", "greet", "--dir", str(tmp_path / "source")]) == 0

    def tree(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}

    installed = tree(tmp_path / "installed")
    assert "bascule_greet/plugin.py" in installed
    assert installed == tree(tmp_path / "source")
