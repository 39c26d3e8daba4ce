"""Time cluster formation and failover with five real node processes on loopback.

Runs the scenario of ``tests/test_processes.py`` ``--runs`` times (weights 1..5,
hello 1 s, node/master timeout 2 s) and prints, per run and as medians:

* view:    full mutual view after the last process started (goal < 100 ms)
* message: a channel message from the weight-1 node until the last node printed it
* sigkill: master SIGKILLed -> weight-4 node promoted (bounded by master_timeout; the
  kill lands a few ms after the master's promotion hello, so this is the worst case,
  about master_timeout; a kill at a random moment would see 1-2 s)
* late:    that promotion - (the master's last hello + master_timeout)
* sigterm: master SIGTERMed (goodbye) -> weight-3 node promoted (goal < 50 ms)

The scenario itself is ``benchmarks/failover.py``'s ``scenario()`` (which the benchmark
suite runs with hello 0.5 s and a random kill moment); ``--impl node-discover`` runs it
with node-discover 1.2.1 nodes.  A benchmark, not a test: it reports numbers and only
fails if the cluster misbehaves (wrong master, lost message, a step that never happens).
Loopback only.

    .venv/bin/python -m benchmarks.cluster_timing --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.failover import Timing, scenario

HELLO_INTERVAL = 1.0
TIMEOUT = 2.0  # node_timeout and master_timeout
COLUMNS = ["view", "message", "sigkill", "sigkill_late", "sigterm"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the scenario (default 5)")
    parser.add_argument("--impl", choices=["pydiscover", "node-discover"], default="pydiscover")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be between 1 and 100")

    timing = Timing(hello_interval=HELLO_INTERVAL, node_timeout=TIMEOUT, master_timeout=TIMEOUT)
    names = [c.replace("sigkill_late", "late") for c in COLUMNS]
    print(f"{'run':>4} " + " ".join(f"{n + ' ms':>11}" for n in names), flush=True)
    runs = []
    began = time.monotonic()
    for i in range(1, args.runs + 1):
        run = scenario(args.impl, timing, kill_phase=0.0)
        runs.append(run)
        print(f"{i:>4} " + " ".join(_ms(run[c]) for c in COLUMNS), flush=True)
    medians = [statistics.median(v) if (v := [r[c] for r in runs if r[c] is not None]) else None for c in COLUMNS]
    print(f"{'med':>4} " + " ".join(_ms(m) for m in medians))
    print(
        f"\n{args.runs} runs of {args.impl} in {time.monotonic() - began:.1f} s; hello {HELLO_INTERVAL:g} s, "
        f"node/master timeout {TIMEOUT:g} s.  sigkill is the worst case, just under master_timeout: "
        "the kill lands right after a master hello."
    )
    return 0


def _ms(value: float | None) -> str:
    return f"{'-':>11}" if value is None else f"{value * 1000:>11.1f}"


if __name__ == "__main__":
    sys.exit(main())
