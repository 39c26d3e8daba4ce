"""Resources owned under an etcd lease, across real processes (issue 17): a SIGKILLed owner's
resources run elsewhere within the lease TTL + 1 s, and an owner SIGSTOPped past its TTL
finds on SIGCONT that the others took over with higher tokens; it stops the lost resources
within 500 ms and never starts one again under its old token.

Loopback only: a real etcd on 127.0.0.1 (Debian's etcd-server), nodes bound to 127.0.0.1.
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

#: One node: a registry and a coordinator on the same etcd, twelve resources; every start and
#: stop printed as a JSON line with the wall time and the ownership token.
NODE = """
import json, sys, threading, time
from pydiscover import Discovery
from pydiscover.balancer import ResourceManager
port, url, weight = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
d = Discovery(port=port, address="127.0.0.1", registry=url, coordinator=url, weight=weight,
              hello_interval=0.25, check_interval=0.5, node_timeout=2.0, start=False)
lock = threading.Lock()  # hooks run on several threads: one whole line at a time
def say(what, rid):
    line = json.dumps({"t": time.time(), "what": what, "rid": rid, "token": rm.token(rid)}) + "\\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
rm = ResourceManager(d, resources=[{"id": f"r{i:02d}"} for i in range(12)],
                     start=lambda r: say("start", r["id"]) or r["id"], stop=lambda h: say("stop", h))
d.start()
print(json.dumps({"t": time.time(), "what": "ready", "id": d.id}), flush=True)
time.sleep(90)
"""


class Node:
    def __init__(self, url: str, weight: float, lines: queue.Queue[tuple[float, dict[str, Any]]]) -> None:
        self.weight = weight
        self.popen = subprocess.Popen([sys.executable, "-c", NODE, str(free_udp_port()), url, str(weight)],
                                      stdout=subprocess.PIPE, text=True)
        self.owned: dict[str, int | None] = {}
        self.log: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines: queue.Queue[tuple[float, dict[str, Any]]]) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            lines.put((self.weight, json.loads(line)))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.kill()
        self.popen.wait(10)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    reason = etcd_server_missing()
    if reason:
        pytest.skip(reason)
    with EtcdServer(tmp_path / "etcd") as srv:
        yield srv


def pump(nodes: dict[float, Node], lines: queue.Queue[tuple[float, dict[str, Any]]],
         until: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: { {w: sorted(n.owned) for w, n in nodes.items()} }")
        try:
            weight, event = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        node = nodes[weight]
        node.log.append(event)
        if event["what"] == "start":
            node.owned[event["rid"]] = event["token"]
        elif event["what"] == "stop":
            node.owned.pop(event["rid"], None)


def test_a_killed_owner_and_a_paused_owner(etcd: EtcdServer) -> None:
    url = f"{etcd.url}/fenced-{uuid.uuid4().hex[:8]}"
    lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
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
        paused.popen.send_signal(signal.SIGCONT)
        resumed = time.time()
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
    lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
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
            starts = sorted((e["t"], e["rid"], e["token"]) for n in nodes.values() for e in n.log
                            if e["what"] == "start")
            last: dict[str, int] = {}
            for _, rid, token in starts:
                assert token > last.get(rid, -1), f"{rid}: token {token} after {last.get(rid)}"
                last[rid] = token
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

    rng = random.Random(int(time.time()))
    key_prefix = f"fenced-{uuid.uuid4().hex[:8]}"
    lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
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
            node = nodes[w]
            if fault == "kill":
                node.popen.kill()
                killed[id(node)] = time.time()
                node.owned.clear()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the killed node's resources")
                spawn(w)
            elif fault == "cut":
                proxies[w].cut()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the cut node's resources")
                proxies[w].restore()
            else:
                node.popen.send_signal(signal.SIGSTOP)
                paused_at = time.time()
                pump(nodes, lines, lambda w=w: sum(len(n.owned) for k, n in nodes.items() if k != w) == 12, 15,
                     f"round {round_}: the others take the paused node's resources")
                node.popen.send_signal(signal.SIGCONT)
                pauses.setdefault(id(node), []).append((paused_at, time.time()))
            pump(nodes, lines, even, 30, f"round {round_} ({fault} of {w}): back to 4/4/4")
            deadline = time.monotonic() + 10
            while True:  # the owner keys as etcd holds them match what runs (a release may be in flight)
                owners = asyncio.run(owner_revisions(etcd.client_port, key_prefix))
                running = {rid: token for n in nodes.values() for rid, token in n.owned.items()}
                if all(rid in owners and owners[rid][1] == token for rid, token in running.items()):
                    break
                assert time.monotonic() < deadline, f"round {round_}: tokens {running} vs etcd {owners}"
                time.sleep(0.1)
        # Overlap: per resource, the intervals it ran on each node never intersect.
        end = time.time()
        for rid in (f"r{i:02d}" for i in range(12)):
            intervals: list[tuple[float, float, int]] = []
            for node in every:
                began: float | None = None
                for event in [*node.log, {"what": "end", "t": killed.get(id(node), end), "rid": rid}]:
                    if event.get("rid") != rid:
                        continue
                    if event["what"] == "start":
                        began = event["t"]
                    elif began is not None:
                        finish = event["t"]
                        for paused_at, resumed_at in pauses.get(id(node), []):
                            if began < paused_at and resumed_at <= finish <= resumed_at + 0.5:
                                finish = paused_at  # fenced: nothing ran while paused, stopped at once after
                        intervals.append((began, finish, id(node)))
                        began = None
            intervals.sort()
            latest_finish, latest_node = -1.0, 0  # of every interval so far: a later start must not precede it
            for began_at, finish, node_id in intervals:
                assert node_id == latest_node or began_at >= latest_finish, \
                    f"{rid} ran on two nodes for {latest_finish - began_at:.3f} s"
                if finish >= latest_finish:
                    latest_finish, latest_node = finish, node_id
        print(f"20 rounds: {sum(1 for _ in killed)} kills, {sum(len(p) for p in pauses.values())} pauses, "
              f"{20 - len(killed) - sum(len(p) for p in pauses.values())} cuts; no overlap")
    finally:
        for node in every:
            node.stop()
        for proxy in proxies.values():
            proxy.stop()
