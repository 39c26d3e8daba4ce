"""Resources owned under an etcd lease, across real processes (issue 17): a SIGKILLed owner's
resources run elsewhere within the lease TTL + 1 s, and an owner SIGSTOPped past its TTL
finds on SIGCONT that the others took over with higher tokens; it stops the lost resources
within 500 ms and never starts one again under its old token.  An owner cut from etcd stops
before anyone else starts; twenty rounds of random faults never run a resource, or mastership,
on two nodes at once.  The last test plays the faults as a user first would: ``coordinator=``
alone, hellos broadcast on loopback, default timing.

Loopback only: a real etcd on 127.0.0.1 (Debian's etcd-server), nodes bound to 127.0.0.1 or
broadcasting to 127.255.255.255; each node's etcd link goes through a proxy on 127.0.0.1.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_udp_port

from testbed.etcd_server import EtcdServer, etcd_server_missing

pytest.importorskip("aetcd", reason="the aetcd package is missing: pip install -e '.[test]'")
pytestmark = [pytest.mark.slow, pytest.mark.etcd, pytest.mark.timeout(400)]

#: One node: a Discovery with the options given as JSON, twelve resources; every start and stop,
#: promotion and demotion printed as a JSON line with the wall time and the fencing token.  It
#: runs until its stdin closes (the test ends, or dies).
NODE = """
import json, sys, threading, time
from pydiscover import Discovery
from pydiscover.balancer import ResourceManager
d = Discovery(**json.loads(sys.argv[1]), start=False)
lock = threading.Lock()  # hooks run on several threads: one whole line at a time
def say(what, rid=None, token=None):
    token = rm.token(rid) if rid is not None else token
    line = json.dumps({"t": time.time(), "what": what, "rid": rid, "token": token}) + "\\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
rm = ResourceManager(d, resources=[{"id": f"r{i:02d}"} for i in range(12)],
                     start=lambda r: say("start", r["id"]) or r["id"], stop=lambda h: say("stop", h))
