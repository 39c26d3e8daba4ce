"""Simulate N nodes on one fake clock and print how fast (in simulated and wall time) they converge.

    python -m benchmarks.simulate --nodes 200 --nodes 1000

No sockets: this measures the sans-IO core alone (decode, node table, election).
"""

from __future__ import annotations

import argparse
import time

from testbed.sim import Sim


def run(n: int, seconds: float) -> None:
    sim = Sim(seed=n)
    wall = time.perf_counter()
    for _ in range(n):
        sim.add(weight=sim.rng.random(), hello_interval=1.0, check_interval=2.0, node_timeout=2.0)
    full_view_at = None
    step = 0.01
    t = 0.0
    while t < seconds:
        t += step
        sim.run_until(t)
        if full_view_at is None and all(len(node.core.nodes) == n - 1 for node in sim.nodes):
            full_view_at = t
    wall = time.perf_counter() - wall
    deliveries = sum(node.core.counters["packets_in"] for node in sim.nodes)
    best = max(range(n), key=lambda i: sim.nodes[i].core.options.weight)
    print(
        f"nodes={n:5d} simulated={seconds:.1f}s wall={wall:6.2f}s deliveries={deliveries:9d} "
        f"({deliveries / wall / 1000:6.1f}k/s) full_view_at={full_view_at}s masters={sim.masters()} "
        f"heaviest={best} ok={sim.masters() == [best]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable; default 50, 200)")
    parser.add_argument("--seconds", type=float, default=3.0, help="simulated seconds (default 3)")
    args = parser.parse_args()
    for n in args.nodes or [50, 200]:
        run(n, args.seconds)


if __name__ == "__main__":
    main()
