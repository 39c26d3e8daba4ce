"""node-discover's examples/unicast.js in Python: a cluster of unicast nodes that tell each other who exists.

Each node knows at most one other at start; on ``added`` it appends the newcomer to
``d.broadcast.destination`` and sends every destination it knows on channel
``unicast-nodes``, so a node seeded with the previous one reaches them all::

    python examples/node_discover/unicast.py --port=41242
    python examples/node_discover/unicast.py --port=41244 --address=127.0.0.1:41242
    python examples/node_discover/unicast.py --port=41245 --address=127.0.0.1:41244

Differences from unicast.js: the node binds 127.0.0.1 (``--bind``, loopback only, as
every destination must be), the timings and run time are options, the node prints its
id first and, before it stops, the ids it knows (``known: [...]``).  The native API
does this by itself: ``Discovery(unicast=[seed])`` learns its peers (``learn_peers``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time

from pydiscover.compat import Discover


def loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=41242, help="UDP port of this node (default 41242)")
    p.add_argument("--address", default=None, help="host:port of a node already running (none for the first)")
    p.add_argument("--bind", default="127.0.0.1", help="address to bind, in 127.0.0.0/8")
    p.add_argument("--hello-interval", type=int, default=1000, help="milliseconds (node-discover's default 1000)")
    p.add_argument("--check-interval", type=int, default=2000, help="milliseconds")
    p.add_argument("--node-timeout", type=int, default=2000, help="milliseconds")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    args = p.parse_args(argv)
    if not loopback(args.bind) or (args.address and not loopback(args.address.rpartition(":")[0])):
        p.exit(2, "loopback only: --bind and --address must be in 127.0.0.0/8\n")

    port = args.port
    address = args.address
    unicast = []

    if address:
        unicast.append(address)

    d = Discover({
        "port": port,
        "unicast": unicast,
        "address": args.bind,
        "helloInterval": args.hello_interval, "checkInterval": args.check_interval,
        "nodeTimeout": args.node_timeout,
    })
    print(f"I am {d.broadcast.instanceUuid}", flush=True)

    def known(node):
        # str(): JavaScript's == makes port "5555" (a node-discover peer's, from "host:port") equal 5555.
        return any(dest["address"] == node["address"] and str(dest["port"]) == str(node["port"])
                   for dest in d.broadcast.destination)

    def added(node):
        print("New node added to the network.")
        print(node, flush=True)

        # make sure the address is in the destinations list
        if not known(node):
            print("adding destination", flush=True)

            d.broadcast.destination.append({
                "address": node["address"],
                "port": node["port"],
            })

            # send all nodes that we know about to the network.
            for destination in list(d.broadcast.destination):
                d.send("unicast-nodes", destination)

    def removed(node):
        print("Node removed from the network.")
        print(node, flush=True)

        # overwrite the destination list excluding the removed node
        d.broadcast.destination = [
            destination for destination in d.broadcast.destination
            if destination["address"] != node["address"] or destination["port"] != node["port"]
        ]

    def unicast_nodes(node):
        # make sure the address is in the destinations list
        if not known(node):
            print("adding destination", flush=True)

            d.broadcast.destination.append({
                "address": node["address"],
                "port": node["port"],
            })

    d.on("added", added)
    d.on("removed", removed)
    d.join("unicast-nodes", unicast_nodes)
    d.on("error", lambda err: print("error", err, flush=True))
    d.on("promotion", lambda *_: print("promoted", flush=True))

    time.sleep(args.duration)
    print("known: " + json.dumps(sorted(d.nodes)), flush=True)
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
