"""Drive a cluster of real ``examples/node.py`` processes on loopback and time what they report.

Shared by ``tests/test_processes.py`` (asserts limits) and ``benchmarks/cluster_timing.py``
(prints numbers), so both measure exactly the same scenario.  Every wait has a deadline
and every latency is computed from ``t`` (``time.time()``) stamped by the node that saw
the event, so the parent's scheduling never shows up in a number.  Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
NODE_PY = ROOT / "examples" / "node.py"
LOOPBACK_BROADCAST = "127.255.255.255"
#: Every node stops itself after this long, and when its stdin closes (``--exit-on-eof``),
#: so none outlives a parent that dies without cleaning up.
SAFETY_LIFETIME = 60.0

T = TypeVar("T")
Event = dict[str, Any]


def free_udp_port(low: int = 40000, high: int = 49999, attempts: int = 50) -> int:
    """A random port nobody holds: bound without SO_REUSEADDR, so any holder makes it fail."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free UDP port in {low}-{high} after {attempts} tries")


@dataclass(eq=False)  # identity: used as a dict key
class NodeProc:
    """One node process and everything it has reported so far."""

    weight: float
    popen: subprocess.Popen[bytes]
    events: list[Event] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    id: str | None = None
    started_at: float | None = None
    #: Live peers (ids) as this node sees them.
    peers: set[str] = field(default_factory=set)
    #: ``t`` of the event that first gave this node ``expected`` peers.
    full_view_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def first(self, event: str, after: float = float("-inf"), **match: Any) -> Event | None:
        """The first ``event`` stamped after ``after`` whose fields equal ``match``."""
        for ev in self.events:
            if ev["event"] == event and ev.get("t", 0.0) > after and all(ev.get(k) == v for k, v in match.items()):
                return ev
        return None

    def __str__(self) -> str:
        return f"node(weight={self.weight:g}, pid={self.pid})"