d.on("promotion", lambda me: say("promotion", token=me.fencing_token))
d.on("demotion", lambda me: say("demotion"))
d.start()
say("ready")
sys.stdin.read()
"""

#: The first tests' timing: a 2 s lease (TTL), so faults play out in seconds.
FAST = {"hello_interval": 0.25, "check_interval": 0.5, "node_timeout": 2.0}
TTL = 2


class Node:
    """A node process with ``coordinator=url``; by default also ``registry=url``, bound to 127.0.0.1
    on a port of its own, at :data:`FAST` timing (``options`` replace all of that)."""

    def __init__(self, url: str, weight: float, lines: queue.Queue[tuple[Node, dict[str, Any]]],
                 options: dict[str, Any] | None = None) -> None:
        self.weight = weight
        if options is None:
            options = {"port": free_udp_port(), "address": "127.0.0.1", "registry": url, **FAST}
        options = {**options, "coordinator": url, "weight": weight}
        self.popen = subprocess.Popen([sys.executable, "-c", NODE, json.dumps(options)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.owned: dict[str, int | None] = {}
        self.log: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines: queue.Queue[tuple[Node, dict[str, Any]]]) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            lines.put((self, json.loads(line)))  # by node, not weight: a killed node's last lines stay its own

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.kill()
        self.popen.wait(10)
        if self.popen.stdin is not None:
            self.popen.stdin.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    reason = etcd_server_missing()
    if reason:
        pytest.skip(reason)
    with EtcdServer(tmp_path / "etcd") as srv:
        yield srv


def pump(nodes: dict[float, Node], lines: queue.Queue[tuple[Node, dict[str, Any]]],
         until: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: { {w: sorted(n.owned) for w, n in nodes.items()} }")
        try:
            node, event = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        node.log.append(event)
        if event["what"] == "start":
            node.owned[event["rid"]] = event["token"]
        elif event["what"] == "stop":
            node.owned.pop(event["rid"], None)


#: Per-node events that open and close an interval, by what they are about.
BEGINS, ENDS = {"start": "stop", "promotion": "demotion"}, {"stop", "demotion"}


def assert_never_on_two(every: list[Node], killed: dict[int, float], pauses: dict[int, list[tuple[float, float]]],
                        start: float, history: list[str]) -> None:
    """Each resource, and mastership, was never held on two nodes at once: per key, the intervals
    on different nodes never intersect.  A killed node held what it held until the kill; a
    paused node's interval ends at the pause if it ended it within 500 ms of resuming (its token
    is older than its successor's: the fence)."""
    end = time.time()
    keys = {e["rid"] for n in every for e in n.log if e["what"] in ("start", "stop")} | {"(master)"}
    for key in sorted(keys):
        intervals: list[tuple[float, float, Node]] = []
        for node in every:
            began: float | None = None
            for event in [*node.log, {"what": "stop", "t": killed.get(id(node), end)}]:
                about = "(master)" if event["what"] in ("promotion", "demotion") else event.get("rid", key)
                if about != key:
                    continue
                if event["what"] in BEGINS:
                    began = event["t"]
                elif event["what"] in ENDS and began is not None:
                    finish = event["t"]
                    for paused_at, resumed_at in pauses.get(id(node), []):
                        if began < paused_at and resumed_at <= finish <= resumed_at + 0.5:
                            finish = paused_at  # fenced: nothing ran while paused, stopped at once after
                    intervals.append((began, finish, node))
                    began = None
        latest: tuple[float, float, Node] | None = None  # the interval that ends last so far
        for interval in sorted(intervals, key=lambda i: (i[0], i[1])):
            began_at, finish, node = interval
            if latest is not None:
                assert node is latest[2] or began_at >= latest[1], (
                    f"{key} held on two nodes for {latest[1] - began_at:.4f} s: on {latest[2].weight} "
                    f"{latest[0] - start:.3f}-{latest[1] - start:.3f}, on {node.weight} from "
                    f"{began_at - start:.3f} (s from the start); faults: {history}")
            if latest is None or finish >= latest[1]:
                latest = interval


def assert_tokens_grow(every: list[Node]) -> None:
    """Each resource's tokens, in the order of its starts over the whole run, strictly increase."""
    starts = sorted((e["t"], e["rid"], e["token"]) for n in every for e in n.log if e["what"] == "start")
    last: dict[str, int] = {}
    for _, rid, token in starts:
        assert token > last.get(rid, -1), f"{rid}: token {token} after {last.get(rid)}"
        last[rid] = token


