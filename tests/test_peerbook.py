"""PeerBook on its own: where hellos go, with an explicit ``now`` (no sockets, no clock, no sleeps)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from pydiscover.config import Endpoint
from pydiscover.peerbook import (
    ANSWER_INTERVAL,
    ASK,
    ASK_INTERVAL_MIN,
    ASK_TRIES,
    MAX_LEARNED,
    MAX_PENDING,
    PEERS_CHANNEL,
    DestinationsChanged,
    PeerAction,
    PeerBook,
    SendTo,
    endpoint_from_wire,
)

SEED: Endpoint = ("10.0.0.1", 12345)
A: Endpoint = ("10.0.0.2", 12345)
B: Endpoint = ("10.0.0.3", 12345)
C: Endpoint = ("10.0.0.4", 12345)
ME = ("10.0.0.9", 12345)
TIMEOUT = 2.0


def book(manual: tuple[Endpoint, ...] = (SEED,), *, learn: bool = True, **bounds: int) -> PeerBook:
    b = PeerBook(manual, learn, node_timeout=TIMEOUT, **bounds)
    b.start(ME)
    return b


def changed(actions: list[PeerAction]) -> tuple[Endpoint, ...] | None:
    """The last destination list the actions hand to the transport, or ``None``."""
    lists = [a.endpoints for a in actions if isinstance(a, DestinationsChanged)]
    return lists[-1] if lists else None


def sends(actions: list[PeerAction]) -> list[SendTo]:
    return [a for a in actions if isinstance(a, SendTo)]


def test_constants_and_the_runtime_reexports() -> None:
    import pydiscover.discovery as runtime

    assert (MAX_LEARNED, MAX_PENDING, PEERS_CHANNEL) == (1024, 256, "pydiscover.peers")
    reexported = (runtime.MAX_LEARNED, runtime.MAX_PENDING, runtime.PEERS_CHANNEL)
    assert reexported == (MAX_LEARNED, MAX_PENDING, PEERS_CHANNEL)


def test_manual_destinations_are_deduplicated_and_replaced() -> None:
    b = PeerBook([SEED, A, SEED], True, node_timeout=TIMEOUT)
    assert b.manual == (SEED, A) and b.endpoints() == (SEED, A)
    assert b.set_manual([B, B]) == [DestinationsChanged((B,))]
    assert b.manual == (B,) and b.next_deadline() is None


# ------------------------------------------------------ learning and forgetting
def test_an_added_node_is_learned_and_leaves_with_its_node() -> None:
    b = book()
    b.node_added(0.5, "s", SEED)  # the seed answered at its own endpoint
    out = b.node_added(1.0, "a", A)
    assert out == [DestinationsChanged((SEED, A))] and b.learned == 2
    assert b.node_removed(2.0, "a") == [DestinationsChanged((SEED,))] and b.learned == 1
    assert b.node_removed(3.0, "a") == []  # not learned any more


def test_two_nodes_at_one_endpoint_keep_it_until_both_leave() -> None:
    b = book(())
    assert changed(b.node_added(1.0, "a1", A)) == (A,)
    assert b.node_added(1.0, "a2", A) == []  # the list did not change
    assert b.node_removed(2.0, "a1") == [] and b.endpoints() == (A,)
    assert changed(b.node_removed(2.0, "a2")) == ()


def test_a_learned_node_at_a_given_destination_changes_nothing_and_the_destination_stays() -> None:
    b = PeerBook([A], True, node_timeout=TIMEOUT)  # not started: learns, but asks nobody
    assert b.node_added(1.0, "a", A) == [] and b.learned == 1
    assert b.node_removed(2.0, "a") == [] and b.endpoints() == (A,)


def test_without_learn_peers_nothing_is_learned_or_asked_but_members_are_answered() -> None:
    b = book(learn=False)
    assert b.node_added(1.0, "s", SEED) == [] and b.node_added(1.0, "a", A) == []
    assert b.node_moved(2.0, "a", B) == []
    assert b.learned == 0 and b.endpoints() == (SEED,)
    # A seed that does not learn still introduces its members to a joiner (not only itself).
    answer = b.message(1.0, ASK, SEED, SEED, members=lambda: [SEED, A], budget=1000)
    assert answer == [SendTo(SEED, {"peers": [list(A)]})]
    assert b.message(1.0, {"peers": [list(C)]}, SEED, SEED) == [] and b.pending == ()  # never asked, never tries


def test_a_moved_node_is_followed() -> None:
    b = book(())
    b.node_added(1.0, "a", A)
    assert b.node_moved(2.0, "a", A) == []  # updated, not moved
    assert b.node_moved(3.0, "a", B) == [DestinationsChanged((B,))] and b.learned == 1
    assert changed(b.node_removed(4.0, "a")) == ()


def test_a_node_added_twice_counts_once() -> None:
    b = book(())
    b.node_added(1.0, "a", A)
    assert changed(b.node_added(2.0, "a", B)) == (B,) and b.learned == 1
    assert changed(b.node_removed(3.0, "a")) == ()


def test_learning_is_bounded_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    b = book((), max_learned=1024)
    with caplog.at_level(logging.WARNING, logger="pydiscover.peerbook"):
        for i in range(1030):
            b.node_added(1.0, f"n{i}", (f"10.1.{i // 256}.{i % 256}", 1))
    assert b.learned == 1024 and b.not_learned == 6 and len(b.endpoints()) == 1024
    assert sum("not learning more" in r.getMessage() for r in caplog.records) == 1
    b.node_removed(2.0, "n0")  # room again
    assert changed(b.node_added(2.0, "late", ("10.2.0.1", 1))) is not None and b.learned == 1024


def test_a_member_refused_at_the_bound_is_learned_when_updated_once_there_is_room() -> None:
    b = book((), max_learned=1)
    b.node_added(1.0, "a", A)
    assert b.node_added(1.0, "b", B) == [] and b.not_learned == 1  # refused: full
    assert b.node_moved(2.0, "b", B) == [] and b.not_learned == 1  # still full: not counted twice
    b.node_removed(3.0, "a")
    assert b.node_moved(4.0, "b", B) == [DestinationsChanged((B,))] and b.learned == 1
    assert b.node_moved(5.0, "b", B) == []  # learned: an update at the same endpoint changes nothing
    assert changed(b.node_removed(6.0, "b")) == ()


def test_clear_forgets_the_run_but_keeps_the_destinations_given_and_the_count() -> None:
    b = book(max_learned=1)
    b.node_added(1.0, "a", A)
    b.node_added(1.0, "b", B)  # over the bound
    b.node_added(1.0, "s", SEED)  # over the bound, but still asked
    b.message(1.5, {"peers": [list(C)]}, SEED, SEED)
    assert b.endpoints() == (SEED, A, C)
    assert b.clear() == [DestinationsChanged((SEED,))]
    assert b.learned == 0 and b.not_learned == 2 and b.next_deadline() is None
    assert b.message(1.6, {"peers": [list(C)]}, SEED, SEED) == []  # the question was forgotten too
    assert sends(b.node_added(2.0, "s", SEED)) == []  # stopped: asks nobody


# ------------------------------------------------------ asking a seed
def test_a_given_destination_that_answers_is_asked_and_its_answer_tried_until_tick() -> None:
    b = book()
    out = b.node_added(10.0, "s", SEED)
    assert sends(out) == [SendTo(SEED, {"ask": "peers"})]
    out = b.message(10.5, {"peers": [list(A), list(B), list(SEED), list(ME)]}, SEED, SEED)
    assert out == [DestinationsChanged((SEED, A, B))]  # known ones and ourselves left out
    assert b.pending == (A, B) and b.next_deadline() == 12.5
    assert changed(b.node_added(11.0, "a", A)) is None  # it answered: learned, no longer pending
    assert b.pending == (B,) and b.learned == 2
    assert b.tick(12.4) == [] and b.pending == (B,)
    assert b.tick(12.5) == [DestinationsChanged((SEED, A))]
    assert b.pending == () and b.next_deadline() is None


def test_pending_endpoints_expire_in_the_order_they_were_named() -> None:
    b = book()
    b.node_added(0.0, "s", SEED)
    b.message(1.0, {"peers": [list(A)]}, SEED, SEED)
    b.node_added(1.5, "s2", SEED)  # asked again
    b.message(1.5, {"peers": [list(B)]}, SEED, SEED)
    assert b.next_deadline() == 3.0
    assert changed(b.tick(3.0)) == (SEED, B) and b.next_deadline() == 3.5
    assert changed(b.tick(10.0)) == (SEED,)


def test_only_answers_we_asked_for_within_the_window_count() -> None:
    b = book((SEED, C))
    peers = {"peers": [list(A)]}
    assert b.message(1.0, peers, SEED, SEED) == []  # never asked
    b.node_added(1.0, "s", SEED)
    assert b.message(1.0, peers, A, A) == []  # asked someone else
    assert b.message(1.0 + TIMEOUT + 0.01, peers, SEED, SEED) == []  # too late
    b.node_added(5.0, "s2", SEED)
    assert b.message(5.0 + TIMEOUT, peers, SEED, SEED) == [DestinationsChanged((SEED, C, A))]


def test_only_members_are_answered_and_never_with_their_own_endpoint() -> None:
    b = book(())
    assert b.message(1.0, ASK, A, None, members=lambda: [B], budget=1000) == []
    out = b.message(1.0, ASK, A, A, members=lambda: [A, B, B, C], budget=1000)
    assert out == [SendTo(A, {"peers": [list(B), list(C)]})]
    # Nobody else to name: an empty answer, so the asker stops asking.
    assert b.message(1.0, ASK, B, B, members=lambda: [B], budget=1000) == [SendTo(B, {"peers": []})]


def test_an_ask_is_answered_only_from_the_members_own_endpoint() -> None:
    # Without a key anyone can claim a member's id: the answer must not go where the packet says.
    b = book(())
    victim: Endpoint = ("192.0.2.7", 53)
    assert b.message(1.0, ASK, victim, A, members=lambda: [A, B], budget=1000) == []  # spoofed source
    assert b.message(1.0, ASK, A, None, members=lambda: [A, B], budget=1000) == []  # no member
    assert b.message(1.0, ASK, A, A, members=lambda: [A, B], budget=1000) == [SendTo(A, {"peers": [list(B)]})]


@pytest.mark.parametrize("authenticated", [True, False])
def test_an_asker_is_answered_at_most_once_per_interval(authenticated: bool) -> None:
    """With AES-GCM an asker asking again (its answer lost) is answered again; without it,
    a member may be a forged address, so only once per node_timeout."""
    assert ANSWER_INTERVAL < ASK_INTERVAL_MIN  # an authenticated asker asking again is always answered
    gap = ANSWER_INTERVAL if authenticated else TIMEOUT
    b = book(())
    members = [A, B, C]
    listed: list[int] = []

    def ask(now: float, who: Endpoint) -> list[PeerAction]:
        return b.message(now, ASK, who, who, members=lambda: listed.append(1) or members, budget=1000,
                         authenticated=authenticated)

    assert sends(ask(1.0, A)) != [] and len(listed) == 1
    assert ask(1.0 + gap - 0.01, A) == [] and len(listed) == 1  # again: no, and the table is not read
    assert sends(ask(1.0, B)) != []  # another asker: yes
    b.tick(1.0 + gap)  # forgets the answers given that long ago
    assert sends(ask(1.0 + gap, A)) != []
    b.clear()
    b.start(ME)
    assert sends(ask(1.01 + gap, B)) != []  # a restart forgets


def test_a_seed_is_asked_again_until_it_answers_then_never() -> None:
    b = PeerBook([SEED], True, node_timeout=TIMEOUT, ask_interval=0.5)
    b.start(ME)
    assert sends(b.node_added(1.0, "s", SEED)) == [SendTo(SEED, ASK)]
    assert b.unanswered == (SEED,) and b.next_deadline() == 1.5
    assert b.tick(1.49) == []
    assert sends(b.tick(1.5)) == [SendTo(SEED, ASK)]  # the question or its answer was lost
    assert b.next_deadline() == 2.0
    assert changed(b.message(1.7, {"peers": [list(A)]}, SEED, SEED)) == (SEED, A)
    assert b.unanswered == () and b.next_deadline() == 1.7 + TIMEOUT  # only A's trial is left
    assert sends(b.tick(2.0)) == []


def test_a_seed_that_never_answers_is_asked_ask_tries_times() -> None:
    b = PeerBook([SEED], True, node_timeout=TIMEOUT, ask_interval=0.01)  # never faster than the floor
    b.start(ME)
    asked = len(sends(b.node_added(1.0, "s", SEED)))
    now = 1.0
    for _ in range(10):
        deadline = b.next_deadline()
        if deadline is None:
            break
        assert deadline - now >= ASK_INTERVAL_MIN - 1e-9
        now = deadline
        asked += len(sends(b.tick(now)))
    assert asked == ASK_TRIES and b.unanswered == () and b.next_deadline() is None


def test_a_question_to_a_member_that_leaves_is_not_asked_again() -> None:
    b = book((SEED,))
    b.node_added(1.0, "s", A)  # the seed, from another address: asked
    assert b.unanswered == (A,)
    assert b.node_removed(1.1, "s") != [] and b.unanswered == () and b.next_deadline() is None
    b = book(())
    b.node_added(1.0, "a", A)  # found us, but we were given no destination: nothing to ask
    assert b.unanswered == ()
    b = book()
    b.node_added(1.0, "s", SEED)
    b.node_added(1.0, "x", A)  # the seed is recognised: A is not asked
    assert b.unanswered == (SEED,)
    b.node_removed(1.1, "s")
    assert b.unanswered == (SEED,)  # a given destination: still asked (it may come back)


def test_a_seed_answering_from_another_address_is_asked_where_its_packets_come_from() -> None:
    # Configured as 10.0.0.1 (an alias, NAT, a name that resolves elsewhere); it says hello from 10.0.0.2.
    b = book((SEED,))
    out = b.node_added(1.0, "s", A)
    assert sends(out) == [SendTo(A, ASK)] and changed(out) == (SEED, A)
    assert changed(b.message(1.1, {"peers": [list(B)]}, A, A)) == (SEED, A, B)
    # An answer came: nodes that find us later are learned, not asked (each would answer with everyone).
    assert sends(b.node_added(1.2, "c", C)) == []


def test_nodes_we_reached_ourselves_are_not_asked_even_before_an_answer() -> None:
    b = book((SEED,))  # the seed never answers at its own endpoint: unrecognised, no answer yet
    assert changed(b.set_registered([B])) == (SEED, B)  # a registry lists B: we send to it
    assert sends(b.node_added(1.0, "b", B)) == []  # B answered our hello: no question
    assert sends(b.node_added(1.1, "c", C)) == [SendTo(C, ASK)]  # C found us by itself: asked
    assert b.unanswered == (C,)


def test_registered_endpoints_are_destinations_while_listed() -> None:
    b = book(())
    b.node_added(1.0, "s", SEED)
    assert changed(b.set_registered([A, B, A])) == (A, B, SEED)  # given, registered, learned
    assert b.registered == (A, B) and b.set_registered([B, A]) != [] and b.set_registered([B, A]) == []
    b.node_added(1.1, "a", A)
    assert changed(b.set_registered([])) == (SEED, A)  # A stays: learned while a member
    assert b.node_removed(1.2, "a") == [DestinationsChanged((SEED,))]
    assert b.clear() == [DestinationsChanged(())] and b.registered == ()


def test_the_answer_is_split_to_fit_a_small_budget() -> None:
    members = [(f"10.0.1.{i}", 40000 + i) for i in range(10)]
    budget = 80
    out = book(()).message(1.0, ASK, SEED, SEED, members=lambda: members, budget=budget)
    assert len(out) > 1 and all(isinstance(a, SendTo) and a.endpoint == SEED for a in out)
    named = [tuple(p) for a in sends(out) for p in a.data["peers"]]
    assert named == members
    for a in sends(out):
        assert len(orjson.dumps(a.data)) <= budget


def test_a_too_long_answer_names_at_most_max_pending() -> None:
    members = [(f"10.0.{i // 256}.{i % 256}", 1) for i in range(20)]
    out = book((), max_pending=5).message(1.0, ASK, SEED, SEED, members=lambda: members, budget=10_000)
    assert [tuple(p) for a in sends(out) for p in a.data["peers"]] == members[:5]


def test_pending_is_bounded() -> None:
    b = book(max_pending=2)
    b.node_added(1.0, "s", SEED)
    out = b.message(1.0, {"peers": [list(A), list(B), list(C)]}, SEED, SEED)  # an answer is cut at the bound
    assert changed(out) == (SEED, A, B) and b.not_learned == 0
    assert b.message(1.1, {"peers": [list(C), ["10.0.0.5", 1]]}, SEED, SEED) == []  # a second part: no room
    assert b.not_learned == 2 and b.pending == (A, B)


@pytest.mark.parametrize(
    "item",
    [
        ["seed.example", 1],  # a name: never resolved from the wire
        ["10.0.0.5", 0],
        ["10.0.0.5", 65536],
        ["10.0.0.5", True],
        ["10.0.0.5", "80"],
        [10, 80],
        ["10.0.0.5"],
        "10.0.0.5:80",
        {"host": "10.0.0.5", "port": 80},
        ["fe80::1%bogus", 80],  # a zone names the sender's interface, not ours
        ["1.2.3.4%x", 80],
        ["2001:db8::1%1", 80],
        ["fe80::1", 80],  # link-local: unusable without a zone
        ["0.0.0.0", 80],
        ["::", 80],
        ["255.255.255.255", 80],
        ["240.0.0.1", 80],
        ["224.0.0.1", 80],
        ["239.255.255.250", 80],
        ["ff02::1", 80],
        ["::ffff:224.0.0.1", 80],
        ["::ffff:255.255.255.255", 80],
    ],
)
def test_endpoints_from_the_wire_must_be_ip_literals(item: Any) -> None:
    assert endpoint_from_wire(item) is None
    b = book()
    b.node_added(1.0, "s", SEED)
    assert b.message(1.0, {"peers": [item]}, SEED, SEED) == [] and b.pending == ()


def test_unicast_endpoints_from_the_wire_are_canonical() -> None:
    assert endpoint_from_wire(["2001:DB8::1", 1]) == ("2001:db8::1", 1)
    assert endpoint_from_wire(["::ffff:10.0.0.5", 1]) == ("10.0.0.5", 1)  # as the transport reports peers
    assert endpoint_from_wire(["::1", 1]) == ("::1", 1) and endpoint_from_wire(["127.0.0.1", 1]) == ("127.0.0.1", 1)
    assert endpoint_from_wire(["10.0.1.255", 1]) == ("10.0.1.255", 1)  # unicast in a /23


def test_ipv6_endpoints_are_taken_only_on_a_dual_stack_socket() -> None:
    v6 = ["2001:db8::1", 12345]
    assert endpoint_from_wire(v6) == ("2001:db8::1", 12345)
    b = book()  # started on an IPv4 address
    b.node_added(1.0, "s", SEED)
    assert b.message(1.0, {"peers": [v6]}, SEED, SEED) == []
    dual = PeerBook([SEED], True, node_timeout=TIMEOUT)
    dual.start(("::", 12345, 0, 0))
    dual.node_added(1.0, "s", SEED)
    assert changed(dual.message(1.0, {"peers": [v6]}, SEED, SEED)) == (SEED, ("2001:db8::1", 12345))


def test_messages_that_are_neither_question_nor_answer_are_ignored() -> None:
    b = book()
    b.node_added(1.0, "s", SEED)
    for data in (None, [], "peers", {"ask": "nodes"}, {"peers": "10.0.0.2"}):
        assert b.message(1.0, data, SEED, SEED, members=lambda: [A], budget=1000) == []


def test_messages_the_book_does_not_act_on_are_counted_by_reason() -> None:
    b = book(learn=False)
    b.node_added(1.0, "a", A)
    assert b.message(1.0, ["not", "an", "object"], A, A) == []
    assert b.message(1.0, {"neither": 1}, A, A) == []
    assert b.message(1.0, ASK, C, None) == []  # a stranger's question
    assert b.message(1.0, ASK, C, A) == []  # a member's id, asked from elsewhere
    assert sends(b.message(1.0, ASK, A, A, members=lambda: [A], budget=1000))  # answered: not counted
    assert b.message(1.1, ASK, A, A, members=lambda: [A], budget=1000) == []  # again too soon
    assert b.message(1.2, {"peers": [list(B)]}, A, A) == []  # an answer nobody asked for
    assert dict(b.ignored) == {"peers_malformed": 2, "peers_stranger": 2, "peers_rate_limited": 1,
                               "peers_unasked": 1}
