"""The units DiscoveryCore is composed of, each on its own: peer table, repeat cache, timers, master role."""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydiscover.core import DiscoveryCore, Emit, Transmit
from pydiscover.election import Decision, standing_of
from pydiscover.master_role import MasterRole
from pydiscover.node import Node
from pydiscover.options import build_options
from pydiscover.peers import PeerTable
from pydiscover.repeats import RepeatCache
from pydiscover.timers import Timers
from pydiscover.wire import Envelope


def node(iid: str, seen: float, *, master: bool = False, weight: float = 0.0, eligible: bool = True) -> Node:
    return Node(
        id=iid,
        pid="p",
        hostname="h",
        address="10.0.0.2",
        port=1,
        is_master=master,
        is_master_eligible=eligible,
        weight=weight,
        last_seen=seen,
    )


# ------------------------------------------------------------------ PeerTable
def table() -> PeerTable:
    return PeerTable(node_timeout=3.0, master_timeout=2.0, rank=(0.0, 0, "me"))


def test_a_recorded_peer_is_found_and_sets_the_next_expiry() -> None:
    peers = table()
    assert len(peers) == 0 and peers.next_expiry == math.inf
    peer = peers.record(node("a", 1.0), {"x": 1}, b'{"x":1}', 5)
    assert "a" in peers and peers.get("a") is peer and peer.seq == 5 and peer.data == {"x": 1}
    assert peers.next_expiry == 4.0  # node timeout
    peers.record(node("m", 1.5, master=True), {}, b"{}", None)
    assert peers.next_expiry == 3.5 and peers.get("m").seq == -1  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["record", "remove", "expire", "clear"]), st.integers(0, 7),
                          st.booleans(), st.booleans(), st.integers(-2, 2)), max_size=60))
def test_the_election_counts_kept_by_the_table_equal_a_fresh_count(steps: list[tuple[str, int, bool, bool, int]],
                                                                   ) -> None:
    """Whatever records come, change class, leave or time out, the kept standing is a recount's."""
    peers = table()
    now = 0.0
    for op, n, master, eligible, weight in steps:
        now += 0.5
        iid = f"n{n}"
        if op == "record":
            peers.record(node(iid, now, master=master, weight=float(weight), eligible=eligible), {}, b"{}", None)
        elif op == "remove" and iid in peers:
            peers.remove(iid)
        elif op == "expire":
            peers.expired(now)
        elif op == "clear":
            peers.clear()
        kept, fresh = peers.standing, standing_of((0.0, 0, "me"), peers.records())
        assert (kept.masters, kept.higher_masters, kept.higher_candidates, kept.higher_eligible) == (
            fresh.masters, fresh.higher_masters, fresh.higher_candidates, fresh.higher_eligible)


def test_seen_moves_only_the_time_and_records_are_handed_out_up_to_date() -> None:
    peers = table()
    peer = peers.record(node("a", 1.0), {}, b"{}", None)
    first = peers.current(peer)
    assert peers.current(peer) is first  # nothing moved: the same record
    peers.seen(peer, 2.5)
    assert peers.next_expiry == 4.0  # a lower bound: refreshes only move expiries later
    fresh = peers.current(peer)
    assert fresh.last_seen == 2.5 and first.last_seen == 1.0  # a new record; the old one is untouched
    assert peers.nodes() == {"a": fresh}
    assert [n.id for n in peers.records()] == ["a"]


def test_expired_removes_only_the_silent_and_makes_the_next_expiry_exact() -> None:
    peers = table()
    a = peers.record(node("a", 0.0), {}, b"{}", None)
    peers.record(node("b", 1.0), {}, b"{}", None)
    peers.record(node("m", 0.5, master=True), {}, b"{}", None)
    peers.seen(a, 2.0)  # a's bound in the heap (3.0) is now early: expired() finds its real expiry
    assert peers.expired(4.0) == [node("m", 0.5, master=True), node("b", 1.0)]  # in the order they expired
    assert set(peers.nodes()) == {"a"} and peers.next_expiry == 5.0
    assert peers.expired(4.9) == [] and peers.next_expiry == 5.0
    assert [n.last_seen for n in peers.expired(5.0)] == [2.0]  # handed out with its latest time
    assert len(peers) == 0 and peers.next_expiry == math.inf


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["record", "seen", "remove", "expire", "give_back"]), st.integers(0, 9),
                          st.booleans(), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5])), max_size=80))
