"""The sans-IO core under a fake clock: election, timeouts, goodbye, replies, dispatch.

Nothing here opens a socket or sleeps; the simulator in ``sim.py`` advances time
straight to the next delivery or deadline.
"""

from __future__ import annotations

import orjson
import pytest

from pydiscover import wire
from pydiscover.core import REPEAT_CACHE_BYTES, Action, DiscoveryCore, Emit, Transmit
from pydiscover.options import build_options
from testbed.sim import Sim

FAST = {"hello_interval": 1.0, "check_interval": 2.0, "node_timeout": 2.0}


def hello(
    iid: str,
    *,
    weight: float = 1.0,
    master: bool = False,
    eligible: bool = True,
    seq: int | None = None,
    pid: str = "other",
    event: str = "hello",
) -> bytes:
    packet: dict[str, object] = {
        "event": event,
        "pid": pid,
        "iid": iid,
        "hostName": "h",
        "data": {"isMaster": master, "isMasterEligible": eligible, "weight": weight, "address": "127.0.0.1"},
    }
    if seq is not None:
        packet["seq"] = seq
    return orjson.dumps(packet)


def events(actions: list[object], name: str) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit) and a.event == name]


def lone_core(**options: object) -> DiscoveryCore:
    opts = {**FAST, "hostname": "me", **options}
    return DiscoveryCore(build_options(**opts), pid="mine", iid="me")  # type: ignore[arg-type]


def tick_until(core: DiscoveryCore, t: float) -> list[Action]:
    """Tick at every deadline before ``t`` and then at ``t``, as a runtime does; all the actions.

    Skipping deadlines would look like a paused process to the core (see test_chaos.py).
    """
    out: list[Action] = []
    for _ in range(100_000):
        deadline = core.next_deadline()
        if deadline is None or deadline >= t:
            break
        out += core.tick(deadline)
    return out + core.tick(t)


# ------------------------------------------------------------------ election
def test_highest_weight_wins_after_settling_and_not_before() -> None:
    sim = Sim()
    for w in (3, 1, 5, 2, 4):
        sim.add(weight=w, **FAST)
    sim.run_until(1.99)
    assert sim.masters() == []  # no election while the cluster is still answering
    sim.run_until(2.1)
    assert sim.masters() == [2]  # the weight-5 node
    assert all(len(n.core.nodes) == 4 for n in sim.nodes)


def test_equal_weights_elect_exactly_one_master() -> None:
    sim = Sim()
    for _ in range(6):
        sim.add(weight=1, **FAST)
    sim.run_until(6)
    assert sim.masters() == [5]  # the highest id breaks the tie, in every view


@pytest.mark.parametrize("required", [2, 3])
def test_masters_required_elects_the_top_ranked(required: int) -> None:
    sim = Sim()
    for w in range(1, 7):
        sim.add(weight=w, masters_required=required, **FAST)
    sim.run_until(5)
    assert sim.masters() == list(range(6 - required, 6))
    sim.run_until(20)
    assert sim.masters() == list(range(6 - required, 6))  # stable: no flapping


def test_masters_are_sticky() -> None:
    sim = Sim()
    sim.add(weight=1, **FAST)
    sim.add(weight=2, **FAST)
    sim.run_until(3)
    assert sim.masters() == [1]
    sim.add(weight=99, **FAST)
    sim.run_until(10)
    assert sim.masters() == [1]  # a heavier newcomer does not depose a live master


def test_master_crash_successor_promotes_at_the_master_deadline() -> None:
    sim = Sim(latency=0.0)
    for w in range(1, 6):
        sim.add(weight=w, node_timeout=2.0, master_timeout=3.0, hello_interval=1.0)
    sim.run_until(4.5)
    assert sim.masters() == [4]
    last_hello = sim.events(4, "helloEmitted")[-1][0]
    sim.kill(4)
    sim.run_until(20)
    assert sim.masters() == [3]
    ((when, _),) = sim.events(3, "promotion")
    assert when == pytest.approx(last_hello + 3.0)  # master_timeout, not node_timeout, to the instant


def test_graceful_stop_hands_over_at_once() -> None:
    sim = Sim()
    for w in range(1, 6):
        sim.add(weight=w, **FAST)
    sim.run_until(4.3)
    sim.stop(4)
    stopped_at = sim.now
    sim.run_until(4.4)
    assert sim.masters() == [3]
    ((when, _),) = sim.events(3, "promotion")
    assert when - stopped_at < 0.01  # one delivery, not a timeout
    assert all("n0004" not in n.core.nodes for n in sim.nodes[:4])
    sim.stop(3)
    sim.run_until(4.5)
    assert sim.masters() == [2]


def test_no_two_masters_after_a_death_with_equal_weights() -> None:
    """node-discover #43: equal weights could leave two masters forever after a failover."""
    sim = Sim()
    for _ in range(4):
        sim.add(weight=7, **FAST)
    sim.run_until(4)
    master = sim.masters()[0]
    sim.kill(master)
    sim.run_until(15)
    assert len(sim.masters()) == 1


def test_split_view_two_masters_reconcile_to_the_higher_rank() -> None:
    sim = Sim()
    a = sim.add(weight=2, **FAST)
    b = sim.add(weight=1, **FAST)
    sim.link = lambda src, dst: src == dst  # nobody hears anybody
    sim.run_until(5)
    assert sim.masters() == [a, b]
    sim.link = lambda src, dst: True
    sim.run_until(8)
    assert sim.masters() == [a]
    assert sim.events(b, "demotion")