def test_a_killed_owner_and_a_paused_owner(etcd: EtcdServer) -> None:
    url = f"{etcd.url}/fenced-{uuid.uuid4().hex[:8]}"
    lines: queue.Queue[tuple[Node, dict[str, Any]]] = queue.Queue()
    nodes = {w: Node(url, w, lines) for w in (3.0, 2.0, 1.0)}
    try:
        def split(counts: list[int], among: list[float]) -> bool:
            return sorted(len(nodes[w].owned) for w in among) == counts

        pump(nodes, lines, lambda: split([4, 4, 4], [3.0, 2.0, 1.0]), 30, "4/4/4")
        tokens: dict[str, list[int]] = {}
        for node in nodes.values():
            for rid, token in node.owned.items():
                assert token is not None
                tokens.setdefault(rid, []).append(token)

        # SIGKILL: its resources run elsewhere within the lease's TTL (2 s) + 1 s.
        victim = nodes[1.0]
        lost = set(victim.owned)
        victim.popen.kill()
        killed = time.time()
        pump(nodes, lines, lambda: split([6, 6], [3.0, 2.0]), 15, "6/6 after the kill")
        restarts = [e["t"] - killed for w in (3.0, 2.0) for e in nodes[w].log
                    if e["what"] == "start" and e["rid"] in lost and e["t"] > killed]
        print(f"killed owner's resources restarted {min(restarts):.3f}-{max(restarts):.3f} s after the kill")
        for w in (3.0, 2.0):
            for event in nodes[w].log:
                if event["what"] == "start" and event["rid"] in lost and event["t"] > killed:
                    assert event["t"] - killed <= 3.0, f"{event['rid']} restarted {event['t'] - killed:.2f} s later"
                    assert event["token"] > max(tokens[event["rid"]])
                    tokens[event["rid"]].append(event["token"])

        # SIGSTOP past the TTL, then SIGCONT: the others took over with higher tokens; the
        # resumed node stops what it lost within 500 ms and never starts under an old token.
        paused = nodes[2.0]
        held = dict(paused.owned)
        paused.popen.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        pump(nodes, lines, lambda: len(nodes[3.0].owned) == 12, 15, "the other node takes all twelve")
        for rid in held:
            assert nodes[3.0].owned[rid] is not None and nodes[3.0].owned[rid] > held[rid]
        # Not before the paused node's lease could end: its last keep-alive went at most a
        # quarter TTL before the pause, so the lease (2 s) ended 1.5 s after it at the earliest.
        takeover = min(e["t"] for e in nodes[3.0].log if e["what"] == "start" and e["rid"] in held)
        assert takeover - stopped_at >= 1.5 - 0.05, f"taken over {takeover - stopped_at:.3f} s into the pause"
        resumed = time.time()  # before SIGCONT: the node may run before this thread does again
        paused.popen.send_signal(signal.SIGCONT)
        pump(nodes, lines, lambda: not paused.owned, 5, "the resumed node stops what it lost")
        stops = [e["t"] for e in paused.log if e["what"] == "stop" and e["t"] >= resumed - 0.05]
        assert stops and max(stops) - resumed <= 0.5, f"stopped {max(stops) - resumed:.3f} s after SIGCONT"
        print(f"paused owner: taken over {takeover - stopped_at:.3f} s into the pause, its resources stopped "
              f"{max(stops) - resumed:.3f} s after SIGCONT")
        for event in paused.log:
            if event["what"] == "start" and event["t"] >= resumed:
                assert event["token"] > max(held.values())  # never under its old tokens
    finally:
        for node in nodes.values():
            node.stop()


def test_an_owner_cut_from_etcd_stops_before_anyone_else_starts(etcd: EtcdServer) -> None:
    """One node's etcd connection black-holed (traffic dropped, connection open, UDP intact):
    it stops its resources within the lease's TTL of the cut, nobody starts one of them before
    that stop, and every resource's tokens strictly increase over the whole run."""
    from testbed.tcp_proxy import TcpProxy

    key_prefix = f"fenced-{uuid.uuid4().hex[:8]}"
    lines: queue.Queue[tuple[Node, dict[str, Any]]] = queue.Queue()
    with TcpProxy(("127.0.0.1", etcd.client_port)) as proxy:
        nodes = {w: Node(f"{etcd.url}/{key_prefix}", w, lines) for w in (3.0, 2.0)}
        nodes[1.0] = Node(f"etcd://{proxy.endpoint}/{key_prefix}", 1.0, lines)
        try:
            pump(nodes, lines, lambda: sorted(len(n.owned) for n in nodes.values()) == [4, 4, 4], 30, "4/4/4")
            cut_off = nodes[1.0]
            lost = set(cut_off.owned)
            proxy.cut()
            cut = time.time()
            pump(nodes, lines, lambda: sorted(len(nodes[w].owned) for w in (3.0, 2.0)) == [6, 6], 15,
                 "the others take the cut node's resources")
            stopped = {e["rid"]: e["t"] for e in cut_off.log if e["what"] == "stop" and e["t"] >= cut}
            assert set(stopped) == lost
            assert max(stopped.values()) - cut <= 2.0, "stopped within the lease's TTL of the cut"
            for w in (3.0, 2.0):
                for event in nodes[w].log:
                    if event["what"] == "start" and event["rid"] in lost and event["t"] >= cut:
                        assert event["t"] > stopped[event["rid"]], f"{event['rid']} overlapped"
            print(f"cut node stopped its resources {max(stopped.values()) - cut:.3f} s after the cut; taken over "
                  f"{min(e['t'] for w in (3.0, 2.0) for e in nodes[w].log if e['what'] == 'start' and e['rid'] in lost and e['t'] >= cut) - cut:.3f} s after")  # noqa: E501
            assert_tokens_grow(list(nodes.values()))
        finally:
            for node in nodes.values():
                node.stop()


