"""Time cluster formation and failover with five real node processes on loopback.

Runs the scenario of ``tests/test_processes.py`` ``--runs`` times (weights 1..5,
hello 1 s, node/master timeout 2 s) and prints, per run and as medians:

* view:    full mutual view after the last process started (goal < 100 ms)
* sigkill: master SIGKILLed -> weight-4 node promoted (bounded by master_timeout; the
  kill lands a few ms after the master's promotion hello, so this is the worst case,
  about master_timeout; a kill at a random moment would see 1-2 s)
* sigterm: master SIGTERMed (goodbye) -> weight-3 node promoted (goal < 50 ms)

A benchmark, not a test: it reports numbers and only fails if the cluster misbehaves
(wrong master, lost message, a step that never happens).  Loopback only.

    .venv/bin/python benchmarks/cluster_timing.py --runs 5
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from proc_cluster import Cluster  # shared with tests/test_processes.py

HELLO_INTERVAL = 1.0
TIMEOUT = 2.0  # node_timeout and master_timeout
SETTLE = 2.0  # default check_interval: no election before this after start


@dataclass
class Run:
    """One scenario's latencies, in seconds."""

    view: float
    message: float
    sigkill: float
    sigterm: float


def run_once() -> Run:
    """Start five nodes, check the election and a message, then fail the master over twice."""
    with Cluster(hello_interval=HELLO_INTERVAL, node_timeout=TIMEOUT, master_timeout=TIMEOUT) as c:
        view = c.start([1, 2, 3, 4, 5])
        w1, w3, w4, w5 = (c.by_weight(w) for w in (1, 3, 4, 5))
        c.wait_master(w5, after=float("-inf"), timeout=SETTLE + 3.0)
        masters = [p.weight for p, ev in c.query_state().items() if ev["is_master"]]
        if masters != [5]:
            raise AssertionError(f"expected only the weight-5 node as master, got {masters}\n{c.describe()}")
        message = c.broadcast(w1, "benchmark message")
        sigkill = c.fail_over(w5, signal.SIGKILL, w4, timeout=TIMEOUT + 2.0)
        sigterm = c.fail_over(w4, signal.SIGTERM, w3, timeout=2.0)
        return Run(view, message, sigkill, sigterm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the scenario (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be between 1 and 100")

    names = [f.name for f in fields(Run)]
    print(f"{'run':>4} " + " ".join(f"{n + ' ms':>11}" for n in names), flush=True)
    runs: list[Run] = []
    began = time.monotonic()
    for i in range(1, args.runs + 1):
        run = run_once()
        runs.append(run)
        print(f"{i:>4} " + " ".join(f"{v * 1000:>11.1f}" for v in astuple(run)), flush=True)
    medians = [statistics.median(getattr(r, n) for r in runs) for n in names]
    print(f"{'med':>4} " + " ".join(f"{v * 1000:>11.1f}" for v in medians))
    print(
        f"\n{args.runs} runs in {time.monotonic() - began:.1f} s; hello {HELLO_INTERVAL:g} s, "
        f"node/master timeout {TIMEOUT:g} s.  sigkill is the worst case, just under master_timeout: "
        "the kill lands right after a master hello."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