def test_partition_and_heal_keeps_exactly_masters_required() -> None:
    sim = Sim()
    for w in range(1, 7):
        sim.add(weight=w, masters_required=2, **FAST)
    sim.run_until(4)
    assert sim.masters() == [4, 5]
    for idx in (0, 1, 2):
        sim.nodes[idx].segment = 1
    sim.run_until(10)
    assert sim.masters() == [1, 2, 4, 5]  # each side elects its own two
    for idx in (0, 1, 2):
        sim.nodes[idx].segment = 0
    sim.run_until(14)
    assert sim.masters() == [4, 5]


def test_permanent_demote_never_re_promotes() -> None:
    sim = Sim()
    for w in range(1, 4):
        sim.add(weight=w, **FAST)
    sim.run_until(3)
    sim.call(2, sim.nodes[2].core.demote, True)
    sim.run_until(10)
    assert sim.masters() == [1]
    assert not sim.nodes[2].core.me(sim.now).is_master_eligible
    sim.kill(1)
    sim.run_until(20)
    assert sim.masters() == [0]  # the weight-3 node stays out even when it outranks everyone


def test_temporary_demote_hands_over_and_stays_a_candidate() -> None:
    sim = Sim()
    for w in range(1, 4):
        sim.add(weight=w, **FAST)
    sim.run_until(3)
    sim.call(2, sim.nodes[2].core.demote)
    sim.run_until(3.2)
    assert sim.masters() == [1]  # the next-ranked took over
    sim.run_until(10)
    assert sim.masters() == [1]  # sticky: the demoted node does not grab it back
    assert sim.nodes[2].core.me(sim.now).is_master_eligible
    sim.kill(1)
    sim.run_until(20)
    assert sim.masters() == [2]


def test_temporary_demote_alone_re_promotes_after_master_timeout() -> None:
    sim = Sim()
    sim.add(weight=1, **FAST)
    sim.run_until(3)
    sim.call(0, sim.nodes[0].core.demote)
    t = sim.now
    sim.run_until(t + 1.9)
    assert sim.masters() == []
    sim.run_until(t + 2.1)
    assert sim.masters() == [0]


def test_promote_makes_master_now_and_rank_still_rules() -> None:
    sim = Sim()
    sim.add(weight=1, **FAST)
    sim.add(weight=2, **FAST)
    sim.run_until(3)
    sim.call(0, sim.nodes[0].core.promote)
    assert sim.masters() == [0, 1]
    assert sim.events(0, "promotion")
    sim.run_until(6)
    assert sim.masters() == [1]  # rank decides at the next election; use weight to choose


def test_client_sends_nothing_is_never_master_but_sees_everyone() -> None:
    sim = Sim()
    sim.add(weight=1, **FAST)
    client = sim.add(weight=100, client=True, **FAST)
    sim.run_until(10)
    assert sim.masters() == [0]
    assert "n0000" in sim.nodes[client].core.nodes
    assert sim.nodes[0].core.nodes == {}  # the client never said hello
    assert sim.nodes[client].core.counters["packets_out"] == 0


def test_client_alone_never_promotes() -> None:
    core = lone_core(client=True)
    out = core.start(0.0)
    assert not [a for a in out if isinstance(a, Transmit)]
    out = core.tick(5.0) + core.tick(10.0)
    assert not core.is_master and not events(out, "promotion")


def test_two_hundred_nodes_converge_to_one_master() -> None:
    sim = Sim(seed=7)
    for _ in range(200):
        sim.add(weight=sim.rng.random(), **FAST)
    sim.run_until(4)
    best = max(range(200), key=lambda i: sim.nodes[i].core.options.weight)
    assert sim.masters() == [best]
    assert all(len(n.core.nodes) == 199 for n in sim.nodes)


# ------------------------------------------------------------------ timeouts
def test_node_removed_exactly_at_its_deadline() -> None:
    core = lone_core()
    core.start(0.0)
    out = core.datagram_received(0.5, hello("peer"), ("10.0.0.2", 12345))
    assert [e.args[0].id for e in events(out, "added")] == ["peer"]
    assert core.next_deadline() <= 0.5 + 2.0
    assert not events(tick_until(core, 2.4999), "removed")
    out = tick_until(core, 2.5)
    assert [e.args[0].id for e in events(out, "removed")] == ["peer"]


def test_master_uses_master_timeout() -> None:
    core = lone_core(master_timeout=5.0)
    core.start(0.0)
    core.datagram_received(0.0, hello("boss", master=True), ("10.0.0.2", 1))
    core.datagram_received(0.0, hello("peon"), ("10.0.0.3", 1))
    assert [e.args[0].id for e in events(tick_until(core, 2.0), "removed")] == ["peon"]
    assert not events(tick_until(core, 4.99), "removed")
    assert [e.args[0].id for e in events(tick_until(core, 5.0), "removed")] == ["boss"]


def test_deadline_tracks_hello_and_refresh() -> None:
    core = lone_core()
    assert core.next_deadline() is None  # not started
    core.start(10.0)
    assert 10.5 <= core.next_deadline() <= 11.0  # next hello, at a random phase
    core.datagram_received(10.2, hello("p", seq=1), ("10.0.0.2", 1))
    core.datagram_received(10.9, hello("p", seq=2), ("10.0.0.2", 1))
    assert not events(tick_until(core, 12.5), "removed")  # refreshed at 10.9
    assert events(tick_until(core, 12.9), "removed")


