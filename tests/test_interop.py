"""One cluster of Python and real node-discover 1.2.1 processes, on loopback unicast.

Python nodes run ``examples/node.py``; node-discover nodes run ``examples/js/peer.js``
against the package ``scripts/test`` installs into ``.cache/node`` from npm.  Both print
the same JSON events, read through ``testbed/proc_cluster.py``.  Every node binds its own
port on this host and unicasts to 127.0.0.1 only; nothing is broadcast.

Skipped only when Node.js is absent; with Node.js but without node-discover@1.2.1 the
tests fail and say how to install it.  Timing: node-discover elects and expires nodes
only on its ``checkInterval`` tick (2 s by default), never at the exact deadline as we do,
so every deadline below allows a whole check interval more than the Python-only tests.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from testbed.node_discover import node_has_legacy_cipher, require_node_discover
from testbed.proc_cluster import Cluster, NodeProc

HELLO_INTERVAL = 0.5
NODE_TIMEOUT = 2.0
MASTER_TIMEOUT = 2.0
#: Both sides' default election period; node-discover's first election is one period after start.
CHECK_INTERVAL = 2.0
SETTLE = CHECK_INTERVAL + 3.0

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

#: The acceptance scenario: node-discover weights 4 and 1, pydiscover 3 and 2.
MUST_SHOW = [("js", 4.0), ("js", 1.0), ("py", 3.0), ("py", 2.0)]


@pytest.fixture(scope="module")
def node_discover() -> None:
    require_node_discover()


@pytest.fixture
def make_cluster(node_discover: None) -> Iterator[Callable[..., Cluster]]:
    """Clusters on loopback unicast (one port per node); every process is killed afterwards."""
    clusters: list[Cluster] = []

    def make(nodes: int, **options: Any) -> Cluster:
        c = Cluster(
            hello_interval=HELLO_INTERVAL,
            node_timeout=NODE_TIMEOUT,
            master_timeout=MASTER_TIMEOUT,
            unicast=nodes,
            **options,
        )
        clusters.append(c)
        return c

    try:
        yield make
    finally:
        for c in clusters:
            c.close()


def require_legacy_cipher() -> None:
    if not node_has_legacy_cipher():
        pytest.skip("this Node.js has no crypto.createCipher (removed in Node.js 22): node-discover cannot use a key")


def others(c: Cluster, proc: NodeProc) -> list[NodeProc]:
    return [p for p in c.procs if p is not proc]


def assert_one_master(c: Cluster, expected: NodeProc) -> None:
    """Every live node's own view: ``expected`` alone is master, and each sees all the others."""
    states = c.query_state()
    masters = [p for p, ev in states.items() if ev["is_master"]]
    assert masters == [expected], c.describe()
    for proc, ev in states.items():
        assert set(ev["nodes"]) == {p.id for p in c.live() if p is not proc}, f"{proc}\n{c.describe()}"


def assert_no_errors(c: Cluster, expected: Callable[[str], bool] = lambda line: False) -> None:
    """No ``error`` event and nothing on stderr but deprecation notes and lines ``expected`` accepts."""
    for proc in c.procs:
        assert not proc.first("error"), c.describe()
        noise = [line for line in proc.stderr
                 if "DeprecationWarning" not in line and "--trace-deprecation" not in line and not expected(line)]
        assert not noise, f"{proc} wrote to stderr: {noise}\n{c.describe()}"


