"""ResourceMachine on its own: explicit ``now`` values, a fake cluster, hooks answered by hand.

No loop, no sockets, no sleeps: each test feeds inputs and reads the actions back.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pydiscover.balancer import resource_machine
from pydiscover.balancer.machine import Action, Cancel, Emit, Run, Send
from pydiscover.balancer.resource_machine import ResourceMachine
from pydiscover.config import Options

HELLO = 1.0


class FakeCluster:
    """What the machine may ask of its node, set by the test."""

    def __init__(self, node_id: str, *, master: bool = False, budget: int = 1400) -> None:
        self.id = node_id
        self.is_master = master
        self.running = True
        self.options = Options(hello_interval=HELLO, node_timeout=3.0)
        self.peers: set[str] = set()
        self.budget = budget
        self.fencing_token: int | None = None

    def has_node(self, node_id: str) -> bool:
        return node_id in self.peers

    def max_payload(self, channel: str) -> int:
        return self.budget


def ids(n: int) -> dict[str, dict[str, Any]]:
    return {f"r{i}": {"id": f"r{i}"} for i in range(n)}


def sends(actions: list[Action], kind: str | None = None) -> list[dict[str, Any]]:
    out = [a.data for a in actions if isinstance(a, Send)]
    return [d for d in out if kind is None or d["type"] == kind]


def runs(actions: list[Action], hook: str) -> list[Run]:
    return [a for a in actions if isinstance(a, Run) and a.hook == hook]


def emits(actions: list[Action], event: str) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit) and a.event == event]


def machine(node_id: str, resources: dict[str, dict[str, Any]] | None, *, master: bool = False,
            budget: int = 1400, **kw: Any) -> tuple[FakeCluster, ResourceMachine]:
    cluster = FakeCluster(node_id, master=master, budget=budget)
    kw.setdefault("listen_rounds", 0)  # (listening first has a test of its own)
    return cluster, ResourceMachine(cluster, resources=resources, **kw)


def start_all(m: ResourceMachine, now: float, actions: list[Action]) -> list[Action]:
    """Answer every start in ``actions`` with a handle ``h-<id>``; returns what that caused."""
    out: list[Action] = []
    for run in runs(actions, "start"):
        out += m.hook_done(now, run.call, f"h-{run.args[0]['id']}", None)
    return out


def feed_plan(m: ResourceMachine, now: float, parts: list[dict[str, Any]], sender: str | None = None,
              ) -> list[Action]:
    """Deliver a plan's parts, sent by its master unless ``sender`` says otherwise."""
    out: list[Action] = []
    for part in parts:
        out += m.message(now, sender or part["m"], part)
    return out


def test_a_lone_master_plans_splits_under_a_small_budget_and_starts_everything() -> None:
    _, m = machine("a", ids(40), master=True, budget=120)
    actions = m.started(0.0)
    plans = sends(actions, "plan")
    assert len(plans) > 1 and all(len(orjson.dumps(p)) <= 120 for p in plans)
    assert {p["c"] for p in plans} == {len(plans)} and sorted(p["k"] for p in plans) == list(range(len(plans)))
    assert sorted(r for p in plans for r in p["r"]) == sorted(ids(40))
    assert sends(actions, "ack")[-1] == {"type": "ack", "e": 0, "m": "a"}  # applied at once
    assert sorted(r.args[0]["id"] for r in runs(actions, "start")) == sorted(ids(40))
    assert m.busy == frozenset(ids(40)) and m.owned == frozenset()
    start_all(m, 0.1, actions)
    assert m.owned == frozenset(ids(40)) and m.handles["r3"] == "h-r3" and m.stats["starts"] == 40
    # A follower given those parts adopts the same assignment.
    _, follower = machine("b", ids(40))
    feed_plan(follower, 0.2, plans, sender="a")
    assert follower.assignment == m.assignment and follower.epoch == 0


def plan_parts(epoch: int, master: str, assignment: dict[str, str], key: str = "type") -> list[dict[str, Any]]:
    by_node: dict[str, list[str]] = {}
    for rid, node in sorted(assignment.items()):
        by_node.setdefault(node, []).append(rid)
    return [{key: "plan", "e": epoch, "m": master, "k": k, "c": len(by_node), "n": node, "r": rs}
            for k, (node, rs) in enumerate(sorted(by_node.items()))]


def test_the_highest_complete_plan_is_adopted() -> None:
    _, m = machine("b", ids(2))
    m.started(0.0)
    newer = plan_parts(5, "x", {"r0": "b", "r1": "c"})
    older = plan_parts(3, "x", {"r0": "c", "r1": "b"})
    feed_plan(m, 0.1, newer[:1])  # incomplete: not adopted
    assert m.epoch == -1
    feed_plan(m, 0.2, older)
    assert m.epoch == 3 and m.assignment == {"r0": "c", "r1": "b"}
    feed_plan(m, 0.3, newer[1:])
    assert m.epoch == 5 and m.assignment == {"r0": "b", "r1": "c"}
    feed_plan(m, 0.4, plan_parts(4, "y", {"r0": "y", "r1": "y"}))  # older than what we hold
    assert m.epoch == 5


