"""The clustered-app pattern: the elected master sends numbers, the workers return x * 3.

    python examples/task_balancer.py                      # loopback only; exits by itself
    python examples/task_balancer.py --workers 4 --tasks 40 --work-ms 100 --stop-one

Every node runs the same app code: a ``TaskBalancer`` on the ``tasks`` channel whose
worker triples numbers.  The node that wins the election (``promotion``) generates the
tasks and submits them; the balancer picks a worker for each (round robin), and the
results come back on the same channel.  With ``--stop-one`` a worker stops halfway
through: its unfinished tasks are reassigned to the others (``attempt 2``).

Here all nodes live in one process on loopback broadcast (``ignore_process=False``); in
a real cluster each runs on its own machine with the same code.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import sys
import threading
import time
from typing import Any

from pydiscover import Discovery, TaskBalancer
from pydiscover.balancer import TaskInfo


class App:
    """One node of the cluster: it works when it is a worker and assigns when it is master."""

    def __init__(self, name: str, weight: float, work: bool, work_ms: int, opts: dict[str, Any]) -> None:
        self.name = name
        self.work_ms = work_ms
        self.discovery = Discovery(start=False, hostname=name, weight=weight, **opts)
        self.balancer = TaskBalancer(self.discovery)
        self.promoted = threading.Event()
        self.discovery.on("promotion", lambda me: self.promoted.set())
        if work:
            self.balancer.worker(self.triple)
        self.discovery.start()

    def triple(self, x: int, info: TaskInfo) -> int:
        """The work: runs on a thread of the node the master chose."""
        time.sleep(self.work_ms / 1000)
        return x * 3

    def stop(self) -> None:
        self.balancer.close()
        self.discovery.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=41238,
                        help="UDP port (default 41238, this example's own: no other uses it)")
    parser.add_argument("--broadcast", default="127.255.255.255", help="loopback broadcast address (127.x only)")
    parser.add_argument("--workers", type=int, default=3, help="worker nodes (default 3)")
    parser.add_argument("--tasks", type=int, default=20, help="numbers the master sends (default 20)")
    parser.add_argument("--work-ms", type=int, default=0, help="time each task takes on its worker (default 0)")
    parser.add_argument("--stop-one", action="store_true", help="stop one worker halfway through")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="give up (exit 1) if the run takes longer than this many seconds (default 30)")
    args = parser.parse_args()
    try:
        loopback = ipaddress.ip_address(args.broadcast).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--broadcast {args.broadcast!r}: this example only sends on loopback (127.0.0.0/8)")
    if args.workers < 1 or args.tasks < 1 or args.duration <= 0 or args.work_ms < 0:
        parser.error("--workers and --tasks must be >= 1, --duration > 0, --work-ms >= 0")
    t0 = time.monotonic()
    deadline = t0 + args.duration

    def say(text: str) -> None:
        print(f"[{(time.monotonic() - t0) * 1000:7.1f} ms] {text}", flush=True)

    opts = {"port": args.port, "broadcast": args.broadcast, "hello_interval": 0.5, "check_interval": 1.0,
            "node_timeout": 1.5, "ignore_process": False}  # ignore_process: several nodes in one process
    apps = [App("master", 100, False, args.work_ms, opts)]
    try:
        apps += [App(f"worker-{i}", -i, True, args.work_ms, opts) for i in range(1, args.workers + 1)]
        master = apps[0]
        if not master.promoted.wait(max(0.0, deadline - time.monotonic())):
            say("no master was elected in time")
            return 1
        say("master elected; waiting for the workers to announce themselves")
        while len(master.balancer.workers) < args.workers:
            if time.monotonic() > deadline:
                say(f"only {len(master.balancer.workers)} of {args.workers} workers showed up")
                return 1
            time.sleep(0.01)
        names = {app.discovery.me.id: app.name for app in apps}
        say(f"{args.workers} workers live; sending {args.tasks} numbers")
        timeout = max(1.0, 4 * args.work_ms / 1000)
        futures = {n: master.balancer.submit(n, timeout=timeout) for n in range(1, args.tasks + 1)}
        if args.stop_one:
            time.sleep(args.work_ms / 1000 / 2)
            say(f"stopping {apps[1].name} with tasks in flight")
            apps[1].stop()
        correct = 0
        per_worker: collections.Counter[str] = collections.Counter()
        for n, future in futures.items():
            try:
                value = future.result(max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # a timeout or a failed task: report it, keep going
                say(f"{n} failed: {exc!r}")
                continue
            worker = names.get(future.worker or "", future.worker or "?")
            per_worker[worker] += 1
            correct += value == n * 3
            say(f"{n} * 3 = {value}  (by {worker}, attempt {future.attempts})")
        spread = ", ".join(f"{name}: {count}" for name, count in sorted(per_worker.items()))
        say(f"{correct}/{args.tasks} results correct; per worker: {spread}")
        stats = master.balancer.stats
        say(f"master stats: completed {stats['completed']}, reassigned {stats['reassigned']}, "
            f"dropped results {stats['dropped_results']}")
        return 0 if correct == args.tasks else 1
    finally:
        for app in apps:
            app.stop()


if __name__ == "__main__":
    sys.exit(main())
