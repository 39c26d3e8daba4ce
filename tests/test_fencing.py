"""Mastership held with a coordinator's leader key (issue 17), sans-IO: the core's fence
under the fake clock and a fake etcd (testbed.fenced_sim), no sockets, no sleeps."""

from __future__ import annotations

import orjson
import pytest

from pydiscover import wire
from pydiscover.core import MastershipWanted
from testbed.fenced_sim import FencedSim

TIMING = {"hello_interval": 0.5, "check_interval": 1.0, "node_timeout": 2.0}


def run_checked(sim: FencedSim, until: float, step: float = 0.05) -> None:
    """Advance in small steps, checking the invariant at each: believers hold keys, one per key."""
    t = sim.now
    while t < until:
        t = min(until, t + step)
        sim.run_until(t)
        assert sim.holders_ok(), (sim.now, sim.masters(), sim.slots)
        assert len(sim.masters()) <= sim.slot_count, (sim.now, sim.masters())


def test_the_highest_ranked_node_holds_the_key_and_its_token_travels() -> None:
    sim = FencedSim()
    nodes = [sim.add(weight=w, **TIMING) for w in (1, 3, 2)]
    run_checked(sim, 5.0)
    assert sim.masters() == [1]
    token = sim.nodes[1].core.fencing_token
    assert token is not None and sim.nodes[1].core.me(sim.now).fencing_token == token
    for idx in (0, 2):  # the others see the master's token in its hellos
        peer = sim.nodes[idx].core.nodes[sim.nodes[1].core.iid]
        assert peer.is_master and peer.fencing_token == token
    promotions = sim.events(1, "promotion")
    assert len(promotions) == 1 and promotions[0][1][0].fencing_token == token
    assert len(nodes) == 3


def test_not_sticky_a_heavier_newcomer_takes_over_with_a_higher_token() -> None:
    sim = FencedSim()
    sim.add(weight=1, **TIMING)
    run_checked(sim, 3.0)
    assert sim.masters() == [0]
    first = sim.nodes[0].core.fencing_token
    sim.add(weight=5, **TIMING)
    run_checked(sim, 8.0)
    assert sim.masters() == [1]
    assert sim.nodes[1].core.fencing_token is not None and first is not None
    assert sim.nodes[1].core.fencing_token > first
    assert [t for _, _, t in sim.grants] == sorted(t for _, _, t in sim.grants)
    assert sim.nodes[0].core.fencing_token is None and len(sim.events(0, "demotion")) == 1


def test_a_crashed_master_is_replaced_once_its_lease_is_gone_not_before() -> None:
    sim = FencedSim(ttl=4.0)
    sim.add(weight=5, **TIMING)
    sim.add(weight=1, **TIMING)
    run_checked(sim, 4.0)
    assert sim.masters() == [0]
    sim.kill(0)
    killed = sim.now
    run_checked(sim, killed + 8.0)
    assert sim.masters() == [1]
    promoted_at = sim.events(1, "promotion")[-1][0]
    assert killed + 4.0 <= promoted_at <= killed + 4.0 + 0.5  # the key frees at the lease's end


def test_a_master_cut_from_etcd_steps_down_before_its_lease_ends_and_nobody_overlaps() -> None:
    sim = FencedSim(ttl=4.0, margin=1.0)
    sim.add(weight=5, **TIMING)
    sim.add(weight=1, **TIMING)
    run_checked(sim, 4.0)
    sim.cut(0)
    cut = sim.now
    run_checked(sim, cut + 8.0)
    demoted_at = sim.events(0, "demotion")[-1][0]
    promoted_at = sim.events(1, "promotion")[-1][0]
    assert demoted_at <= cut + 4.0 - 1.0 < promoted_at  # it stopped before the key could pass on
    assert sim.masters() == [1]
    assert not sim.nodes[0].core.me(sim.now).is_master_eligible  # no lease: no candidate


def test_a_udp_partition_cannot_make_two_masters() -> None:
    sim = FencedSim()
    for w in (3, 2, 1):
        sim.add(weight=w, **TIMING)
    run_checked(sim, 4.0)
    sim.partition([[0], [1, 2]])  # both sides still reach etcd: the key decides
    run_checked(sim, 12.0)
    assert sim.masters() == [0]
    sim.heal()
    run_checked(sim, 16.0)
    assert sim.masters() == [0]


def test_two_masters_required_two_keys() -> None:
    sim = FencedSim()
    for w in (1, 2, 3, 4):
        sim.add(weight=w, masters_required=2, **TIMING)
    run_checked(sim, 5.0)
    assert sorted(sim.masters()) == [2, 3]
    sim.kill(3)
    run_checked(sim, 12.0)
    assert sorted(sim.masters()) == [1, 2]


def test_demote_and_promote_with_a_coordinator() -> None:
    sim = FencedSim()
    sim.add(weight=5, **TIMING)
    sim.add(weight=1, **TIMING)
    run_checked(sim, 4.0)
    sim.call(0, sim.nodes[0].core.demote, True)  # permanent: the key goes to the next one
    run_checked(sim, 8.0)
    assert sim.masters() == [1]
    sim.call(0, sim.nodes[0].core.promote)  # a candidate again; the heavier one takes it back
    run_checked(sim, 12.0)
    assert sim.masters() == [0]


def test_a_grant_that_comes_too_late_is_handed_back() -> None:
    sim = FencedSim()
    idx = sim.add(weight=1, **TIMING)
    core = sim.nodes[idx].core
    run_checked(sim, 3.0)
    sim.call(idx, core.set_fence_ready, False)  # lease lost: not master, not a candidate
    assert not core.is_master
    wanted = [a for a in sim.call(idx, core.set_fence_ready, True) or [] if isinstance(a, MastershipWanted)]
    sim.call(idx, core.set_fence_ready, False)  # and lost again before the grant came back
    seq = wanted[-1].seq if wanted else 0
    assert core.grant_mastership(sim.now, 99, seq) == []  # an older request's grant: ignored
    assert not core.is_master


def test_a_wavering_election_never_makes_a_master_without_its_key() -> None:
    """Requests and grants cross (etcd answers in 0.3 s, the election flips every 0.1 s): only
    the latest request counts, and whoever believes itself master holds its key throughout."""
    sim = FencedSim(etcd_latency=0.3)
    heavy = sim.add(weight=2, **TIMING)
    sim.add(weight=1, **TIMING)
    run_checked(sim, 3.0)
    for k in range(20):
        core = sim.nodes[heavy].core
        sim.call(heavy, core.demote, True) if k % 2 == 0 else sim.call(heavy, core.promote)
        run_checked(sim, sim.now + 0.1, step=0.01)
    run_checked(sim, sim.now + 10.0, step=0.02)
    assert sim.masters() == [heavy] and len(sim.slots) == 1


def test_the_token_on_the_wire() -> None:
    hello = wire.Hello(True, True, 1.0, token=7)
    assert hello.to_json()["token"] == 7
    assert wire.decode_hello(orjson.loads(orjson.dumps(hello.to_json()))).token == 7
    assert "token" not in wire.Hello(False, True, 1.0).to_json()  # node-discover sees nothing new
    for bad in (True, -1, 1.5, "7"):
        with pytest.raises(wire.DecodeError):
            wire.decode_hello({"isMaster": True, "isMasterEligible": True, "weight": 1, "token": bad})