# ------------------------------------------------------------- goodbye, seq
def test_goodbye_removes_and_a_late_hello_does_not_resurrect() -> None:
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.1, hello("p", seq=5), ("10.0.0.2", 1))
    bye = orjson.dumps(
        {"event": "pydiscover.goodbye", "pid": "x", "iid": "p", "hostName": "h", "data": {"isMaster": False}, "seq": 7}
    )
    assert events(core.datagram_received(0.2, bye, ("10.0.0.2", 1)), "removed")
    out = core.datagram_received(0.3, hello("p", seq=6), ("10.0.0.2", 1))  # reordered, sent before goodbye
    assert not events(out, "added")
    assert core.dropped["replayed"] == 1
    assert events(core.datagram_received(0.4, hello("p", seq=8), ("10.0.0.2", 1)), "added")  # restarted


def test_hellos_out_of_order_are_ignored() -> None:
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.1, hello("p", seq=3, master=True), ("10.0.0.2", 1))
    core.datagram_received(0.2, hello("p", seq=2, master=False), ("10.0.0.2", 1))
    assert core.nodes["p"].is_master


def test_stop_sends_goodbye_only_for_servers() -> None:
    core = lone_core()
    core.start(0.0)
    core.promote(0.5)
    goodbye, demotion = core.stop(1.0)
    assert isinstance(demotion, Emit) and demotion.event == "demotion"
    assert isinstance(goodbye, Transmit)
    assert orjson.loads(goodbye.datagram)["event"] == "pydiscover.goodbye"
    assert core.next_deadline() is None
    client = lone_core(client=True)
    client.start(0.0)
    assert client.stop(1.0) == []


# ------------------------------------------------------------ prompt reply
def test_newcomer_learns_the_cluster_in_milliseconds() -> None:
    sim = Sim(latency=0.0002)
    for w in range(1, 6):
        sim.add(weight=w, **FAST)
    sim.run_until(5.5)
    newcomer = sim.add(weight=0, **FAST)
    sim.run_until(5.55)
    assert len(sim.nodes[newcomer].core.nodes) == 5


def test_replies_to_a_newcomer_are_bounded_in_a_big_cluster() -> None:
    sim = Sim(seed=3)
    for i in range(200):
        sim.add(weight=i, hello_interval=2.0, node_timeout=5.0, check_interval=2.0)
    sim.run_until(3.5)
    before = sum(n.core.counters["packets_out"] for n in sim.nodes)
    newcomer = sim.add(weight=-1, hello_interval=2.0, node_timeout=5.0, check_interval=2.0)
    sim.run_until(3.9)  # replies spread over 3 ms + 0.5 ms per node: 103 ms
    sent = sum(n.core.counters["packets_out"] for n in sim.nodes) - before
    assert len(sim.nodes[newcomer].core.nodes) == 200
    per_member = [[t for t, _ in sim.events(i, "helloEmitted") if t > 3.5] for i in range(200)]
    # one coalesced reply per member (a regular hello falling due stands in for it) ...
    assert max(len(times) for times in per_member) <= 2
    # ... so the burst is about one datagram per member, plus the ~40 regular hellos of 0.4 s
    assert sent <= 1.5 * 200
    replies = sorted(t for times in per_member for t in times if t < 3.75)
    assert len(replies) >= 150 and replies[-1] - replies[0] > 0.08  # spread out, not a burst


# ------------------------------------------------------ dispatch and inputs
def test_channels_reserved_names_and_joined_only() -> None:
    core = lone_core()
    core.start(0.0)
    assert not core.join("promotion") and not core.join("error") and not core.join("hello")
    assert core.send(0.0, "added", {}) is None
    assert core.join("chat") and not core.join("chat")
    msg = orjson.dumps({"event": "chat", "pid": "x", "iid": "p", "hostName": "h", "data": {"a": 1}})
    (emit,) = core.datagram_received(0.1, msg, ("10.0.0.9", 4))
    assert isinstance(emit, Emit) and emit.event == "chat" and emit.args[0] == {"a": 1}
    assert emit.args[1].address == "10.0.0.9" and emit.args[1].iid == "p"
    other = orjson.dumps({"event": "news", "pid": "x", "iid": "p", "hostName": "h", "data": 1})
    assert core.datagram_received(0.2, other, ("10.0.0.9", 4)) == []
    assert core.dropped["unknown_event"] == 1


@pytest.mark.parametrize("event", ["error", "promotion", "added", "removed", "master", "started", "new_listener"])
def test_remote_packets_never_fire_local_events(event: str) -> None:
    core = lone_core()
    core.start(0.0)
    raw = orjson.dumps({"event": event, "pid": "x", "iid": "p", "hostName": "h", "data": {"isMaster": True}})
    assert core.datagram_received(0.1, raw, ("10.0.0.9", 4)) == []
    assert core.dropped["reserved_event"] == 1


def test_ignore_process_and_instance() -> None:
    core = lone_core()
    core.start(0.0)
    core.join("chat")
    own = orjson.dumps({"event": "chat", "pid": "mine", "iid": "me", "hostName": "h", "data": 1})
    sibling = orjson.dumps({"event": "chat", "pid": "mine", "iid": "sib", "hostName": "h", "data": 1})
    assert core.datagram_received(0.1, own, ("127.0.0.1", 1)) == []
    assert core.datagram_received(0.1, sibling, ("127.0.0.1", 1)) == []
    assert core.dropped["own_instance"] == 1 and core.dropped["own_process"] == 1
    loud = lone_core(ignore_instance=False, ignore_process=False)
    loud.start(0.0)
    loud.join("chat")
    assert len(loud.datagram_received(0.1, own, ("127.0.0.1", 1))) == 1
    assert len(loud.datagram_received(0.1, sibling, ("127.0.0.1", 1))) == 1
    # never our own hello as a peer, whatever the flags
    assert loud.datagram_received(0.2, hello("me", pid="mine"), ("127.0.0.1", 1)) == []