@pytest.mark.parametrize("key", [None, "sekrit"], ids=["plaintext", "legacy-key"])
def test_mixed_cluster_sees_elects_and_chats(make_cluster: Callable[..., Cluster], key: str | None) -> None:
    """The acceptance scenario, without a key and with node-discover's key.

    Mutual discovery, advertisements both ways, exactly one master (the weight-4
    node-discover process) agreed by both languages, and chat from every process to
    every other process.
    """
    if key:
        require_legacy_cipher()
    c = make_cluster(len(MUST_SHOW), key=key, encryption="node-discover" if key else None)
    for lang, weight in MUST_SHOW:
        c.spawn(weight, lang=lang, advertise={"lang": lang, "weight": weight, "tags": ["a", 1, None]})
    c.await_view()

    # Advertisements both ways: every node saw every other node's, intact.
    for observer in c.procs:
        for peer in others(c, observer):
            added = observer.first("added", id=peer.id)
            assert added is not None and added["advertisement"] == peer.advertisement, f"{observer} <- {peer}"

    js4 = c.by_weight(4.0)
    c.wait_master(js4, after=float("-inf"), timeout=SETTLE)
    assert_one_master(c, js4)

    for sender in c.procs:
        c.broadcast(sender, f"hello from {sender.lang} weight {sender.weight:g}")

    # Still one master after a further election round on every node.
    time.sleep(CHECK_INTERVAL)
    c.wait(lambda: True, 0, "drain")
    assert not [p for p in c.procs if p is not js4 and p.first("promotion")], c.describe()
    assert_one_master(c, js4)
    assert_no_errors(c)


def test_master_fails_over_from_node_discover_to_python_and_back(make_cluster: Callable[..., Cluster]) -> None:
    """JS master stops -> the heaviest Python node takes over (JS follows it); that one stops -> a JS node.

    Masters are sticky, so "back" means: the Python master leaves and the heaviest
    survivor, a node-discover process, is elected (after node-discover's own master
    timeout: it ignores our goodbye, while the Python survivor waits for it).
    """
    c = make_cluster(4)
    c.start([("js", 4.0), ("py", 3.0), ("js", 2.0), ("py", 1.0)])
    js4, py3, js2, py1 = (c.by_weight(w) for w in (4.0, 3.0, 2.0, 1.0))
    c.wait_master(js4, after=float("-inf"), timeout=SETTLE)

    # node-discover sends nothing on stop: Python nodes drop it at master_timeout exactly,
    # the other JS node at its first check after that.
    latency = c.fail_over(js4, signal.SIGTERM, py3, timeout=MASTER_TIMEOUT + CHECK_INTERVAL + 2.0)
    print(f"JS master stopped -> Python promoted in {latency * 1000:.0f} ms")
    assert MASTER_TIMEOUT - HELLO_INTERVAL - 0.1 <= latency <= MASTER_TIMEOUT + 0.5, c.describe()
    assert js4.popen.wait(timeout=5) == 0 and js4.first("stopped", reason="SIGTERM"), c.describe()
    assert_one_master(c, py3)
    c.broadcast(js2, "js follows a python master")

    # Our goodbye: py1 drops py3 at once but defers to js2 (heavier, eligible); js2
    # ignores the goodbye, drops py3 after its master timeout and promotes.
    stopped = time.time()
    latency = c.fail_over(py3, signal.SIGTERM, js2, timeout=MASTER_TIMEOUT + CHECK_INTERVAL + 2.0)
    print(f"Python master stopped -> JS promoted in {latency * 1000:.0f} ms")
    assert MASTER_TIMEOUT - HELLO_INTERVAL - 0.1 <= latency <= MASTER_TIMEOUT + CHECK_INTERVAL + 0.5, c.describe()
    gone = py1.first("removed", stopped, id=py3.id)
    assert gone is not None and gone["t"] - stopped < 0.5, c.describe()
    assert py3.popen.wait(timeout=5) == 0, c.describe()
    assert_one_master(c, js2)
    c.broadcast(py1, "python follows a js master again")
    assert_no_errors(c)


