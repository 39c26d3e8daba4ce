"""The five-process acceptance check, with real processes running ``examples/node.py``.

In-process and simulated tests share one interpreter and one clock; this one catches
what only separate processes show: per-process ids, signal handling, the goodbye on
SIGTERM, and loopback broadcast reaching several sockets on one port.  Loopback only.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from testbed.proc_cluster import Cluster

HELLO_INTERVAL = 1.0
NODE_TIMEOUT = 2.0
MASTER_TIMEOUT = 2.0
#: The election waits check_interval (default 2 s) after start before anyone promotes.
SETTLE = 2.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(hello_interval=HELLO_INTERVAL, node_timeout=NODE_TIMEOUT, master_timeout=MASTER_TIMEOUT)
    try:
        yield c
    finally:
        c.close()


def test_five_processes_discover_elect_message_and_fail_over(cluster: Cluster) -> None:
    # (a) Full mutual view soon after the last process starts: newcomers are answered
    # within milliseconds rather than at the next hello.
    view_latency = cluster.start([1, 2, 3, 4, 5])
    print(f"mutual view {view_latency * 1000:.1f} ms after last start (goal < 100 ms)")
    assert view_latency < 0.5, cluster.describe()

    # (b) Exactly one master: the heaviest node, once the start-up settle period is over.
    w1, w3, w4, w5 = (cluster.by_weight(w) for w in (1, 3, 4, 5))
    cluster.wait_master(w5, after=float("-inf"), timeout=SETTLE + 3.0)
    states = cluster.query_state()
    assert [p.weight for p, ev in states.items() if ev["is_master"]] == [5], cluster.describe()
    for proc, ev in states.items():
        assert set(ev["nodes"]) == {p.id for p in cluster.procs if p is not proc}, cluster.describe()

    # (c) A channel message from one node reaches every other node.
    delivery = cluster.broadcast(w1, "hello from weight 1")
    print(f"message delivered to all in {delivery * 1000:.1f} ms")

    # (d) A master that dies silently is replaced once it times out.
    kill_latency = cluster.fail_over(w5, signal.SIGKILL, w4, timeout=MASTER_TIMEOUT + 2.0)
    print(f"SIGKILL failover {kill_latency * 1000:.0f} ms (limit {(MASTER_TIMEOUT + 0.5) * 1000:.0f} ms)")
    assert kill_latency <= MASTER_TIMEOUT + 0.5, cluster.describe()

    # (e) A master stopped cleanly says goodbye, so the next one takes over at once.
    term_latency = cluster.fail_over(w4, signal.SIGTERM, w3, timeout=2.0)
    print(f"SIGTERM failover {term_latency * 1000:.1f} ms (goal < 50 ms)")
    assert term_latency < 0.3, cluster.describe()
    assert w4.popen.wait(timeout=5) == 0, cluster.describe()
    assert w4.first("stopped", reason="SIGTERM"), cluster.describe()

    states = cluster.query_state()
    assert [p.weight for p, ev in states.items() if ev["is_master"]] == [3], cluster.describe()