BAD = {
    "not_json": [b"", b"\xff\xfe", b"{", b"hello", b'{"event": nan}'],
    "not_object": [b"[]", b"1", b'"x"', b"null", b"true"],
    "bad_envelope": [
        b'{"event":1,"pid":"a","iid":"b"}',
        b'{"pid":"a","iid":"b"}',
        b'{"event":"hello","pid":"a"}',
        b'{"event":"hello","pid":"a","iid":"b","hostName":3}',
        b'{"event":"x","pid":"a","iid":"b","seq":-1}',
        b'{"event":"x","pid":"a","iid":"b","seq":"1"}',
        b'{"event":"","pid":"a","iid":"b"}',
    ],
    "bad_hello": [
        b'{"event":"hello","pid":"a","iid":"b"}',
        b'{"event":"hello","pid":"a","iid":"b","data":[]}',
        b'{"event":"hello","pid":"a","iid":"b","data":{"weight":"1"}}',
        b'{"event":"hello","pid":"a","iid":"b","data":{"weight":1,"isMaster":"yes"}}',
        b'{"event":"hello","pid":"a","iid":"b","data":{"weight":true}}',
        b'{"event":"hello","pid":"a","iid":"b","data":{"weight":1,"address":5}}',
    ],
    "oversized": [b" " * 70000, b'{"event":"chat","pid":"a","iid":"b","data":"' + b"x" * 1500 + b'"}'],
}


@pytest.mark.parametrize(("reason", "raw"), [(r, raw) for r, raws in BAD.items() for raw in raws])
def test_bad_datagrams_are_dropped_and_counted(reason: str, raw: bytes) -> None:
    core = lone_core()
    core.start(0.0)
    assert core.datagram_received(0.1, raw, ("10.0.0.9", 4)) == []
    assert core.dropped[reason] == 1
    assert core.nodes == {}


def test_js_hello_without_extensions_is_accepted() -> None:
    """node-discover omits seq and advertisement; its default weight is a negative fraction."""
    core = lone_core()
    core.start(0.0)
    raw = (
        b'{"event":"hello","pid":"p","iid":"js","hostName":"h","data":{"isMaster":true,'
        b'"isMasterEligible":true,"weight":-0.17006,"address":"127.0.0.1"}}'
    )
    out = core.datagram_received(0.1, raw, ("127.0.0.1", 12345))
    assert events(out, "added") and events(out, "master")
    assert core.nodes["js"].weight == -0.17006


# ------------------------------------------------------ review regressions
def test_advertisement_is_a_snapshot() -> None:
    core = lone_core()
    core.start(0.0)
    ad: dict[str, object] = {"state": "ok"}
    core.advertise(ad)
    ad["blob"] = "x" * 5000  # would not fit, and must not matter
    ad["bad"] = object()
    out = core.tick(core.next_deadline() or 0.0)
    (hello_out,) = [a for a in out if isinstance(a, Transmit)]
    assert orjson.loads(hello_out.datagram)["data"]["advertisement"] == {"state": "ok"}
    assert core.advertisement == {"state": "ok"}


def test_stop_forgets_peers_and_restart_starts_clean() -> None:
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.1, hello("p", seq=1), ("10.0.0.2", 1))
    core.stop(0.2)
    assert core.nodes == {}
    core.start(5.0)
    assert not events(core.tick(5.0), "removed")
    assert events(core.datagram_received(5.1, hello("p", seq=9), ("10.0.0.2", 1)), "added")


def test_send_while_stopped_sends_nothing_and_spends_no_seq() -> None:
    core = lone_core()
    assert core.send(0.0, "chat", 1) is None
    (first,) = [a for a in core.start(0.0) if isinstance(a, Transmit)]
    assert orjson.loads(first.datagram)["seq"] == 1
    assert core.counters["packets_out"] == 1


def test_client_cannot_be_promoted() -> None:
    core = lone_core(client=True)
    core.start(0.0)
    with pytest.raises(RuntimeError, match="client"):
        core.promote(0.1)


def test_hello_deadline_moves_on_even_when_overdue() -> None:
    core = lone_core()
    core.start(0.0)
    first = core.next_deadline() or 0.0
    core.tick(first + 3.5)  # a stalled loop
    assert (core.next_deadline() or 0.0) > first + 3.5


# ------------------------------------------------------- node-discover peers
def js_hello(iid: str, weight: float, master: bool = False) -> bytes:
    """A node-discover 1.2.1 hello: no seq, never a goodbye."""
    return orjson.dumps(
        {
            "event": "hello",
            "pid": f"pid-{iid}",
            "iid": iid,
            "hostName": "js",
            "data": {"isMaster": master, "isMasterEligible": True, "weight": weight, "address": "127.0.0.1"},
        }
    )


def test_on_equal_weight_a_node_discover_peer_outranks_us() -> None:
    core = lone_core(weight=4)
    core.start(0.0)
    core.datagram_received(0.1, js_hello("zz-js", 4), ("127.0.0.1", 9))
    assert core.nodes["zz-js"].legacy
    out = core.tick(2.0)
    assert not core.is_master and not events(out, "promotion")  # it will promote (strict >), we wait
    core.datagram_received(2.1, js_hello("zz-js", 4, master=True), ("127.0.0.1", 9))
    assert not core.is_master


def test_a_master_yields_to_an_equal_weight_node_discover_master() -> None:
    core = lone_core(weight=4)
    core.start(0.0)
    core.tick(2.0)
    assert core.is_master  # alone
    out = core.datagram_received(2.5, js_hello("aa-js", 4, master=True), ("127.0.0.1", 9))
    assert events(out, "demotion") and not core.is_master  # node-discover would never demote on a tie


