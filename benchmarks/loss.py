"""False removals and master changes on a lossy LAN, and crash detection, with DEFAULT timings.

Twenty hosts (``--nodes``) in network namespaces on one bridge (``testbed/netns.py``'s
:class:`Lan`: private 10.213.x.0/24 addresses, nothing leaves the machine), one discovery
node per host, 5 % packet loss (``--loss``).  Every node is alive the whole time, so every
``removed`` event is false; every ``master``/``promotion``/``demotion`` event after the
cluster converged is a needless master change.  Then the crash check: SIGKILL the
lowest-weight non-master, time until every other node removed it; SIGKILL the master, time
until its successor (next weight) is promoted and until every node sees it.

Where the loss is applied: on the egress of every *bridge port* (``p<i>`` in the bridge
namespace, the veth end facing host ``i``), i.e. on the way *into* each receiver.  The
bridge floods each broadcast to every port as a separate copy, so each receiver loses each
hello independently with probability 5 %: "5 % of packets lost", per receiver, which is
what a node's timeout has to survive.  Host ``eth0`` egress is left clean: loss there
would drop one hello for all 19 receivers at once (correlated, a sender fault) and, added
to the port loss, make the rate 9.75 % instead of 5 %.

How: ``tc qdisc add dev p<i> root netem loss 5%``.  Kernels without netem (sch_netem not
built, as on this benchmark's VM) get the same model from iproute2 alone: an HTB root
whose classic-BPF classifier (``ld rand``: a kernel random number per packet) sends 5 % of
packets to a class whose leaf is a ``pfifo limit 0`` (drops everything); the rest pass
unclassified.  Either way the root qdisc's ``dropped`` counter is the number of packets
lost, read with ``tc -s`` at both ends of the window ("loss observed").  pydiscover's own
counters give a second reading: per node, ``1 - received / sum(other nodes' sent)``.

The same run is made with node-discover 1.2.1 (``examples/js/peer.js --json``, its
defaults: hello 1 s, check 2 s, node/master timeout 2 s) when Node.js and node-discover
are installed, as the comparison column.  pydiscover runs with the library defaults
(hello 0.5 s, check 2 s, node/master timeout 3.25 s: a node is removed only after 6
consecutive hellos are lost, 0.05^6 = 1.6e-8 per window); only ``broadcast`` (the LAN's
private broadcast address), ``port`` and ``weight`` (1..N, so the master is known) are set.

Figures: false removals (goal 0), master changes (goal 0), crash detection of a
non-master and of the master (goal: within the default node_timeout / master_timeout plus
a 0.25 s scheduling margin; pydiscover expires a node exactly at last-seen + timeout), and
the loss observed.  A benchmark, not a test: a figure that misses its goal is reported,
and the run only fails if the cluster cannot be built or never converges.

    .venv/bin/python -m benchmarks.loss [--quick] [--seconds 300] [--nodes 20]

Needs root and iproute2 (``tc``); everything is created in namespaces of its own and
deleted at the end, also on failure and Ctrl-C.  Full form: two 300 s windows (~12 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import REPO, Figure, python_env, table
from pydiscover.options import build_options
from testbed.netns import Lan, NetnsProcess, netns_unavailable_reason  # shared with tests/test_netns.py
from testbed.node_discover import node_binary, node_discover_available, node_env

NAME = "loss"
HOSTS = 20
LOSS = 0.05
FULL_SECONDS = 300.0
QUICK_SECONDS = 50.0
#: Scheduling slack allowed over a timeout for the crash check (pydiscover expires at last seen + timeout).
MARGIN = 0.25
#: Let the start-up elections finish before the window opens.
SETTLE = 3.0
TC_TIMEOUT = 10.0
PEER_JS = REPO / "examples" / "js" / "peer.js"


@dataclass(frozen=True)
class Impl:
    """An implementation and the defaults it runs with (seconds)."""

    name: str
    hello: float
    check: float
    node_timeout: float
    master_timeout: float
    port: int


def pydiscover_impl() -> Impl:
    """pydiscover with the library's defaults, read from the library so the benchmark follows them."""
    o = build_options()
    return Impl("pydiscover", o.hello_interval, o.check_interval, o.node_timeout, o.master_timeout, 47311)


