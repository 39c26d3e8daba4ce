"""Scale: the core in a 1,000-node simulation, and one real node among 1,000 peers at 1 Hz.

* Simulation: 1,000 sans-IO cores on one fake clock (``testbed/sim.py``), hello 1 s,
  every hello delivered to every other node (a million deliveries per simulated second):
  simulated seconds per wall second, and when the full view and the single master formed
  (the simulator keeps no events: a million ``added`` records would measure the harness).
  Its detail has the cost per delivery in each simulated second, and the same for 100
  nodes: the per-delivery work is the same, the memory it walks a hundredth.  Each
  simulation runs in a child process of its own: a million peer records leave the
  process over a gigabyte that it keeps, and the benchmarks run after this one in the
  same process (``python -m benchmarks``) measured that heap, not their own work (the
  balancer's tasks/s over 5,000 tasks fell by a fifth after one: 12,400 before, 9,200-9,900 after).
* One real node: the blaster of ``benchmarks/hello_cpu.py`` plays 1,000 peers, each saying
  hello once a second (1,000 datagrams/s, spread evenly), to one receiver process; its CPU
  share of one core over the window.  Both receive node-discover's hellos; pydiscover also
  pydiscover-format ones (a fresh ``seq`` in each: parsed every time).  Goal: under 3 %.

    .venv/bin/python -m benchmarks.scale [--quick]

Loopback only.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from benchmarks._harness import Figure, cli
from benchmarks.hello_cpu import INSTANCES, impls, measure
from testbed.sim import Sim

NAME = "scale"


def simulate(nodes: int, seconds: float) -> dict[str, Any]:
    # Events are not kept: the figure is the cores' speed, and the checks below read their tables.
    sim = Sim(seed=nodes, record_hellos=False, record_events=False)
    for _ in range(nodes):
        sim.add(weight=sim.rng.random(), hello_interval=1.0, check_interval=2.0, node_timeout=3.25)
    heaviest = max(range(nodes), key=lambda i: sim.nodes[i].core.options.weight)
    full_view_at = None
    # Wall time and deliveries of each simulated second: the first (every node starts at
    # once, every hello is new to every other node) against the steady ones.
    per_second: list[dict[str, float]] = []
    delivered = 0
    wall = second_started = time.perf_counter()
    t = 0.0
    while t < seconds:
        t = round(t + 0.05, 6)
        sim.run_until(t)
        if full_view_at is None and all(len(n.core.nodes) == nodes - 1 for n in sim.nodes):
            full_view_at = t
        if t == int(t) or t >= seconds:
            now = time.perf_counter()
            total = sum(n.core.counters["packets_in"] for n in sim.nodes)
            per_second.append({"wall_s": now - second_started, "deliveries": total - delivered,
                               "us_per_delivery": (now - second_started) / max(total - delivered, 1) * 1e6})
            second_started, delivered = now, total
    wall = time.perf_counter() - wall
    return {
        "nodes": nodes,
        "simulated_s": seconds,
        "wall_s": wall,
        "sim_s_per_wall_s": seconds / wall,
        "deliveries": delivered,
        "deliveries_per_wall_s": delivered / wall,
        "per_simulated_second": per_second,
        "full_view_at": full_view_at,
        "masters": sim.masters(),
        "one_master_is_heaviest": sim.masters() == [heaviest],
        "pid": os.getpid(),  # the process that held the simulation (see simulate_apart)
    }


#: Bound on one simulation in its child process (the full form takes one to three minutes).
SIMULATION_LIMIT = 1800.0


def simulate_apart(nodes: int, seconds: float) -> dict[str, Any]:
    """:func:`simulate` in a fresh child process, so its heap does not stay in this one.

    Past :data:`SIMULATION_LIMIT` the child is killed (leaving the pool terminates it) and
    ``multiprocessing.TimeoutError`` is raised.
    """
    with multiprocessing.get_context("spawn").Pool(1) as child:
        result: dict[str, Any] = child.apply_async(simulate, (nodes, seconds)).get(timeout=SIMULATION_LIMIT)
        return result


def one_among_many(impl: str, mode: str, seconds: float) -> dict[str, Any]:
    result = measure(impl, mode, rate=INSTANCES, seconds=seconds)
    result["cpu_share_percent"] = result["cpu_s"] / seconds * 100
    return result


def run(quick: bool) -> list[Figure]:
    sim = simulate_apart(1_000, 2.0 if quick else 4.0)
    # The same per-delivery work with a tenth of the cores: what memory costs at 1,000
    # (a million peer records in one process) against caches that hold most of it.
    sim["small_for_contrast"] = simulate_apart(100, 3.0)
    seconds = 5.0 if quick else 15.0
    # The same peers for both (node-discover's own hellos), then pydiscover's costlier ones.
    same = {impl: one_among_many(impl, "plain", seconds) for impl in impls()}
    ours = one_among_many("pydiscover", "ours", seconds)
    py, js = same["pydiscover"], same.get("node-discover")

    def ok(r: dict[str, Any]) -> bool:
        return bool(r["cpu_share_percent"] < 3 and r["share"] >= 0.99 and r["nodes"] == INSTANCES)

    return [
        Figure(
            NAME,
            "1,000-node simulation speed",
            "sim s / wall s",
            sim["sim_s_per_wall_s"],
            better="higher",
            goal="one master, full view",
            met=sim["one_master_is_heaviest"] and sim["full_view_at"] is not None,
            detail=sim,
        ),
        Figure(
            NAME,
            "CPU of one node among 1,000 node-discover peers at 1 Hz",
            "% of a core",
            py["cpu_share_percent"],
            js["cpu_share_percent"] if js else None,
            goal="< 3 %",
            met=ok(py),
            detail=same,
        ),
        Figure(
            NAME,
            "CPU of one node among 1,000 pydiscover peers at 1 Hz",
            "% of a core",
            ours["cpu_share_percent"],
            goal="< 3 %",
            met=ok(ours),
            detail=ours,
        ),
    ]


if __name__ == "__main__":
    cli(run, __doc__)
