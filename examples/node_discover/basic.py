"""node-discover's examples/basic.js in Python, through :mod:`pydiscover.compat`.

Only new and lost nodes are of interest here; master election runs behind the scenes.
Start two or more (loopback only: the default broadcast is 127.255.255.255)::

    python examples/node_discover/basic.py            # optional first argument: the key
    python examples/node_discover/basic.py sekrit

Differences from basic.js, all about running safely and briefly: the port (41240, this
example's own), the loopback broadcast and the timings come from the command line, the
node prints its id first, and it stops after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from pydiscover.compat import Discover


def arguments(argv: list[str] | None, port: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("key", nargs="?", default=None, help="encryption key (node-discover's cipher), as basic.js")
    p.add_argument("--port", type=int, default=port, help=f"UDP port (default {port})")
    p.add_argument("--broadcast", default="127.255.255.255", help="a broadcast address in 127.0.0.0/8")
    p.add_argument("--hello-interval", type=int, default=1000, help="milliseconds (node-discover's default 1000)")
    p.add_argument("--check-interval", type=int, default=2000, help="milliseconds")
    p.add_argument("--node-timeout", type=int, default=2000, help="milliseconds")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    args = p.parse_args(argv)
    if ipaddress.ip_address(args.broadcast) not in ipaddress.ip_network("127.0.0.0/8"):
        p.exit(2, f"--broadcast {args.broadcast}: loopback only (127.0.0.0/8)\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, 41240)
    d = Discover({"key": args.key, "port": args.port, "broadcast": args.broadcast,
                  "helloInterval": args.hello_interval, "checkInterval": args.check_interval,
                  "nodeTimeout": args.node_timeout})
    print(f"I am {d.broadcast.instanceUuid}", flush=True)

    def added(obj):  # node-discover's handlers take what they need: (node, obj, rinfo) are offered
        print("New node added to the network.")
        print(obj, flush=True)

    def removed(obj):
        print("Node removed from the network.")
        print(obj, flush=True)

    d.on("added", added)
    d.on("removed", removed)
    d.on("error", lambda err: print("error", err, flush=True))

    time.sleep(args.duration)
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