def test_a_new_owner_starts_only_after_the_old_owner_released() -> None:
    ca, a = machine("a", ids(1))
    cb, b = machine("b", ids(1))
    ca.peers, cb.peers = {"b"}, {"a"}
    a.started(0.0)
    b.started(0.0)
    first = plan_parts(1, "b", {"r0": "a"})  # b is master
    feed_plan(b, 0.1, first, sender="b")
    a.message(0.1, "b", {"type": "ack", "e": 1, "m": "b"})
    start_all(a, 0.1, feed_plan(a, 0.1, first))
    assert a.owned == {"r0"}
    move = plan_parts(2, "b", {"r0": "b"})
    out_b = feed_plan(b, 1.0, move)
    assert runs(out_b, "start") == []  # a may still run it
    out_a = feed_plan(a, 1.0, move)
    (stop,) = runs(out_a, "stop")
    assert stop.args == ("h-r0",) and sends(out_a, "ack") == []  # no ack before the stop returned
    assert runs(b.message(1.1, "a", {"type": "ack", "e": 1, "m": "b"}), "start") == []  # an older plan's ack
    out_a = a.hook_done(1.5, stop.call, None, None)
    assert a.owned == frozenset() and emits(out_a, "resourceStopped")[0].args == ({"id": "r0"},)
    (ack,) = sends(out_a, "ack")
    assert ack == {"type": "ack", "e": 2, "m": "b"}
    (start,) = runs(b.message(1.6, "a", ack), "start")
    assert start.args == ({"id": "r0"},)


def test_a_t_field_from_a_0_1_peer_is_read_too() -> None:
    cb, b = machine("b", ids(1))
    cb.peers = {"a"}
    b.started(0.0)
    b.message(0.1, "a", {"t": "ack", "e": 1, "m": "a"})
    out = feed_plan(b, 0.2, plan_parts(2, "a", {"r0": "b"}, key="t"))
    assert b.epoch == 2 and runs(out, "start") == []  # adopted; a acked only plan 1
    assert runs(b.message(0.3, "a", {"t": "ack", "e": 2, "m": "a"}), "start")


def test_close_stops_then_says_bye_and_the_bye_hands_over() -> None:
    ca, a = machine("a", ids(2))
    cb, b = machine("b", ids(2))
    ca.peers, cb.peers = {"b"}, {"a"}
    for m in (a, b):
        m.started(0.0)
    plan = plan_parts(1, "b", {"r0": "a", "r1": "b"})
    feed_plan(b, 0.1, plan)
    start_all(b, 0.1, b.message(0.1, "a", {"type": "ack", "e": 1, "m": "b"}))
    a.message(0.1, "b", {"type": "ack", "e": 1, "m": "b"})
    start_all(a, 0.1, feed_plan(a, 0.1, plan))
    assert a.owned == {"r0"} and b.owned == {"r1"}
    # b plans a's share onto itself, but a has not released it.
    assert runs(feed_plan(b, 1.0, plan_parts(2, "b", {"r0": "b", "r1": "b"})), "start") == []
    out = a.close(1.1)
    assert a.closed and sends(out, "bye") == []
    (stop,) = runs(out, "stop")
    assert a.close_waits_for() == {stop.call}
    a.hook_done(1.2, stop.call, None, None)
    assert a.owned == frozenset() and a.close_waits_for() == frozenset()
    (bye,) = sends(a.close_finished(1.3, False), "bye")
    assert bye["type"] == "bye"
    (start,) = runs(b.message(1.4, "a", bye), "start")
    assert start.args == ({"id": "r0"},)
    assert a.message(1.5, "b", {"type": "ack", "e": 9, "m": "b"}) == [] and a.next_deadline() is None


def test_a_start_ending_during_close_is_stopped_before_the_bye() -> None:
    _, m = machine("a", ids(1), master=True)
    (start,) = runs(m.started(0.0), "start")
    m.close(0.1)
    assert m.close_waits_for() == {start.call}
    out = m.hook_done(0.2, start.call, "h", None)
    assert emits(out, "resourceStarted") and m.owned == {"r0"}
    (stop,) = runs(out, "stop")
    assert sends(m.close_finished(0.3, False)) == []  # the stop still runs: no bye yet
    out = m.hook_done(0.4, stop.call, None, None)
    assert m.owned == frozenset() and [d["type"] for d in sends(out)] == ["bye"]


