"""A web node that serves only once ``service.db`` and ``service.cache`` are up.

    python examples/service_readiness.py            # loopback only; exits by itself
    python examples/service_readiness.py --multicast 239.255.0.1 --duration 10

Three nodes in one process on loopback broadcast: ``web`` needs ``service.db`` (with a
setup hook that "connects" to it) and ``service.cache``.  The db node starts first: the
hook runs, but ``web`` is not ready.  The cache node starts: ``ready`` fires with both.
The cache node stops gracefully: ``notready("service.cache")`` fires at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import threading
import time

from pydiscover import Node, ServiceDiscovery


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=41235,
                        help="UDP port (default 41235, this example's own: no other uses it)")
    parser.add_argument("--broadcast", default="127.255.255.255", help="loopback broadcast address")
    parser.add_argument("--multicast", metavar="GROUP", help="use this multicast group on interface 127.0.0.1 instead")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="give up if web is not ready after this many seconds (default 5)")
    args = parser.parse_args()
    try:
        loopback = ipaddress.ip_address(args.broadcast).is_loopback
    except ValueError:
        loopback = False
    if not args.multicast and not loopback:
        parser.error("this example only sends on loopback (127.0.0.0/8)")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be > 0 and at most 600 seconds")
    where = {"multicast": args.multicast, "interface": "127.0.0.1"} if args.multicast else {"broadcast": args.broadcast}
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{(time.monotonic() - t0) * 1000:7.1f} ms] {text}", flush=True)

    opts = {"port": args.port, **where, "hello_interval": 0.5, "node_timeout": 1.75,
            "check_interval": 1.0, "ignore_process": False}  # ignore_process: three nodes in one process
    web = ServiceDiscovery(start=False, advertisement={"name": "service.web", "port": 8080}, **opts)

    def connect_db(db: Node) -> None:  # runs in a worker thread: blocking I/O is fine here
        say(f"web: connecting to the database at {db.advertisement['host']}:{db.advertisement['port']}")
        time.sleep(0.1)
        say("web: database connection ready")

    ready = threading.Event()
    web.setup("service.db", connect_db)
    web.need("service.cache")
    web.on("service", lambda name, node: say(f"web: {name} available on {node.hostname}"))

    def on_ready(services: dict[str, list[Node]]) -> None:  # service name -> its usable nodes
        say(f"web: READY, needs met: {sorted(services)}; start serving")
        ready.set()

    web.on("ready", on_ready)
    web.on("notready", lambda name: say(f"web: NOT READY, lost the last {name}; stop serving"))
    web.start()
    nodes = [web]
    try:
        say("starting a db node")
        nodes.append(ServiceDiscovery(advertisement={"name": "service.db", "host": "10.0.0.5", "port": 5432},
                                      hostname="db-1", **opts))
        time.sleep(0.5)
        say(f"web ready? {web.is_ready} (cache still missing)")
        say("starting a cache node")
        cache = ServiceDiscovery(advertisement={"name": "service.cache", "port": 6379}, hostname="cache-1", **opts)
        nodes.append(cache)
        if not ready.wait(args.duration):
            say(f"not ready after {args.duration:g} s")
            return 1
        say("stopping the cache node gracefully")
        cache.stop()
        time.sleep(0.2)
        return 0
    finally:
        for d in nodes:
            d.stop()


if __name__ == "__main__":
    raise SystemExit(main())
