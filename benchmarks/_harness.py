"""Shared pieces of the benchmark suite: figures, the table, the machine and child processes.

A benchmark module exposes ``run(quick: bool) -> list[Figure]``; ``python -m benchmarks``
collects the figures, prints one table and writes JSON.  Everything here sends on
loopback (127.0.0.0/8) or inside network namespaces a benchmark creates itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed import ROOT
from testbed.node_discover import NODE_DISCOVER_VERSION, node_binary, node_discover_available

#: The repository root (``testbed.ROOT``): child processes run there.
REPO = ROOT


@dataclass
class Figure:
    """One measured figure, for pydiscover and (where it can do the same work) node-discover.

    ``better`` says which way is good ("lower" or "higher"); ``goal`` is the issue's target
    in words and ``met`` whether pydiscover's value reaches it (None: no goal).
    """

    benchmark: str
    name: str
    unit: str
    pydiscover: float | None
    node_discover: float | None = None
    better: str = "lower"
    goal: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """pydiscover / node-discover (None when either is missing or node-discover is zero)."""
        if self.pydiscover is None or not self.node_discover:
            return None
        return self.pydiscover / self.node_discover

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def rss() -> int:
    """This process's resident memory now, in bytes (Linux); the receivers report it."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def python_env() -> dict[str, str]:
    """This environment with the repository root on the child's ``PYTHONPATH`` (it runs ``benchmarks.*``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def node_major() -> int | None:
    node = node_binary()
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    try:
        return int(out.strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = node_binary()
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if node
        else None
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "node": node_version,
        "node_discover": NODE_DISCOVER_VERSION if node_discover_available() else None,
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    """A plain-text table: one line per figure."""
    rows = [("benchmark", "figure", "unit", "pydiscover", "node-discover", "ratio", "goal", "met")]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.benchmark, f.name, f.unit, fmt(f.pydiscover), fmt(f.node_discover), fmt(f.ratio), f.goal, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class LineChild:
    """A child process spoken to in lines: commands on stdin, one JSON object per reply line."""

    def __init__(self, argv: list[str], env: dict[str, str], *, startup_timeout: float = 20.0) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        self.first = self.read(startup_timeout)

    def read(self, timeout: float) -> dict[str, Any]:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"{self.argv[:3]} did not answer in {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"{self.argv[:3]} exited ({self.proc.wait()}): {err[-2000:]}")
        return dict(json.loads(line))

    def ask(self, command: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> LineChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def markdown(figures: list[Figure], machine_info: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the machine they ran on (for RESULTS.md)."""
    lines = [
        "| benchmark | figure | unit | pydiscover | node-discover | ratio | goal | met |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        cells = (f.benchmark, f.name, f.unit, fmt(f.pydiscover), fmt(f.node_discover), fmt(f.ratio), f.goal, met)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    about = ", ".join(f"{k}: {v}" for k, v in machine_info.items())
    return "\n".join(lines) + f"\n\nMachine: {about}.\n"


def cli(runner: Callable[[bool], list[Figure]], doc: str | None, argv: list[str] | None = None) -> list[Figure]:
    """``python -m benchmarks.<name> [--quick]``: run one benchmark and print its table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short form")
    args = parser.parse_args(argv)
    figures = runner(args.quick)
    print(table(figures))
    return figures