def test_weights_still_rule_between_languages() -> None:
    core = lone_core(weight=5)
    core.start(0.0)
    core.datagram_received(0.1, js_hello("js", 4), ("127.0.0.1", 9))
    core.tick(2.0)
    assert core.is_master


def test_our_own_link_outage_removes_nobody_and_elects_nothing() -> None:
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.5, hello("boss", master=True, seq=1), ("10.0.0.2", 1))
    core.datagram_received(0.5, hello("peer", seq=1), ("10.0.0.3", 1))
    core.link_lost(1.0)
    assert core.next_deadline() is not None and not events(tick_until(core, 30.0), "removed")
    assert not core.is_master  # the master's silence while we were cut off proves nothing
    out = core.link_restored(31.0)
    assert [a for a in out if isinstance(a, Transmit)]  # hello at once
    assert not events(tick_until(core, 32.49), "removed")  # each keeps the 1.5 s it had left
    assert {e.args[0].id for e in events(tick_until(core, 32.5), "removed")} == {"boss", "peer"}


# ------------------------------------------- the receive fast paths (review regressions)
def raw_hello(iid: str, data: dict[str, object]) -> bytes:
    """A node-discover hello (no seq) with exactly this ``data``."""
    return orjson.dumps({"event": "hello", "pid": "other", "iid": iid, "hostName": "h", "data": data})


BASE = {"isMaster": False, "isMasterEligible": True, "weight": 1, "address": "127.0.0.1"}


def test_only_accepted_hellos_are_remembered_and_the_memory_is_bounded() -> None:
    core = lone_core()
    core.start(0.0)
    for i in range(300):  # invalid hellos are dropped, and never remembered
        core.datagram_received(0.1, raw_hello(f"bad{i}", {**BASE, "weight": "heavy"}), ("10.0.0.2", 1))
    assert core.dropped["bad_hello"] == 300 and not core._repeats
    big = {**BASE, "advertisement": "x" * 1000}
    for i in range(3000):  # 3 MB of distinct valid hellos: at most REPEAT_CACHE_BYTES kept
        core.datagram_received(0.2, raw_hello(f"n{i}", big), ("10.0.0.2", 1))
    assert 0 < core._repeats.size <= REPEAT_CACHE_BYTES and len(core.nodes) == 3000


def test_a_changed_value_is_never_taken_for_an_equal_one() -> None:
    """JSON true is not 1: Python's == would say the advertisement did not change."""
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.1, raw_hello("a", {**BASE, "advertisement": {"ready": 1}}), ("10.0.0.2", 1))
    core.datagram_received(0.2, raw_hello("a", {**BASE, "advertisement": {"ready": True}}), ("10.0.0.2", 1))
    assert core.nodes["a"].advertisement == {"ready": True}
    assert type(core.nodes["a"].advertisement["ready"]) is bool
    core.datagram_received(0.3, raw_hello("a", {**BASE, "isMasterEligible": 1}), ("10.0.0.2", 1))
    assert core.dropped["bad_hello"] == 1  # refused as a fresh node would refuse it


def test_a_record_is_never_built_from_objects_handlers_were_given() -> None:
    core = lone_core()
    core.start(0.0)
    datagram = raw_hello("a", {**BASE, "advertisement": {"role": "web"}})
    (added,) = events(core.datagram_received(0.1, datagram, ("10.0.0.2", 1)), "added")
    added.args[0].advertisement["role"] = "mutated by a handler"
    assert events(tick_until(core, 5.0), "removed")
    (again,) = events(core.datagram_received(5.1, datagram, ("10.0.0.2", 1)), "added")
    assert again.args[0].advertisement == {"role": "web"}


def test_odd_input_from_a_custom_transport_never_raises() -> None:
    core = lone_core()
    core.start(0.0)
    datagram = raw_hello("a", BASE)
    core.datagram_received(0.1, datagram, ("10.0.0.2", 1))
    core.datagram_received(0.2, bytearray(datagram), ("10.0.0.2", 1))  # cached path, bytearray
    core.datagram_received(0.3, datagram, ("10.0.0.2",))  # no port
    core.datagram_received(0.4, "not bytes", ("10.0.0.2", 1))  # type: ignore[arg-type]
    assert core.nodes["a"].last_seen == 0.3 and core.dropped["malformed"] == 1


def test_a_pause_during_a_link_outage_is_not_given_back_twice() -> None:
    core = lone_core()
    core.start(0.0)
    tick_until(core, 9.9)
    core.datagram_received(9.9, hello("p", seq=1), ("10.0.0.2", 1))
    core.link_lost(10.0)
    # Frozen from 10 to 21 (no calls at all), the link back at 22: 1.9 s were left.
    core.link_restored(22.0)
    assert not events(tick_until(core, 23.89), "removed")
    assert events(tick_until(core, 23.9), "removed")


def test_time_given_back_never_moves_a_node_into_the_future() -> None:
    """A hello heard during an outage must not leave the peer with a future last-seen."""
    core = lone_core()
    core.start(0.0)
    core.link_lost(1.0)
    core.datagram_received(2.0, hello("a", seq=1), ("10.0.0.2", 1))
    core.link_restored(5.0)
    assert core.nodes["a"].last_seen <= 5.0
    core.datagram_received(5.5, hello("a", seq=2), ("10.0.0.2", 1))
    assert not events(tick_until(core, 7.49), "removed")
    assert events(tick_until(core, 7.5), "removed")  # 5.5 + node_timeout, not later


