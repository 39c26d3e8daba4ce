"""One cluster of two node-discover (Node.js) peers and two pydiscover nodes, on this host only.

    python examples/mixed_cluster.py                  # plaintext, like node-discover without a key
    python examples/mixed_cluster.py --key sekrit     # node-discover's (legacy) cipher on all four

It starts ``examples/js/peer.js`` twice (weights 4 and 1) and ``examples/node.py`` twice
(weights 3 and 2), each bound to its own port and unicasting to 127.0.0.1 only, with
hellos every 0.5 s and 2 s node/master timeouts on both sides.  It prints who sees whom
(with their advertisements), the master both languages agree on, and one chat message
from every process as every other process receives it; then it stops them all.

Exit status: 0 when everything was seen, 1 when something was not (within ``--wait``),
2 when Node.js or node-discover is missing (the message says how to install it).
node-discover comes from npm, installed by ``./scripts/test`` into ``.cache/node``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_PY = ROOT / "examples" / "node.py"
JS_PEER = ROOT / "examples" / "js" / "peer.js"
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
INSTALL = "npm install --prefix .cache/node --no-audit --no-fund --save-exact node-discover@1.2.1"
#: (implementation, weight) of each member.
MEMBERS = [("js", 4), ("js", 1), ("py", 3), ("py", 2)]


@dataclass(eq=False)
class Member:
    lang: str
    weight: int
    port: int
    popen: subprocess.Popen[bytes]
    id: str | None = None
    advertisement: Any = None
    sees: dict[str, Any] = field(default_factory=dict)  # peer id -> its advertisement
    stderr: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.lang}-{self.weight:g}"

    def send_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()


def free_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports that nobody holds right now."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randint(40000, 49999)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def node_env() -> dict[str, str]:
    paths = [str(NODE_MODULES), *filter(None, os.environ.get("NODE_PATH", "").split(os.pathsep))]
    return {**os.environ, "NODE_PATH": os.pathsep.join(paths)}


def missing_node(key: str | None) -> str | None:
    """Why the node-discover half cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "Node.js is not installed (no 'node' on PATH); install Node.js 20, then run: " + INSTALL
    probe = "console.log(require('node-discover/package.json').version)"
    found = subprocess.run(["node", "-e", probe], capture_output=True, text=True, env=node_env(), timeout=30)
    if found.returncode != 0:
        return f"node-discover is not installed; from {ROOT} run ./scripts/test once, or: {INSTALL}"
    if key:
        probe = "process.exit(typeof require('crypto').createCipher === 'function' ? 0 : 1)"
        if subprocess.run(["node", "-e", probe], capture_output=True, timeout=30).returncode != 0:
            return "this Node.js has no crypto.createCipher (removed in Node.js 22): node-discover cannot use --key"
    return None


