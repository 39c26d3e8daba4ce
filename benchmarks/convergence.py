"""Cluster convergence: N processes on loopback, time from the last start to a full mutual view.

N node processes are started at once, all on one free port with loopback broadcast
127.255.255.255: pydiscover nodes (``examples/node.py --json``) or node-discover 1.2.1 nodes
(``examples/js/peer.js --json``), driven by ``testbed/proc_cluster.py``.  Each prints its
events stamped with its own ``time.time()`` (peer.js: sub-millisecond epoch time).  The
figure is, per run,

    max over nodes (time it first saw all N-1 others) - max over nodes (its "started" stamp)

i.e. from the moment the last process was up until every node had every ``added`` event.
Each implementation runs with its own default timings: pydiscover's from
``pydiscover.options`` (hello 0.5 s, timeouts 3.25 s), node-discover's (hello 1 s,
timeouts 2 s).  A newcomer's hello reaches everyone at once in both; pydiscover's nodes
answer a newcomer within milliseconds, while a node-discover newcomer hears the others only
at their next regular hello (up to one hello interval).  Median over ``RUNS`` runs.

    .venv/bin/python -m benchmarks.convergence [--quick]

Loopback only; every process is SIGKILLed when a run ends (and stops itself after 60 s).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks._harness import Figure, cli
from pydiscover.options import build_options
from testbed.node_discover import node_discover_available
from testbed.proc_cluster import Cluster

NAME = "convergence"
#: node-discover 1.2.1's defaults (lib/discover.js), in seconds.
NODE_DISCOVER_TIMING = {"hello_interval": 1.0, "node_timeout": 2.0, "master_timeout": 2.0}
GOAL_N = 20
GOAL_MS = 100.0


def default_timing(impl: str) -> dict[str, float]:
    if impl == "node-discover":
        return dict(NODE_DISCOVER_TIMING)
    opts = build_options()
    return {
        "hello_interval": opts.hello_interval,
        "node_timeout": opts.node_timeout,
        "master_timeout": opts.master_timeout,
    }


def converge_once(impl: str, n: int) -> dict[str, Any]:
    """Start ``n`` nodes together; seconds from the last "started" to the last full view."""
    lang = "js" if impl == "node-discover" else "py"
    began = time.monotonic()
    timing = default_timing(impl)
    with Cluster(
        hello_interval=timing["hello_interval"],
        node_timeout=timing["node_timeout"],
        master_timeout=timing["master_timeout"],
    ) as cluster:
        view = cluster.start([(lang, float(w)) for w in range(1, n + 1)], timeout=30.0 + n)
        starts = sorted(p.started_at for p in cluster.procs if p.started_at is not None)
        full = sorted(p.full_view_at for p in cluster.procs if p.full_view_at is not None)
        last = max(cluster.procs, key=lambda p: p.started_at or 0.0)
        heard = [ev["t"] for p in cluster.procs if (ev := p.first("added", id=last.id)) is not None]
    return {
        "view_s": view,
        # The same, from the first moment any node heard the last node's hello (its
        # "started" line is printed just after that hello, and on a busy machine later).
        "view_from_first_hello_s": full[-1] - min([starts[-1], *heard]),
        # How spread out the starts were (CPU contention while N processes boot).
        "start_spread_s": starts[-1] - starts[0],
        # The first node to see everyone, relative to the last start (the others follow).
        "first_full_view_s": full[0] - starts[-1],
        "wall_s": time.monotonic() - began,
    }


def measure(impl: str, n: int, runs: int) -> dict[str, Any]:
    results = [converge_once(impl, n) for _ in range(runs)]
    return {
        "n": n,
        "runs": results,
        "median_ms": statistics.median(r["view_s"] for r in results) * 1000,
        "max_ms": max(r["view_s"] for r in results) * 1000,
    }


def impls() -> list[str]:
    return ["pydiscover", "node-discover"] if node_discover_available() else ["pydiscover"]


def run(quick: bool) -> list[Figure]:
    plan = [(5, 2), (20, 1)] if quick else [(5, 3), (20, 3), (50, 3)]
    figures = []
    for n, runs in plan:
        results = {impl: measure(impl, n, runs) for impl in impls()}
        py, js = results["pydiscover"], results.get("node-discover")
        goal = n == GOAL_N
        figures.append(
            Figure(
                NAME,
                f"full view after last start, N={n}",
                "ms",
                py["median_ms"],
                js["median_ms"] if js else None,
                goal=f"< {GOAL_MS:g} ms" if goal else "",
                met=py["median_ms"] < GOAL_MS if goal else None,
                detail={
                    "runs": runs,
                    "timing": {impl: default_timing(impl) for impl in results},
                    "results": results,
                },
            )
        )
    return figures


if __name__ == "__main__":
    cli(run, __doc__)