#: node-discover 1.2.1's defaults (lib/discover.js): hello 1000 ms, check 2000 ms, node/master timeout 2000 ms.
NODE_DISCOVER = Impl("node-discover", 1.0, 2.0, 2.0, 2.0, 47312)


def log(text: str) -> None:
    """Progress on stderr (stdout is the figures' table)."""
    print(f"[loss] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- packet loss
def tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["tc", "-n", ns, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TC_TIMEOUT, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def bpf_random_drop(rate: float) -> str:
    """Classic BPF for cls_bpf: class 1:2 (the dropping class) with probability ``rate``, else no match.

    ``ld [SKF_AD_OFF + SKF_AD_RANDOM]`` loads a kernel random u32; below ``rate * 2**32`` the
    packet goes to 1:2, otherwise ``ret 0`` (no match: HTB sends it on, unshaped).
    """
    threshold = min(int(rate * 2**32), 2**32 - 1)
    skf_ad_random = 2**32 - 0x1000 + 56  # SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56), as u32
    program = [
        (0x20, 0, 0, skf_ad_random),  # ld  rand
        (0x35, 1, 0, threshold),  # jge #threshold -> pass, else drop
        (0x06, 0, 0, 0x00010002),  # ret #1:2 (drop class)
        (0x06, 0, 0, 0),  # ret #0   (no match: pass)
    ]
    return f"{len(program)}," + ",".join(f"{c} {jt} {jf} {k}" for c, jt, jf, k in program)


def apply_loss(lan: Lan, rate: float) -> str:
    """Lose ``rate`` of the packets on every bridge port's egress; returns the method used."""
    ns = lan.bridge_ns
    percent = f"{rate * 100:g}%"
    first = tc(ns, "qdisc", "add", "dev", lan.port(0), "root", "netem", "loss", percent, check=False)
    if first.returncode == 0:
        for i in range(1, lan.hosts):
            tc(ns, "qdisc", "add", "dev", lan.port(i), "root", "netem", "loss", percent)
        return f"netem loss {percent}"
    program = bpf_random_drop(rate)
    for i in range(lan.hosts):
        dev = lan.port(i)
        tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb")
        tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb", "rate", "1gbit", "quantum", "1514")
        tc(ns, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "2:", "pfifo", "limit", "0")
        tc(ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "all", "prio", "1", "bpf", "bytecode", program)
    return f"htb + cls_bpf random drop {percent} (no netem: {first.stderr.strip()})"


def port_counters(lan: Lan) -> dict[int, tuple[int, int]]:
    """Bridge port index -> (packets sent on, packets dropped) by its root qdisc."""
    out = {}
    ports = {lan.port(i): i for i in range(lan.hosts)}
    for q in json.loads(tc(lan.bridge_ns, "-s", "-j", "qdisc", "show").stdout or "[]"):
        if q.get("root") and q.get("dev") in ports:
            out[ports[q["dev"]]] = (int(q.get("packets", 0)), int(q.get("drops", 0)))
    return out


def observed_loss(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """Loss per receiving port over a window, from the qdiscs' counters."""
    per_port = {}
    sent = dropped = 0
    for i in sorted(after):
        s = after[i][0] - before.get(i, (0, 0))[0]
        d = after[i][1] - before.get(i, (0, 0))[1]
        sent, dropped = sent + s, dropped + d
        per_port[i] = d / (s + d) if s + d else None
    return {
        "packets": sent + dropped,
        "dropped": dropped,
        "loss": dropped / (sent + dropped) if sent + dropped else None,
        "per_receiver": [per_port[i] for i in sorted(per_port)],
    }


# ------------------------------------------------------------------------ processes
class Cluster:
    """The node processes of one implementation on a LAN, and what their events say.

    ``views[i]`` (peer ids node ``i`` holds) and ``masters[i]`` (its own role) follow the
    events; every wait is bounded and reads events as they come.
    """

    def __init__(self, lan: Lan, impl: Impl, workdir: Path, lifetime: float) -> None:
        self.lan = lan
        self.impl = impl
        self.n = lan.hosts
        self.queue: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.log: list[tuple[int, dict[str, Any]]] = []
        self.ids = [""] * self.n
        self.views: list[set[str]] = [set() for _ in range(self.n)]
        self.masters = [False] * self.n
        self.exited = [False] * self.n
        self.errors: list[str] = []
        self.peers: list[NetnsProcess] = []
        for i in range(self.n):
            weight = i + 1
            if impl.name == "pydiscover":
                options = {"broadcast": lan.broadcast, "port": impl.port, "weight": weight, "lifetime": lifetime}
                argv = [sys.executable, "-m", "benchmarks.loss_node", json.dumps(options)]
                env = python_env()
            else:
                argv = [node_binary() or "node", str(PEER_JS), "--json", "--broadcast", lan.broadcast]
                argv += ["--port", str(impl.port), "--weight", str(weight), "--lifetime", f"{lifetime:g}"]
                env = node_env()
            stderr = workdir / f"{impl.name}-{i}.stderr"
            self.peers.append(
                NetnsProcess(i, lan.host_ns[i], argv, self.queue, stderr, env=env, cwd=REPO, clock=time.time)
            )

    # ------------------------------------------------------------------ events
    def _apply(self, i: int, m: dict[str, Any]) -> None:
        self.log.append((i, m))
        event = m.get("event")
        if event in ("ready", "started") and m.get("id"):
            self.ids[i] = str(m["id"])
        elif event == "added":
            self.views[i].add(str(m.get("id")))
        elif event == "removed":
            self.views[i].discard(str(m.get("id")))
        elif event == "promotion":
            self.masters[i] = True
        elif event == "demotion":
            self.masters[i] = False
        elif event == "eof":
            self.exited[i] = True
        elif event in ("error", "garbage"):
            self.errors.append(f"h{i + 1}: {m}")

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                self._apply(*self.queue.get(timeout=remaining))

    def wait(self, condition: Callable[[], bool], timeout: float, what: str, *, fail: bool = True) -> bool:
        """Read events until ``condition()``; False (or AssertionError if ``fail``) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if fail:
                    raise AssertionError(
                        f"{self.impl.name}: timed out after {timeout:.1f}s waiting for {what}\n" + self.describe()
                    )
                return False
            with contextlib.suppress(queue.Empty):
                self._apply(*self.queue.get(timeout=min(remaining, 0.5)))
        return True

    def ask(self, members: Sequence[int], command: str, reply: str, timeout: float = 10.0) -> dict[int, dict[str, Any]]:
        """Send ``command`` to ``members``; index -> their first ``reply`` line after it."""
        since = len(self.log)
        for i in members:
            self.peers[i].command(command)
        replies: dict[int, dict[str, Any]] = {}

        def all_replied() -> bool:
            for j, m in self.log[since:]:
                if m.get("event") == reply and j not in replies:
                    replies[j] = m
            return all(i in replies for i in members)

        self.wait(all_replied, timeout, f"{reply} from {len(members)} nodes")
        return replies

    def events(self, event: str, start: float, end: float = float("inf")) -> list[tuple[int, dict[str, Any]]]:
        return [(i, m) for i, m in self.log if m.get("event") == event and start <= float(m.get("t", 0)) <= end]

    def alive(self) -> list[int]:
        return [i for i in range(self.n) if self.peers[i].proc.poll() is None and not self.exited[i]]

    def name(self, node_id: str) -> str:
        return f"h{self.ids.index(node_id) + 1}" if node_id in self.ids else node_id[:8]

    # --------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> float:
        """Start every node (pydiscover: all at once after their imports); returns when all run."""
        if self.impl.name == "pydiscover":
            self.wait(lambda: all(self.ids), timeout, "every node to load")
            for peer in self.peers:
                peer.command("start")
        began = time.time()
        self.wait(lambda: len(self.events("started", 0.0)) >= self.n, timeout, "every node to start")
        return began

    def converge(self, timeout: float = 90.0) -> float:
        """Poll every node's state until all hold all peers and only the top weight is master."""
        top = self.n - 1
        deadline = time.monotonic() + timeout
        began = time.monotonic()
        last: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            last = self.ask(range(self.n), "state", "state")
            if all(
                len(s.get("nodes", [])) == self.n - 1 and bool(s.get("is_master")) == (i == top)
                for i, s in last.items()
            ):
                return time.monotonic() - began
            self.pump(1.0)
        summary = {f"h{i + 1}": (len(s.get("nodes", [])), s.get("is_master")) for i, s in sorted(last.items())}
        raise AssertionError(f"{self.impl.name}: no convergence in {timeout:.0f}s: {summary}\n{self.describe()}")

    def close(self) -> None:
        for peer in self.peers:
            peer.end_input()  # all stop at once, then each is waited for
        for peer in self.peers:
            peer.close()

    def describe(self) -> str:
        lines = ["node states:"]
        for i in range(self.n):
            lines.append(
                f"  h{i + 1} {self.ids[i][:8]} master={self.masters[i]} view={len(self.views[i])}"
                f" exited={self.exited[i]}"
            )
        lines.append("last events:")
        for i, m in self.log[-30:]:
            about = str(m.get("id", ""))
            lines.append(f"  {float(m.get('t', 0)):.3f} h{i + 1} {m.get('event')} {self.name(about) if about else ''}")
        lines += [f"error: {e}" for e in self.errors[-10:]]
        for peer in self.peers:
            tail = peer.stderr_tail(10)
            if tail:
                lines.append(f"h{peer.index + 1} stderr:\n{tail}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- measuring
def window(c: Cluster, lan: Lan, seconds: float) -> dict[str, Any]:
    """Let the converged cluster run ``seconds`` under loss; count what should never happen."""
    py = c.impl.name == "pydiscover"
    everyone = range(c.n)
    tc_before = port_counters(lan)
    stats_before = c.ask(everyone, "stats", "stats") if py else {}
    cpu_before = [p.cpu_seconds() for p in c.peers]
    start = time.time()
    end = start + seconds
    next_report = start + 60.0
    while (now := time.time()) < end:
        c.pump(min(end, next_report) - now)
        if time.time() >= next_report and time.time() < end:
            next_report += 60.0
            log(
                f"{c.impl.name}: {time.time() - start:.0f}/{seconds:.0f} s: "
                f"{len(c.events('removed', start))} removals, "
                f"{sum(len(c.events(e, start)) for e in ('master', 'promotion', 'demotion'))} master events"
            )
    end = time.time()
    cpu_after = [p.cpu_seconds() for p in c.peers]
    stats_after = c.ask(everyone, "stats", "stats") if py else {}
    tc_after = port_counters(lan)
    c.pump(0.2)  # events stamped inside the window but still in the pipe

    removed = c.events("removed", start, end)
    by_node = Counter(i for i, _ in removed)
    of_node = Counter(c.ids.index(str(m.get("id"))) if m.get("id") in c.ids else -1 for _, m in removed)
    master_events = {e: c.events(e, start, end) for e in ("master", "promotion", "demotion")}
    master_id = c.ids[c.n - 1]
    cpu = [
        (b2 - b1) / (end - start) * 100
        for b1, b2 in zip(cpu_before, cpu_after, strict=True)
        if b1 is not None and b2 is not None
    ]
    result: dict[str, Any] = {
        "seconds": round(end - start, 1),
        "false_removals": len(removed),
        "false_removals_per_hour": round(len(removed) / (end - start) * 3600, 1),
        "false_removals_of_master": sum(1 for _, m in removed if m.get("id") == master_id),
        "re_added": len(c.events("added", start, end)),
        "removals_seen_by_node": [by_node.get(i, 0) for i in everyone],
        "removals_of_node": [of_node.get(i, 0) for i in everyone],
        "master_changes": sum(len(v) for v in master_events.values()),
        "master_events": {e: len(v) for e, v in master_events.items()},
        "promoted": sorted({f"h{i + 1}" for i, _ in master_events["promotion"]}),
        "loss_tc": observed_loss(tc_before, tc_after),
        "cpu_percent_per_node": {"mean": round(statistics.fmean(cpu), 3), "max": round(max(cpu), 3)} if cpu else None,
    }
    if py:
        result["loss_stats"] = stats_loss(c.n, stats_before, stats_after)
    return result


def stats_loss(n: int, before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """pydiscover's own reading: per node, 1 - (packets received from others) / (packets the others sent)."""

    def delta(i: int, key: str) -> int:
        return int(after[i][key]) - int(before[i][key])

    def own(stats: dict[str, Any]) -> int:
        return int(stats.get("dropped", {}).get("own_instance", 0))  # our broadcast, looped back

    sent = [delta(i, "packets_out") for i in range(n)]
    per_node = []
    received_total = expected_total = 0
    for i in range(n):
        received = delta(i, "packets_in") - (own(after[i]) - own(before[i]))
        expected = sum(sent) - sent[i]
        received_total, expected_total = received_total + received, expected_total + expected
        per_node.append(round(1 - received / expected, 4) if expected else None)
    return {
        "sent": sum(sent),
        "expected": expected_total,
        "received": received_total,
        "loss": round(1 - received_total / expected_total, 4) if expected_total else None,
        "per_node": per_node,
    }


def crash(c: Cluster) -> dict[str, Any]:
    """SIGKILL the lowest-weight non-master, then the master; time their removal and the successor."""
    impl = c.impl
    limit = impl.master_timeout + impl.check + 5.0
    state = c.ask(c.alive(), "state", "state")
    masters = sorted(i for i, s in state.items() if s.get("is_master"))
    master = masters[-1] if masters else c.n - 1
    out: dict[str, Any] = {"masters_before": [f"h{i + 1}" for i in masters]}

    # A non-master: every other node must remove it.
    victim = min(i for i in state if i not in masters)
    vid = c.ids[victim]
    others = [i for i in c.alive() if i != victim]
    absent = [i for i in others if vid not in c.views[i]]  # falsely removed already (not counted below)
    t0 = time.time()
    c.peers[victim].kill()
    c.wait(lambda: all(vid not in c.views[i] for i in others), limit, f"h{victim + 1} removed", fail=False)
    times = detect_times(c, vid, others, absent, t0)
    out["node"] = {"victim": f"h{victim + 1}", "already_absent": len(absent), **summarize(times, len(others))}
    c.pump(1.0)

    # The master: the next weight must be promoted, and every node must see it.
    mid = c.ids[master]
    others = [i for i in c.alive() if i != master]
    successor = max(others)
    sid = c.ids[successor]
    absent = [i for i in others if mid not in c.views[i]]
    t1 = time.time()
    c.peers[master].kill()

    def promoted() -> bool:
        return bool([m for i, m in c.events("promotion", t1) if i == successor])

    def everyone_sees() -> bool:
        seen = {i for i, m in c.events("master", t1) if m.get("id") == sid}
        return promoted() and all(mid not in c.views[i] and (i == successor or i in seen) for i in others)

    c.wait(everyone_sees, limit, f"h{successor + 1} promoted and seen", fail=False)
    promotion = [float(m["t"]) - t1 for i, m in c.events("promotion", t1) if i == successor]
    seen_at = {}
    for i, m in c.events("master", t1):
        if m.get("id") == sid and i not in seen_at:
            seen_at[i] = float(m["t"]) - t1
    removal = detect_times(c, mid, others, absent, t1)
    out["master"] = {
        "victim": f"h{master + 1}",
        "successor": f"h{successor + 1}",
        "promoted_s": round(promotion[0], 3) if promotion else None,
        "all_see_new_master_s": round(max(seen_at.values(), default=0.0), 3)  # (none left to see it: 0)
        if promotion and all(i in seen_at for i in others if i != successor)
        else None,
        "other_promotions": sorted({f"h{i + 1}" for i, _ in c.events("promotion", t1) if i != successor}),
        "already_absent": len(absent),
        "removed": summarize(removal, len(others)),
    }
    return out


def detect_times(c: Cluster, node_id: str, others: list[int], absent: list[int], t0: float) -> dict[int, float]:
    """Seconds from ``t0`` to each other node's removal of ``node_id`` (0 if it was already gone)."""
    times = dict.fromkeys(absent, 0.0)
    for i, m in c.events("removed", t0):
        if m.get("id") == node_id and i in others and i not in times:
            times[i] = float(m["t"]) - t0
    return times


def summarize(times: dict[int, float], expected: int) -> dict[str, Any]:
    values = sorted(times.values())
    return {
        "all_s": round(values[-1], 3) if values and len(values) == expected else None,
        "median_s": round(statistics.median(values), 3) if values else None,
        "min_s": round(values[0], 3) if values else None,
        "detected_by": len(values),
        "of": expected,
    }


def run_impl(impl: Impl, hosts: int, seconds: float, loss: float) -> dict[str, Any]:
    """One implementation, on a LAN of its own: build, lose packets, converge, measure, crash; always clean up."""
    lan = Lan(hosts)
    cluster: Cluster | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="pydiscover-loss-") as tmp:
            try:
                lan.build()
                method = apply_loss(lan, loss)
                log(f"{impl.name}: {hosts} hosts on {lan.broadcast}/24, bridge ports lose {loss:.0%} ({method})")
                cluster = Cluster(lan, impl, Path(tmp), lifetime=seconds + 300.0)
                started = cluster.start()
                converged = cluster.converge()
                log(f"{impl.name}: converged {time.time() - started:.1f} s after start; measuring {seconds:.0f} s")
                cluster.pump(SETTLE)
                result = window(cluster, lan, seconds)
                log(
                    f"{impl.name}: {result['false_removals']} false removals, {result['master_changes']} master "
                    f"events, loss {result['loss_tc']['loss']:.2%}; crash check"
                )
                result["crash"] = crash(cluster)
                result["converged_s"] = round(converged, 1)
                result["loss_method"] = method
                result["defaults"] = {
                    "hello_interval": impl.hello,
                    "check_interval": impl.check,
                    "node_timeout": impl.node_timeout,
                    "master_timeout": impl.master_timeout,
                }
                result["errors"] = cluster.errors[:10]
                return result
            finally:
                if cluster is not None:
                    cluster.close()
    finally:
        errors = lan.destroy()
        if errors:
            log("cleanup: " + "; ".join(errors))


# ------------------------------------------------------------------------ figures
def figures(results: dict[str, dict[str, Any]], hosts: int, loss: float) -> list[Figure]:
    py = results["pydiscover"]
    js = results.get("node-discover")
    pyi = pydiscover_impl()
    where = f"{hosts} nodes, {loss:.0%} loss, {py['seconds']:.0f} s"

    def common(r: dict[str, Any]) -> dict[str, Any]:
        keep = ("seconds", "loss_tc", "loss_stats", "defaults", "converged_s", "cpu_percent_per_node")
        return {k: r[k] for k in keep if k in r}

    def both(key: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        return {name: key(r) for name, r in results.items()}

    node_py = py["crash"]["node"]["all_s"]
    master_py = py["crash"]["master"]["promoted_s"]
    node_bound = pyi.node_timeout + MARGIN
    master_bound = pyi.master_timeout + MARGIN
    return [
        Figure(
            NAME,
            f"false removals ({where})",
            "removals",
            py["false_removals"],
            js["false_removals"] if js else None,
            goal="0",
            met=py["false_removals"] == 0,
            detail=both(
                lambda r: {
                    **common(r),
                    **{
                        k: r[k]
                        for k in (
                            "false_removals_per_hour",
                            "false_removals_of_master",
                            "re_added",
                            "removals_seen_by_node",
                            "removals_of_node",
                        )
                    },
                }
            ),
        ),
        Figure(
            NAME,
            f"master changes ({where})",
            "events",
            py["master_changes"],
            js["master_changes"] if js else None,
            goal="0",
            met=py["master_changes"] == 0,
            detail=both(lambda r: {"seconds": r["seconds"], "events": r["master_events"], "promoted": r["promoted"]}),
        ),
        Figure(
            NAME,
            "crash: non-master SIGKILL -> removed by all",
            "s",
            node_py,
            js["crash"]["node"]["all_s"] if js else None,
            goal=f"<= node_timeout {pyi.node_timeout:g} s (+{MARGIN:g})",
            met=node_py is not None and node_py <= node_bound,
            detail=both(lambda r: {"defaults": r["defaults"], **r["crash"]["node"]}),
        ),
        Figure(
            NAME,
            "crash: master SIGKILL -> successor promoted",
            "s",
            master_py,
            js["crash"]["master"]["promoted_s"] if js else None,
            goal=f"<= master_timeout {pyi.master_timeout:g} s (+{MARGIN:g})",
            met=master_py is not None and master_py <= master_bound and not py["crash"]["master"]["other_promotions"],
            detail=both(lambda r: {"defaults": r["defaults"], **r["crash"]["master"]}),
        ),
        Figure(
            NAME,
            "packet loss observed (bridge ports)",
            "%",
            _percent(py["loss_tc"]["loss"]),
            _percent(js["loss_tc"]["loss"]) if js else None,
            goal=f"~{loss:.0%} (applied)",
            detail=both(lambda r: {"tc": r["loss_tc"], "pydiscover_stats": r.get("loss_stats")}),
        ),
    ]


def _percent(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 2)


def run(quick: bool, seconds: float | None = None, hosts: int = HOSTS, loss: float = LOSS) -> list[Figure]:
    reason = netns_unavailable_reason()
    if reason is None and shutil.which("tc") is None:
        reason = "needs iproute2's tc"
    if reason is not None:
        log(f"skipped: {reason}")
        return []
    duration = seconds if seconds is not None else (QUICK_SECONDS if quick else FULL_SECONDS)
    impls = [pydiscover_impl()]
    if node_discover_available():
        impls.append(NODE_DISCOVER)
    else:
        log("node-discover 1.2.1 / Node.js not installed: pydiscover only")
    results = {impl.name: run_impl(impl, hosts, duration, loss) for impl in impls}
    return figures(results, hosts, loss)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help=f"a {QUICK_SECONDS:g} s window instead of {FULL_SECONDS:g}"
    )
    parser.add_argument("--seconds", type=float, help="length of the measuring window (overrides --quick)")
    parser.add_argument("--nodes", type=int, default=HOSTS, help=f"hosts / nodes on the LAN (default {HOSTS})")
    parser.add_argument("--loss", type=float, default=LOSS * 100, help="percent lost per receiver (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures (with details) to this file")
    args = parser.parse_args(argv)
    if args.seconds is not None and not 5 <= args.seconds <= 3600:
        parser.error("--seconds must be between 5 and 3600")
    if not 3 <= args.nodes <= 100:
        parser.error("--nodes must be between 3 and 100")
    if not 0 <= args.loss < 50:
        parser.error("--loss must be a percentage below 50")
    # SIGINT (even where a background launch ignores it) and SIGTERM unwind, so every
    # finally runs: node processes stopped, namespaces deleted.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args.quick, args.seconds, args.nodes, args.loss / 100)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps([f.to_json() for f in result], indent=2))
    missed = [f.name for f in result if f.met is False]
    if missed:
        log("goal missed: " + "; ".join(missed))
        sys.exit(1)


if __name__ == "__main__":
    main()
