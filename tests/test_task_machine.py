"""TaskMachine on its own: a fake cluster, explicit ``now`` values, no loop, no sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from pydiscover.balancer.assignment import rendezvous
from pydiscover.balancer.machine import Action, Assigned, Cancel, Outbox, Run, Send, Settle
from pydiscover.balancer.task_machine import MAX_ERROR_TEXT, TaskError, TaskInfo, TaskMachine
from pydiscover.config import Options
from pydiscover.errors import PacketTooLarge

ME = "master"
TIMING = replace(Options(), hello_interval=1.0, node_timeout=3.0)


@dataclass
class FakeCluster:
    """What a TaskMachine may ask of its node; every answer is set by the test."""

    id: str = ME
    is_master: bool = True
    running: bool = True
    options: Options = TIMING
    nodes: set[str] = field(default_factory=set)
    budget: int = 1300
    fencing_token: int | None = None

    def has_node(self, node_id: str) -> bool:
        return node_id in self.nodes

    def max_payload(self, channel: str) -> int:
        return self.budget


def machine(strategy: str = "round_robin", workers: tuple[str, ...] = (), *, now: float = 0.0,
            me: str = ME) -> tuple[TaskMachine, FakeCluster]:
    """A running machine that has heard ``workers`` announce at ``now``."""
    cluster = FakeCluster(id=me, nodes=set(workers))
    m = TaskMachine(cluster, strategy=strategy, rng=random.Random(1))
    m.started(now)
    for w in workers:
        m.message(now, w, {"type": "worker"})
    return m, cluster


def sent(actions: list[Action], kind: str = "task") -> list[dict[str, Any]]:
    return [a.data for a in actions if isinstance(a, Send) and isinstance(a.data, dict) and a.data["type"] == kind]


def runs(actions: list[Action]) -> list[Run]:
    return [a for a in actions if isinstance(a, Run)]


def settled(actions: list[Action]) -> list[Settle]:
    return [a for a in actions if isinstance(a, Settle)]


def result(task: dict[str, Any], value: Any = None, *, ok: bool = True, error: str = "") -> dict[str, Any]:
    """The answer the task's worker would send."""
    answer = {"type": "result", "id": task["id"], "to": task["from"], "from": task["to"], "attempt": task["attempt"],
              "ok": ok}
    answer.update({"value": value} if ok else {"error": error})
    return answer


def submit(m: TaskMachine, now: float, payload: Any = 1, *, timeout: float = 10.0, attempts: int = 3,
           key: bytes | None = None) -> tuple[int, list[Action]]:
    return m.submit(now, payload, timeout, attempts, key)


# ------------------------------------------------------------ strategies
def test_round_robin_takes_the_workers_in_id_order() -> None:
    m, _ = machine(workers=("w3", "w1", "w2"))
    order = [sent(submit(m, 0.0)[1])[0]["to"] for _ in range(6)]
    assert order == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_random_is_the_rng_s_choice_and_reproducible() -> None:
    picks = []
    for _ in range(2):
        m, _ = machine("random", ("a", "b", "c"))
        picks.append([sent(submit(m, 0.0)[1])[0]["to"] for _ in range(30)])
    assert picks[0] == picks[1] and set(picks[0]) == {"a", "b", "c"}


def test_least_loaded_picks_the_fewest_in_flight_then_the_least_recent() -> None:
    m, _ = machine("least_loaded", ("a", "b", "c"))
    tasks = [sent(submit(m, 0.0)[1])[0] for _ in range(3)]
    assert [t["to"] for t in tasks] == ["a", "b", "c"] and m.inflight == {"a": 1, "b": 1, "c": 1}
    m.message(0.1, "b", result(tasks[1], 0))
    assert sent(submit(m, 0.2)[1])[0]["to"] == "b"  # the only one with nothing in flight
    m.message(0.3, "a", result(tasks[0], 0))
    m.message(0.3, "c", result(tasks[2], 0))
    assert sent(submit(m, 0.4)[1])[0]["to"] == "a"  # a and c idle: a was picked longer ago


