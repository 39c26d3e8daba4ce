"""Drive a cluster of real ``examples/node.py`` processes on loopback and time what they report.

Shared by ``tests/test_processes.py`` (asserts limits) and ``benchmarks/failover.py`` /
``benchmarks/cluster_timing.py`` (print numbers), so both measure exactly the same
scenario.  Every wait has a deadline and every latency is computed from ``t``
(``time.time()``) stamped by the node that saw the event, so the parent's scheduling
never shows up in a number.  Loopback only.

``tests/test_interop.py`` mixes in real node-discover processes (``examples/js/peer.js``,
which prints the same JSON events): ``spawn(weight, lang="js")``.  With ``unicast=N`` every
node binds its own port on 127.0.0.1 and unicasts to all N (with ``SO_REUSEADDR`` a
unicast datagram to a shared port reaches one socket only).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from testbed import ROOT
from testbed.node_discover import node_env
from testbed.ports import free_udp_port, free_udp_ports

NODE_PY = ROOT / "examples" / "node.py"
JS_PEER = ROOT / "examples" / "js" / "peer.js"
LOOPBACK_BROADCAST = "127.255.255.255"
#: Every node stops itself after this long, and when its stdin closes (``--exit-on-eof``),
#: so none outlives a parent that dies without cleaning up.
SAFETY_LIFETIME = 60.0

T = TypeVar("T")
Event = dict[str, Any]


def message_text(data: Any) -> Any:
    """The text of a chat message: node.py sends the line itself, peer.js sends ``{"text": line}``."""
    if isinstance(data, dict) and set(data) == {"text"}:
        return data["text"]
    return data


@dataclass(eq=False)  # identity: used as a dict key
class NodeProc:
    """One node process and everything it has reported so far."""

    weight: float
    popen: subprocess.Popen[bytes]
    #: ``"py"`` (examples/node.py) or ``"js"`` (examples/js/peer.js, real node-discover).
    lang: str = "py"
    #: The UDP port it binds.
    port: int | None = None
    advertisement: Any = None
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

    def message(self, text: str, sender: NodeProc, after: float = float("-inf")) -> Event | None:
        """The first chat message ``text`` from ``sender`` (either language's shape) after ``after``."""
        for ev in self.events:
            if (
                ev["event"] == "message"
                and ev.get("t", 0.0) > after
                and ev.get("from") == sender.id
                and message_text(ev.get("data")) == text
            ):
                return ev
        return None

    def __str__(self) -> str:
        return f"{self.lang}(weight={self.weight:g}, pid={self.pid})"


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
        check_interval: float | None = None,
        unicast: int = 0,
        key: str | None = None,
        encryption: str | None = None,
        transport: str | None = None,
        namespace: str | None = None,
    ) -> None:
        """``unicast=N``: up to N nodes, each on its own port, each unicasting to all N ports.

        ``key``/``encryption`` go to every node (peer.js accepts only ``"node-discover"``).
        ``transport`` (a ``redis://`` URL) and ``namespace`` run the Python nodes over Redis.
        """
        self.port = port if port is not None else free_udp_port()
        self.hello_interval = hello_interval
        self.node_timeout = node_timeout
        self.master_timeout = master_timeout
        self.check_interval = check_interval
        self.channel = channel
        self.key = key
        self.encryption = encryption
        self.unicast_ports = free_udp_ports(unicast) if unicast else []
        self.transport = transport
        self.namespace = namespace
        self.procs: list[NodeProc] = []
        self._queue: queue.Queue[tuple[NodeProc, Event]] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- processes
    def spawn(
        self,
        weight: float,
        lang: str = "py",
        advertise: Any = None,
        check_interval: float | None = None,
        key: str | None = None,
        encryption: str | None = None,
    ) -> NodeProc:
        """Start one node: ``lang="py"`` runs examples/node.py, ``"js"`` real node-discover (peer.js).

        Both print the same JSON events; peer.js exits when its stdin closes, node.py
        is told to (``--exit-on-eof``), and both stop after ``SAFETY_LIFETIME``.
        ``check_interval``, ``key`` and ``encryption`` override the cluster's for this node.
        """
        if self.transport is not None:
            port = self.port
            where = ["--port", str(port), "--transport", self.transport]
            if self.namespace is not None:
                where += ["--namespace", self.namespace]
        elif self.unicast_ports:
            taken = {p.port for p in self.procs}
            free = [p for p in self.unicast_ports if p not in taken]
            if not free:
                raise RuntimeError(f"all {len(self.unicast_ports)} unicast ports are taken")
            port = free[0]
            where = ["--port", str(port), "--unicast", ",".join(f"127.0.0.1:{p}" for p in self.unicast_ports)]
        else:
            port = self.port
            where = ["--port", str(port), "--broadcast", LOOPBACK_BROADCAST]
        common = [
            "--json", *where,
            "--weight", str(weight), "--channel", self.channel,
            "--hello-interval", str(self.hello_interval),
            "--node-timeout", str(self.node_timeout),
            "--master-timeout", str(self.master_timeout),
            "--lifetime", str(SAFETY_LIFETIME),
        ]  # fmt: skip
        if check_interval is None:
            check_interval = self.check_interval
        if check_interval is not None:
            common += ["--check-interval", str(check_interval)]
        if key is None:
            key, encryption = self.key, encryption or self.encryption
        if key is not None:
            common += ["--key", key]
            if encryption is not None:
                common += ["--encryption", encryption]
        if advertise is not None:
            common += ["--advertise", json.dumps(advertise)]
        env = None
        if lang == "py":
            cmd = [sys.executable, str(NODE_PY), *common, "--exit-on-eof"]
        elif lang == "js":
            cmd = ["node", str(JS_PEER), *common]
            env = node_env()
        else:
            raise ValueError(f"lang must be 'py' or 'js', not {lang!r}")
        popen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env
        )
        proc = NodeProc(weight=weight, popen=popen, lang=lang, port=port, advertisement=advertise)
        self.procs.append(proc)
        for target in (self._read_stdout, self._read_stderr):
            name = f"{target.__name__}-{lang}-{weight:g}"
            thread = threading.Thread(target=target, args=(proc,), daemon=True, name=name)
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
    def start(self, weights: Sequence[float | tuple[str, float]], timeout: float = 15.0) -> float:
        """Start one node per weight, all at once; return mutual-view latency after the last start.

        A weight may be ``(lang, weight)`` to choose the implementation (default ``"py"``).
        The latency is max(time each node first saw all others) - max(each node's
        "started"), both stamped by the nodes themselves.
        """
        for spec in weights:
            if isinstance(spec, tuple):
                self.spawn(spec[1], lang=spec[0])
            else:
                self.spawn(spec)
        return self.await_view(timeout)

    def await_view(self, timeout: float = 15.0) -> float:
        """Wait until every spawned node has started and seen all the others; return :meth:`start`'s latency."""
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
            got = [p.message(text, sender, sent) for p in self.live() if p is not sender]
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