def test_expiry_bounds_match_a_model_of_the_last_hellos(steps: list[tuple[str, int, bool, float]]) -> None:
    """Whatever hellos come, whoever leaves, change class or gets time back: ``expired`` removes
    exactly the silent, ``next_expiry`` is never late (exact after ``expired``), and peers
    that left do not grow the heap past a constant times the table."""
    peers = table()
    timeouts = {False: 3.0, True: 2.0}
    model: dict[str, tuple[float, bool]] = {}  # iid -> (last hello, master)
    now = 0.0
    for op, n, master, step in steps:
        now += step
        iid = f"n{n}"
        if op == "record":
            peers.record(node(iid, now, master=master), {}, b"{}", None)
            model[iid] = (now, master)
        elif op == "seen" and iid in model:
            peers.seen(peers.get(iid), now)  # type: ignore[arg-type]
            model[iid] = (now, model[iid][1])
        elif op == "remove" and iid in model:
            peers.remove(iid)
            del model[iid]
        elif op == "give_back":
            peers.give_time_back(step, now)
            model = {i: (min(seen + step, now), m) for i, (seen, m) in model.items()}
        elif op == "expire":
            silent = {i for i, (seen, m) in model.items() if seen + timeouts[m] <= now}
            assert {n.id for n in peers.expired(now)} == silent
            model = {i: v for i, v in model.items() if i not in silent}
            assert peers.next_expiry == min((seen + timeouts[m] for seen, m in model.values()), default=math.inf)
        assert peers.next_expiry <= min((seen + timeouts[m] for seen, m in model.values()), default=math.inf)
        assert set(peers.nodes()) == set(model)
        assert len(peers._due) <= 2 * len(model) + 65  # the bound is the point


def test_a_hello_that_changes_nothing_leaves_the_heap_alone() -> None:
    peers = table()
    peer = peers.record(node("a", 0.0), {}, b"{}", None)
    heap = list(peers._due)
    for t in range(1, 50):
        peers.seen(peer, t / 10)
    assert peers._due == heap and peers.next_expiry == 3.0  # a lower bound, made exact below
    assert peers.expired(3.0) == [] and peers.next_expiry == 4.9 + 3.0


def test_a_changed_record_moves_class_and_keeps_its_seq() -> None:
    peers = table()
    peer = peers.record(node("a", 0.0), {}, b"{}", 7)
    same = peers.record(node("a", 1.0, master=True), {"m": 1}, b'{"m":1}', None)
    assert same is peer and peer.seq == 7 and peer.seen == 1.0 and peer.data_json == b'{"m":1}'
    assert peers.next_expiry == 3.0  # the master timeout now applies (the bound may stay early)
    assert peers.expired(3.0) == [node("a", 1.0, master=True)]


def test_remove_returns_the_up_to_date_record() -> None:
    peers = table()
    peer = peers.record(node("a", 0.0), {}, b"{}", None)
    peers.seen(peer, 1.0)
    assert peers.remove("a").last_seen == 1.0 and "a" not in peers
    with pytest.raises(KeyError):
        peers.remove("a")


def test_time_given_back_is_clamped_at_now_and_keeps_the_order() -> None:
    peers = table()
    peers.record(node("a", 0.0), {}, b"{}", None)
    peers.record(node("b", 2.0), {}, b"{}", None)
    peers.give_time_back(1.5, now=3.0)
    assert {iid: n.last_seen for iid, n in peers.nodes().items()} == {"a": 1.5, "b": 3.0}
    assert [n.id for n in peers.expired(4.5)] == ["a"]


def test_clear_forgets_everything() -> None:
    peers = table()
    peers.record(node("a", 0.0), {}, b"{}", None)
    peers.clear()
    assert len(peers) == 0 and peers.get("a") is None and peers.next_expiry == math.inf
    assert peers.expired(100.0) == []


# ---------------------------------------------------------------- RepeatCache
ENV = Envelope("hello", "p", "a", "h", {}, None)