def test_hash_goes_to_the_highest_rendezvous_score_and_only_a_leaver_s_keys_move() -> None:
    workers = ("a", "b", "c")
    m, cluster = machine("hash", workers)
    keys = [f"k{i}".encode() for i in range(20)]
    first = {k: sent(submit(m, 0.0, key=k)[1])[0]["to"] for k in keys}
    assert first == {k: max(workers, key=lambda w: rendezvous(k, w)) for k in keys}
    cluster.nodes.discard("b")
    m.node_removed(0.1, "b")
    second = {k: sent(submit(m, 0.2, key=k)[1])[0]["to"] for k in keys}
    assert {k: w for k, w in second.items() if first[k] != "b"} == {k: w for k, w in first.items() if w != "b"}
    assert "b" not in second.values()


# ---------------------------------------------------------- reassignment
def test_a_retry_prefers_a_worker_not_tried_and_the_attempt_shows() -> None:
    m, _ = machine(workers=("a", "b"))
    task_id, actions = submit(m, 0.0, timeout=1.0)
    assert Assigned(task_id, 1) in actions and sent(actions)[0]["to"] == "a"
    assert m.next_deadline() == 1.0
    assert m.tick(0.99) == []
    retry = m.tick(1.0)
    again = sent(retry)[0]
    assert Assigned(task_id, 2) in retry and (again["to"], again["attempt"]) == ("b", 2)
    assert m.stats["reassigned"] == 1
    m.message(1.5, "b", result(again, 42))
    assert m.inflight == {} and m.pending == 0


def test_attempts_used_up_settle_with_timeout_error() -> None:
    m, _ = machine(workers=("a",))
    task_id, _ = submit(m, 0.0, timeout=1.0, attempts=2)
    assert [t["attempt"] for t in sent(m.tick(1.0))] == [2]  # only one worker: it gets the retry too
    [end] = settled(m.tick(2.0))
    assert end.task_id == task_id and end.outcome == "timed_out" and isinstance(end.error, TimeoutError)
    assert "gave up after 2 attempt(s)" in str(end.error)
    assert m.stats["timed_out"] == 1 and m.pending == 0 and m.inflight == {}
    assert m.tick(3.0) == []


def test_a_leaving_or_bye_worker_s_task_moves_at_once() -> None:
    m, cluster = machine(workers=("a", "b", "c"))
    first = sent(submit(m, 0.0)[1])[0]
    cluster.nodes.discard("a")
    moved = sent(m.node_removed(0.1, "a"))[0]
    assert (moved["to"], moved["attempt"]) == ("b", 2)
    moved = sent(m.message(0.2, "b", {"type": "bye"}))[0]
    assert (moved["to"], moved["attempt"]) == ("c", 3)
    assert first["id"] == moved["id"]
    assert m.live_workers(0.2) == ["c"]


def test_with_no_worker_a_task_waits_then_times_out() -> None:
    m, cluster = machine()
    waiting, actions = submit(m, 0.0, timeout=5.0)
    lonely, _ = submit(m, 1.0, timeout=1.0)
    assert actions == [] and m.next_deadline() == 1.0  # the round; lonely's timer at 2.0, waiting's at 5.0
    m.tick(1.0)
    assert m.next_deadline() == 2.0
    [end] = settled(m.tick(2.0))
    assert end.task_id == lonely and "no live worker on channel 'tasks' for 1s" in str(end.error)
    cluster.nodes.add("w")
    task = sent(m.message(3.0, "w", {"type": "worker"}))[0]  # a worker appears: the waiting task goes
    assert (task["id"], task["to"], task["attempt"]) == (waiting, "w", 1)
    assert settled(m.message(3.5, "w", result(task, 9))) == [Settle(waiting, 9, None, "w", "completed")]
    assert m.stats["timed_out"] == 1 and m.stats["completed"] == 1


def test_a_stale_worker_is_no_longer_live() -> None:
    m, _ = machine(workers=("a",))
    assert m.live_workers(3.0) == ["a"]
    assert m.live_workers(3.01) == []  # its last announcement is older than node_timeout