def test_close_cancels_health_checks_and_refreshes_in_flight() -> None:
    _, m = machine("a", None, master=True, refresh_interval=10.0)
    (refresh,) = runs(m.started(0.0), "resources")
    out = m.close(0.5)
    assert out == [Cancel(refresh.call)] and m.close_waits_for() == frozenset()
    assert m.hook_done(0.6, refresh.call, [{"id": "x"}], None) == []


def test_master_failover_moves_nothing() -> None:
    names = ["a", "b", "c"]
    clusters = {n: FakeCluster(n, master=(n == "c")) for n in names}
    ms = {n: ResourceMachine(clusters[n], resources=ids(12)) for n in names}
    for n in names:
        clusters[n].peers = set(names) - {n}
    for n in names:  # everyone hears everyone's presence
        for other in names:
            if other != n:
                ms[n].message(0.0, other, {"type": "ack", "e": -1, "m": ""})
    plans = sends(ms["c"].started(0.0), "plan")
    assert set(ms["c"].assignment.values()) == set(names)
    for n in "ab":
        feed_plan(ms[n], 0.1, plans, sender="c")
    before = ms["b"].assignment
    clusters["c"].is_master, clusters["b"].is_master = False, True
    ms["b"].promoted(1.0)
    out = ms["b"].tick(1.0 + HELLO / 4)
    assert ms["b"].epoch == 1 and ms["b"].assignment == before  # a new plan, the same owners
    assert runs(out, "stop") == []


def test_a_failed_start_is_retried_after_retry_delay() -> None:
    _, m = machine("a", ids(1), master=True, retry_delay=0.5)
    (start,) = runs(m.started(0.0), "start")
    out = m.hook_done(0.1, start.call, None, RuntimeError("boom"))
    (failed,) = emits(out, "resourceFailed")
    assert failed.args[0] == {"id": "r0"} and str(failed.args[1]) == "boom" and m.stats["failures"] == 1
    assert m.next_deadline() == pytest.approx(0.6)
    assert runs(m.tick(0.3), "start") == []
    assert runs(m.tick(0.6), "start")


def test_an_unhealthy_resource_is_stopped_and_restarted() -> None:
    _, m = machine("a", ids(1), master=True, has_healthcheck=True, health_interval=2.0, retry_delay=0.5)
    start_all(m, 0.0, m.started(0.0))
    assert m.next_deadline() == 1.0  # the round comes first
    m.tick(1.0)
    (check,) = runs(m.tick(2.0), "healthcheck")
    assert check.args == ("h-r0",) and m.next_deadline() == 3.0  # no new health round while one runs
    out = m.hook_done(2.1, check.call, None, RuntimeError("sick"))
    (stop,) = runs(out, "stop")
    out = m.hook_done(2.2, stop.call, None, None)
    assert emits(out, "resourceStopped") and emits(out, "resourceFailed") and runs(out, "start") == []
    assert m.owned == frozenset() and m.stats["stops"] == 1
    assert runs(m.tick(2.7), "start")


def test_an_id_too_long_for_a_plan_part_is_refused() -> None:
    long_id = "x" * 200
    with pytest.raises(ValueError, match=f"{long_id}.*budget 150"):
        machine("a", {long_id: {"id": long_id}}, budget=150)
    _, m = machine("a", None, master=True, budget=150)
    (refresh,) = runs(m.started(0.0), "resources")
    out = m.hook_done(0.1, refresh.call, [{"id": "ok"}, {"id": long_id}], None)
    (error,) = emits(out, "error")
    assert isinstance(error.args[0], ValueError) and long_id in str(error.args[0])
    assert m.assignment == {"ok": "a"} and [r.args[0]["id"] for r in runs(out, "start")] == ["ok"]


def test_a_budget_change_recuts_the_plan() -> None:
    cluster, m = machine("a", ids(30), master=True, budget=1400)
    out = m.started(0.0)
    start_all(m, 0.0, out)
    assert len(sends(out, "plan")) == 1
    cluster.budget = 150  # e.g. set_key to node-discover's cipher
    out = m.tick(HELLO)
    plans = [p for p in sends(out, "plan") if p["e"] == 1]
    assert len(plans) > 1 and all(len(orjson.dumps(p)) <= 150 for p in plans)
    assert sorted(r for p in plans for r in p["r"]) == sorted(ids(30))
    assert m.epoch == 1 and runs(out, "stop") == [] and m.owned == frozenset(ids(30))
    assert [p["e"] for p in sends(m.tick(2 * HELLO), "plan")] == [1] * len(plans)  # repeated, not re-cut


def test_resources_are_read_at_start_and_every_refresh_interval() -> None:
    _, m = machine("a", None, master=True, refresh_interval=2.5)
    (read,) = runs(m.started(0.0), "resources")
    assert runs(m.tick(1.0), "resources") == []  # one read at a time
    out = m.hook_done(1.1, read.call, [{"id": "a1"}], None)
    assert [r.args for r in runs(out, "start")] == [({"id": "a1"},)]
    assert runs(m.tick(2.0), "resources") == [] and runs(m.tick(4.0), "resources")