class Cluster:
    """The four processes, their output on one queue, and deadline-bounded waits."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.members: list[Member] = []
        self.events: queue.Queue[tuple[Member, dict[str, Any]]] = queue.Queue()
        self.log: list[tuple[Member, dict[str, Any]]] = []

    def start(self) -> None:
        ports = free_ports(len(MEMBERS))
        unicast = ",".join(f"127.0.0.1:{p}" for p in ports)
        for (lang, weight), port in zip(MEMBERS, ports, strict=True):
            advertisement = {"lang": lang, "weight": weight}
            common = [
                "--json", "--port", str(port), "--unicast", unicast, "--weight", str(weight),
                "--hello-interval", str(self.args.hello_interval),
                "--node-timeout", str(self.args.timeout), "--master-timeout", str(self.args.timeout),
                "--advertise", json.dumps(advertisement), "--lifetime", str(self.args.wait + 10),
            ]  # fmt: skip
            if self.args.key:
                common += ["--key", self.args.key, "--encryption", "node-discover"]
            if lang == "js":
                cmd, env = ["node", str(JS_PEER), *common], node_env()
            else:
                cmd, env = [sys.executable, str(NODE_PY), *common, "--exit-on-eof"], None
            popen = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env
            )
            member = Member(lang, weight, port, popen, advertisement=advertisement)
            self.members.append(member)
            threading.Thread(target=self._read, args=(member,), daemon=True).start()
            threading.Thread(target=self._read_stderr, args=(member,), daemon=True).start()

    def _read(self, member: Member) -> None:
        assert member.popen.stdout is not None
        for raw in member.popen.stdout:
            with contextlib.suppress(ValueError):
                self.events.put((member, json.loads(raw)))

    def _read_stderr(self, member: Member) -> None:
        assert member.popen.stderr is not None
        for raw in member.popen.stderr:
            member.stderr.append(raw.decode(errors="replace").rstrip())

    def name_of(self, node_id: str) -> str:
        return next((m.name for m in self.members if m.id == node_id), node_id[:8])

    def wait(self, done: Callable[[], Any], deadline: float, on_event: Callable[..., None] | None = None) -> Any:
        """Take events until ``done()`` is truthy (returned) or ``deadline`` (``None``)."""
        while True:
            result = done()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                member, event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.log.append((member, event))
            kind = event.get("event")
            if kind == "started":
                member.id = event["id"]
            elif kind == "added":
                member.sees[event["id"]] = event.get("advertisement")
            elif kind == "removed":
                member.sees.pop(event["id"], None)
            if on_event:
                on_event(member, event)

    def stop(self) -> None:
        for m in self.members:
            if m.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.popen.send_signal(signal.SIGTERM)
        for m in self.members:
            try:
                m.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                m.popen.kill()
                m.popen.wait(timeout=5)


def run(args: argparse.Namespace) -> int:
    c = Cluster(args)
    deadline = time.monotonic() + args.wait
    ok = True
    mode = f"key {args.key!r}, node-discover's cipher" if args.key else "plaintext"
    print(f"starting {', '.join(f'{lang}-{w:g}' for lang, w in MEMBERS)} on 127.0.0.1 unicast ({mode})")
    c.start()
    try:
        m = c.members
        full = c.wait(lambda: all(x.id and len(x.sees) == len(m) - 1 for x in m), deadline)
        print("\nwho sees whom (and what they advertise):")
        for x in m:
            seen = ", ".join(f"{c.name_of(i)} {json.dumps(ad)}" for i, ad in sorted(x.sees.items(), key=str))
            print(f"  {x.name:<6} (port {x.port}) sees {seen or 'nobody'}")
        if not full:
            print("  -> not everyone saw everyone in time")
            return 1

        # Election: node-discover decides every checkInterval (2 s), so allow for one round.
        def master_agreed() -> str | None:
            promoted = {ev["id"] for x, ev in c.log if ev.get("event") == "promotion"}
            if len(promoted) != 1:
                return None
            (master_id,) = promoted
            followers = {x for x, ev in c.log if ev.get("event") == "master" and ev["id"] == master_id}
            return master_id if all(x in followers for x in m if x.id != master_id) else None

        master = c.wait(master_agreed, deadline)
        promoted = sorted({c.name_of(ev["id"]) for _, ev in c.log if ev.get("event") == "promotion"})
        elected = c.name_of(master) if master else "no agreement"
        print(f"\nmaster: {elected} (promoted: {', '.join(promoted) or 'none'})")
        ok = ok and master is not None

        print("\nchat (each process sends one line; node.py sends text, peer.js sends {'text': ...}):")
        expected = {(x.id, y.id) for x in m for y in m if x is not y}  # (sender, receiver)
        got: set[tuple[str | None, str | None]] = set()

        def show(member: Member, event: dict[str, Any]) -> None:
            if event.get("event") == "message":
                got.add((event.get("from"), member.id))
                sender = c.name_of(event.get("from", "?"))
                print(f"  {member.name:<6} <- {sender:<6} {json.dumps(event.get('data'))}")

        for x in m:
            x.send_line(f"hello from {x.name}")
        delivered = c.wait(lambda: expected <= got, deadline, show)
        if not delivered:
            print(f"  -> {len(expected - got)} of {len(expected)} deliveries missing")
        ok = ok and bool(delivered)

        asked = time.time()
        for x in m:
            x.send_line("state")
        states = c.wait(
            lambda: (
                s if len(s := {x: ev for x, ev in c.log if ev.get("event") == "state" and ev["t"] > asked}) == len(m)
                else None
            ),
            deadline,
        )  # fmt: skip
        if states:
            masters = sorted(x.name for x, ev in states.items() if ev["is_master"])
            counts = [len(ev["nodes"]) for ev in states.values()]
            print(f"\nfinal views: masters {masters}; peers seen by each process {counts}")
            ok = ok and masters == ([c.name_of(master)] if master else [])
        else:
            ok = False
        for x in m:
            noise = [line for line in x.stderr if "DeprecationWarning" not in line and "trace-deprecation" not in line]
            if noise:
                print(f"{x.name} stderr: {noise}")
        print("\nall seen" if ok else "\nsomething was not seen in time (see above)")
        return 0 if ok else 1
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Loopback only: every process unicasts to 127.0.0.1, each on a free port picked at start "
        "(40000-49999; no fixed port, so it never joins another example).  Needs Node.js and node-discover@1.2.1.",
    )
    p.add_argument("--key", help="shared key; every process uses node-discover's legacy cipher")
    p.add_argument(
        "--encryption",
        choices=["node-discover"],
        default="node-discover",
        help="with --key: the only cipher node-discover has (default)",
    )
    p.add_argument("--hello-interval", type=float, default=0.5, help="seconds between hellos (default 0.5)")
    p.add_argument("--timeout", type=float, default=2.0, help="node and master timeout in seconds (default 2)")
    p.add_argument(
        "--wait", "--duration", type=float, default=20.0, help="give up after this many seconds (default 20)"
    )
    args = p.parse_args(argv)
    if args.timeout < 2.0:
        p.error("--timeout: node-discover needs nodeTimeout >= its checkInterval (2 s)")
    reason = missing_node(args.key)
    if reason:
        print(f"mixed_cluster: {reason}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