def test_the_repeat_cache_counts_each_datagram_once() -> None:
    cache = RepeatCache(max_entries=10, max_bytes=100)
    assert cache.get(b"x") is None
    cache.remember(b"abc", ENV, b"plain")
    cache.remember(b"abc", ENV, b"plain")
    assert cache.get(b"abc") == (ENV, b"plain") and len(cache) == 1 and cache.size == 3
    cache.clear()
    assert len(cache) == 0 and cache.size == 0 and cache.get(b"abc") is None


def test_the_repeat_cache_starts_over_when_full() -> None:
    by_count = RepeatCache(max_entries=2, max_bytes=1000)
    for datagram in (b"a", b"b", b"c"):
        by_count.remember(datagram, ENV, datagram)
    assert len(by_count) == 1 and by_count.get(b"c") is not None and by_count.size == 1
    by_bytes = RepeatCache(max_entries=100, max_bytes=10)
    by_bytes.remember(b"123456", ENV, b"")
    by_bytes.remember(b"7890ab", ENV, b"")  # 12 bytes would not fit
    assert by_bytes.get(b"123456") is None and by_bytes.size == 6


# --------------------------------------------------------------------- Timers
def timers(seed: int = 1) -> Timers:
    return Timers(hello_interval=1.0, check_interval=2.0, rng=random.Random(seed))


def test_start_arms_the_beat_at_a_random_phase_and_the_first_check() -> None:
    t = timers()
    assert t.next_deadline() is None
    t.start(10.0, first_check=12.0, hellos=True)
    assert t.next_hello is not None and 10.5 <= t.next_hello <= 11.0
    assert t.next_check == 12.0 and t.last_run == 10.0
    assert t.paused_if_after == t.next_hello + 1.0
    assert t.next_deadline() == t.next_hello and t.next_deadline(10.2, None) == 10.2
    client = timers()
    client.start(10.0, first_check=12.0, hellos=False)
    assert client.next_hello is None and client.next_deadline() == 12.0
    t.stop()
    assert t.next_deadline() is None


def test_a_late_beat_skips_missed_hellos_and_is_the_reply() -> None:
    t = timers()
    t.next_hello, t.reply_at = 5.0, 4.8
    assert not t.hello_due(4.9)
    assert t.hello_due(7.5) and t.next_hello == 8.0 and t.reply_at is None
    assert not t.hello_due(7.9)


def test_reply_and_check_fire_once_when_due() -> None:
    t = timers()
    t.reply_at, t.next_check = 1.0, 2.0
    assert not t.reply_due(0.9) and t.reply_due(1.0) and t.reply_at is None and not t.reply_due(1.1)
    assert not t.check_due(1.9) and t.check_due(2.5) and t.next_check == 4.5


def test_replies_are_coalesced_spaced_and_never_after_the_next_hello() -> None:
    from pydiscover.timers import REPLY_WINDOW_BASE, REPLY_WINDOW_PER_PEER

    window = REPLY_WINDOW_BASE + 5 * REPLY_WINDOW_PER_PEER
    t = timers()
    t.next_hello = 100.0
    t.schedule_reply(10.0, just_started=False, peers=5)  # no hello of ours yet
    first = t.reply_at
    assert first is not None and 10.0 <= first <= 10.0 + window
    t.schedule_reply(10.001, just_started=True, peers=5)
    assert t.reply_at == first  # one pending at a time
    assert t.reply_due(first)
    t.schedule_reply(first, just_started=True, peers=5)
    assert t.reply_at is not None and t.reply_at >= first + window  # at most one per window
    t.reply_at = None
    t.hello_sent(20.0)
    t.schedule_reply(20.0 + window / 2, just_started=False, peers=5)  # it heard our hello just now
    assert t.reply_at is None
    t.schedule_reply(20.0 + window / 2, just_started=True, peers=5)  # a newcomer is answered anyway
    assert t.reply_at is not None
    late = timers()
    late.next_hello = 30.0
    late.schedule_reply(29.9999, just_started=True, peers=0)
    assert late.reply_at is None or late.reply_at < 30.0


def test_only_a_gap_over_a_hello_interval_is_a_pause() -> None:
    t = timers()
    t.start(0.0, first_check=2.0, hellos=True)
    t.last_run = 5.0
    assert t.pause_before(5.9) == 0.0 and t.paused_if_after == 6.9  # late, but it ran
    assert t.pause_before(8.0) == 3.0 and t.paused_if_after == 9.0