def test_the_machine_is_deterministic() -> None:
    def trace() -> list[Action]:
        _, m = machine("a", ids(20), master=True, budget=200, has_healthcheck=True, health_interval=1.5)
        out = m.started(0.0)
        out += start_all(m, 0.1, out)
        for now in (1.0, 1.5, 2.0):
            out += m.tick(now)
        out += m.message(2.1, "b", {"type": "ack", "e": 0, "m": "a"})
        return out

    assert trace() == trace()


def test_a_newcomer_listens_first_and_waits_for_a_closing_manager_it_was_never_told_about() -> None:
    """The gap the simulator found: a closing manager is named by no plan a newcomer adopts."""
    ca, a = machine("a", ids(1))
    ca.peers = {"m"}
    start_all(a, 0.0, a.started(0.0))
    a.message(0.1, "m", {"type": "ack", "e": 1, "m": "m"})
    start_all(a, 0.1, feed_plan(a, 0.1, plan_parts(1, "m", {"r0": "a"})))
    assert a.owned == {"r0"}
    (stop,) = runs(a.close(1.0), "stop")  # a slow stop: a keeps saying it is closing meanwhile
    assert a.next_deadline() == 1.0
    (presence,) = sends(a.tick(1.0), "ack")
    assert presence == {"type": "ack", "e": 1, "m": "m", "closing": True}
    assert a.next_deadline() == 1.0 + HELLO

    cn, n = machine("n", ids(1), listen_rounds=2)
    cn.peers = {"a", "m"}
    n.started(1.5)
    move = plan_parts(2, "m", {"r0": "n"})  # the master plans without the closing a
    n.message(1.55, "m", {"type": "ack", "e": 2, "m": "m"})
    assert runs(feed_plan(n, 1.6, move), "start") == []  # listening: it has not heard everyone yet
    n.message(2.0, "a", presence)  # heard within its first rounds
    assert runs(n.tick(3.5), "start") == []  # a may still run r0
    bye = sends(a.hook_done(4.0, stop.call, None, None) + a.close_finished(4.0, False), "bye")
    assert bye and a.next_deadline() is None  # no more presence after the bye
    (start,) = runs(n.message(4.1, "a", bye[0]), "start")
    assert start.args == ({"id": "r0"},)


def test_a_master_plans_without_a_closing_manager_at_once() -> None:
    cm, m = machine("m", ids(4), master=True)
    cm.peers = {"a"}
    m.started(0.0)
    m.message(0.1, "a", {"type": "ack", "e": -1, "m": ""})
    m.tick(0.5)  # the debounced replan
    assert set(m.assignment.values()) == {"m", "a"}
    m.message(0.6, "a", {"type": "ack", "e": m.epoch, "m": "m", "closing": True})
    m.tick(1.0)
    assert set(m.assignment.values()) == {"m"}


def test_a_master_outnumbered_by_a_plan_it_never_saw_plans_above_it() -> None:
    """After a partition heals, the other side's demoted master holds a higher plan and ignores ours."""
    cm, m = machine("m", ids(2), master=True)
    cm.peers = {"x"}
    m.started(0.0)
    m.message(0.1, "x", {"type": "ack", "e": -1, "m": ""})
    m.tick(0.5)
    ours = m.epoch
    assert ours >= 0
    m.message(1.0, "x", {"type": "ack", "e": ours + 3, "m": "x"})  # applied on the other side
    plans = sends(m.tick(1.5), "plan")
    assert m.epoch == ours + 4 and plans and {p["e"] for p in plans} == {ours + 4}


# ------------------------------------------------------------ fenced ownership (issue 17)
def ready(m: ResourceMachine, now: float) -> tuple[float, list[Action]]:
    """The lease is good: the master plans with this node at its next round; what that asks."""
    actions = m.fence_ready(now)
    deadline = m.next_deadline()
    assert deadline is not None
    return deadline, actions + m.tick(deadline)


