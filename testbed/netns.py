"""Private virtual LANs in network namespaces, and pydiscover nodes running inside them.

Everything lives in namespaces this module creates and deletes: one namespace holds
the bridge(s); each host namespace holds ``eth0``, one end of a veth pair whose other
end is a bridge port.  The veths are created from inside those namespaces (``ip -n``),
so the caller's namespace is never touched and no packet can leave the machine.
Names carry a random tag, so parallel or aborted runs never clash.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

NODE_SCRIPT = Path(__file__).with_name("netns_node.py")
HOST_IF = "eth0"
IP_TIMEOUT = 10.0


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be built here; the tests skip with this message."""


def netns_unavailable_reason() -> str | None:
    """Why these tests cannot run (not root, no iproute2), or ``None``."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip' not found)"
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip [-n ns] args``; always bounded in time."""
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def sysctl(ns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``ns`` only (``net.*`` keys are per namespace)."""
    cmd = ["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT, check=True)


class Lan:
    """A bridge namespace and ``hosts`` host namespaces on 10.213.<subnet>.0/24.

    Host ``i`` (0-based) is ``10.213.<subnet>.<i+1>`` on ``eth0``; its bridge port is
    ``p<i>`` in the bridge namespace.  Call :meth:`destroy` in a finalizer: it deletes
    every namespace made so far, even after a half-finished :meth:`build`.
    """

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.tag = secrets.token_hex(4)
        self.subnet = secrets.randbelow(250) + 1
        self.bridge_ns = f"pdbr-{self.tag}"
        self.host_ns = [f"pdh{i}-{self.tag}" for i in range(hosts)]
        self._made: list[str] = []
        self._bridges = {"br0"}

    # ------------------------------------------------------------- building
    def _add_ns(self, name: str) -> None:
        proc = ip("netns", "add", name, check=False)
        if proc.returncode:
            if not self._made:
                raise NetnsUnavailable(f"'ip netns add' failed: {proc.stderr.strip()}")
            raise RuntimeError(f"ip netns add {name}: {proc.stderr.strip()}")
        self._made.append(name)
        ip("link", "set", "lo", "up", ns=name)

    def build(self) -> Lan:
        self._add_ns(self.bridge_ns)
        ip("link", "add", "br0", "type", "bridge", ns=self.bridge_ns)
        ip("link", "set", "br0", "up", ns=self.bridge_ns)
        for i, ns in enumerate(self.host_ns):
            self._add_ns(ns)
            ip("link", "add", HOST_IF, "type", "veth", "peer", "name", self.port(i), "netns", self.bridge_ns, ns=ns)
            # No duplicate-address detection: link-local IPv6 is usable at once, not after ~1-2 s.
            sysctl(ns, f"net.ipv6.conf.{HOST_IF}.accept_dad", "0")
            ip("addr", "add", f"{self.address(i)}/24", "brd", "+", "dev", HOST_IF, ns=ns)
            ip("link", "set", HOST_IF, "up", ns=ns)
            ip("link", "set", self.port(i), "master", "br0", "up", ns=self.bridge_ns)
        return self

    def destroy(self) -> list[str]:
        """Delete every namespace this LAN made (veths and bridges go with them); returns errors."""
        errors = []
        for name in reversed(self._made):
            proc = ip("netns", "del", name, check=False)
            if proc.returncode:
                errors.append(f"ip netns del {name}: {proc.stderr.strip()}")
        self._made.clear()
        return errors

    # ---------------------------------------------------------------- names
    def port(self, i: int) -> str:
        return f"p{i}"

    def address(self, i: int) -> str:
        return f"10.213.{self.subnet}.{i + 1}"

    @property
    def broadcast(self) -> str:
        return f"10.213.{self.subnet}.255"

    # ------------------------------------------------------------- topology
    def cut(self, i: int) -> None:
        """Take host ``i``'s bridge port down: it is alone (its ``eth0`` loses carrier too)."""
        ip("link", "set", self.port(i), "down", ns=self.bridge_ns)

    def mend(self, i: int) -> None:
        ip("link", "set", self.port(i), "up", ns=self.bridge_ns)

    def split(self, *groups: Iterable[int]) -> None:
        """Partition hosts into ``groups``, one bridge each; links stay up (no carrier loss).

        ``split(range(hosts))`` heals: every port back on ``br0``.
        """
        for g, hosts in enumerate(groups):
            bridge = f"br{g}"
            if bridge not in self._bridges:
                ip("link", "add", bridge, "type", "bridge", ns=self.bridge_ns)
                ip("link", "set", bridge, "up", ns=self.bridge_ns)
                self._bridges.add(bridge)
            for i in hosts:
                ip("link", "set", self.port(i), "master", bridge, ns=self.bridge_ns)

    def wait_ipv6_link_local(self, timeout: float = 5.0) -> None:
        """Wait until every host has a usable (non-tentative) link-local address on ``eth0``."""
        deadline = time.monotonic() + timeout
        pending = list(self.host_ns)
        while pending:
            pending = [
                ns
                for ns in pending
                if "fe80::" not in ip("-6", "addr", "show", "dev", HOST_IF, "scope", "link", "-tentative", ns=ns).stdout
            ]
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"no usable IPv6 link-local address after {timeout}s in {pending}")
            if pending:
                time.sleep(0.05)


