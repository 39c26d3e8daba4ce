"""One pydiscover node for ``benchmarks/loss.py``, speaking JSON lines like ``examples/js/peer.js --json``.

Usage: ``python -m benchmarks.loss_node OPTIONS_JSON``: keyword arguments for
:class:`pydiscover.Discovery` (the benchmark passes only ``broadcast``, ``port`` and
``weight``, so every timing is the library default), plus ``lifetime``: seconds after which
the node stops by itself, so an orphan never lingers.

The node is built with ``start=False`` and prints ``ready``; it starts on the ``start``
command, so all nodes start together after their (slow, concurrent) imports.

stdout: one JSON object per line with ``event`` and ``t`` (``time.time()``, the clock
node-discover's peer prints too): ``ready``, ``started`` (both with this node's ``id``),
``added``, ``removed``, ``master``, ``promotion``, ``demotion`` (with the node's ``id``,
``weight`` and ``is_master``), ``state`` (``id``, ``nodes``: peer ids, ``is_master``),
``stats`` (the :attr:`Discovery.stats` packet counters), ``stopped``.

stdin commands: ``start``, ``state``, ``stats``.  Stdin EOF, SIGTERM and ``lifetime``
stop the node cleanly (with its goodbye).  The main thread only waits on an event, so an
idle node costs no CPU beyond the discovery thread's own work.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from typing import Any

from pydiscover import Discovery, Node


class Printer:
    """One flushed JSON line per event; called from the discovery thread and the command thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.time(), **fields}, default=str)
        # A reader that went away must not turn a clean stop into a crash.
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def _node(node: Node) -> dict[str, Any]:
    return {"id": node.id, "weight": node.weight, "is_master": node.is_master}


def main(argv: list[str]) -> int:
    options: dict[str, Any] = json.loads(argv[1])
    lifetime = float(options.pop("lifetime", 600.0))
    out = Printer()
    d = Discovery(start=False, **options)
    for name in ("added", "removed", "master", "promotion", "demotion"):
        d.on(name, lambda node, name=name: out(name, **_node(node)))
    stopping = threading.Event()
    # Our own handler (set before start, so the library keeps it): stop from the main thread.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "start":
                d.start()
                out("started", id=d.me.id)
            elif word == "state":
                out("state", id=d.me.id, nodes=sorted(d.nodes), is_master=d.is_master)
            elif word == "stats":
                out("stats", id=d.me.id, **d.stats)
        stopping.set()  # EOF: the benchmark is gone

    threading.Thread(target=commands, name="commands", daemon=True).start()
    out("ready", id=d.me.id)
    stopping.wait(lifetime)
    d.stop()
    out("stopped", expired=not stopping.is_set())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