def test_a_fenced_resource_starts_only_with_its_owner_key_and_gives_it_back_once_stopped() -> None:
    _, m = machine("a", ids(2), master=True, fenced=True)
    assert runs(m.started(0.0), "acquire") == []  # no lease yet: nothing is acquired (nor planned here)
    now, actions = ready(m, 0.0)
    assert runs(actions, "start") == [] and sorted(r.args[0] for r in runs(actions, "acquire")) == ["r0", "r1"]
    acquire = {r.args[0]: r for r in runs(actions, "acquire")}
    # r0's key is still held by its previous owner: tried again later; r1's is ours (token 7).
    assert runs(m.hook_done(now, acquire["r0"].call, None, None), "start") == []
    started = m.hook_done(now, acquire["r1"].call, 7, None)
    assert [r.args[0]["id"] for r in runs(started, "start")] == ["r1"] and m.token("r1") == 7
    start_all(m, now, started)
    assert m.owned == {"r1"} and m.token("r1") == 7 and m.token("r0") is None
    again = runs(m.tick(now + 0.26), "acquire")
    assert [r.args[0] for r in again] == ["r0"]
    start_all(m, now + 0.3, m.hook_done(now + 0.3, again[0].call, 9, None))
    assert m.owned == {"r0", "r1"} and m.token("r0") == 9
    # The lease lapses: everything stops at once, and each key is given back once its stop ended.
    lost = m.fence_lost(1.0)
    assert {"type": "ack", "e": m.epoch, "m": "a", "unfenced": True} in sends(lost)  # plan without me
    stops = runs(lost, "stop")
    assert sorted(r.args[0] for r in stops) == ["h-r0", "h-r1"]
    released: list[Run] = []
    for stop in stops:
        released += runs(m.hook_done(1.1, stop.call, None, None), "release")
    assert sorted(tuple(r.args) for r in released) == [("r0", 9), ("r1", 7)]
    assert m.owned == frozenset() and m.token("r0") is None
    assert runs(m.tick(2.0), "acquire") == []  # nothing is started without the lease
    _, back = ready(m, 3.0)
    assert runs(back, "acquire") == []  # not before our own releases are through (no token reused)
    again2: list[Run] = []
    for release in released:
        again2 += runs(m.hook_done(3.5, release.call, None, None), "acquire")
    assert sorted(r.args[0] for r in again2) == ["r0", "r1"]


def test_a_cancelled_acquire_is_given_back_and_close_waits_for_it() -> None:
    from pydiscover.balancer.machine import Cancelled

    _, m = machine("a", ids(1), master=True, fenced=True)
    m.started(0.0)
    now, actions = ready(m, 0.0)
    acquire = runs(actions, "acquire")[0]
    m.close(now + 0.1)
    assert acquire.call in m.close_waits_for()
    back = m.hook_done(now + 0.2, acquire.call, None, Cancelled())
    assert [tuple(r.args) for r in runs(back, "release")] == [("r0", None)]  # whatever holds our id


def test_a_fenced_start_ending_after_the_lease_lapsed_is_stopped_at_once() -> None:
    _, m = machine("a", ids(1), master=True, fenced=True)
    m.started(0.0)
    now, actions = ready(m, 0.0)
    start = runs(m.hook_done(now, runs(actions, "acquire")[0].call, 3, None), "start")[0]
    assert runs(m.fence_lost(now + 0.1), "stop") == []  # the start is in flight
    after = m.hook_done(now + 0.2, start.call, "h-r0", None)
    assert [r.args[0] for r in runs(after, "stop")] == ["h-r0"]


def test_an_owner_key_granted_too_late_is_given_back() -> None:
    _, m = machine("a", ids(1), master=True, fenced=True)
    m.started(0.0)
    now, actions = ready(m, 0.0)
    m.fence_lost(now + 0.1)
    late = m.hook_done(now + 0.2, runs(actions, "acquire")[0].call, 5, None)
    assert runs(late, "start") == [] and [tuple(r.args) for r in runs(late, "release")] == [("r0", 5)]


def test_the_master_plans_without_a_node_that_has_no_lease() -> None:
    _, m = machine("a", ids(4), master=True, fenced=True)
    m.started(0.0)
    ready(m, 0.0)
    m.cluster.peers.add("b")  # type: ignore[attr-defined]
    m.message(1.0, "b", {"type": "ack", "e": -1, "m": ""})
    m.tick(m.next_deadline() or 1.5)
    assert set(m.assignment.values()) == {"a", "b"}
    m.message(2.0, "b", {"type": "ack", "e": m.epoch, "m": "a", "unfenced": True})
    m.tick(m.next_deadline() or 2.5)
    assert set(m.assignment.values()) == {"a"}


# ---------------------------------------------------- run-time changes and capacity (issue 21)
def trio(n: int = 3, *, caps: dict[str, int] | None = None
         ) -> tuple[dict[str, FakeCluster], dict[str, ResourceMachine]]:
    """Managers a (master), b, c over ``r0..r<n-1>``, each having heard the others' presence."""
    names = "abc"
    clusters = {x: FakeCluster(x, master=(x == "a")) for x in names}
    ms = {x: ResourceMachine(clusters[x], resources=ids(n), listen_rounds=0, capacity=(caps or {}).get(x, 1))
          for x in names}
    for x in names:
        clusters[x].peers = set(names) - {x}
    for x in names:
        out = ms[x].started(0.0)
        deliver(ms, x, 0.0, out + start_all(ms[x], 0.0, out))
    return clusters, ms


