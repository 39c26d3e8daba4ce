"""ResourceManager numbers: moves on a join and a leave, and time to converge.

    python -m benchmarks.resources_movement [--resources 10000] [--nodes 50]

1. The assignment alone (pure): fraction of resources that change owner when one node
   joins or leaves, against the ideal 1/N, and the spread (max - min).
2. The protocol: N managers on an in-memory bus (real asyncio, no sockets) with those
   resources; wall time from start until every resource runs exactly once, evenly,
   again after one node joins, and again after that node leaves (``stop()``: goodbye).

``pure()`` and ``protocol()`` return their numbers; ``benchmarks/balancer.py`` turns them
into the suite's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from pydiscover import AsyncDiscovery
from pydiscover.balancer import ResourceManager
from pydiscover.balancer.assignment import moved, rebalance
from pydiscover.transports.memory import MemoryBus, MemoryTransport

#: No step may take longer than this (wall seconds).
STEP_LIMIT = 120.0


def pure(resources: int, nodes: int) -> dict[str, Any]:
    """Assign ``resources`` over ``nodes`` members, then one more / one fewer: fractions moved."""
    ids = [f"resource-{i}" for i in range(resources)]
    members = [f"node-{i:03d}" for i in range(nodes)]
    t = time.perf_counter()
    base = rebalance({}, ids, members)
    first = time.perf_counter() - t
    t = time.perf_counter()
    joined = rebalance(base, ids, [*members, "node-new"])
    join_s = time.perf_counter() - t
    t = time.perf_counter()
    left = rebalance(base, ids, members[1:])
    leave_s = time.perf_counter() - t
    counts = [sum(1 for m in base.values() if m == member) for member in members]
    return {
        "resources": resources,
        "nodes": nodes,
        "assign_s": first,
        "rejoin_s": join_s,
        "releave_s": leave_s,
        "spread": max(counts) - min(counts),
        "join_moved": moved(base, joined) / resources,
        "join_ideal": 1 / (nodes + 1),
        "join_target": 1 / nodes + 0.01,
        "leave_moved": moved(base, left) / resources,
        "leave_ideal": 1 / nodes,
    }


def print_pure(r: dict[str, Any]) -> None:
    print(
        f"assignment: {r['resources']} resources over {r['nodes']} nodes in {r['assign_s'] * 1000:.0f} ms; "
        f"spread max-min = {r['spread']}"
    )
    print(
        f"  join : moved {r['join_moved']:.4f} (ideal 1/{r['nodes'] + 1} = {r['join_ideal']:.4f}, "
        f"target <= {r['join_target']:.4f}), replanned in {r['rejoin_s'] * 1000:.0f} ms"
    )
    print(
        f"  leave: moved {r['leave_moved']:.4f} (ideal 1/{r['nodes']} = {r['leave_ideal']:.4f}), "
        f"replanned in {r['releave_s'] * 1000:.0f} ms"
    )


async def protocol(resources: int, nodes: int, *, verbose: bool = True) -> dict[str, Any]:
    """Wall seconds until ``nodes`` managers run every resource once and evenly; after a join; after a leave."""
    bus = MemoryBus()
    # All managers share one process and one core here: generous timeouts keep a busy loop
    # from looking like dead nodes (which is what this measures around, not through).
    opts: dict[str, Any] = {"hello_interval": 0.5, "check_interval": 1.0, "node_timeout": 5.0, "ignore_process": False}
    items = [{"id": f"resource-{i}"} for i in range(resources)]
    managers: list[ResourceManager] = []
    engines: list[AsyncDiscovery] = []
    out: dict[str, Any] = {"resources": resources, "nodes": nodes, "check_interval": opts["check_interval"]}

    async def add(weight: int) -> None:
        d = AsyncDiscovery(transport=MemoryTransport(bus), weight=weight, **opts)
        await d.start()
        engines.append(d)

        async def start(resource: dict[str, Any]) -> str:  # a coroutine: no thread per start
            return str(resource["id"])

        managers.append(ResourceManager(d, resources=items, start=start))

    def converged() -> bool:
        owned = [m.owned for m in managers]
        return (
            sum(map(len, owned)) == resources
            and len(set().union(*owned)) == resources
            and max(map(len, owned)) - min(map(len, owned)) <= 1
        )

    async def wait(label: str, t0: float) -> None:
        while not converged():
            if time.perf_counter() - t0 > STEP_LIMIT:
                raise SystemExit(f"{label}: no convergence in {STEP_LIMIT:g} s")
            await asyncio.sleep(0.01)
        out[f"{label}_s"] = time.perf_counter() - t0
        if verbose:
            print(f"  {label}: converged in {out[f'{label}_s']:.2f} s wall")

    # One loop runs all N engines here, so a long replan stalls every one of them at once
    # and the core's stall warning ("not run for 0.5 s") would fire N times per stall.
    core_log = logging.getLogger("pydiscover.core")
    level = core_log.level
    core_log.setLevel(logging.ERROR)
    try:
        t0 = time.perf_counter()
        for w in range(nodes):
            await add(w)
        if verbose:
            print(
                f"protocol: {nodes} managers on an in-memory bus, {resources} resources "
                f"(first election waits {opts['check_interval']} s)"
            )
        await wait("start", t0)
        t1 = time.perf_counter()
        await add(nodes)
        await wait("join", t1)
        t2 = time.perf_counter()
        leaving = engines.pop()
        managers.pop()
        await leaving.stop()
        await wait("leave", t2)
    finally:
        t3 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(d.stop() for d in engines)), STEP_LIMIT)
        finally:
            core_log.setLevel(level)
        out["teardown_s"] = time.perf_counter() - t3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--skip-protocol", action="store_true")
    args = parser.parse_args()
    print_pure(pure(args.resources, args.nodes))
    if not args.skip_protocol:
        asyncio.run(protocol(args.resources, args.nodes))


if __name__ == "__main__":
    main()