class Cluster:
    """N node processes on one loopback port; call :meth:`close` (or use ``with``) to reap them."""

    def __init__(
        self,
        *,
        port: int | None = None,
        hello_interval: float = 1.0,
        node_timeout: float = 2.0,
        master_timeout: float = 2.0,
        channel: str = "chat",
    ) -> None:
        self.port = port if port is not None else free_udp_port()
        self.hello_interval = hello_interval
        self.node_timeout = node_timeout
        self.master_timeout = master_timeout
        self.channel = channel
        self.procs: list[NodeProc] = []
        self._queue: queue.Queue[tuple[NodeProc, Event]] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- processes
    def spawn(self, weight: float) -> NodeProc:
        cmd = [
            sys.executable, str(NODE_PY), "--json",
            "--port", str(self.port), "--broadcast", LOOPBACK_BROADCAST,
            "--weight", str(weight), "--channel", self.channel,
            "--hello-interval", str(self.hello_interval),
            "--node-timeout", str(self.node_timeout),
            "--master-timeout", str(self.master_timeout),
            "--lifetime", str(SAFETY_LIFETIME), "--exit-on-eof",
        ]  # fmt: skip
        popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        proc = NodeProc(weight=weight, popen=popen)
        self.procs.append(proc)
        for target in (self._read_stdout, self._read_stderr):
            thread = threading.Thread(target=target, args=(proc,), daemon=True, name=f"{target.__name__}-{weight:g}")
            thread.start()
            self._threads.append(thread)
        return proc

    def _read_stdout(self, proc: NodeProc) -> None:
        assert proc.popen.stdout is not None
        for raw in proc.popen.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "raw", "line": raw.decode(errors="replace").rstrip()}
            self._queue.put((proc, event))
        self._queue.put((proc, {"event": "eof"}))

    def _read_stderr(self, proc: NodeProc) -> None:
        assert proc.popen.stderr is not None
        for raw in proc.popen.stderr:
            proc.stderr.append(raw.decode(errors="replace").rstrip())

    def close(self) -> None:
        """SIGKILL whatever still runs and reap it; safe to call twice."""
        for proc in self.procs:
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            if proc.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.popen.stdin.close()
        for thread in self._threads:
            thread.join(timeout=2)

    # ------------------------------------------------------------------ events
    def _record(self, proc: NodeProc, event: Event) -> None:
        proc.events.append(event)
        kind = event["event"]
        if kind == "started":
            proc.id, proc.started_at = event["id"], event["t"]
        elif kind == "added":
            proc.peers.add(event["id"])
        elif kind == "removed":
            proc.peers.discard(event["id"])
        if kind == "added" and proc.full_view_at is None and len(proc.peers) >= len(self.procs) - 1:
            proc.full_view_at = event["t"]

    def wait(self, done: Callable[[], T | None], timeout: float, what: str) -> T:
        """Record events until ``done()`` is truthy (and return it); on timeout raise with a dump."""
        deadline = time.monotonic() + timeout
        while True:
            while True:  # everything already queued first, so done() sees the latest state
                try:
                    self._record(*self._queue.get_nowait())
                except queue.Empty:
                    break
            result = done()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not within {timeout:.1f}s\n{self.describe()}")
            with contextlib.suppress(queue.Empty):
                self._record(*self._queue.get(timeout=remaining))

    def describe(self) -> str:
        """Each node's recent events and stderr, for failure messages."""
        lines = []
        for proc in self.procs:
            lines.append(f"{proc} id={proc.id} rc={proc.popen.poll()} peers={len(proc.peers)}")
            lines += [f"    {json.dumps(ev)}" for ev in proc.events[-12:]]
            lines += [f"    stderr: {line}" for line in proc.stderr[-8:]]
        return "\n".join(lines)

    def by_weight(self, weight: float) -> NodeProc:
        return next(p for p in self.procs if p.weight == weight)

    def live(self) -> list[NodeProc]:
        return [p for p in self.procs if p.alive]

    # ------------------------------------------------------------ scenario steps
    def start(self, weights: list[float], timeout: float = 15.0) -> float:
        """Start one node per weight, all at once; return mutual-view latency after the last start.

        That is max(time each node first saw all others) - max(each node's "started"),
        both stamped by the nodes themselves.
        """
        for weight in weights:
            self.spawn(weight)
        self.wait(lambda: all(p.started_at is not None for p in self.procs), timeout, "every node started")
        self.wait(lambda: all(p.full_view_at is not None for p in self.procs), timeout, "full mutual view")
        last_start = max(p.started_at for p in self.procs if p.started_at is not None)
        return max(p.full_view_at for p in self.procs if p.full_view_at is not None) - last_start

    def wait_master(self, expected: NodeProc, after: float, timeout: float) -> Event:
        """Wait until ``expected`` has promoted (after ``after``) and every other live node reports it.

        Fails at once if any other node promotes in that window: there must be exactly one.
        """

        def settled() -> Event | None:
            others = [p for p in self.live() if p is not expected]
            usurpers = [p for p in others if p.first("promotion", after)]
            if usurpers:
                raise AssertionError(f"{', '.join(map(str, usurpers))} promoted, expected only {expected}")
            promotion = expected.first("promotion", after)
            if promotion and all(p.first("master", after, id=expected.id) for p in others):
                return promotion
            return None

        return self.wait(settled, timeout, f"{expected} promoted and seen as master by all")

    def query_state(self, timeout: float = 5.0) -> dict[NodeProc, Event]:
        """Ask every live node for its view (stdin ``state``) and collect the answers."""
        procs = self.live()
        asked = time.time()
        for proc in procs:
            proc.send_line("state")

        def answers() -> dict[NodeProc, Event] | None:
            got = {p: p.first("state", asked) for p in procs}
            return {p: ev for p, ev in got.items() if ev} if all(got.values()) else None

        return self.wait(answers, timeout, "state from every node")

    def broadcast(self, sender: NodeProc, text: str, timeout: float = 3.0) -> float:
        """Send ``text`` from ``sender``; return the time until the last other node printed it."""
        sent = time.time()
        sender.send_line(text)

        def delivered() -> list[float] | None:
            got = [p.first("message", sent, data=text, **{"from": sender.id}) for p in self.live() if p is not sender]
            return [float(ev["t"]) for ev in got if ev] if all(got) else None

        return max(self.wait(delivered, timeout, f"message {text!r} from {sender} at every node")) - sent

    def fail_over(self, victim: NodeProc, sig: signal.Signals, successor: NodeProc, timeout: float) -> float:
        """Signal ``victim``; return the time until ``successor`` promoted (its own clock stamp).

        Then waits until every survivor has dropped the victim and follows the successor,
        so the next step starts from a settled cluster.
        """
        sent = time.time()
        os.kill(victim.pid, sig)
        promotion = self.wait_master(successor, sent, timeout)
        survivors = [p for p in self.procs if p is not victim and p.alive]
        self.wait(
            lambda: all(victim.id not in p.peers for p in survivors),
            timeout,
            f"every survivor dropped {victim}",
        )
        return float(promotion["t"]) - sent