def deliver(ms: dict[str, ResourceMachine], sender: str, now: float, actions: list[Action]) -> list[Action]:
    """Broadcast ``sender``'s sends to the others, then what those cause, until quiet (stops and starts
    answered at once); returns every action."""
    out = list(actions)
    queue = [(sender, d) for d in sends(actions)]
    for _ in range(10_000):
        if not queue:
            return out
        src, data = queue.pop(0)
        for name, m in ms.items():
            if name != src:
                caused = m.message(now, src, data)
                for run in runs(caused, "stop"):
                    caused += m.hook_done(now, run.call, None, None)
                caused += start_all(m, now, caused)
                out += caused
                queue += [(name, d) for d in sends(caused)]
    raise AssertionError("messages never settled")


def settle(ms: dict[str, ResourceMachine], start: float, until: float, step: float = 0.05) -> None:
    """Tick everyone every ``step`` and deliver what they say; answer starts and stops at once."""
    now = start
    while now <= until:
        for name, m in ms.items():
            out = m.tick(now)
            for run in runs(out, "stop"):
                out += m.hook_done(now, run.call, None, None)
            out += start_all(m, now, out)
            deliver(ms, name, now, out)
        now = round(now + step, 6)


def owners(ms: dict[str, ResourceMachine]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, m in ms.items():
        for rid in m.owned:
            out.setdefault(rid, []).append(name)
    return out


def test_an_add_on_a_non_master_starts_on_exactly_one_node_at_once() -> None:
    _, ms = trio(6)
    settle(ms, 0.0, 2.0)
    assert sorted(owners(ms)) == sorted(ids(6)) and all(len(o) == 1 for o in owners(ms).values())
    version, out = ms["b"].add(2.01, {"id": "extra", "url": "x"}, 5)
    assert version == (5, "b")  # at least the wall-clock stamp
    (change,) = sends(out, "change")
    assert change["x"] == [["extra", version[0], "b", {"id": "extra", "url": "x"}]]
    assert emits(out, "resourceAdded")[0].args == ({"id": "extra", "url": "x"},) and ms["b"].stats["added"] == 1
    assert ms["b"].unconfirmed == {"extra"}
    deliver(ms, "b", 2.01, out)
    assert all("extra" in m.resources for m in ms.values()) and ms["c"].stats["added"] == 1
    assert ms["a"].next_deadline() == 2.01  # the master shows the overlay and plans at the end of this turn
    settle(ms, 2.01, 2.02, step=0.01)
    assert owners(ms)["extra"] in (["a"], ["b"], ["c"])  # started within the same turn's messages
    assert ms["b"].unconfirmed == frozenset()  # the master's overlay shows it


def test_a_remove_stops_the_resource_at_once_and_it_never_starts_again() -> None:
    _, ms = trio(6)
    settle(ms, 0.0, 2.0)
    owner = owners(ms)["r2"][0]
    other = next(x for x in "bc" if x != owner)
    _, out = ms[other].remove(2.01, "r2")
    caused = deliver(ms, other, 2.01, out)
    stops = [r for r in runs(caused, "stop") if r.args == ("h-r2",)]
    assert len(stops) == 1  # its owner stops it on hearing the change, before any plan
    assert {x for x, m in ms.items() if m.stats["removed"] == 1} == {"a", "b", "c"}
    settle(ms, 2.02, 8.0)
    assert "r2" not in owners(ms) and all("r2" not in m.assignment for m in ms.values())
    assert sorted(owners(ms)) == sorted(set(ids(6)) - {"r2"})
    # An old plan that still names it cannot restart it: the node's own overlay says removed.
    node = owners(ms)["r0"][0]
    stale = plan_parts(ms[node].epoch + 5, "zz", {**ms[node].assignment, "r2": node})
    assert all(r.args[0]["id"] != "r2" for r in runs(feed_plan(ms[node], 9.0, stale, sender="zz"), "start"))


def test_changes_made_without_a_master_reach_the_next_one() -> None:
    clusters, ms = trio(3)
    settle(ms, 0.0, 2.0)
    clusters["a"].is_master = False  # the master is gone (election in progress): nobody confirms
    del ms["a"]
    for x in "bc":
        clusters[x].peers.discard("a")
    out = ms["b"].add(2.1, {"id": "late"}, 0)[1]
    # c missed the broadcast (lost); b repeats it every round while no master's overlay is heard.
    assert sends(out, "change")
    repeats = [sends(ms["b"].tick(t), "change") for t in (4.0, 5.0)]
    assert all(r and r[0]["x"][0][0] == "late" for r in repeats)
    clusters["c"].is_master = True  # c is elected; it never heard the change
    promoted = ms["c"].promoted(5.5)
    promoted += ms["c"].tick(5.5)
    overlay = sends(promoted, "overlay")[0]
    assert overlay["x"] == [] and overlay["c"] == 1
    answer = ms["b"].message(5.5, "c", overlay)  # b compares: c lacks "late"
    (change,) = sends(answer, "change")
    ms["c"].message(5.5, "b", change)
    assert "late" in ms["c"].resources
    settle(ms, 5.5, 9.0)
    assert sorted(owners(ms)) == ["late", "r0", "r1", "r2"] and ms["b"].unconfirmed == frozenset()


def test_the_later_change_of_one_id_wins_whatever_the_order_of_arrival() -> None:
    _, ms = trio(2)
    settle(ms, 0.0, 1.0)
    (v1, out1) = ms["b"].add(1.1, {"id": "x", "n": 1}, 1000)
    (v2, out2) = ms["c"].remove(1.1, "x", 2000)
    assert v2 > v1
    for first, second in ((out1, out2), (out2, out1)):
        _, m = machine("d", ids(2))
        for actions in (first, second):
            for data in sends(actions):
                m.message(1.2, "b", data)
        assert "x" not in m.resources and m.changes["x"] == (v2, None)
    # A change made after hearing another has a higher clock, even with a wall clock behind.
    _, m = machine("e", ids(2))
    m.message(1.2, "b", sends(out2)[0])
    assert m.add(1.3, {"id": "x"}, 0)[0] > v2


def test_the_overlay_wins_over_the_base_set_from_a_callable() -> None:
    _, m = machine("a", None, master=True, refresh_interval=1.0)
    (read,) = runs(m.started(0.0), "resources")
    m.hook_done(0.1, read.call, [{"id": "base1"}, {"id": "base2"}], None)
    m.remove(0.2, "base1")
    m.add(0.2, {"id": "extra"})
    assert sorted(m.resources) == ["base2", "extra"]
    (read,) = runs(m.tick(1.2), "resources")
    m.hook_done(1.3, read.call, [{"id": "base1"}, {"id": "base3"}], None)  # base2 gone, base1 reported again
    assert sorted(m.resources) == ["base3", "extra"]  # base1 stays removed: the run-time change wins


def test_add_refuses_what_cannot_travel() -> None:
    from pydiscover.errors import PacketTooLarge

    _, m = machine("a", ids(1), master=True, budget=300)
    with pytest.raises(PacketTooLarge, match="extra"):
        m.add(0.0, {"id": "extra", "blob": "y" * 400})
    with pytest.raises(ValueError, match="id"):
        m.add(0.0, {"name": "no id"})
    with pytest.raises(TypeError):
        m.add(0.0, {"id": "x", "when": object()})
    m.close(0.1)
    with pytest.raises(RuntimeError, match="closed"):
        m.remove(0.2, "r0")


def test_capacity_travels_in_acks_and_shares_follow_it() -> None:
    _, ms = trio(8, caps={"a": 1, "b": 2, "c": 1})
    settle(ms, 0.0, 2.0)
    assert sorted(len(m.owned) for m in ms.values()) == [2, 2, 4] and len(ms["b"].owned) == 4
    assert {"type": "ack", "e": ms["b"].epoch, "m": "a", "cap": 2} in sends(ms["b"].tick(3.0), "ack")
    assert all("cap" not in d for d in sends(ms["c"].tick(3.0), "ack"))  # capacity 1 says nothing (as 0.2)
    before = {x: set(m.owned) for x, m in ms.items()}
    out = ms["c"].set_capacity(3.1, 0)  # drain c
    assert sends(out, "ack")[0]["cap"] == 0
    deliver(ms, "c", 3.1, out)
    settle(ms, 3.1, 6.0)
    assert ms["c"].owned == frozenset() and len(ms["b"].owned) == 5 and len(ms["a"].owned) == 3
    assert before["a"] <= ms["a"].owned and before["b"] <= ms["b"].owned  # only c's resources moved
    assert sorted(owners(ms)) == sorted(ids(8)) and all(len(o) == 1 for o in owners(ms).values())


def test_capacity_zero_everywhere_stops_everything() -> None:
    _, ms = trio(3)
    settle(ms, 0.0, 2.0)
    for x in "abc":
        deliver(ms, x, 2.1, ms[x].set_capacity(2.1, 0))
    settle(ms, 2.1, 4.0)
    assert owners(ms) == {} and all(m.assignment == {} for m in ms.values())
    deliver(ms, "b", 4.1, ms["b"].set_capacity(4.1, 1))
    settle(ms, 4.1, 6.0)
    assert sorted(ms["b"].owned) == sorted(ids(3))


def test_with_a_coordinator_an_added_resource_starts_under_its_owner_key_and_a_removed_one_gives_it_back() -> None:
    _, m = machine("a", {}, master=True, fenced=True)
    m.started(0.0)
    now, _ = ready(m, 0.0)
    _, out = m.add(now, {"id": "extra"})
    out += m.tick(now)  # the master plans at the end of the turn
    (acquire,) = runs(out, "acquire")
    assert acquire.args == ("extra",) and runs(out, "start") == []
    start_all(m, now, m.hook_done(now, acquire.call, 11, None))
    assert m.owned == {"extra"} and m.token("extra") == 11
    _, out = m.remove(now + 0.1, "extra")
    (stop,) = runs(out, "stop")
    (release,) = runs(m.hook_done(now + 0.2, stop.call, None, None), "release")
    assert release.args == ("extra", 11) and m.owned == frozenset() and m.token("extra") is None
    assert runs(m.tick(now + 5.0), "acquire") == []


def test_a_run_time_change_nested_deeper_than_json_can_be_written_again_is_ignored() -> None:
    from pydiscover.balancer.overlay import parse_entry

    deep: object = "leaf"
    for _ in range(300):  # orjson reads up to 1,024 levels but writes only 254
        deep = [deep]
    assert parse_entry(["ok", 5, "n1", {"id": "ok", "x": [[1]]}]) == ("ok", (5, "n1", {"id": "ok", "x": [[1]]}))
    assert parse_entry(["deep", 5, "n1", {"id": "deep", "x": deep}]) is None  # the master could not repeat it


def test_departed_managers_are_forgotten_once_no_plan_names_them() -> None:
    """Hours of churn (the soak restarts a node every 10 s) must not grow the machine: a manager
    that left, by bye or by timeout, is remembered while a plan may still name it, then forgotten."""
    cluster, m = machine("m", ids(4), master=True)
    cluster.peers = {"stay"}
    now = 0.0
    m.started(now)
    for n in range(40):
        other = f"w{n}"
        cluster.peers.add(other)
        for who in ("stay", other):
            m.message(now, who, {"type": "ack", "e": m.epoch, "m": "m", "cap": 2, "closing": n % 3 == 0})
        now += HELLO
        m.tick(now)
        assert other in m.assignment.values() or n % 3 == 0  # planned with it (unless it was closing)
        cluster.peers.discard(other)
        if n % 2:
            m.message(now, other, {"type": "bye", "e": m.epoch, "m": "m"})
        else:
            m.node_removed(now, other)
        now += HELLO
        m.tick(now)
    assert 2 <= m.remembered <= 1 + 40
    horizon = now + resource_machine.FORGET_AFTER_TIMEOUTS * cluster.options.node_timeout
    while now < horizon + 2 * HELLO:
        m.message(now, "stay", {"type": "ack", "e": m.epoch, "m": "m"})
        now += HELLO
        m.tick(now)
    assert m.remembered == 1  # "stay" only
    assert set(m.assignment.values()) == {"m", "stay"}


def test_past_the_horizon_a_manager_named_by_the_held_plan_or_on_a_live_node_is_still_remembered() -> None:
    """What forgetting must not touch: a departed manager that the plan this node holds still
    names (``_released`` reads it until a plan without it comes), and a manager that closed on
    a node that is still in the table."""
    mc, master = machine("m", ids(6), master=True)
    ac, a = machine("a", ids(6))
    mc.peers, ac.peers = {"a", "x", "b"}, {"m", "x", "b"}
    master.started(0.0)
    a.started(0.0)
    for who in ("a", "x"):
        master.message(0.0, who, {"type": "ack", "e": -1, "m": ""})
    master.message(0.0, "b", {"type": "ack", "e": -1, "m": "", "cap": 0})  # b runs nothing: no plan names it
    plan = sends(master.tick(HELLO), "plan")
    assert set(master.assignment.values()) == {"m", "a", "x"}
    feed_plan(a, HELLO, plan)
    assert a.assignment == master.assignment
    ac.peers.discard("x")
    a.node_removed(HELLO, "x")  # x left; the master has not planned again yet (its plan still names x)
    a.message(HELLO, "b", {"type": "bye", "e": a.epoch, "m": "m"})  # b's manager closed, its node lives on
    now = HELLO
    horizon = now + resource_machine.FORGET_AFTER_TIMEOUTS * ac.options.node_timeout
    while now < horizon + 2 * HELLO:
        now += HELLO
        a.message(now, "m", {"type": "ack", "e": a.epoch, "m": "m"})
        a.tick(now)
    assert a.remembered == 3  # m (present), x (named by the plan held), b (closed on a live node)
    ac.peers.discard("b")
    for _ in range(3):
        now += HELLO
        a.message(now, "m", {"type": "ack", "e": a.epoch, "m": "m"})
        a.tick(now)
    assert a.remembered == 2  # b's node gone too: forgotten (x is still named: no new plan came)