def test_python_goodbye_is_harmless_to_node_discover(make_cluster: Callable[..., Cluster]) -> None:
    """A stopping Python node's goodbye: JS keeps running quietly and drops it after its timeout.

    Also: a node-discover message without data reaches Python as ``None`` (node-discover
    itself drops it), and the JS node keeps talking to the remaining Python node.
    """
    c = make_cluster(3)
    c.start([("js", 3.0), ("py", 2.0), ("py", 1.0)])
    js, leaver, stayer = (c.by_weight(w) for w in (3.0, 2.0, 1.0))

    stopped = time.time()
    leaver.popen.send_signal(signal.SIGTERM)
    assert leaver.popen.wait(timeout=5) == 0, c.describe()
    quick = c.wait(lambda: stayer.first("removed", stopped, id=leaver.id), 1.0, "goodbye seen by the Python peer")
    slow = c.wait(
        lambda: js.first("removed", stopped, id=leaver.id),
        NODE_TIMEOUT + CHECK_INTERVAL + 1.0,
        "node-discover dropped the stopped Python node",
    )
    py_ms, js_s = (quick["t"] - stopped) * 1000, slow["t"] - stopped
    print(f"goodbye: the Python peer dropped it in {py_ms:.0f} ms, node-discover in {js_s:.2f} s")
    assert quick["t"] - stopped < 0.5, c.describe()
    # node-discover removes a node only once it is nodeTimeout old, at a check tick.
    assert NODE_TIMEOUT - HELLO_INTERVAL - 0.1 <= slow["t"] - stopped <= NODE_TIMEOUT + CHECK_INTERVAL + 0.5

    assert js.alive, c.describe()
    assert_one_master(c, js)
    c.broadcast(js, "still here")
    c.broadcast(stayer, "me too")

    sent = time.time()
    js.send_line("!nodata")
    got = c.wait(lambda: stayer.first("message", sent, **{"from": js.id}), 2.0, "data-less message at Python")
    assert got["data"] is None
    assert_no_errors(c)


def test_mismatched_encryption_is_isolated_and_harmless(make_cluster: Callable[..., Cluster]) -> None:
    """node-discover's key talks to our ``encryption="node-discover"`` only; an AEAD node is invisible, not harmful."""
    require_legacy_cipher()
    c = make_cluster(3)
    js = c.spawn(3.0, lang="js", key="sekrit", encryption="node-discover")
    legacy = c.spawn(2.0, key="sekrit", encryption="node-discover")
    aead = c.spawn(1.0, key="sekrit", encryption="aead")
    c.wait(
        lambda: js.id and legacy.id and aead.id and js.first("added", id=legacy.id) and legacy.first("added", id=js.id),
        10.0,
        "node-discover and the legacy-key Python node see each other",
    )
    time.sleep(3 * HELLO_INTERVAL)  # several hellos from everyone: the AEAD node's must all be dropped
    states = c.query_state()
    assert states[js]["nodes"] == [legacy.id] and states[legacy]["nodes"] == [js.id], c.describe()
    assert states[aead]["nodes"] == [], c.describe()
    sent = time.time()
    js.send_line("legacy only")
    c.wait(lambda: legacy.message("legacy only", js, sent), 3.0, "node-discover's message at the legacy-key node")
    time.sleep(HELLO_INTERVAL)
    c.wait(lambda: True, 0, "drain")
    assert not aead.first("message"), c.describe()  # the AEAD node is a cluster of its own
    assert js.alive, c.describe()
    # ... and each Python side says why, once: a split cluster must not be silent.
    advice = []
    for proc, other in ((aead, 'encryption="node-discover"'), (legacy, 'encryption="aead"')):
        lines = [line for line in proc.stderr if other in line]
        assert len(lines) == 1 and "WARNING" in lines[0], c.describe()
        advice += lines
    assert_no_errors(c, expected=lambda line: line in advice)


def test_equal_weights_converge_on_the_node_discover_peer(make_cluster: Callable[..., Cluster]) -> None:
    """node-discover's strict ``>`` cannot break a tie; our rank defers to it, so there is one master.

    The Python nodes see the JS node as ``legacy`` (no sequence numbers) and rank it
    above themselves on equal weight; among themselves the id breaks the tie.  They
    elect after 1 s, before node-discover's first check at 2 s: were they to rank the
    JS node by id alone, the top Python node would promote first (sticky, then) about
    two times in three.
    """
    c = make_cluster(3)
    js = c.spawn(3.0, lang="js")
    for _ in range(2):
        c.spawn(3.0, lang="py", check_interval=1.0)
    c.await_view()
    c.wait_master(js, after=float("-inf"), timeout=SETTLE)
    time.sleep(CHECK_INTERVAL)
    c.wait(lambda: True, 0, "drain")
    assert not [p for p in c.procs if p is not js and p.first("promotion")], c.describe()
    assert_one_master(c, js)
