"""Where the real node-discover (npm) is installed for interop tests and benchmarks, and whether it is usable.

``scripts/test`` installs it with :data:`INSTALL_NODE_DISCOVER`, reading the version and the
prefix from here (``python -m testbed.node_discover version|prefix``), so the version and
the folder are written once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from testbed import ROOT

#: The node-discover release the interop tests and benchmarks run against.
NODE_DISCOVER_VERSION = "1.2.1"
#: ``npm install --prefix`` folder, relative to :data:`ROOT` (ignored by git).
NODE_PREFIX = ".cache/node"
NODE_MODULES = ROOT / NODE_PREFIX / "node_modules"
INSTALL_NODE_DISCOVER = (
    f"npm install --prefix {NODE_PREFIX} --no-audit --no-fund --save-exact node-discover@{NODE_DISCOVER_VERSION}"
)


def node_binary() -> str | None:
    """The ``node`` executable on PATH, or ``None``."""
    return shutil.which("node")


def node_missing_reason() -> str | None:
    """Why node-discover processes cannot run at all (no Node.js), else ``None``."""
    if node_binary() is None:
        return "Node.js is not installed (no 'node' on PATH): the node-discover interop tests need it"
    return None


def node_discover_problem() -> str | None:
    """Why the installed node-discover is not the one to test against, else ``None``."""
    manifest = NODE_MODULES / "node-discover" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return f"node-discover is not installed in {NODE_MODULES}; run ./scripts/test once, or: {INSTALL_NODE_DISCOVER}"
    if version != NODE_DISCOVER_VERSION:
        return f"{manifest} is version {version}, not {NODE_DISCOVER_VERSION}; run: {INSTALL_NODE_DISCOVER}"
    return None


def node_discover_available() -> bool:
    """True if Node.js and node-discover 1.2.1 (``./scripts/test`` installs it) are here."""
    return node_missing_reason() is None and node_discover_problem() is None


def require_node_discover() -> None:
    """In a test: skip where Node.js is missing; fail where node-discover 1.2.1 is (the test script installs it)."""
    import pytest  # (testbed serves the benchmarks too: only tests come here)

    reason = node_missing_reason()
    if reason:
        pytest.skip(reason)
    problem = node_discover_problem()
    if problem:
        pytest.fail(problem)


def node_has_legacy_cipher() -> bool:
    """Whether this Node.js still has ``crypto.createCipher`` (gone in Node 22), which node-discover's key needs."""
    probe = "process.exit(typeof require('crypto').createCipher === 'function' ? 0 : 1)"
    return subprocess.run(["node", "-e", probe], capture_output=True, timeout=30).returncode == 0


def node_env() -> dict[str, str]:
    """This process's environment with ``NODE_PATH`` set to :data:`NODE_MODULES`, for a Node.js child."""
    return {**os.environ, "NODE_PATH": str(NODE_MODULES)}


def main(argv: list[str]) -> int:
    """``python -m testbed.node_discover version|prefix``: print one fact for ``scripts/test``."""
    facts = {"version": NODE_DISCOVER_VERSION, "prefix": NODE_PREFIX}
    if len(argv) != 2 or argv[1] not in facts:
        print(f"usage: python -m testbed.node_discover {'|'.join(facts)}", file=sys.stderr)
        return 2
    print(facts[argv[1]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