def test_a_restart_forgets_a_link_outage() -> None:
    core = lone_core()
    core.start(0.0)
    core.link_lost(1.0)
    core.stop(2.0)
    core.start(3.0)
    core.datagram_received(3.1, hello("a", seq=1), ("10.0.0.2", 1))
    assert events(tick_until(core, 5.1), "removed")  # removals run again


def test_a_slow_loop_is_not_a_pause() -> None:
    """Late ticks while datagrams keep arriving: the dead peer's silence still counts."""
    core = lone_core()
    core.start(0.0)
    core.datagram_received(0.1, hello("dead", seq=1), ("10.0.0.2", 1))
    removed = []
    for k in range(1, 40):  # traffic every 0.1 s, but a tick only every 1.5 s: late for every hello
        now = 0.1 + k * 0.1
        out = core.datagram_received(now, hello("alive", seq=k), ("10.0.0.3", 1))
        if k % 15 == 0:
            out += core.tick(now)
        removed += [e.args[0].id for e in events(out, "removed")]
    assert "dead" in removed and core.counters["pauses"] == 0


def test_a_hello_whose_only_change_is_its_seq_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our peers' hellos carry a fresh seq: equal but for it, only the time moves (and the seq
    rules still hold: a replay or an older seq is refused, a change or a move is parsed)."""
    from pydiscover import wire

    core = lone_core()
    core.start(0.0)
    here, there = ("10.0.0.2", 1), ("10.0.0.3", 1)
    core.datagram_received(0.1, hello("a", seq=1), here)
    parsed: list[bytes] = []
    decode = wire.decode
    monkeypatch.setattr(wire, "decode", lambda raw: parsed.append(raw) or decode(raw))
    for seq in range(2, 50):
        out = core.datagram_received(seq / 100, hello("a", seq=seq), here)
        (heard,) = events(out, "helloReceived")
        assert heard.args == (core.nodes["a"], False) and core.nodes["a"].last_seen == seq / 100
    assert parsed == []
    core.datagram_received(0.6, hello("a", seq=30), here)  # a replay: refused, the time stays
    assert core.dropped["replayed"] == 1 and core.nodes["a"].last_seen == 0.49
    core.datagram_received(0.7, hello("a", seq=60), here)
    core.datagram_received(0.8, hello("a", seq=55), here)  # never seen, but older than the record
    assert core.dropped["stale"] == 1 and core.nodes["a"].last_seen == 0.7
    assert parsed == []
    out = core.datagram_received(0.9, hello("a", seq=61, weight=2.0), here)  # a change: parsed
    assert events(out, "nodeUpdated") and core.nodes["a"].weight == 2.0 and len(parsed) == 1
    out = core.datagram_received(1.0, hello("a", seq=62, weight=2.0), there)  # moved: parsed, recorded
    assert events(out, "nodeUpdated") and core.nodes["a"].address == "10.0.0.3" and len(parsed) == 2
    core.datagram_received(1.1, hello("a", seq=63, weight=2.0), there)
    assert len(parsed) == 2 and core.nodes["a"].last_seen == 1.1


def test_a_seq_only_hello_after_a_goodbye_or_a_timeout_brings_nobody_back() -> None:
    core = lone_core()
    core.start(0.0)
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("a", seq=1), here)
    core.datagram_received(0.2, hello("a", seq=2), here)
    core.datagram_received(0.3, hello("a", seq=3, event="pydiscover.goodbye"), here)
    assert "a" not in core.nodes
    core.datagram_received(0.4, hello("a", seq=2), here)  # from before the goodbye
    assert "a" not in core.nodes
    core.datagram_received(0.5, hello("b", seq=1), here)
    core.datagram_received(0.6, hello("b", seq=2), here)
    assert events(tick_until(core, 3.0), "removed")
    core.datagram_received(3.1, hello("b", seq=2), here)  # a replay of the last one heard
    assert "b" not in core.nodes


@pytest.mark.parametrize("seq", [None, 2])
def test_only_a_lone_report_or_message_is_marked_emits_only(seq: int | None) -> None:
    """A runtime skips everything but emitting when last_emits_only says so: never when the
    same datagram also expired a node (its removal and the election must go through)."""
    core = lone_core()
    core.start(0.0)
    core.join("chat")
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("a", seq=1), here)
    core.datagram_received(1.5, hello("b", seq=None if seq is None else 1), here)
    out = core.datagram_received(1.6, hello("b", seq=seq), here)  # unchanged: a lone report
    assert core.last_emits_only and [e.event for e in events(out, "helloReceived")] == ["helloReceived"]
    assert len(out) == 1
    out = core.datagram_received(2.2, hello("b", seq=None if seq is None else 3), here)  # and a expires
    assert not core.last_emits_only and events(out, "removed") and events(out, "helloReceived")
    out = core.datagram_received(2.3, orjson.dumps({"event": "chat", "pid": "x", "iid": "b", "hostName": "h",
                                                   "data": 1, "seq": 9}), here)
    assert core.last_emits_only and core.last_was_message and len(out) == 1


def counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every text ``wire.decode`` parses from now on (the core parses only what it cannot skip)."""
    decoded: list[bytes] = []
    decode = wire.decode
    monkeypatch.setattr(wire, "decode", lambda raw: decoded.append(raw) or decode(raw))
    return decoded