# ---------------------------------------------------------- duplicates
def test_a_late_result_after_reassignment_settles_nothing_and_is_counted() -> None:
    m, _ = machine(workers=("a", "b"))
    first = sent(submit(m, 0.0, timeout=1.0)[1])[0]
    second = sent(m.tick(1.0))[0]
    assert settled(m.message(1.2, "b", result(second, 2))) != []
    assert m.message(1.3, "a", result(first, 1)) == []
    assert m.stats["dropped_results"] == 1 and m.stats["completed"] == 1


def test_a_result_from_a_worker_never_tried_or_for_an_unknown_task_is_dropped() -> None:
    m, _ = machine(workers=("a", "b"))
    task = sent(submit(m, 0.0)[1])[0]
    assert m.message(0.1, "b", {**result(task, 5), "from": "b"}) == []
    assert m.message(0.1, "a", {**result(task, 5), "id": 99}) == []
    assert m.stats["dropped_results"] == 2 and m.pending == 1


def test_a_task_delivered_twice_runs_once_but_a_new_attempt_runs() -> None:
    w, _ = machine(me="w")
    w.set_worker(0.0, 4)
    task = {"type": "task", "id": 1, "to": "w", "from": "m", "attempt": 1, "payload": 2}
    [run] = runs(w.message(0.0, "m", task))
    assert run.hook == "handler" and run.args == (2, TaskInfo(1, 1, "m"))
    assert w.message(0.1, "m", task) == []
    assert w.stats["duplicate_tasks"] == 1 and w.stats["executed"] == 1
    assert [type(a) for a in w.message(0.2, "m", {**task, "attempt": 2})] == [Run]
    assert sent(w.hook_done(0.3, run.call, 6, None), "result") == [
        {"type": "result", "id": 1, "to": "m", "from": "w", "attempt": 1, "ok": True, "value": 6}]


def test_malformed_messages_are_counted_and_others_ignored() -> None:
    m, _ = machine()
    for junk in ([1], {"type": "nope"}, {"type": "result", "id": "x", "to": ME, "from": "i", "attempt": 1},
                 {"type": "task", "id": 1, "to": ME, "from": "else", "attempt": 1, "payload": 1},
                 {"type": "task", "id": 1, "to": ME, "from": "i", "attempt": 1},
                 {"type": "result", "id": 1, "to": ME, "from": "i", "attempt": 1, "ok": "yes"}):
        assert m.message(0.0, "i", junk) == []
    assert m.message(0.0, "i", {"type": "result", "id": 1, "to": "else", "from": "i", "attempt": 1}) == []
    assert m.stats["dropped_messages"] == 6


def test_a_node_without_a_handler_answers_retry_and_the_master_moves_on() -> None:
    idle, _ = machine(me="idle")
    task = {"type": "task", "id": 1, "to": "idle", "from": ME, "attempt": 1, "payload": 0}
    [answer] = sent(idle.message(0.0, ME, task), "result")
    assert answer["retry"] is True and answer["ok"] is False
    m, _ = machine(workers=("idle", "w"))
    task = sent(submit(m, 0.0)[1])[0]
    assert task["to"] == "idle"
    again = sent(m.message(0.1, "idle", answer))[0]
    assert (again["to"], again["attempt"]) == ("w", 2)


# ------------------------------------------------------------- the worker
def test_concurrency_queues_in_arrival_order_and_a_slot_frees_on_each_answer() -> None:
    w, _ = machine(me="w")
    w.set_worker(0.0, 2)
    started: list[Action] = []
    for i in range(1, 5):
        started += w.message(0.0, "m", {"type": "task", "id": i, "to": "w", "from": "m", "attempt": 1, "payload": i})
    assert [r.args[0] for r in runs(started)] == [1, 2] and w.running == 2 and w.queued == 2
    _, second = runs(started)
    actions = w.hook_done(0.1, second.call, 20, None)  # the second finishes first
    assert sent(actions, "result")[0]["id"] == 2
    assert [r.args[0] for r in actions if isinstance(r, Run)] == [3]
    assert w.stats["executed"] == 4  # counted when accepted
    more = w.set_worker(0.2, 3)  # a larger limit starts the queue at once
    assert [r.args[0] for r in more if isinstance(r, Run)] == [4] and w.queued == 0


