"""Master failover with five real processes on loopback: SIGKILL (timeout) and SIGTERM (goodbye).

Five nodes with weights 1..5 (pydiscover: ``examples/node.py``; node-discover 1.2.1:
``examples/js/peer.js``; driven by ``testbed/proc_cluster.py``) share one free port with
loopback broadcast 127.255.255.255, with the same short timings for both: hello 0.5 s,
node and master timeout 2 s, each implementation's default check interval (2 s).  Per run:

1. start all five, wait until the weight-5 node is master and everybody says so;
2. wait a random fraction of a hello interval (so the kill lands at a random moment of
   the master's hello cycle), SIGKILL the master, and time until the weight-4 node
   promotes (``sigkill``: kill -> promotion, stamped by the promoted node's own clock);
3. SIGTERM the new master and time until the weight-3 node promotes (``sigterm``).
   pydiscover says goodbye on SIGTERM, so the successor promotes at once;
   node-discover has no goodbye and its peers wait for ``master_timeout`` again.

Besides kill -> promotion, a receive-only socket on the cluster's port (SO_REUSEADDR,
loopback broadcast, it never sends) records when each of the master's hellos went out,
so the benchmark also reports how late the promotion came after the earliest moment the
timeout allowed: ``promotion - (master's last hello + master_timeout)``.  A node that
checks timeouts only every ``check_interval`` (node-discover) is up to that late.

    .venv/bin/python -m benchmarks.failover [--quick]

``benchmarks/cluster_timing.py`` runs the same scenario (``scenario()`` here) with its
own timings and prints a per-run table.  Loopback only; every process is SIGKILLed at
the end of a run and stops itself after 60 s anyway.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import Figure, cli
from testbed.node_discover import node_discover_available
from testbed.proc_cluster import Cluster, NodeProc

NAME = "failover"
HELLO_INTERVAL = 0.5
MASTER_TIMEOUT = 2.0
NODE_TIMEOUT = 2.0
#: Both implementations' default election period: no election before it after start,
#: and node-discover notices a silent master only when it runs.
CHECK_INTERVAL = 2.0
KILL_GOAL_MS = 50.0  # over master_timeout
TERM_GOAL_MS = 50.0


class HelloTap:
    """Receive-only: every broadcast datagram on ``port``, hello receive times per instance.

    Bound with SO_REUSEADDR beside the nodes, so loopback broadcasts reach it too; it
    never sends.  The reader thread stops on :meth:`close`.
    """

    def __init__(self, port: int) -> None:
        self.hellos: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="hello-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            t = time.time()
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "hello" and isinstance(obj.get("iid"), str):
                with self._lock:
                    self.hellos.setdefault(obj["iid"], []).append(t)

    def last_hello(self, iid: str | None, before: float) -> float | None:
        """When the last hello of ``iid`` sent before ``before`` arrived here."""
        with self._lock:
            times = [t for t in self.hellos.get(iid or "", []) if t <= before]
        return max(times) if times else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Timing:
    hello_interval: float = HELLO_INTERVAL
    node_timeout: float = NODE_TIMEOUT
    master_timeout: float = MASTER_TIMEOUT
    check_interval: float = CHECK_INTERVAL


def scenario(
    impl: str, timing: Timing, *, kill_phase: float | None, rng: random.Random | None = None
) -> dict[str, Any]:
    """One run; latencies in seconds.  ``kill_phase``: fraction of a hello interval to wait
    before the SIGKILL (``None``: a random one; ``0``: at once, just after the master's
    promotion hello, the worst case)."""
    lang = "js" if impl == "node-discover" else "py"
    rng = rng or random.Random()
    give = timing.master_timeout + timing.check_interval + 3.0
    with Cluster(
        hello_interval=timing.hello_interval, node_timeout=timing.node_timeout, master_timeout=timing.master_timeout
    ) as c:
        tap = HelloTap(c.port)
        try:
            view = c.start([(lang, float(w)) for w in (1, 2, 3, 4, 5)], timeout=20.0)
            w1, w3, w4, w5 = (c.by_weight(w) for w in (1, 3, 4, 5))
            c.wait_master(w5, after=float("-inf"), timeout=give)
            masters = [p.weight for p, ev in c.query_state().items() if ev["is_master"]]
            if masters != [5]:
                raise AssertionError(f"{impl}: expected only weight 5 as master, got {masters}\n{c.describe()}")
            message = c.broadcast(w1, "benchmark message")
            phase = rng.random() if kill_phase is None else kill_phase
            time.sleep(phase * timing.hello_interval)
            killed_at = time.time()
            sigkill = c.fail_over(w5, signal.SIGKILL, w4, timeout=give)
            last = tap.last_hello(w5.id, killed_at)
            sigterm = c.fail_over(w4, signal.SIGTERM, w3, timeout=give)
            promoted = _promotion_t(w4, killed_at)
        finally:
            tap.close()
    return {
        "view": view,
        "message": message,
        "sigkill": sigkill,
        # How late the promotion came after the master's last hello + master_timeout.
        "sigkill_late": None if last is None else promoted - last - timing.master_timeout,
        "since_last_hello": None if last is None else killed_at - last,
        "sigterm": sigterm,
    }


def _promotion_t(node: NodeProc, after: float) -> float:
    ev = node.first("promotion", after)
    assert ev is not None
    return float(ev["t"])


def measure(impl: str, runs: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    results = [scenario(impl, Timing(), kill_phase=None, rng=rng) for _ in range(runs)]

    def med(key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return statistics.median(values) * 1000 if values else None

    def worst(key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return max(values) * 1000 if values else None

    return {
        "runs": results,
        **{f"{k}_ms": med(k) for k in ("sigkill", "sigkill_late", "sigterm")},
        **{f"{k}_max_ms": worst(k) for k in ("sigkill", "sigkill_late", "sigterm")},
    }


def impls() -> list[str]:
    return ["pydiscover", "node-discover"] if node_discover_available() else ["pydiscover"]


def run(quick: bool) -> list[Figure]:
    runs = 1 if quick else 3
    results = {impl: measure(impl, runs) for impl in impls()}
    py, js = results["pydiscover"], results.get("node-discover")
    timing = vars(Timing())
    bound_ms = MASTER_TIMEOUT * 1000 + KILL_GOAL_MS

    def pick(key: str) -> tuple[float | None, float | None]:
        return py[key], (js[key] if js else None)

    def within(key: str, limit: float) -> bool:
        return py[key] is not None and py[key] <= limit

    return [
        Figure(
            NAME,
            "SIGKILL master -> successor promoted",
            "ms",
            *pick("sigkill_ms"),
            goal=f"<= master_timeout + {KILL_GOAL_MS:g} ms (every run)",
            met=within("sigkill_max_ms", bound_ms),
            detail={"timing": timing, "runs": runs, "results": results},
        ),
        Figure(
            NAME,
            "SIGKILL: promotion - (last hello + master_timeout)",
            "ms",
            *pick("sigkill_late_ms"),
            goal=f"<= {KILL_GOAL_MS:g} ms (every run)",
            met=within("sigkill_late_max_ms", KILL_GOAL_MS),
            detail={"max_ms": {impl: r["sigkill_late_max_ms"] for impl, r in results.items()}},
        ),
        Figure(
            NAME,
            "SIGTERM master -> successor promoted",
            "ms",
            *pick("sigterm_ms"),
            goal=f"< {TERM_GOAL_MS:g} ms (every run)",
            met=py["sigterm_max_ms"] is not None and py["sigterm_max_ms"] < TERM_GOAL_MS,
            detail={"max_ms": {impl: r["sigterm_max_ms"] for impl, r in results.items()}},
        ),
    ]


if __name__ == "__main__":
    cli(run, __doc__)