def test_a_peer_whose_hellos_keep_changing_leaves_the_others_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An advertisement that changes every hello (a load figure) is parsed every time; the
    steady peers beside it still are not (a shared cache it filled would have sent them back)."""
    core = lone_core()
    core.start(0.0)
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("steady", seq=1), here)
    decoded = counting_decode(monkeypatch)
    for seq in range(1, 200):
        core.datagram_received(0.1 + seq / 1000, hello("busy", seq=seq, weight=float(seq)), here)
    assert len(decoded) == 199 and core.nodes["busy"].weight == 199.0
    core.datagram_received(0.5, hello("steady", seq=2), here)
    assert len(decoded) == 199 and core.nodes["steady"].last_seen == 0.5


def test_peers_that_leave_take_their_bodies_with_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A departed instance's hello text goes with its record: the same text from it later is
    a newcomer's (parsed, ``added``), and the peers that stayed are still not parsed."""
    core = lone_core()
    core.start(0.0)
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("steady", seq=1), here)
    for n in range(50):
        core.datagram_received(0.1, hello(f"left{n}", seq=1), here)
        core.datagram_received(0.1, hello(f"left{n}", seq=2, event=wire.GOODBYE), here)
    core.datagram_received(0.1, hello("quiet", seq=1), here)
    assert set(core.nodes) == {"steady", "quiet"}
    core.datagram_received(1.0, hello("steady", seq=2), here)
    out = tick_until(core, 0.1 + FAST["node_timeout"] + 0.01)  # "quiet" times out, "steady" does not
    assert [n.id for n in (e.args[0] for e in events(out, "removed"))] == ["quiet"]
    decoded = counting_decode(monkeypatch)
    core.datagram_received(1.6, hello("steady", seq=3), here)
    assert decoded == [] and core.nodes["steady"].last_seen == 1.6  # the live peer's body is still there: no parse
    out = core.datagram_received(1.7, hello("left7", seq=3), here)  # back after its goodbye, same text
    assert len(decoded) == 1 and [e.args[0].id for e in events(out, "added")] == ["left7"]


def test_a_hello_dropped_after_parsing_leaves_the_text_that_stands_for_the_record() -> None:
    """A stale or malformed hello is parsed and dropped: it must not become the text whose
    next seq skips parsing (the record was not made from it).  Found by an outside review."""
    core = lone_core()
    core.start(0.0)
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("a", seq=1, weight=1.0), here)
    core.datagram_received(0.15, hello("a", seq=5, weight=1.0), here)
    core.datagram_received(0.2, hello("a", seq=3, weight=2.0), here)  # stale: dropped
    out = core.datagram_received(0.3, hello("a", seq=6, weight=2.0), here)
    assert core.nodes["a"].weight == 2.0 and events(out, "nodeUpdated") and core.dropped["stale"] == 1
    bad = orjson.loads(hello("a", seq=7))
    bad["data"]["weight"] = "x"  # seq stays last, as encode wrote it
    core.datagram_received(0.4, orjson.dumps(bad), here)
    core.datagram_received(0.5, orjson.dumps({**bad, "seq": 8}), here)
    assert core.dropped["bad_hello"] == 2 and core.nodes["a"].weight == 2.0