def test_a_handler_that_raised_fails_the_task_without_a_retry() -> None:
    m, _ = machine()
    m.set_worker(0.0, 1)
    _, actions = submit(m, 0.0)
    [run] = runs(actions)
    [end] = settled(m.hook_done(0.1, run.call, None, ValueError("bad input 1")))
    assert isinstance(end.error, TaskError) and end.error.error == "ValueError: bad input 1"
    assert (end.worker, end.outcome) == (ME, "failed") and m.stats["reassigned"] == 0
    long = sent(m.hook_done(0.1, run.call, None, ValueError("x" * 1000)), "result")
    assert long == []  # a call reported twice: the second is ignored
    w, _ = machine(me="w")
    w.set_worker(0.0, 1)
    [run] = runs(w.message(0.0, "m", {"type": "task", "id": 1, "to": "w", "from": "m", "attempt": 1, "payload": 0}))
    [answer] = sent(w.hook_done(0.1, run.call, None, ValueError("x" * 1000)), "result")
    assert len(answer["error"]) == MAX_ERROR_TEXT and answer["error"].endswith("...")


def test_own_tasks_run_locally_through_json_and_without_the_network() -> None:
    m, _ = machine()
    m.set_worker(0.0, 4)
    task_id, actions = submit(m, 0.0, {"t": (1, 2)})
    assert sent(actions) == []
    [run] = runs(actions)
    assert run.args == ({"t": [1, 2]}, TaskInfo(task_id, 1, ME))  # what a remote worker would see
    answer = m.hook_done(0.1, run.call, (3, 4), None)
    assert [a for a in answer if isinstance(a, Send)] == []
    assert settled(answer) == [Settle(task_id, [3, 4], None, ME, "completed")]


def test_an_oversized_or_non_json_result_becomes_a_failure() -> None:
    m, _ = machine()
    m.set_worker(0.0, 4)
    _, actions = submit(m, 0.0)
    [run] = runs(actions)
    [end] = settled(m.hook_done(0.1, run.call, "y" * 5000, None))
    assert isinstance(end.error, TaskError) and end.outcome == "failed"
    assert "result of task 1 encodes to" in end.error.error and "over the 1472-byte datagram budget" in end.error.error
    _, actions = submit(m, 0.2)
    [run] = runs(actions)
    [end] = settled(m.hook_done(0.3, run.call, {1, 2}, None))
    assert isinstance(end.error, TaskError) and "not JSON-serializable" in end.error.error
    w, _ = machine(me="w")
    w.set_worker(0.0, 1)
    [run] = runs(w.message(0.0, "m", {"type": "task", "id": 7, "to": "w", "from": "m", "attempt": 1, "payload": 0}))
    [answer] = sent(w.hook_done(0.1, run.call, "y" * 5000, None), "result")
    assert answer["ok"] is False and "datagram budget" in answer["error"]


def test_announces_at_once_on_a_join_jittered_and_every_round() -> None:
    w, cluster = machine(me="w")
    assert sent(w.set_worker(0.0, 1), "worker") == [{"type": "worker", "batch": 1}]
    assert w.node_added(0.1, "n1") == [] and w.node_added(0.1, "n2") == []  # one announce for a burst
    soon = w.next_deadline()
    assert soon is not None and 0.1 <= soon <= 0.15
    assert sent(w.tick(soon), "worker") == [{"type": "worker", "batch": 1}]
    assert w.next_deadline() == 1.0 and sent(w.tick(1.0), "worker") == [{"type": "worker", "batch": 1}]
    assert w.next_deadline() == 2.0
    cluster.running = False
    assert w.set_worker(2.0, 2) == []  # not running: nothing goes out


# ------------------------------------------------------------ submit rules
def test_submit_refuses_what_cannot_travel_and_on_a_non_master() -> None:
    m, cluster = machine()
    with pytest.raises(PacketTooLarge, match=r"task 1 payload \(in its message\) encodes to \d+ bytes, over the "
                                             r"1472-byte datagram budget"):
        submit(m, 0.0, "x" * 2000)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        submit(m, 0.0, {1, 2})
    assert m.stats["submitted"] == 0 and m.pending == 0
    cluster.is_master = False
    with pytest.raises(RuntimeError, match="tasks are assigned by the master"):
        submit(m, 0.0)


