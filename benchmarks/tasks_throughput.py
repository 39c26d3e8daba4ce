"""Tasks per second through one master on loopback.

One master (this process) submits ``--tasks`` small tasks (``x * 3``) to ``--workers``
worker processes (or, with ``--in-process``, worker nodes in this process), keeping at
most ``--window`` in flight, and prints the throughput with the median and 99th
percentile round trip.  Every task and result is one broadcast datagram that every node
on the port receives, so this measures the whole path: encode, loopback broadcast,
decode in every process, the worker's thread, the reply.

A benchmark, not a test: it fails only if a result is wrong or missing.  Loopback only.

    .venv/bin/python -m benchmarks.tasks_throughput --workers 3 --tasks 5000
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from pydiscover import Discovery, TaskBalancer
from pydiscover.balancer import TaskFuture
from testbed import ROOT
from testbed.ports import free_udp_port

LOOPBACK_BROADCAST = "127.255.255.255"
TIMING: dict[str, Any] = {"hello_interval": 0.5, "check_interval": 0.5, "node_timeout": 2.0}

WORKER = """
import sys, time
from pydiscover import Discovery, TaskBalancer
d = Discovery(port=int(sys.argv[1]), broadcast="127.255.255.255", hello_interval=0.5, check_interval=0.5,
              node_timeout=2.0, weight=-1)
balancer = TaskBalancer(d)
balancer.worker(lambda x: x * 3)
print("up", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline and sys.stdin.readline():  # until the parent closes stdin
    pass
balancer.close()
d.stop()
"""



def measure(
    *,
    workers: int = 3,
    tasks: int = 5000,
    window: int = 64,
    timeout: float = 2.0,
    strategy: str = "round_robin",
    in_process: bool = False,
    port: int = 0,
) -> dict[str, Any]:
    """Run the master and the workers; return throughput, round trips and the balancer's counters.

    ``ok`` is False (with ``error``) when the cluster did not form, stalled, or a result
    was wrong or missing.
    """
    port = port or free_udp_port()
    out: dict[str, Any] = {"workers": workers, "tasks": tasks, "window": window, "strategy": strategy}
    out["in_process"] = in_process
    master_d = Discovery(weight=100, port=port, broadcast=LOOPBACK_BROADCAST, ignore_process=False, **TIMING)
    master = TaskBalancer(master_d, strategy=strategy)
    procs: list[subprocess.Popen[str]] = []
    local: list[tuple[Discovery, TaskBalancer[TaskFuture]]] = []
    try:
        for _ in range(workers):
            if in_process:
                d = Discovery(weight=-1, port=port, broadcast=LOOPBACK_BROADCAST, ignore_process=False, **TIMING)
                balancer = TaskBalancer(d)
                balancer.worker(lambda x: x * 3)
                local.append((d, balancer))
            else:
                proc = subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(port)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                procs.append(proc)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while not (master_d.is_master and len(master.workers) == workers):
            if time.monotonic() > deadline:
                error = f"cluster did not form: master={master_d.is_master}, workers={len(master.workers)}"
                return {**out, "ok": False, "error": error}
            time.sleep(0.01)

        slots = threading.BoundedSemaphore(window)
        latencies: list[float] = []
        futures: list[TaskFuture] = []

        def finished(sent: float, _: Any) -> None:
            latencies.append(time.perf_counter() - sent)
            slots.release()

        started = time.perf_counter()
        for n in range(tasks):
            if not slots.acquire(timeout=30):
                return {**out, "ok": False, "error": "stalled: no result for 30 s"}
            sent = time.perf_counter()
            future = master.submit(n, timeout=timeout)
            future.add_done_callback(functools.partial(finished, sent))
            futures.append(future)
        wrong = sum(f.result(60) != n * 3 for n, f in enumerate(futures))
        elapsed = time.perf_counter() - started
        stats = master.stats
        per_worker = collections.Counter(f.worker for f in futures)
        latencies.sort()
        return {
            **out,
            "ok": wrong == 0 and stats["completed"] == tasks,
            "seconds": elapsed,
            "tasks_per_s": tasks / elapsed,
            "median_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "per_worker": sorted(per_worker.values()),
            "reassigned": stats["reassigned"],
            "dropped_results": stats["dropped_results"],
            "wrong": wrong,
        }
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for d, balancer in local:
            balancer.close()
            d.stop()
        master.close()
        master_d.stop()


def run(args: argparse.Namespace) -> int:
    r = measure(
        workers=args.workers,
        tasks=args.tasks,
        window=args.window,
        timeout=args.timeout,
        strategy=args.strategy,
        in_process=args.in_process,
        port=args.port,
    )
    if "error" in r:
        print(r["error"])
        return 1
    print(
        f"{args.tasks} tasks, {args.workers} {'in-process' if args.in_process else 'process'} workers, "
        f"window {args.window}, strategy {args.strategy}"
    )
    print(f"  throughput:  {r['tasks_per_s']:,.0f} tasks/s ({r['seconds']:.2f} s)")
    print(f"  round trip:  median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
    print(f"  per worker:  {r['per_worker']}")
    print(f"  reassigned {r['reassigned']}, dropped results {r['dropped_results']}, wrong {r['wrong']}")
    return 0 if r["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="UDP port (default: a free one)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--window", type=int, default=64, help="tasks in flight at most (default 64)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-attempt timeout (default 2 s)")
    parser.add_argument("--strategy", default="round_robin")
    parser.add_argument("--in-process", action="store_true", help="worker nodes in this process instead")
    args = parser.parse_args()
    if min(args.workers, args.tasks, args.window) < 1:
        parser.error("--workers, --tasks and --window must be >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
