"""``python -m pydiscover.demo``: a small cluster on loopback, an election, a failover.

Starts a few nodes in this process (loopback broadcast ``127.255.255.255`` by default,
or multicast on the ``127.0.0.1`` interface), prints who joins and who is master,
sends a message on a channel, stops the master gracefully to show the hand-over, and
exits by itself.  It never sends a packet off this machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .discovery import Discovery


def _parse(argv: Sequence[str] | None, prog: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m pydiscover.demo",
        description="Run a loopback-only pydiscover cluster: discovery, election, messaging, failover.",
    )
    parser.add_argument("--nodes", type=int, default=4, help="how many nodes to start, 2-20 (default 4)")
    parser.add_argument("--port", type=int, default=41234, help="UDP port shared by the nodes (default 41234)")
    parser.add_argument(
        "--broadcast", default="127.255.255.255", help="loopback broadcast address (default 127.255.255.255)"
    )
    parser.add_argument(
        "--multicast", metavar="GROUP", help="use this multicast group on interface 127.0.0.1 instead of broadcast"
    )
    parser.add_argument("--hello-interval", type=float, default=0.5, help="seconds between hellos (default 0.5)")
    parser.add_argument("--node-timeout", type=float, default=1.5, help="seconds before a silent node is dropped")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 20:
        parser.error("--nodes must be between 2 and 20")
    if not args.multicast and not ipaddress.ip_address(args.broadcast).is_loopback:
        parser.error("the demo only sends on loopback: --broadcast must be in 127.0.0.0/8")
    return args


class _Printer:
    """Timestamps lines relative to the demo's start; handlers run on several threads."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            print(f"[{(time.monotonic() - self._t0) * 1000:8.1f} ms] {text}", flush=True)


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the demo; ``prog`` is the command name shown in usage (the caller's)."""
    args = _parse(argv, prog)
    # pydiscover installs only a NullHandler: a program shows its warnings itself.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say = _Printer()
    transport: dict[str, Any] = (
        {"multicast": args.multicast, "interface": "127.0.0.1"} if args.multicast else {"broadcast": args.broadcast}
    )
    where = f"multicast {args.multicast} on 127.0.0.1" if args.multicast else f"broadcast {args.broadcast}"
    say(f"starting {args.nodes} nodes on {where}, port {args.port}")
    names: dict[str, str] = {}
    nodes: list[Discovery] = []
    try:
        for weight in range(1, args.nodes + 1):
            name = f"node-{weight}"
            d = Discovery(
                port=args.port,
                weight=weight,
                hostname=name,
                hello_interval=args.hello_interval,
                check_interval=min(1.0, args.node_timeout),
                node_timeout=args.node_timeout,
                ignore_process=False,  # all demo nodes live in this one process
                start=False,
                **transport,
            )
            names[d.me.id] = name
            d.on("added", lambda node, me=name: say(f"{me}: sees {node.hostname}"))
            d.on("promotion", lambda node, me=name: say(f"{me}: promoted to master"))
            d.on("demotion", lambda node, me=name: say(f"{me}: demoted"))
            d.on("removed", lambda node, me=name: say(f"{me}: lost {node.hostname}"))
            d.join("chat", lambda data, packet, me=name: say(f"{me}: chat from {packet.hostname}: {data}"))
            d.start()
            nodes.append(d)
        if not _wait(lambda: all(len(d.nodes) == args.nodes - 1 for d in nodes), 5):
            say("not every node sees every other node (is something filtering loopback?)")
            return 1
        say("every node sees every other node")
        if not _wait(lambda: sum(d.is_master for d in nodes) == 1, 5):
            say("no single master emerged")
            return 1
        master = next(d for d in nodes if d.is_master)
        say(f"master is {names[master.me.id]} (highest weight wins)")
        nodes[0].send("chat", {"text": "hello from the lightest node"})
        _wait(lambda: False, 0.2)
        say(f"stopping {names[master.me.id]} gracefully: it says goodbye, a successor takes over at once")
        stopped_at = time.monotonic()
        master.stop()
        rest = [d for d in nodes if d is not master]
        if not _wait(lambda: sum(d.is_master for d in rest) == 1, 5):
            say("no successor")
            return 1
        successor = next(d for d in rest if d.is_master)
        say(f"{names[successor.me.id]} is master {1000 * (time.monotonic() - stopped_at):.1f} ms after the stop")
        stats = rest[0].stats
        say(f"{names[rest[0].me.id]} stats: in={stats['packets_in']} out={stats['packets_out']} "
            f"dropped={stats['dropped']}")
        return 0
    finally:
        for d in nodes:
            d.stop()
        say("done")




if __name__ == "__main__":
    sys.exit(main())