def test_forget_drops_the_task_and_its_late_result() -> None:
    m, _ = machine(workers=("a",))
    task_id, actions = submit(m, 0.0)
    assert m.forget(0.1, task_id) == [] and m.pending == 0 and m.stats["cancelled"] == 1
    assert m.message(0.2, "a", result(sent(actions)[0], 1)) == []
    assert m.stats["dropped_results"] == 1 and m.tick(20.0) == []


# ------------------------------------------------------------ stop and close
def test_stopped_abandons_pending_tasks_and_drops_calls_then_started_resumes() -> None:
    m, _ = machine(workers=("a",))
    m.set_worker(0.0, 1)
    remote, _ = submit(m, 0.0)
    local, actions = submit(m, 0.0)  # round robin: "a", then this node
    [run] = runs(actions)
    stop = m.stopped(0.5)
    assert {(s.task_id, s.outcome) for s in settled(stop)} == {(remote, "abandoned"), (local, "abandoned")}
    assert all("discovery stopped before task" in str(s.error) for s in settled(stop))
    assert Cancel(run.call) in stop and m.running == 0 and m.next_deadline() is None
    assert m.hook_done(0.6, run.call, 1, None) == []
    assert m.live_workers(0.7) == [ME]  # presence cleared
    assert sent(m.started(1.0), "worker") == [{"type": "worker", "batch": 1}] and m.next_deadline() == 2.0


def test_close_says_bye_abandons_and_cancels_in_flight_and_queued() -> None:
    w, _ = machine(me="w")  # also the master
    w.set_worker(0.0, 1)
    started: list[Action] = []
    for i in (1, 2):
        started += w.message(0.0, "m", {"type": "task", "id": i, "to": "w", "from": "m", "attempt": 1, "payload": i})
    [run] = runs(started)
    submit(w, 0.0)  # its own task goes to itself, queued behind task 2
    assert w.queued == 2
    actions = w.close(0.1)
    assert actions[0] == Send({"type": "bye"})
    assert [s.outcome for s in settled(actions)] == ["abandoned"] and "TaskBalancer closed" in str(
        settled(actions)[0].error)
    assert [a for a in actions if isinstance(a, Cancel)] == [Cancel(run.call)]
    assert not [a for a in actions if isinstance(a, Run)] and w.queued == 0
    assert w.close_waits_for() == frozenset({run.call}) and w.close_finished(0.2, False) == []
    assert not w.is_worker and w.close(0.2) == [] and w.next_deadline() is None
    assert w.hook_done(0.3, run.call, 1, None) == [] and w.message(0.3, "m", {"type": "worker"}) == []
    with pytest.raises(RuntimeError, match="closed"):
        submit(w, 0.4)
    with pytest.raises(RuntimeError, match="closed"):
        w.set_worker(0.4, 1)


def test_same_inputs_same_outputs() -> None:
    """Deterministic given its inputs and rng: what the simulation relies on."""

    def run() -> list[Any]:
        m, _ = machine("random", ("a", "b", "c"))
        m.set_worker(0.0, 2)
        out: list[Any] = []
        for i in range(10):
            out += submit(m, i * 0.1, timeout=0.5)[1]
            out += m.node_added(i * 0.1, f"n{i}")
            out += m.tick(i * 0.1 + 0.05)
        return [repr(a) for a in out]

    assert run() == run()


# ------------------------------------------------------------ fencing tokens (issue 17)
def test_a_task_carries_its_masters_token_and_a_worker_refuses_an_older_one() -> None:
    m, cluster = machine(workers=("w",))
    cluster.fencing_token = 12
    _, actions = m.submit(0.0, {"x": 1}, 5.0, 1, None)
    assert sent(actions)[0]["token"] == 12
    worker, _ = machine(me="w")
    worker.set_worker(0.0, 1)
    fresh = worker.message(0.1, ME, {"type": "task", "id": 1, "to": "w", "from": ME, "attempt": 1,
                                     "payload": 1, "token": 12})
    assert worker.stats["executed"] == 1 and fresh  # run (a Run of the handler, or queued)
    stale = worker.message(0.2, "old", {"type": "task", "id": 1, "to": "w", "from": "old", "attempt": 1,
                                        "payload": 1, "token": 11})
    replies = [a.data for a in stale if isinstance(a, Send)]
    assert worker.stats["stale_master"] == 1 and worker.stats["executed"] == 1
    assert replies and replies[0]["ok"] is False and replies[0]["retry"] is True and "older" in replies[0]["error"]
    untokened = worker.message(0.3, ME, {"type": "task", "id": 2, "to": "w", "from": ME, "attempt": 1,
                                         "payload": 1})
    assert worker.stats["executed"] == 2 and untokened == []  # accepted (queued behind the first): no token, no check


