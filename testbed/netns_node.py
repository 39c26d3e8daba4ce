"""One pydiscover node for the network-namespace tests, speaking JSON lines.

Usage: ``netns_node.py OPTIONS_JSON`` (keyword arguments for :class:`Discovery`, plus
``lifetime``: seconds after which the node stops by itself, so an orphan never lingers).

The node is built with ``start=False`` and prints ``ready``; it starts on the ``start``
command, so the test can start every node at once after their slow imports (masters
are sticky: a node that starts late must not find a master already elected).

stdin commands: ``start``, ``state TAG`` (print this node's view now), ``stop``.
SIGTERM, ``stop`` and stdin EOF all stop the node (it says goodbye) and exit 0.

Every stdout line is one JSON object with ``event``, ``t`` (``time.monotonic()``) and
``self`` (this instance id).  Event lines printed by the discovery thread also carry
``master`` (this node's role) and ``view`` (peer id -> that peer's role, as this node
sees it), so the last such line is the node's current state.  A ``view`` line is
printed whenever the view changes without another event (a peer stepping down fires
no local event).
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


class Runner:
    """Prints events; state lines come from the discovery thread only, so they are in order."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.d = Discovery(start=False, **options)
        self.id = self.d.me.id
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._last: dict[str, Any] = {}
        for event in ("added", "removed", "master"):
            self.d.on(event, lambda node, event=event: self.event(event, peer=_peer(node)))
        for event in ("promotion", "demotion"):
            self.d.on(event, lambda _me, event=event: self.event(event))
        self.d.on("helloReceived", lambda *_: self.event("view"))

    def state(self) -> dict[str, Any]:
        return {"master": self.d.is_master, "view": {iid: n.is_master for iid, n in self.d.nodes.items()}}

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.monotonic(), "self": self.id, **fields})
        # A reader that went away must not turn a clean stop into a crash.
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def event(self, event: str, **fields: Any) -> None:
        """On the discovery thread: print ``event`` with the state it left (``view``: only if changed)."""
        state = self.state()
        if event == "view" and state == self._last:
            return
        self._last = state
        self.write(event, **state, **fields)

    def commands(self) -> None:
        """Serve stdin; EOF means the test is gone, so stop."""
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["start"]:
                self.d.start()
                address = self.d.local_address
                self.write("started", local=list(address) if address else None)
            elif words[:1] == ["state"]:
                self.write("state", tag=" ".join(words[1:]), **self.state())
            elif words[:1] == ["stop"]:
                break
        self.stopping.set()


def _peer(node: Node) -> dict[str, Any]:
    return {"id": node.id, "master": node.is_master, "weight": node.weight, "address": node.address}


def main(argv: list[str]) -> int:
    options: dict[str, Any] = json.loads(argv[1])
    deadline = time.monotonic() + float(options.pop("lifetime", 120.0))
    runner = Runner(options)
    # The handler only sets a flag: stop() runs from the main loop, never inside a signal frame.
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    threading.Thread(target=runner.commands, name="commands", daemon=True).start()
    runner.write("ready")
    while not runner.stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    goodbye = runner.d.stop()
    runner.write("stopped", goodbye=goodbye, expired=not runner.stopping.is_set())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
