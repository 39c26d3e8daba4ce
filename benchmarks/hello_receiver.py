"""The receiving end of ``benchmarks/hello_cpu.py``: one pydiscover node that reports its costs.

Reads commands on stdin, one per line; ``mark`` prints one JSON line with this process's
CPU seconds (all threads), the hellos it accepted, its node-table size and its resident memory.  Runs until
stdin closes.  Loopback only: it binds ``--port`` and sends its own hellos to a sink port.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks._harness import rss
from pydiscover import Discovery, ServiceDiscovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--key")
    parser.add_argument("--encryption")
    parser.add_argument("--read-coalesce", type=float, help="the option of that name (default: the library's)")
    parser.add_argument("--listener", action="store_true",
                        help="a helloReceived handler that counts (as node-discover's receiver has)")
    parser.add_argument("--needs", type=int, default=0,
                        help="a ServiceDiscovery that needs this many services, the blast's 'fake' among them")
    args = parser.parse_args()
    options: dict[str, Any] = {"key": args.key, "encryption": args.encryption} if args.key else {}
    if args.read_coalesce is not None:
        options["read_coalesce"] = args.read_coalesce
    cls = ServiceDiscovery if args.needs else Discovery
    d = cls(address="127.0.0.1", port=args.port, unicast=[f"127.0.0.1:{args.sink_port}"], weight=1000, **options)
    if isinstance(d, ServiceDiscovery):
        d.need("fake", *(f"service-{n}" for n in range(1, args.needs)))
    heard = [0]
    if args.listener:
        def on_hello(node: Any, *_: Any) -> None:
            heard[0] += 1

        d.on("helloReceived", on_hello)
    d.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "mark":
            stats = d.stats
            dropped = sum(stats["dropped"].values())
            accepted = stats["packets_in"] - dropped
            report = {"cpu": time.process_time(), "received": accepted, "dropped": dropped, "nodes": len(d.nodes),
                      "heard": heard[0], "rss": rss()}
            if isinstance(d, ServiceDiscovery):
                report["providers"] = len(d.services.get("fake", []))
            print(json.dumps(report), flush=True)
    d.stop()


if __name__ == "__main__":
    main()