# ------------------------------------------------------------ packing (performance round two)
def batch_worker(me: str = "w", concurrency: int = 16) -> TaskMachine:
    worker, cluster = machine(me=me)
    cluster.nodes.add(ME)
    worker.set_worker(0.0, concurrency)
    return worker


def test_tasks_for_a_batch_worker_pack_into_one_message_that_runs_them_all_and_results_pack_back() -> None:
    m, _ = machine(workers=("w",))
    m.message(0.0, "w", {"type": "worker", "batch": 1})
    sends = [a.data for n in range(3) for a in submit(m, 0.0, {"n": n})[1] if isinstance(a, Send)]
    assert all(m.packable(data) for data in sends)
    [packed] = m.pack(sends)
    assert packed == {"type": "tasks", "to": "w", "from": ME,
                      "tasks": [[1, 1, {"n": 0}], [2, 1, {"n": 1}], [3, 1, {"n": 2}]]}
    worker = batch_worker()
    calls = runs(worker.message(0.1, ME, orjson.loads(orjson.dumps(packed))))
    assert [c.args[0] for c in calls] == [{"n": 0}, {"n": 1}, {"n": 2}] and worker.stats["executed"] == 3
    answers = [a.data for c in calls for a in worker.hook_done(0.2, c.call, c.args[0]["n"] * 10, None)
               if isinstance(a, Send)]
    assert all(worker.packable(data) for data in answers)  # the master sent a batch: it reads one
    [results] = worker.pack(answers)
    assert results == {"type": "results", "to": ME, "from": "w", "results": [[1, 1, True, 0], [2, 1, True, 10],
                                                                             [3, 1, True, 20]]}
    done = settled(m.message(0.3, "w", orjson.loads(orjson.dumps(results))))
    assert [(s.task_id, s.value, s.worker) for s in done] == [(1, 0, "w"), (2, 10, "w"), (3, 20, "w")]
    assert m.stats["completed"] == 3 and m.stats["dropped_messages"] == 0


def test_failures_and_retries_travel_in_a_results_batch() -> None:
    m, _ = machine(workers=("w", "v"))
    m.message(0.0, "w", {"type": "worker", "batch": 1})
    m.message(0.0, "v", {"type": "worker", "batch": 1})
    first = sent(submit(m, 0.0)[1])[0]
    second = sent(submit(m, 0.0)[1])[0]
    w_tasks = [t for t in (first, second) if t["to"] == "w"]
    assert len(w_tasks) == 1
    results = {"type": "results", "to": ME, "from": "w",
               "results": [[w_tasks[0]["id"], 1, False, "no handler", 1], [99, 1, False, "boom"]]}
    actions = m.message(0.1, "w", results)
    moved = sent(actions)
    assert moved and moved[0]["id"] == w_tasks[0]["id"] and moved[0]["attempt"] == 2  # the retry flag was read
    assert m.stats["dropped_results"] == 1  # task 99: nobody waits for it


def test_only_batch_workers_and_batch_masters_get_packed_messages() -> None:
    m, _ = machine(workers=("old",))  # announced without "batch": an older node
    task = sent(submit(m, 0.0)[1])[0]
    assert not m.packable(task)
    worker = batch_worker()
    [call] = runs(worker.message(0.0, ME, {"type": "task", "id": 1, "to": "w", "from": ME, "attempt": 1,
                                           "payload": 1}))
    [answer] = [a.data for a in worker.hook_done(0.1, call.call, 2, None) if isinstance(a, Send)]
    assert not worker.packable(answer)  # this master never sent a batch
    m.message(1.0, "old", {"type": "worker"})
    m.message(1.0, "new", {"type": "worker", "batch": 1})
    m.message(1.1, "new", {"type": "bye"})
    assert not m.packable({"type": "task", "to": "new"})  # a bye forgets it


