"""Real sockets across network namespaces: discovery, election, partitions, IPv6 multicast.

Each host is a network namespace on a private bridge (see ``testbed/netns.py``), each
node a separate process, so this exercises what the simulator cannot: the kernel's
broadcast/multicast delivery, carrier loss and real timers.  Needs root and iproute2.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.netns import HOST_IF, Cluster, Lan, NetnsUnavailable, netns_unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

# Fast but not twitchy: a node is dropped after 4 missed hellos.
TIMING: dict[str, Any] = {"hello_interval": 0.25, "check_interval": 0.5, "node_timeout": 1.0}


class Lab:
    """Builds LANs and clusters for one test; :meth:`close` undoes everything it made."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 20000 + secrets.randbelow(40000)
        self.lans: list[Lan] = []
        self.clusters: list[Cluster] = []

    def lan(self, hosts: int) -> Lan:
        lan = Lan(hosts)
        self.lans.append(lan)
        try:
            return lan.build()
        except NetnsUnavailable as exc:
            pytest.skip(str(exc))

    def cluster(self, lan: Lan, options: Callable[[int], dict[str, Any]]) -> Cluster:
        def full(i: int) -> dict[str, Any]:
            return {"port": self.port, "hostname": f"h{i + 1}", "lifetime": 90.0, **TIMING, **options(i)}

        cluster = Cluster(lan, full, self.workdir)
        self.clusters.append(cluster)
        return cluster

    def close(self) -> list[str]:
        # Processes first: a namespace with a process in it outlives `ip netns del`.
        for cluster in self.clusters:
            cluster.close()
        return [error for lan in self.lans for error in lan.destroy()]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        errors = lab.close()
    assert not errors, f"cleanup failed: {errors}"


def test_three_hosts_discover_and_elect_heaviest(lab: Lab) -> None:
    """Broadcast on the subnet: all see all, the heaviest is the one master; SIGTERM says goodbye."""
    lan = lab.lan(3)
    c = lab.cluster(lan, lambda i: {"broadcast": lan.broadcast, "weight": float(i + 1)})
    c.start()
    c.wait_agree(({0, 1, 2}, {2}))

    snap = c.snapshot([0, 1, 2])
    for i, state in snap.items():
        assert set(state["view"]) == set(c.ids) - {c.ids[i]}
        masters = {p for p, m in state["view"].items() if m} | ({c.ids[i]} if state["master"] else set())
        assert masters == {c.ids[2]}, f"h{i + 1} sees masters {[c.name(m) for m in masters]}"
    # The peers' hellos came from their namespace addresses, not from anywhere else.
    addresses = {m["peer"]["id"]: m["peer"]["address"] for _, m in c.log if m["event"] == "added"}
    assert {addresses[c.ids[i]] for i in range(3)} == {lan.address(i) for i in range(3)}

    # A clean stop says goodbye: peers drop the master well before its 1 s timeout ran out.
    mark = len(c.log)
    assert c.terminate(2) == 0
    assert c.events(2, "stopped", mark)[0]["goodbye"] is True
    c.wait(
        lambda: all(any(m["peer"]["id"] == c.ids[2] for m in c.events(i, "removed", mark)) for i in (0, 1)),
        0.6,
        "h1 and h2 to drop h3 on its goodbye",
    )
    c.wait_agree(({0, 1}, {1}))


def test_ipv4_multicast_across_namespaces(lab: Lab) -> None:
    """IPv4 multicast with ``interface`` = the host's address (there is no route to 239/8 otherwise)."""
    lan = lab.lan(3)
    c = lab.cluster(lan, lambda i: {"multicast": "239.255.42.42", "interface": lan.address(i), "weight": float(i + 1)})
    c.start()
    c.wait_agree(({0, 1, 2}, {2}))


def group_options(lan: Lan, kind: str, i: int) -> dict[str, Any]:
    """How host ``i`` reaches the others: subnet broadcast or IPv6 link-local multicast on ``eth0``."""
    if kind == "broadcast":
        return {"broadcast": lan.broadcast}
    return {"multicast": "ff02::1:4242", "interface": HOST_IF}


@pytest.mark.parametrize("kind", ["broadcast", "ipv6-multicast"])
def test_partition_and_heal_one_master(lab: Lab, kind: str) -> None:
    """h3 cut off (carrier lost) elects itself; h1 (heaviest) stays master throughout; healing leaves only h1."""
    lan = lab.lan(3)
    if kind != "broadcast":
        lan.wait_ipv6_link_local()
    c = lab.cluster(lan, lambda i: {**group_options(lan, kind, i), "weight": float(3 - i)})
    c.start()
    c.wait_agree(({0, 1, 2}, {0}))

    mark = len(c.log)
    lan.cut(2)
    c.wait_agree(({0, 1}, {0}), ({2}, {2}))
    c.wait_event(2, "promotion", mark)

    lan.mend(2)
    c.wait_agree(({0, 1, 2}, {0}))
    c.wait_event(2, "demotion", mark)
    assert not c.events(0, "demotion", mark), "h1 lost mastership during the partition"
    assert not c.events(1, "promotion", mark), "h2 was promoted though h1 never left its side"
    snap = c.snapshot([0, 1, 2])
    assert [state["master"] for _, state in sorted(snap.items())] == [True, False, False]


def test_partition_and_heal_two_masters(lab: Lab) -> None:
    """masters_required=2, split {h1,h2} | {h3,h4}: each side has 2 masters; healing leaves exactly 2."""
    lan = lab.lan(4)
    c = lab.cluster(lan, lambda i: {"broadcast": lan.broadcast, "weight": float(4 - i), "masters_required": 2})
    c.start()
    c.wait_agree(({0, 1, 2, 3}, {0, 1}))

    mark = len(c.log)
    lan.split({0, 1}, {2, 3})
    c.wait_agree(({0, 1}, {0, 1}), ({2, 3}, {2, 3}))

    lan.split({0, 1, 2, 3})
    c.wait_agree(({0, 1, 2, 3}, {0, 1}))
    for i in (2, 3):
        c.wait_event(i, "demotion", mark)
        assert len(c.events(i, "promotion", mark)) == len(c.events(i, "demotion", mark)) == 1
    for i in (0, 1):
        assert not c.events(i, "demotion", mark), f"h{i + 1} lost mastership"
    snap = c.snapshot([0, 1, 2, 3])
    assert sum(state["master"] for state in snap.values()) == 2


@pytest.mark.parametrize("group", ["ff02::1:4242", "ff15::4242"])
def test_ipv6_multicast_across_namespaces(lab: Lab, group: str) -> None:
    """IPv6 multicast on ``eth0`` (link-local and site scope): discovery and election work."""
    lan = lab.lan(3)
    lan.wait_ipv6_link_local()
    c = lab.cluster(lan, lambda i: {"multicast": group, "interface": HOST_IF, "weight": float(i + 1)})
    c.start()
    c.wait_agree(({0, 1, 2}, {2}))
    addresses = [m["peer"]["address"] for _, m in c.log if m["event"] == "added"]
    assert addresses and all(a.startswith("fe80::") for a in addresses), addresses
