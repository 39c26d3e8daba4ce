"""The balancers as figures: ResourceManager movement and convergence, TaskBalancer throughput.

pydiscover only: node-discover has no balancer.  Wraps the two stand-alone scripts, which
stay runnable on their own:

* ``benchmarks/resources_movement.py``: the pure assignment (``RESOURCES`` resources over
  ``NODES`` members): share of resources that change owner when one member joins and when
  one leaves (goal <= 3 %, i.e. 1/N + 1 %; ideal 1/(N+1) and 1/N), spread max - min
  resources per member; then the protocol, with N ResourceManagers on an in-memory bus in
  this process: wall seconds until every resource runs exactly once and evenly after the
  start (the first election waits ``check_interval``, 1 s), after one join and after one
  leave (goodbye).
* ``benchmarks/tasks_throughput.py``: one master (this process) and three worker
  processes on loopback broadcast; tasks/s with at most 64 in flight, and the median
  round trip.

    .venv/bin/python -m benchmarks.balancer [--quick]

Loopback only (and the in-memory bus).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks import resources_movement, tasks_throughput
from benchmarks._harness import Figure, cli

NAME = "balancer"
RESOURCES, NODES = 10_000, 50
MOVE_GOAL = 0.03


def run(quick: bool) -> list[Figure]:
    pure = resources_movement.pure(RESOURCES, NODES)
    proto_resources, proto_nodes = (2_000, 20) if quick else (RESOURCES, NODES)
    proto = asyncio.run(resources_movement.protocol(proto_resources, proto_nodes, verbose=False))
    # 20,000 tasks: about two seconds at the usual rate (5,000 took 0.4 s, too short a window).
    tasks = tasks_throughput.measure(workers=3, tasks=2_000 if quick else 20_000)
    if not tasks.get("ok"):
        raise RuntimeError(f"tasks_throughput failed: {tasks}")
    where = f"{RESOURCES:,} resources, {NODES} nodes"
    in_proto = f"{proto_resources:,} resources, {proto_nodes} managers"

    def fig(name: str, unit: str, value: Any, **kw: Any) -> Figure:
        return Figure(NAME, name, unit, value, None, **kw)

    return [
        fig(
            f"moved on one join ({where})",
            "%",
            pure["join_moved"] * 100,
            goal=f"<= {MOVE_GOAL * 100:g} % (ideal {pure['join_ideal'] * 100:.2f} %)",
            met=pure["join_moved"] <= MOVE_GOAL,
            detail=pure,
        ),
        fig(
            f"moved on one leave ({where})",
            "%",
            pure["leave_moved"] * 100,
            goal=f"<= {MOVE_GOAL * 100:g} % (ideal {pure['leave_ideal'] * 100:.2f} %)",
            met=pure["leave_moved"] <= MOVE_GOAL,
        ),
        fig(
            f"spread max-min per node ({where})",
            "resources",
            pure["spread"],
            goal="<= 1",
            met=pure["spread"] <= 1,
        ),
        fig(f"first assignment ({where})", "ms", pure["assign_s"] * 1000),
        fig(
            f"converged after start ({in_proto})",
            "s",
            proto["start_s"],
            detail={**proto, "note": "includes the first election's check_interval wait"},
        ),
        fig(f"converged after one join ({in_proto})", "s", proto["join_s"]),
        fig(f"converged after one leave ({in_proto})", "s", proto["leave_s"]),
        fig(
            "tasks/s, 3 worker processes, window 64",
            "tasks/s",
            tasks["tasks_per_s"],
            better="higher",
            detail=tasks,
        ),
        fig("task round trip median, 3 worker processes", "ms", tasks["median_ms"], detail={"p99_ms": tasks["p99_ms"]}),
    ]


if __name__ == "__main__":
    cli(run, __doc__)