def test_packing_keeps_each_message_within_the_budget_and_a_lone_one_as_it_was() -> None:
    m, cluster = machine(workers=("w", "v"))
    m.message(0.0, "w", {"type": "worker", "batch": 1})
    m.message(0.0, "v", {"type": "worker", "batch": 1})
    cluster.budget = 400
    sends = [a.data for n in range(30) for a in submit(m, 0.0, "x" * 40)[1] if isinstance(a, Send)]
    packed = m.pack(sends)
    assert all(len(orjson.dumps(p)) <= 400 for p in packed)
    unpacked = sorted((t["id"], t["to"]) for p in packed for t in (
        [p] if p["type"] == "task" else [{"id": i[0], "to": p["to"]} for i in p["tasks"]]))
    assert unpacked == sorted((s["id"], s["to"]) for s in sends)  # every task once
    assert len(packed) < len(sends) and all(p["type"] == "tasks" for p in packed[:2])
    assert m.pack([sends[0], sends[2]])[0]["type"] == "tasks"
    other = next(s for s in sends if s["to"] != sends[0]["to"])
    assert m.pack([sends[0], other]) == [sends[0], other]  # one message for a node stays a single "task"


def test_packed_tasks_keep_their_token_and_are_grouped_by_it() -> None:
    m, cluster = machine(workers=("w",))
    m.message(0.0, "w", {"type": "worker", "batch": 1})
    cluster.fencing_token = 7
    sends = [a.data for _ in range(2) for a in submit(m, 0.0)[1] if isinstance(a, Send)]
    [packed] = m.pack(sends)
    assert packed["token"] == 7
    worker = batch_worker()
    worker.message(0.0, "newer", {"type": "tasks", "to": "w", "from": "newer", "token": 9, "tasks": [[5, 1, 0]]})
    stale = worker.message(0.1, ME, packed)  # token 7 < 9: each task refused with retry
    assert worker.stats["stale_master"] == 2
    assert [d["retry"] for d in sent(stale, "result")] == [True, True]


def test_malformed_batches_are_counted_and_batches_for_others_ignored() -> None:
    worker = batch_worker()
    assert worker.message(0.0, ME, {"type": "tasks", "to": "other", "from": ME, "tasks": [[1, 1, 0]]}) == []
    assert worker.stats["dropped_messages"] == 0 and worker.stats["executed"] == 0
    worker.message(0.0, ME, {"type": "tasks", "to": "w", "from": ME, "tasks": "nope"})
    worker.message(0.0, ME, {"type": "tasks", "to": "w", "from": "spoof", "tasks": []})
    assert worker.stats["dropped_messages"] == 2
    calls = runs(worker.message(0.0, ME, {"type": "tasks", "to": "w", "from": ME,
                                          "tasks": [[1, 1], "x", [2, 1, 0], [3, "a", 0]]}))
    assert len(calls) == 1 and worker.stats["dropped_messages"] == 5
    m, _ = machine(workers=("w",))
    m.message(0.0, "w", {"type": "results", "to": ME, "from": "w", "results": [[1, 1, True], [1, 1, False, "e", 2]]})
    assert m.stats["dropped_messages"] == 2


def test_an_outbox_holds_packable_sends_and_never_reorders_around_others() -> None:
    m, _ = machine(workers=("w",))
    m.message(0.0, "w", {"type": "worker", "batch": 1})
    box = Outbox(m)
    sends = [a.data for _ in range(2) for a in submit(m, 0.0)[1] if isinstance(a, Send)]
    assert box.post(sends[0]) == [] and box.post(sends[1]) == [] and box.holding
    out = box.post({"type": "bye"})  # not packable: what is held leaves first, packed
    assert [d["type"] for d in out] == ["tasks", "bye"] and not box.holding
    assert box.post(sends[0]) == [] and box.flush() == [sends[0]] and box.flush() == []
