"""What a user installs works: every module imports, the metadata and the entry points are right.

``scripts/test`` runs this against the wheel installed in a fresh virtual environment
(``PYDISCOVER_SOURCE_TREE`` names the checkout, so a module left out of the wheel shows up
as a failed import here rather than at a user's).  Run in the checkout, it checks the
editable install the same way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pydiscover

DIST = "pydiscover-lan"
INSTALLED = Path(pydiscover.__file__).resolve().parent
SOURCE_TREE = Path(os.environ["PYDISCOVER_SOURCE_TREE"]) if os.environ.get("PYDISCOVER_SOURCE_TREE") else None
#: The package as written: the checkout's when scripts/test names it, else the imported one.
SOURCE = SOURCE_TREE / "pydiscover" if SOURCE_TREE else INSTALLED
CHANGELOG = (SOURCE_TREE or INSTALLED.parent) / "CHANGELOG.rst"


def _folders() -> list[Path]:
    return sorted(p for p in [SOURCE, *SOURCE.rglob("*")] if p.is_dir() and p.name != "__pycache__")


def _modules() -> list[str]:
    names = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("pydiscover", *parts)))
    return names


def test_every_folder_of_the_package_is_a_package() -> None:
    # setup.cfg's ``packages = find:`` leaves out a folder without __init__.py, and the wheel with it.
    # A folder of data only (the web page's assets) ships through package_data instead: see below.
    missing = [str(f.relative_to(SOURCE)) for f in _folders()
               if not (f / "__init__.py").is_file() and any(f.glob("*.py"))]
    assert not missing, f"folders without __init__.py (not shipped in the wheel): {missing}"


def test_every_data_file_of_the_package_is_installed() -> None:
    # py.typed and the monitor's web page (HTML, JavaScript, CSS): setup.cfg's package_data.
    data = [p.relative_to(SOURCE) for p in SOURCE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {"py.typed", "web/static/index.html", "web/static/app.js"} <= {str(p) for p in data}
    missing = [str(p) for p in data if not (INSTALLED / p).is_file()]
    assert not missing, f"not in the installed package: {missing}"


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports_from_the_installed_package(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(INSTALLED), f"{name} came from {module.__file__}"


def test_metadata_names_the_license_the_pythons_and_the_version() -> None:
    meta = importlib.metadata.metadata(DIST)
    assert meta["Version"] == pydiscover.__version__
    classifiers = set(meta.get_all("Classifier") or [])
    expected = {
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3 :: Only",
        "Typing :: Typed",
        *(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13)),
    }
    assert expected <= classifiers, expected - classifiers
    requires = meta.get_all("Requires-Dist") or []
    assert any(re.match(r"pyee\b.*<14", r) for r in requires), requires  # events.py relies on its privates


@pytest.mark.skipif(not CHANGELOG.is_file(), reason="no source tree to read CHANGELOG.rst from")
def test_changelog_has_a_section_for_this_version() -> None:
    text = CHANGELOG.read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(pydiscover.__version__)}\b.*\n-+$", text, re.M), pydiscover.__version__


def test_the_license_file_is_in_the_distribution() -> None:
    files = importlib.metadata.files(DIST) or []
    licenses = [f for f in files if f.name.startswith("LICENSE")]
    assert licenses, "no LICENSE in the installed distribution's files"
    assert "MIT License" in licenses[0].read_text(encoding="utf-8")


def test_py_typed_ships() -> None:
    assert importlib.resources.files("pydiscover").joinpath("py.typed").is_file()


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["pydiscover-monitor"].value == "pydiscover.monitor:main"
    assert scripts["pydiscover-monitor"].load() is importlib.import_module("pydiscover.monitor").main


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from any checkout, so ``python -m`` cannot pick up a source folder.
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_python_m_pydiscover_lists_the_commands(tmp_path: Path) -> None:
    out = _run(sys.executable, "-m", "pydiscover", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+monitor\s", out.stdout, re.M) and re.search(r"^\s+demo\s", out.stdout, re.M), out.stdout
    for argv, word in ((["monitor", "--help"], "monitor"), (["demo", "--help"], "demo")):
        sub = _run(sys.executable, "-m", "pydiscover", *argv, cwd=tmp_path)
        assert sub.returncode == 0 and word in sub.stdout, sub.stdout + sub.stderr


def test_python_m_pydiscover_refuses_an_unknown_command(tmp_path: Path) -> None:
    out = _run(sys.executable, "-m", "pydiscover", "frobnicate", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr
    bare = _run(sys.executable, "-m", "pydiscover", cwd=tmp_path)
    assert bare.returncode == 0 and "monitor" in bare.stdout and "demo" in bare.stdout


def test_pydiscover_monitor_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "pydiscover-monitor"
    if not script.is_file():
        pytest.skip(f"no {script} (not installed with pip into this interpreter's environment)")
    out = _run(str(script), "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: pydiscover-monitor" in out.stdout and "--once" in out.stdout
