"""ResourceManager numbers: moves on a join and a leave, and time to converge.

    python benchmarks/resources_movement.py [--resources 10000] [--nodes 50]

1. The assignment alone (pure): fraction of resources that change owner when one node
   joins or leaves, against the ideal 1/N, and the spread (max - min).
2. The protocol: N managers on an in-memory bus (real asyncio, no sockets) with those
   resources; wall time from start until every resource runs exactly once, evenly,
   and again after one node joins.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydiscover import AsyncDiscovery
from pydiscover.balancer import ResourceManager
from pydiscover.balancer.assignment import moved, rebalance
from pydiscover.transports.memory import MemoryBus, MemoryTransport


def pure(resources: int, nodes: int) -> None:
    ids = [f"resource-{i}" for i in range(resources)]
    members = [f"node-{i:03d}" for i in range(nodes)]
    t = time.perf_counter()
    base = rebalance({}, ids, members)
    first = time.perf_counter() - t
    joined = rebalance(base, ids, [*members, "node-new"])
    left = rebalance(base, ids, members[1:])
    counts = [sum(1 for m in base.values() if m == member) for member in members]
    print(f"assignment: {resources} resources over {nodes} nodes in {first * 1000:.0f} ms; "
          f"spread max-min = {max(counts) - min(counts)}")
    print(f"  join : moved {moved(base, joined) / resources:.4f} (ideal 1/{nodes + 1} = {1 / (nodes + 1):.4f}, "
          f"target <= {1 / nodes + 0.01:.4f})")
    print(f"  leave: moved {moved(base, left) / resources:.4f} (ideal 1/{nodes} = {1 / nodes:.4f})")


async def protocol(resources: int, nodes: int) -> None:
    bus = MemoryBus()
    # All managers share one process and one core here: generous timeouts keep a busy loop
    # from looking like dead nodes (which is what this measures around, not through).
    opts: dict[str, Any] = {"hello_interval": 0.5, "check_interval": 1.0, "node_timeout": 5.0,
                            "ignore_process": False}
    items = [{"id": f"resource-{i}"} for i in range(resources)]
    managers: list[ResourceManager] = []
    engines: list[AsyncDiscovery] = []

    async def add(weight: int) -> None:
        d = AsyncDiscovery(transport=MemoryTransport(bus), weight=weight, **opts)
        await d.start()
        engines.append(d)
        async def start(resource: dict[str, Any]) -> str:  # a coroutine: no thread per start
            return str(resource["id"])

        managers.append(ResourceManager(d, resources=items, start=start))

    def converged() -> bool:
        owned = [m.owned for m in managers]
        return sum(map(len, owned)) == resources and len(set().union(*owned)) == resources and \
            max(map(len, owned)) - min(map(len, owned)) <= 1

    async def wait(label: str, t0: float) -> None:
        while not converged():
            if time.perf_counter() - t0 > 120:
                raise SystemExit(f"{label}: no convergence in 120 s")
            await asyncio.sleep(0.01)
        print(f"  {label}: converged in {time.perf_counter() - t0:.2f} s wall")

    t0 = time.perf_counter()
    for w in range(nodes):
        await add(w)
    print(f"protocol: {nodes} managers on an in-memory bus, {resources} resources "
          f"(first election waits {opts['check_interval']} s)")
    await wait("start", t0)
    t1 = time.perf_counter()
    await add(nodes)
    await wait("one join", t1)
    for d in engines:
        await d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--skip-protocol", action="store_true")
    args = parser.parse_args()
    pure(args.resources, args.nodes)
    if not args.skip_protocol:
        asyncio.run(protocol(args.resources, args.nodes))


if __name__ == "__main__":
    main()
