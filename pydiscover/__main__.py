"""``python -m pydiscover COMMAND``: one entry point for the tools shipped in the package.

Each command hands its arguments to that tool's own ``main(argv)``, so
``python -m pydiscover monitor --once`` behaves exactly like ``python -m pydiscover.monitor --once``.
The tools are imported only when chosen: ``--help`` stays fast and works without ``rich``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from . import __version__

USAGE = """\
usage: python -m pydiscover COMMAND [ARGS...]

commands:
  monitor   watch a cluster without taking part in it; sends nothing (also: pydiscover-monitor)
  demo      start a loopback-only cluster: discovery, election, messaging, failover

Run "python -m pydiscover COMMAND --help" for a command's options.
"""


def _monitor(argv: Sequence[str]) -> int:
    from .monitor import main

    return main(argv, prog="python -m pydiscover monitor")


def _demo(argv: Sequence[str]) -> int:
    from .demo import main

    return main(argv, prog="python -m pydiscover demo")


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"monitor": _monitor, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # a listing of the commands is what a bare call asks for
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command == "--version":
        print(f"pydiscover {__version__}")
        return 0
    run = COMMANDS.get(command)
    if run is None:
        print(f"python -m pydiscover: unknown command {command!r} (choose from: {', '.join(COMMANDS)})",
              file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
