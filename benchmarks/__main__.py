"""Run the benchmark suite: ``python -m benchmarks [--quick] [--json FILE] [--only NAME ...]``.

Each benchmark measures pydiscover and, where it can do the same work, node-discover
1.2.1 (installed by ``./scripts/test`` into ``.cache/node``), in the same run.  Prints
one table (pydiscover, node-discover, their ratio, the goal and whether it is met) and
writes every figure with its details as JSON.  ``--quick`` runs shorter forms (about
twelve minutes in all, two of them the soak); the full run (about 50 minutes: the soak alone
takes 30) is what ``benchmarks/RESULTS.md`` records.

Everything sends on loopback (127.0.0.0/8) or inside network namespaces the loss
benchmark creates and deletes itself (it needs root and iproute2; skipped otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks._harness import Figure, machine, markdown, table

#: name -> module; the order of the table.
BENCHMARKS = {
    "hello_cpu": "benchmarks.hello_cpu",
    "convergence": "benchmarks.convergence",
    "failover": "benchmarks.failover",
    "channel": "benchmarks.channel",
    "scale": "benchmarks.scale",
    "loss": "benchmarks.loss",
    "balancer": "benchmarks.balancer",
    "flood": "benchmarks.flood",
    "soak": "benchmarks.soak",
    "breakdown": "benchmarks.breakdown",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (the test command's smoke form)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the figures and details here")
    parser.add_argument("--markdown", metavar="FILE", type=Path, help="write the table as Markdown here")
    parser.add_argument(
        "--merge", metavar="FILE", type=Path, help="start from this JSON report: re-run only --only's benchmarks"
    )
    parser.add_argument("--only", metavar="NAME", action="append", choices=sorted(BENCHMARKS), help="repeatable")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    if args.merge:
        previous = json.loads(args.merge.read_text())
        keep = [f for f in previous["figures"] if f["benchmark"] not in names]
        figures += [Figure(**{k: v for k, v in f.items() if k != "ratio"}) for f in keep]
        timings.update({k: v for k, v in previous["seconds"].items() if k not in names})
    for name in names:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(BENCHMARKS[name])
            figures += module.run(args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failures[name] = "".join(traceback.format_exception(exc))
            print(f"== {name} FAILED: {exc!r}", file=sys.stderr, flush=True)
        timings[name] = time.monotonic() - started
        print(f"== {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    order = list(BENCHMARKS)
    figures.sort(key=lambda f: order.index(f.benchmark) if f.benchmark in order else len(order))
    print(table(figures))
    for name, error in failures.items():
        print(f"\n{name} failed:\n{error}", file=sys.stderr)
    if args.json:
        report: dict[str, Any] = {
            "machine": machine(),
            "quick": args.quick,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "seconds": timings,
            "figures": [f.to_json() for f in figures],
            "failures": failures,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(markdown(figures, machine()))
        print(f"wrote {args.markdown}", file=sys.stderr)
    missed = [f for f in figures if f.met is False]
    return 1 if failures or missed else 0


if __name__ == "__main__":
    sys.exit(main())