@dataclass
class NodeState:
    """What one node last said about itself."""

    id: str = ""
    master: bool = False
    view: dict[str, bool] = field(default_factory=dict)
    started: bool = False
    exited: bool = False


class NetnsProcess:
    """A command under ``ip netns exec``; each JSON object it prints goes to a shared queue as ``(index, object)``.

    Used for the test nodes (:data:`NODE_SCRIPT`, by :class:`Cluster`) and by
    ``benchmarks/loss.py`` (pydiscover and node-discover peers).  A line that is not a JSON
    object arrives as ``{"event": "garbage", "line": ...}`` and the end of the output as
    ``{"event": "eof"}``, both stamped ``t`` by ``clock`` (the clock the nodes stamp with).
    """

    def __init__(
        self,
        index: int,
        ns: str,
        argv: Sequence[str],
        out: queue.Queue[tuple[int, dict[str, Any]]],
        stderr_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.stderr_path = stderr_path
        self._clock = clock
        self._stderr = stderr_path.open("w")
        # ip netns exec execs the command (no fork): this pid is the node's, signals reach it.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
            cwd=cwd,
        )
        self._thread = threading.Thread(target=self._read, args=(out,), name=f"node{index}-stdout", daemon=True)
        self._thread.start()

    def _read(self, out: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                message = {"event": "garbage", "line": line, "t": self._clock()}
            out.put((self.index, message))
        out.put((self.index, {"event": "eof", "t": self._clock()}))

    def command(self, text: str) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            stdin.write(text + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            return  # already gone; its eof tells the story

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the process so far (``/proc/<pid>/stat``), or None once gone."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM (a clean stop with goodbye), SIGKILL if it does not exit in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        self._thread.join(timeout)
        self._stderr.close()
        return code

    def end_input(self) -> None:
        """Close stdin: a node that stops on EOF stops cleanly (pydiscover says goodbye)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def close(self, timeout: float = 5.0) -> None:
        """Close stdin, SIGKILL if the process does not exit in ``timeout``; reap it and its reader."""
        self.end_input()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self._thread.join(timeout)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        self._stderr.close()

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# A group expectation: (hosts that should see exactly each other, which of them are masters).
Group = tuple[Collection[int], Collection[int]]


class Cluster:
    """One ``netns_node.py`` per host of a :class:`Lan`, and each node's latest reported state.

    Every wait is bounded and reads events as they arrive; a timeout fails with each
    node's state, the recent event log and the nodes' stderr.
    """

    def __init__(self, lan: Lan, options: Callable[[int], dict[str, Any]], workdir: Path) -> None:
        self.lan = lan
        self._queue: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.log: list[tuple[int, dict[str, Any]]] = []
        self.states = [NodeState() for _ in range(lan.hosts)]
        self.nodes = [
            NetnsProcess(
                i,
                lan.host_ns[i],
                [sys.executable, "-u", str(NODE_SCRIPT), json.dumps(options(i))],
                self._queue,
                workdir / f"node{i}.stderr",
            )
            for i in range(lan.hosts)
        ]
        self._tags = 0

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 15.0) -> None:
        """Start every node at once (after all have imported), then wait until all run."""
        self.wait(lambda: all(s.id for s in self.states), timeout, "every node to load")
        for node in self.nodes:
            node.command("start")
        self.wait(lambda: all(s.started for s in self.states), timeout, "every node to start")

    def terminate(self, i: int, timeout: float = 5.0) -> int:
        code = self.nodes[i].terminate(timeout)
        self.wait(lambda: self.states[i].exited, timeout, f"node {i}'s output to end")
        return code

    def close(self) -> None:
        for node in self.nodes:
            node.terminate()

    # ---------------------------------------------------------------- events
    def _apply(self, i: int, message: dict[str, Any]) -> None:
        self.log.append((i, message))
        state = self.states[i]
        state.id = message.get("self", state.id)
        event = message["event"]
        if event == "started":
            state.started = True
        elif event == "eof":
            state.exited = True
        elif "view" in message and event != "state":
            state.master, state.view = message["master"], message["view"]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Read events until ``condition()`` holds; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}\n{self.describe()}")
            with contextlib.suppress(queue.Empty):
                self._apply(*self._queue.get(timeout=remaining))
        return time.monotonic() - start

    def events(self, i: int, event: str, since: int = 0) -> list[dict[str, Any]]:
        """Node ``i``'s ``event`` lines from ``self.log[since:]``."""
        return [m for j, m in self.log[since:] if j == i and m["event"] == event]

    def wait_event(self, i: int, event: str, since: int, timeout: float = 5.0) -> dict[str, Any]:
        """The first ``event`` line of node ``i`` after ``since``, waiting for it if need be.

        A state line can run ahead of the event that explains it (the core updates its
        state, then fires the events of that step), so agreement does not imply the
        event line has been read yet.
        """
        self.wait(lambda: bool(self.events(i, event, since)), timeout, f"h{i + 1} {event}")
        return self.events(i, event, since)[0]

    # --------------------------------------------------------------- queries
    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.states]

    def name(self, node_id: str) -> str:
        return f"h{self.ids.index(node_id) + 1}" if node_id in self.ids else node_id[:8]

    def agree(self, *groups: Group) -> bool:
        """Each group's members see exactly each other, with exactly ``masters`` as masters.

        Checked against every member's own role and its view of every peer's role.
        """
        for members, masters in groups:
            for i in members:
                state = self.states[i]
                peers = {self.ids[j] for j in members if j != i}
                if state.exited or set(state.view) != peers or state.master != (i in masters):
                    return False
                if any(is_master != (self.ids.index(p) in masters) for p, is_master in state.view.items()):
                    return False
        return True

    def wait_agree(self, *groups: Group, timeout: float = 10.0) -> float:
        def names(hosts: Collection[int]) -> str:
            return "{" + ", ".join(f"h{i + 1}" for i in sorted(hosts)) + "}"

        text = "; ".join(f"{names(members)} with masters {names(masters)}" for members, masters in groups)
        return self.wait(lambda: self.agree(*groups), timeout, text)

    def snapshot(self, members: Sequence[int], timeout: float = 5.0) -> dict[int, dict[str, Any]]:
        """Ask ``members`` for their state now (not the last event line); index -> state line."""
        self._tags += 1
        tag, since = str(self._tags), len(self.log)
        for i in members:
            self.nodes[i].command(f"state {tag}")
        replies: dict[int, dict[str, Any]] = {}

        def all_replied() -> bool:
            for j, m in self.log[since:]:
                if m["event"] == "state" and m.get("tag") == tag:
                    replies[j] = m
            return all(i in replies for i in members)

        self.wait(all_replied, timeout, f"state from {list(members)}")
        return replies

    def describe(self) -> str:
        lines = ["node states:"]
        for i, s in enumerate(self.states):
            view = {self.name(p): "M" if m else "-" for p, m in s.view.items()}
            lines.append(f"  h{i + 1} {s.id[:8]} master={s.master} exited={s.exited} view={view}")
        lines.append("last events:")
        for i, m in self.log[-40:]:
            peer = m.get("peer", {}).get("id", "")
            lines.append(f"  {m.get('t', 0):.3f} h{i + 1} {m['event']} {self.name(peer) if peer else ''}")
        for node in self.nodes:
            tail = node.stderr_tail()
            if tail:
                lines.append(f"h{node.index + 1} stderr:\n{tail}")
        return "\n".join(lines)