async def owner_revisions(port: int, key_prefix: str) -> dict[str, tuple[str, int]]:
    import aetcd

    async with aetcd.Client(host="127.0.0.1", port=port, timeout=2) as client:
        response = await client.get_prefix(f"{key_prefix}/owners/".encode())
        return {kv.key.decode().rsplit("/", 1)[1]: (kv.value.decode(), kv.mod_revision) for kv in response}


def test_twenty_rounds_of_kills_cuts_and_pauses(etcd: EtcdServer) -> None:
    """Must-show (e): random kills, cuts from etcd and pauses, one per round.  After each round
    the cluster is back to 4/4/4 with every running token equal to its owner key's revision,
    and no resource ever ran on two nodes at once.  A paused node's resources count as stopped
    from the moment it was paused when it stops them within 500 ms of resuming (its tokens are
    older than its successors': the fence)."""
    import asyncio
    import random

    from testbed.tcp_proxy import TcpProxy

    seed = int(time.time())
    rng = random.Random(seed)
    start = time.time()
    history: list[str] = [f"seed {seed}"]  # for the failure message: what was done when
    key_prefix = f"fenced-{uuid.uuid4().hex[:8]}"
    lines: queue.Queue[tuple[Node, dict[str, Any]]] = queue.Queue()
    proxies = {w: TcpProxy(("127.0.0.1", etcd.client_port)) for w in (3.0, 2.0, 1.0)}
    for proxy in proxies.values():
        proxy.start()
    every: list[Node] = []
    killed: dict[int, float] = {}  # id(node) -> when
    pauses: dict[int, list[tuple[float, float]]] = {}
    nodes: dict[float, Node] = {}

    def spawn(w: float) -> None:
        nodes[w] = Node(f"etcd://{proxies[w].endpoint}/{key_prefix}", w, lines)
        every.append(nodes[w])

    def even() -> bool:
        return sorted(len(n.owned) for n in nodes.values()) == [4, 4, 4]

    try:
        for w in proxies:
            spawn(w)
        pump(nodes, lines, even, 30, "4/4/4")
        for round_ in range(20):
            w = rng.choice(list(nodes))
            fault = rng.choice(["kill", "cut", "pause"])
            history.append(f"r{round_} {fault} {w} at {time.time() - start:.3f}")
            node = nodes[w]
            lost = set(node.owned)
            if fault == "kill":
                node.popen.kill()
                killed[id(node)] = at = time.time()
                node.owned.clear()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the killed node's resources")
                restarted = {e["rid"]: e["t"] for n in nodes.values() for e in n.log
                             if e["what"] == "start" and e["rid"] in lost and e["t"] > at}
                assert max(restarted.values(), default=at) - at <= TTL + 1, \
                    f"round {round_}: restarted {max(restarted.values()) - at:.3f} s after the kill"
                spawn(w)
            elif fault == "cut":
                proxies[w].cut()
                at = time.time()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the cut node's resources")
                stopped = [e["t"] for e in node.log if e["what"] == "stop" and e["rid"] in lost and e["t"] >= at]
                assert len(stopped) == len(lost) and max(stopped, default=at) - at <= TTL, \
                    f"round {round_}: the cut node stopped {len(stopped)} of {len(lost)} within {TTL} s"
                proxies[w].restore()
            else:
                node.popen.send_signal(signal.SIGSTOP)
                paused_at = time.time()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the paused node's resources")
                pauses.setdefault(id(node), []).append((paused_at, time.time()))  # before SIGCONT (it may run first)
                node.popen.send_signal(signal.SIGCONT)
            pump(nodes, lines, even, 30, f"round {round_} ({fault} of {w}): back to 4/4/4")
            deadline = time.monotonic() + 10
            while True:  # the owner keys as etcd holds them match what runs (a release may be in flight)
                owners = asyncio.run(owner_revisions(etcd.client_port, key_prefix))
                running = {rid: token for n in nodes.values() for rid, token in n.owned.items()}
                if all(rid in owners and owners[rid][1] == token for rid, token in running.items()):
                    break
                assert time.monotonic() < deadline, f"round {round_}: tokens {running} vs etcd {owners}"
                time.sleep(0.1)
        assert_never_on_two(every, killed, pauses, start, history)
        assert_tokens_grow(every)
        print(f"20 rounds: {sum(1 for _ in killed)} kills, {sum(len(p) for p in pauses.values())} pauses, "
              f"{20 - len(killed) - sum(len(p) for p in pauses.values())} cuts; no overlap")
    finally:
        for node in every:
            node.stop()
        for proxy in proxies.values():
            proxy.stop()