def test_a_record_made_from_other_text_is_not_refreshed_by_the_old_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text that skips parsing is the one that made the record *now*: after a hello whose
    text cannot be split (``seq`` not last) changed the record, the old text is parsed again."""
    core = lone_core()
    core.start(0.0)
    here = ("10.0.0.2", 1)
    core.datagram_received(0.1, hello("a", seq=1, weight=1.0), here)
    reordered = orjson.loads(hello("a", seq=2, weight=5.0))
    reordered = {"seq": reordered.pop("seq"), **reordered}  # valid, but not as encode writes it
    core.datagram_received(0.2, orjson.dumps(reordered), here)
    assert core.nodes["a"].weight == 5.0
    decoded = counting_decode(monkeypatch)
    out = core.datagram_received(0.3, hello("a", seq=3, weight=1.0), here)  # the first text again
    assert len(decoded) == 1 and core.nodes["a"].weight == 1.0 and events(out, "nodeUpdated")
    core.datagram_received(0.4, hello("a", seq=4, weight=1.0), here)
    assert len(decoded) == 1 and core.nodes["a"].last_seen == 0.4  # and it stands for the record again


# ------------------------------------------------------------------ bounded table (issue 20)
def test_a_full_table_drops_new_instances_keeps_members_and_warns_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = lone_core(max_nodes=3)
    core.start(0.0)
    for n in range(3):
        assert events(core.datagram_received(0.1, hello(f"m{n}", seq=1), ("10.0.0.2", 1)), "added")
    with caplog.at_level("WARNING", logger="pydiscover.core"):
        for n in range(100):  # a flood of made-up instances, seq'd and node-discover style
            out = core.datagram_received(0.2 + n / 1000, hello(f"fake{n}", seq=1 if n % 2 else None), ("10.0.0.9", 1))
            assert out == []
    assert core.dropped["table_full"] == 100 and len(core.nodes) == 3
    assert [r.getMessage().startswith("node table full (max_nodes=3)") for r in caplog.records] == [True]
    assert core._replay.highest("fake1") is None  # no replay state for a dropped instance either
    # Members keep being heard (never evicted), and a change of theirs still counts.
    assert events(core.datagram_received(0.5, hello("m0", seq=2, weight=9.0), ("10.0.0.2", 1)), "nodeUpdated")
    # A member leaves: there is room again for a newcomer.
    bye = orjson.dumps({"event": "pydiscover.goodbye", "pid": "x", "iid": "m1", "hostName": "h", "data": {}, "seq": 3})
    assert events(core.datagram_received(0.6, bye, ("10.0.0.2", 1)), "removed")
    assert events(core.datagram_received(0.7, hello("late", seq=1), ("10.0.0.3", 1)), "added")
    # A second burst, after a quiet node_timeout, warns again (every member heard twice: none makes room).
    for iid in ("m2", "late"):
        core.datagram_received(0.75, hello(iid, seq=2), ("10.0.0.2", 1))
    caplog.clear()
    with caplog.at_level("WARNING", logger="pydiscover.core"):
        core.datagram_received(0.8, hello("fake-a", seq=1), ("10.0.0.9", 1))
        core.datagram_received(0.8 + FAST["node_timeout"] / 2, hello("fake-b", seq=1), ("10.0.0.9", 1))
        core.datagram_received(1.5 + 2 * FAST["node_timeout"], hello("fake-c", seq=1), ("10.0.0.9", 1))
    assert len(caplog.records) == 2 and core.dropped["table_full"] == 103


def test_a_refused_newcomer_saying_hello_again_takes_the_place_of_an_instance_heard_only_once() -> None:
    """What a flood leaves must not keep a real newcomer out for a node_timeout after it ends."""
    from pydiscover.core import REFUSED_MEMORY

    core = lone_core(max_nodes=3)
    core.start(0.0)
    here, flood = ("10.0.0.2", 1), ("10.0.0.9", 1)
    core.datagram_received(0.1, hello("member", seq=1), here)
    core.datagram_received(0.15, hello("member", seq=2), here)  # heard twice, and the longest silent
    core.datagram_received(0.2, hello("fake1", seq=None), flood)  # node-discover style: no seq
    core.datagram_received(0.3, hello("fake2", seq=1), flood)
    # A first hello is refused (a flood is all first hellos) ...
    assert core.datagram_received(0.4, hello("new1", seq=1), here) == []
    assert core.dropped["table_full"] == 1
    # ... a second one takes the place of the instance heard once, longest ago (the member
    # silent longer is not evicted): removed, counted, the newcomer added.
    out = core.datagram_received(0.9, hello("new1", seq=2), here)
    assert [e.args[0].id for e in events(out, "removed")] == ["fake1"]
    assert [e.args[0].id for e in events(out, "added")] == ["new1"]
    assert core.counters["evicted"] == 1 and set(core.nodes) == {"member", "fake2", "new1"}
    # During a flood the memory of refused instances turns over: persistence gets nobody in.
    assert core.datagram_received(1.0, hello("new2", seq=1), here) == []
    for n in range(REFUSED_MEMORY):
        core.datagram_received(1.0, hello(f"flood{n}", seq=1), flood)
    assert core.datagram_received(1.1, hello("new2", seq=2), here) == []
    assert core.dropped["table_full"] == 3 + REFUSED_MEMORY
    # Once it has ended, the second hello is enough again; the newcomer heard twice since
    # (new1) stays, so fake2 is the one that goes.
    core.datagram_received(1.2, hello("new1", seq=3), here)
    out = core.datagram_received(1.3, hello("new2", seq=3), here)
    assert [e.args[0].id for e in events(out, "removed")] == ["fake2"]
    # With every member heard more than once, a newcomer waits however often it says hello.
    core.datagram_received(1.4, hello("member", seq=3), here)
    core.datagram_received(1.4, hello("new2", seq=4), here)
    for seq in (1, 2, 3):
        assert core.datagram_received(1.5 + seq / 10, hello("new3", seq=seq), here) == []
    assert set(core.nodes) == {"member", "new1", "new2"}


def test_max_nodes_is_checked_and_defaults_to_4096() -> None:
    with pytest.raises(ValueError, match="max_nodes must be between 1 and"):
        build_options(max_nodes=0)
    with pytest.raises(TypeError, match="max_nodes must be an int"):
        build_options(max_nodes=2.5)  # type: ignore[arg-type]
    assert build_options().max_nodes == 4096



# ------------------------------------------------- messages held through an outage
def test_a_link_outage_keeps_the_replay_memory_so_held_messages_count_once() -> None:
    # Redis holds a peer's messages through an outage and sends them as they were; the
    # receiver, silent meanwhile, must neither forget the seqs it took (a second copy of
    # a message whose publish was cut would count twice) nor refuse the held ones.
    options = build_options(hostname="h", **FAST)
    sender = DiscoveryCore(options, pid="s", iid="sender")
    receiver = DiscoveryCore(options, pid="r", iid="receiver")
    for core in (sender, receiver):
        core.start(0.0, 1_700_000_000.0)
    receiver.join("chat")
    address = ("127.0.0.1", 1)

    def datagrams(actions: list[Action] | None) -> list[bytes]:
        return [a.datagram for a in actions or [] if isinstance(a, Transmit)]

    def delivered(now: float, datagram: bytes) -> list[object]:
        out = receiver.datagram_received(now, datagram, address)
        return [a.args[0] for a in out if isinstance(a, Emit) and a.event == "chat"]

    for hello_datagram in datagrams(sender.hello(0.1)):
        receiver.datagram_received(0.1, hello_datagram, address)
    (cut,) = datagrams(sender.send(0.2, "chat", {"n": 0}))
    assert delivered(0.2, cut) == [{"n": 0}]
    held = [datagrams(sender.send(0.3 + i / 10, "chat", {"n": i}))[0] for i in range(1, 4)]
    receiver.link_lost(0.3)
    for tick in range(1, 61):  # a minute without a packet: far past the replay memory's retention
        receiver.tick(0.3 + tick)
    receiver.link_restored(61.0)
    assert delivered(61.0, cut) == []  # the copy of the one that got through before
    assert [delivered(61.0, h) for h in held] == [[{"n": 1}], [{"n": 2}], [{"n": 3}]]
    assert receiver.dropped["replayed"] == 1
