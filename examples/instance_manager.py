"""Spread N pollers over the live nodes: each runs on exactly one node, rebalanced on churn.

Run several (loopback only; each exits after --duration seconds):

    python examples/instance_manager.py --weight 1 &
    python examples/instance_manager.py --weight 2 &
    python examples/instance_manager.py --weight 3

Each process runs a :class:`~pydiscover.balancer.ResourceManager` over the same
``--resources`` pollers and prints what it owns whenever that changes (``--json``:
one object per line).  Kill one: the others take its pollers over after the node
timeout; start another: a third of the pollers move to it, and only those.
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

    rm = ResourceManager(d, resources=pollers, start=lambda poller: poller["id"], stop=lambda handle: None)
    d.on("resourceStarted", report)
    d.on("resourceStopped", report)
    say("started", id=d.me.id)
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(args.duration)
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