def test_coordinator_only_over_broadcast_at_default_timing(etcd: EtcdServer) -> None:
    """Must-shows (b), (c) and (d) as a user would first run them: ``coordinator=`` alone (no
    registry), hellos broadcast to 127.255.255.255 on one shared port, default timing (a 4 s
    lease, a 1 s margin).  The master is cut from etcd: it stops its resources and demotes
    within the TTL, before anyone else starts one of them or is promoted.  A node is killed:
    its resources run elsewhere within TTL + 1 s.  A node is paused past the TTL: on SIGCONT it
    stops within 500 ms.  Throughout: no resource and no mastership on two nodes at once, and
    every resource's tokens grow."""
    from conftest import LOOPBACK_BROADCAST

    from testbed.tcp_proxy import TcpProxy

    ttl = 4  # the default node_timeout (3.25 s), rounded up
    key_prefix = f"fenced-{uuid.uuid4().hex[:8]}"
    options = {"port": free_udp_port(), "broadcast": LOOPBACK_BROADCAST}
    lines: queue.Queue[tuple[Node, dict[str, Any]]] = queue.Queue()
    proxies = {w: TcpProxy(("127.0.0.1", etcd.client_port)) for w in (3.0, 2.0, 1.0)}
    nodes: dict[float, Node] = {}
    every: list[Node] = []
    killed: dict[int, float] = {}
    pauses: dict[int, list[tuple[float, float]]] = {}
    start = time.time()
    history: list[str] = []

    def spawn(w: float) -> None:
        nodes[w] = Node(f"etcd://{proxies[w].endpoint}/{key_prefix}", w, lines, options)
        every.append(nodes[w])

    def master(node: Node) -> bool:
        roles = [e["what"] for e in node.log if e["what"] in ("promotion", "demotion")]
        return bool(roles) and roles[-1] == "promotion"

    def settled(w_master: float) -> Callable[[], bool]:
        return lambda: (sorted(len(n.owned) for n in nodes.values()) == [4, 4, 4]
                        and [w for w, n in nodes.items() if master(n)] == [w_master])

    def others_hold_all(w: float) -> Callable[[], bool]:
        return lambda: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12

    for proxy in proxies.values():
        proxy.start()
    try:
        for w in proxies:
            spawn(w)
        pump(nodes, lines, settled(3.0), 40, "4/4/4 with 3.0 the master")

        # (c) The master cut from etcd (UDP intact).
        cut_off = nodes[3.0]
        lost = set(cut_off.owned)
        proxies[3.0].cut()
        cut = time.time()
        history.append(f"cut 3.0 at {cut - start:.3f}")
        pump(nodes, lines, lambda: others_hold_all(3.0)() and any(master(nodes[w]) for w in (2.0, 1.0)), 30,
             "the others take the cut master's resources, one of them promoted")
        stopped = {e["rid"]: e["t"] for e in cut_off.log if e["what"] == "stop" and e["t"] >= cut}
        assert set(stopped) == lost
        demoted = [e["t"] for e in cut_off.log if e["what"] == "demotion" and e["t"] >= cut]
        promoted = [e["t"] for w in (2.0, 1.0) for e in nodes[w].log if e["what"] == "promotion" and e["t"] >= cut]
        assert demoted and promoted and demoted[0] < min(promoted), "the cut master demotes before another is promoted"
        assert max([*stopped.values(), demoted[0]]) - cut <= ttl, "stopped and demoted within the lease's TTL"
        taken = min(e["t"] for n in nodes.values() for e in n.log if e["what"] == "start" and e["t"] >= cut)
        print(f"default timing: the cut master stopped its resources {max(stopped.values()) - cut:.3f} s and "
              f"demoted {demoted[0] - cut:.3f} s after the cut; the first taken over {taken - cut:.3f} s, "
              f"the new master promoted {min(promoted) - cut:.3f} s after it")
        proxies[3.0].restore()
        history.append(f"restored 3.0 at {time.time() - start:.3f}")
        pump(nodes, lines, settled(3.0), 40, "4/4/4 with 3.0 the master again")

        # (b) A killed node: its resources run elsewhere within TTL + 1 s.
        victim = nodes[1.0]
        lost = set(victim.owned)
        victim.popen.kill()
        killed[id(victim)] = at = time.time()
        history.append(f"killed 1.0 at {at - start:.3f}")
        victim.owned.clear()
        pump(nodes, lines, others_hold_all(1.0), 30, "the others take the killed node's resources")
        restarted = [e["t"] - at for n in nodes.values() for e in n.log
                     if e["what"] == "start" and e["rid"] in lost and e["t"] > at]
        assert len(restarted) == len(lost) and max(restarted) <= ttl + 1, f"restarted {restarted} s after the kill"
        print(f"default timing: the killed node's resources restarted {min(restarted):.3f}-{max(restarted):.3f} s "
              f"after the kill")
        spawn(1.0)
        pump(nodes, lines, settled(3.0), 40, "4/4/4 after the kill")

        # (d) A node paused past the TTL: on SIGCONT it stops within 500 ms.
        paused = nodes[2.0]
        paused.popen.send_signal(signal.SIGSTOP)
        paused_at = time.time()
        history.append(f"paused 2.0 at {paused_at - start:.3f}")
        pump(nodes, lines, others_hold_all(2.0), 30, "the others take the paused node's resources")
        resumed = time.time()  # before SIGCONT: the node may run before this thread does again
        pauses[id(paused)] = [(paused_at, resumed)]
        paused.popen.send_signal(signal.SIGCONT)
        pump(nodes, lines, lambda: not paused.owned, 5, "the resumed node stops what it lost")
        stops = [e["t"] - resumed for e in paused.log if e["what"] == "stop" and e["t"] >= resumed]
        assert stops and max(stops) <= 0.5, f"stopped {max(stops):.3f} s after SIGCONT"
        print(f"default timing: paused past the TTL, its resources stopped {max(stops):.3f} s after SIGCONT")
        pump(nodes, lines, settled(3.0), 40, "4/4/4 after the pause")

        assert_never_on_two(every, killed, pauses, start, history)
        assert_tokens_grow(every)
    finally:
        for node in every:
            node.stop()
        for proxy in proxies.values():
            proxy.stop()