# ----------------------------------------------------------------- MasterRole
def role(**kwargs: object) -> MasterRole:
    settings: dict[str, object] = {
        "rank": (1.0, 0, "me"),
        "eligible": True,
        "masters_required": 1,
        "master_timeout": 3.0,
    }
    settings.update(kwargs)
    return MasterRole(**settings)  # type: ignore[arg-type]


def test_elections_wait_for_the_cluster_to_settle() -> None:
    r = role()
    r.settle_at = 2.0
    assert r.elect(1.9, []) is Decision.STAY and not r.is_master
    assert r.elect(2.0, []) is Decision.PROMOTE and r.is_master
    assert r.elect(3.0, []) is Decision.STAY
    assert r.elect(3.0, [node("big", 3.0, master=True, weight=5.0)]) is Decision.DEMOTE and not r.is_master


def test_an_ineligible_node_never_promotes_itself() -> None:
    assert role(eligible=False).elect(0.0, []) is Decision.STAY


def test_promote_and_demote_report_only_changes() -> None:
    r = role()
    assert r.promote() and not r.promote() and r.is_master
    assert r.demote(1.0, permanent=False) and not r.demote(1.0, permanent=False)
    assert not r.resign()


def test_a_temporary_demotion_hands_over_until_a_successor_or_the_timeout() -> None:
    r = role()
    r.promote()
    r.demote(1.0, permanent=False)
    assert r.stepping_down_until == 4.0 and not r.eligible
    assert r.elect(2.0, []) is Decision.STAY  # not a candidate while handing over
    assert not r.step_down_over(3.9) and r.step_down_over(4.0) and r.eligible
    r.demote(5.0, permanent=False)
    r.successor_seen()
    assert r.eligible and r.stepping_down_until is None


def test_a_permanent_demotion_lasts_until_promote() -> None:
    r = role()
    r.demote(1.0, permanent=True)
    assert not r.eligible and r.stepping_down_until is None and not r.step_down_over(100.0)
    assert r.elect(100.0, []) is Decision.STAY
    r.promote()
    assert r.eligible and r.is_master


# ------------------------------------------------- the core's runtime wishes
def hello(iid: str) -> bytes:
    data = {"isMaster": False, "isMasterEligible": True, "weight": 1, "address": "10.0.0.2"}
    return orjson.dumps({"event": "hello", "pid": "other", "iid": iid, "hostName": "h", "data": data})


def started_core(**kwargs: bool) -> DiscoveryCore:
    core = DiscoveryCore(
        build_options(hostname="me", ignore_process=False), pid="me", iid="me", rng=random.Random(1), **kwargs
    )
    core.start(0.0)
    return core


def test_unchanged_hellos_are_reported_only_while_someone_listens() -> None:
    core = started_core(report_unchanged_hellos=False)
    assert not core.report_unchanged_hellos
    core.datagram_received(0.1, hello("a"), ("10.0.0.2", 1))
    assert core.datagram_received(0.2, hello("a"), ("10.0.0.2", 1)) == []
    core.set_listening(hello_received=True)
    assert core.report_unchanged_hellos
    [event] = core.datagram_received(0.3, hello("a"), ("10.0.0.2", 1))
    assert event == Emit("helloReceived", (core.nodes["a"], False)) and core.nodes["a"].last_seen == 0.3
    core.report_unchanged_hellos = False  # the old spelling still works
    assert core.datagram_received(0.4, hello("a"), ("10.0.0.2", 1)) == []


def test_the_runtime_tells_a_delivered_message_from_the_actions() -> None:
    core = started_core()
    core.join("news")
    message = orjson.dumps({"event": "news", "pid": "other", "iid": "b", "hostName": "h", "data": 1, "seq": 1})
    actions = core.datagram_received(0.1, message, ("10.0.0.2", 1))
    assert DiscoveryCore.delivers_message(actions) and core.last_was_message
    actions = core.datagram_received(0.2, hello("a"), ("10.0.0.2", 1))
    assert actions and not core.delivers_message(actions) and not core.last_was_message
    assert not core.delivers_message([Transmit(b"x"), Emit("check")])
