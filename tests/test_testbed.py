"""The helpers shared by tests and benchmarks live once, in ``testbed/``, and nothing edits ``sys.path``.

Imports work without path edits: pytest's ``pythonpath`` (pyproject.toml) and ``python -m
benchmarks`` put the repository root on the path; child processes get ``cwd`` or
``PYTHONPATH`` in their own environment.  Runs in the checkout and in ``scripts/test``'s
copy of the suite alike (both hold tests/, testbed/, benchmarks/ and examples/).
"""

from __future__ import annotations

import ast
import importlib.metadata
import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import ROOT
from testbed.node_discover import INSTALL_NODE_DISCOVER, NODE_DISCOVER_VERSION, NODE_MODULES, NODE_PREFIX

#: The folders whose code must reach testbed (and each other) without touching the import path.
CHECKED = ("benchmarks", "examples", "tests", "testbed")
#: Never part of the repository's own code.
SKIPPED = {"__pycache__", "node_modules", "build", "dist", "_build"}


def python_files(folders: tuple[str, ...] | None = None) -> Iterator[Path]:
    """The repository's Python files (``folders`` only, if given), outside .venv, .cache and builds."""
    tops = [ROOT / name for name in folders] if folders else [ROOT]
    for top in tops:
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in SKIPPED or d.endswith(".egg-info")))
            yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def path_edits(source: str) -> list[str]:
    """Lines of code (not comments or strings) that touch the interpreter's import path.

    ``sys.path`` in any form (``insert``, ``append``, assignment, ``+=``), ``site.addsitedir``,
    and a ``PYTHONPATH`` that reaches into ``tests/``.
    """
    found = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for a, dot, b in zip(tokens, tokens[1:], tokens[2:], strict=False):
        names = a.type == b.type == tokenize.NAME and dot.string == "."
        if names and (a.string, b.string) in {("sys", "path"), ("site", "addsitedir")}:
            found.append(f"line {a.start[0]}: {a.line.strip()}")
    for t in tokens:
        if t.type == tokenize.STRING and _literal(t.string) == "PYTHONPATH" and re.search(r"\btests\b", t.line):
            found.append(f"line {t.start[0]}: {t.line.strip()}")
    return found


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def test_the_path_check_catches_each_form() -> None:
    edits = [
        "import sys\nsys.path.insert(0, 'tests')\n",
        "import sys\nsys.path.append('x')\n",
        "import sys\nsys.path[:0] = ['x']\n",
        "import sys\nsys . path += ['x']\n",
        "import site\nsite.addsitedir('x')\n",
        "env = {'PYTHONPATH': str(ROOT / 'tests')}\n",
    ]
    for source in edits:
        assert path_edits(source), source
    clean = "# sys.path.insert(0, 'x') in a comment\ntext = 'sys.path'\nenv = {'PYTHONPATH': str(ROOT)}\n"
    assert path_edits(clean) == []


def test_no_file_edits_the_import_path() -> None:
    offenders = {}
    for path in python_files(CHECKED):
        found = path_edits(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "import testbed (or benchmarks) instead: the repository root is on the path already"


def definitions(name: str) -> list[str]:
    """Where a function ``name`` is defined in the repository's Python files."""
    where = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return where


def test_free_udp_port_is_defined_once() -> None:
    where = definitions("free_udp_port")
    assert [w.split(":")[0] for w in where] == ["testbed/ports.py"], where


def test_every_testbed_module_says_its_job_in_one_line() -> None:
    for path in sorted((ROOT / "testbed").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and doc.splitlines()[0].strip().endswith("."), f"{path.name}: no one-line docstring"


def test_node_discover_install_is_written_once() -> None:
    """The example that runs node-discover stands alone (users run it), so it keeps a copy: the same one."""
    assert NODE_MODULES == ROOT / NODE_PREFIX / "node_modules"
    assert f"node-discover@{NODE_DISCOVER_VERSION}" in INSTALL_NODE_DISCOVER
    example = (ROOT / "examples" / "mixed_cluster.py").read_text(encoding="utf-8")
    assert f'INSTALL = "{INSTALL_NODE_DISCOVER}"' in example
    parts = " / ".join(f'"{part}"' for part in Path(NODE_PREFIX).parts)
    assert f"NODE_MODULES = ROOT / {parts} / \"node_modules\"" in example
    script = ROOT / "scripts" / "test"
    if script.exists():  # not in scripts/test's copy of the suite
        text = script.read_text(encoding="utf-8")
        assert "-m testbed.node_discover version" in text and "-m testbed.node_discover prefix" in text


def test_testbed_is_not_in_the_distribution() -> None:
    try:
        files = importlib.metadata.files("pydiscover-lan") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pydiscover-lan is not installed")
    assert not [f for f in files if f.parts[:1] == ("testbed",)]
