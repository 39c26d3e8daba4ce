"""Spread N pollers over the live nodes: each runs on exactly one node, rebalanced on churn.

Run several (loopback only; each exits after --duration seconds):

    python examples/instance_manager.py --weight 1 &
    python examples/instance_manager.py --weight 2 &
    python examples/instance_manager.py --weight 3

Each process runs a :class:`~pydiscover.balancer.ResourceManager` over the same
``--resources`` pollers and prints what it owns whenever that changes (``--json``:
one object per line).  Kill one: the others take its pollers over after the node
timeout; start another: a third of the pollers move to it, and only those.

``--capacity N`` gives a process N times a default one's share (0: it runs nothing).
With ``--commands`` a process reads commands on stdin, one a line, and applies them to
the whole cluster from wherever they are typed:

    add poller-99            a new poller, started on exactly one process
    remove poller-03         stopped wherever it runs, never started again
    capacity 2               this process's share from now on (0 drains it)
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import sys
import threading
import time
from typing import Any

from pydiscover import Discovery
from pydiscover.balancer import ResourceManager


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=41237,
                   help="UDP port shared by the processes (default 41237, this example's own: no other uses it)")
    p.add_argument("--broadcast", default="127.255.255.255", help="loopback broadcast address")
    p.add_argument("--resources", type=int, default=30, help="how many pollers (default 30)")
    p.add_argument("--weight", type=float, help="election weight")
    p.add_argument("--hello-interval", type=float, default=0.5, help="seconds between hellos (default 0.5)")
    p.add_argument("--node-timeout", type=float, default=2.0,
                   help="seconds before a silent node's pollers move (default 2)")
    p.add_argument("--capacity", type=int, default=1, help="this process's share relative to the others' (default 1)")
    p.add_argument("--commands", action="store_true",
                   help="read add <id> / remove <id> / capacity <n> lines on stdin (end of input: exit)")
    p.add_argument("--duration", type=float, default=30.0, help="exit (cleanly) after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args()
    try:
        loopback = ipaddress.ip_address(args.broadcast).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        p.error(f"--broadcast {args.broadcast!r}: this example only sends on loopback (127.0.0.0/8)")
    lock = threading.Lock()

    def say(event: str, **fields: Any) -> None:
        with lock:
            if args.json:
                print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {event} " + " ".join(f"{k}={v}" for k, v in fields.items()),
                      flush=True)

    options: dict[str, Any] = {"port": args.port, "broadcast": args.broadcast, "hello_interval": args.hello_interval,
                               "node_timeout": args.node_timeout, "master_timeout": args.node_timeout}
    if args.weight is not None:
        options["weight"] = args.weight
    d = Discovery(**options)
    pollers = [{"id": f"poller-{i:02d}", "url": f"https://example.invalid/feed/{i}"} for i in range(args.resources)]
    last: list[frozenset[str]] = [frozenset()]

    def report(*_: Any) -> None:
        owned = rm.owned
        if owned != last[0]:
            last[0] = owned
            say("owned", id=d.me.id, count=len(owned), owned=sorted(owned), master=d.is_master)

    rm = ResourceManager(d, resources=pollers, start=lambda poller: poller["id"], stop=lambda handle: None,
                         capacity=args.capacity)
    d.on("resourceStarted", report)
    d.on("resourceStopped", report)
    d.on("resourceAdded", lambda resource: say("added", id=resource["id"]))
    d.on("resourceRemoved", lambda resource: say("removed", id=resource["id"]))
    say("started", id=d.me.id, capacity=rm.capacity)
    done = threading.Event()
    if args.commands:
        threading.Thread(target=obey, args=(rm, say, done), daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        done.wait(args.duration)
    d.stop()
    return 0


def obey(rm: ResourceManager, say: Any, done: threading.Event) -> None:
    """Apply the commands read on stdin until it ends (then ``done``)."""
    for line in sys.stdin:
        words = line.split()
        try:
            if len(words) == 2 and words[0] == "add":
                rm.add({"id": words[1], "url": f"https://example.invalid/feed/{words[1]}"})
            elif len(words) == 2 and words[0] == "remove":
                rm.remove(words[1])
            elif len(words) == 2 and words[0] == "capacity":
                rm.set_capacity(int(words[1]))
            elif words:
                raise ValueError("commands: add <id> | remove <id> | capacity <n>")
            else:
                continue
            say("done", command=" ".join(words))
        except (ValueError, TypeError) as exc:
            say("refused", command=" ".join(words), error=str(exc))
    done.set()


if __name__ == "__main__":
    sys.exit(main())
