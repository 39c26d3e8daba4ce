"""node-discover's examples/basic-advert.js in Python: every node advertises what it offers.

Start two or more (loopback only)::

    python examples/node_discover/basic_advert.py

The advertisement arrives with each node's hellos, so ``added`` already carries it.
As in basic.py, the port (41243), loopback broadcast, timings and run time are options.
"""

from __future__ import annotations

import random
import sys
import time

from basic import arguments

from pydiscover.compat import Discover


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, 41243)
    d = Discover({"key": args.key, "port": args.port, "broadcast": args.broadcast,
                  "helloInterval": args.hello_interval, "checkInterval": args.check_interval,
                  "nodeTimeout": args.node_timeout})
    print(f"I am {d.broadcast.instanceUuid}", flush=True)

    d.advertise({
        "http": "80",
        "random": random.random(),
    })

    def added(obj):
        print("New node added to the network.")
        print(obj, flush=True)

    def removed(obj):
        print("Node removed from the network.")
        print(obj, flush=True)

    d.on("added", added)
    d.on("removed", removed)

    time.sleep(args.duration)
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
