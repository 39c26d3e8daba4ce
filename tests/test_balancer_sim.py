"""The balancer's guarantees, checked on simulated clusters with faults, one seed at a time.

Each seed draws a cluster (members, resources or tasks, hook timings) and a schedule of
faults: crashes, restarts, graceful stops, master churn, slow stop hooks, datagram
loss, partitions and heals.  The members run the real state machines on real discovery
cores (``testbed.balancer_sim``); time is fake, so a minute of cluster life costs
milliseconds.  Checked after every step of the simulation:

* ResourceManager: never two owners of a resource that can hear each other, at any
  time when the faults so far are crashes, stops and slow hooks (the safe-to-start rule
  covers them), and from a bounded time after the last loss or partition otherwise;
  after the faults end, every resource runs exactly once with an even spread.
* TaskBalancer: every task submitted by a member that did not crash (a crash takes its
  futures with it) ends exactly once (a result, a failure, a timeout or an abandon on
  stop or close), never twice; members also stop and restart their discovery under a
  living balancer.

``PYDISCOVER_SIM_SEEDS`` sets how many seeds (200 by default; the long form is 10,000),
``PYDISCOVER_SIM_SEED`` replays one.  A failure names its seed.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pydiscover.balancer.resource_machine import ResourceMachine
from pydiscover.balancer.task_machine import TaskMachine
from testbed.balancer_sim import BalancerSim, CoreView

#: Discovery timings of the simulated members (seconds; time is fake, so short ones buy nothing).
TIMINGS: dict[str, Any] = {"hello_interval": 0.5, "check_interval": 1.0, "node_timeout": 2.5,
                           "master_timeout": 2.5}
#: Faults happen in [0, FAULTS_END); then the cluster is left alone until END.
FAULTS_END = 40.0
END = 75.0
#: How long after a loss or partition fault two owners that hear each other may still overlap.
SETTLE = 3 * TIMINGS["node_timeout"] + 6 * TIMINGS["hello_interval"]


def seeds() -> list[int]:
    one = os.environ.get("PYDISCOVER_SIM_SEED")
    if one:
        return [int(one)]
    return list(range(int(os.environ.get("PYDISCOVER_SIM_SEEDS", "200"))))


#: Long forms run longer than the suite's default timeout allows.
SCALED_TIMEOUT = pytest.mark.timeout(max(180.0, 60 + 0.5 * len(seeds())))


def run_seeds(scenario: Callable[[int], None]) -> None:
    for seed in seeds():
        try:
            scenario(seed)
        except AssertionError as exc:
            raise AssertionError(
                f"seed {seed} failed (replay: PYDISCOVER_SIM_SEED={seed} pytest {__file__} -k "
                f"{scenario.__name__.removesuffix('_scenario')}): {exc}"
            ) from exc


@dataclass
class Faults:
    """A random schedule of faults and the bookkeeping of when the last ones happened."""

    rng: random.Random
    kinds: tuple[str, ...]
    last_unsafe: float = -1e9  # the last loss or partition change (overlap allowed for SETTLE after)
    log: list[tuple[float, str]] = field(default_factory=list)

    def times(self) -> Iterator[float]:
        t = self.rng.uniform(2, 6)
        while t < FAULTS_END:
            yield t
            t += self.rng.uniform(1, 8)


def drive(sim: BalancerSim, faults: Faults, fault: Callable[[], None], act: Callable[[], None],
          gap: Callable[[], float]) -> None:
    """Run to ``FAULTS_END`` in steps of ``gap()`` seconds: at each, a fault if one is due, then ``act()``."""
    t = 1.0
    schedule = iter(faults.times())
    fault_at = next(schedule, FAULTS_END)
    while t < FAULTS_END:
        sim.run_until(t)
        if t >= fault_at:
            fault()
            fault_at = next(schedule, FAULTS_END)
        act()
        t += gap()


# ------------------------------------------------------------------ resources
def possibly_running(sim: BalancerSim, idx: int) -> set[str]:
    """What node ``idx`` may be running: started, starting, or not yet stopped."""
    machine = sim.machine(idx)
    out = set(machine.owned)
    for call in sim.calls_on(idx):
        if call.hook == "start":
            out.add(call.args[0]["id"])
        elif call.hook == "stop":
            out.add(str(call.args[0]).removeprefix("h:"))
    return out


def check_one_owner(sim: BalancerSim, strict: bool, faults: Faults) -> None:
    if not strict and (sim.loss > 0 or sim.now - faults.last_unsafe < SETTLE):
        return  # a lossy link makes a live manager look gone: overlap is allowed until it settles
    alive = sim.alive()
    running = {idx: possibly_running(sim, idx) for idx in alive}
    for i, a in enumerate(alive):
        for b in alive[i + 1:]:
            both = running[a] & running[b]
            if both and sim.can_hear(a, b):
                raise AssertionError(f"t={sim.now:.3f}: {sorted(both)} run on both n{a} and n{b}; faults {faults.log}")


def resources_scenario(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(1, 24)
    resources = {f"r{i:02d}": {"id": f"r{i:02d}"} for i in range(count)}
    slow_stops = rng.random() < 0.5
    flaky = rng.random() < 0.3
    hook_rng = random.Random(seed + 1)

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        flaky_now = flaky and sim.now < FAULTS_END  # failures are faults too: they end with the others
        if hook == "start":
            fails = flaky_now and hook_rng.random() < 0.1
            return hook_rng.uniform(0, 0.4), f"h:{args[0]['id']}", RuntimeError("start failed") if fails else None
        if hook == "stop":
            return hook_rng.uniform(0, 4.0 if slow_stops else 0.2), None, None
        if hook == "healthcheck":
            sick = flaky_now and hook_rng.random() < 0.05
            return hook_rng.uniform(0, 0.1), None, RuntimeError("unhealthy") if sick else None
        raise AssertionError(f"unexpected hook {hook}")

    def make(view: CoreView) -> ResourceMachine:
        return ResourceMachine(view, resources=resources, has_stop=True, has_healthcheck=flaky,
                               health_interval=1.0, retry_delay=0.5)

    faults, unsafe = resource_faults(rng, 0.5)
    sim = BalancerSim(make, hooks, seed=seed)
    weights = iter(range(1000, 0, -1))
    for _ in range(rng.randint(2, 5)):
        sim.add_member(weight=next(weights) if rng.random() < 0.5 else 0, **TIMINGS)
    sim.after_step = lambda: check_one_owner(sim, not unsafe, faults)
    for at in faults.times():
        sim.run_until(at)
        _resource_fault(sim, faults, weights)
    heal_all(sim, faults)
    if not sim.active():
        sim.add_member(**TIMINGS)
    sim.run_until(END)
    check_one_owner(sim, True, faults)
    # Converged: every resource runs once, spread evenly, on a plan every member holds.
    alive = sim.alive()
    owners = Counter(rid for idx in alive for rid in sim.machine(idx).owned)
    assert set(owners) == set(resources) and set(owners.values()) == {1}, (
        f"after the faults: owners {dict(owners)} of {sorted(resources)}; faults {faults.log}")
    loads = [len(sim.machine(idx).owned) for idx in alive]
    assert max(loads) - min(loads) <= 1, f"uneven spread {loads}; faults {faults.log}"
    plans = {tuple(sorted(sim.machine(idx).assignment.items())) for idx in alive}
    assert len(plans) == 1, f"members hold different plans; faults {faults.log}"


def resource_faults(rng: random.Random, unsafe_share: float) -> tuple[Faults, bool]:
    """Crashes, restarts and stops (of masters too); in ``unsafe_share`` of the runs also loss and partitions."""
    kinds: tuple[str, ...] = ("crash", "restart", "stop", "master_crash", "master_stop")
    unsafe = rng.random() < unsafe_share
    if unsafe:
        kinds += ("loss", "partition", "heal")
    return Faults(rng, kinds), unsafe


def heal_all(sim: BalancerSim, faults: Faults) -> None:
    """The faults are over: no loss, no partition (logged as a heal if there was one)."""
    if sim.loss or any(n.segment for n in sim.nodes):
        faults.last_unsafe = sim.now
        faults.log.append((round(sim.now, 3), "heal"))
    sim.loss = 0.0
    sim.heal()


def _resource_fault(sim: BalancerSim, faults: Faults, weights: Iterator[int]) -> None:
    rng, alive = faults.rng, sim.active()
    kind = rng.choice(faults.kinds)
    masters = [i for i in alive if sim.nodes[i].core.is_master]
    if kind in ("crash", "stop") and len(alive) > 1:
        victim = rng.choice(alive)
        (sim.crash if kind == "crash" else sim.stop_member)(victim)
    elif kind in ("master_crash", "master_stop") and masters and len(alive) > 1:
        (sim.crash if kind == "master_crash" else sim.stop_member)(masters[0])
    elif kind == "restart" or len(alive) < 2:
        kind = "restart"
        sim.add_member(weight=next(weights) if rng.random() < 0.3 else 0, **TIMINGS)
    elif kind == "loss":
        sim.loss = rng.choice([0.0, 0.05, 0.2, 0.5])
        faults.last_unsafe = sim.now
    elif kind == "partition" and len(alive) > 1:
        cut = rng.randint(1, len(alive) - 1)
        shuffled = rng.sample(alive, len(alive))
        sim.partition([shuffled[:cut]])
        faults.last_unsafe = sim.now
    elif kind == "heal":
        sim.heal()
        faults.last_unsafe = sim.now
    else:
        return
    faults.log.append((round(sim.now, 3), kind))


# ------------------------------------------------- run-time changes and capacity
#: A remove heard by every node must stop the resource within this, and nobody starts it after.
HEARD = 0.05


@dataclass
class ChangeLog:
    """The adds and removes the test made: by whom, when, and the version each got."""

    made: list[tuple[float, int, str, tuple[int, str], bool]] = field(default_factory=list)  # (t, idx, id, v, add)
    starts: list[tuple[float, int, str]] = field(default_factory=list)  # (t, idx, id) of every start begun

    def final(self) -> dict[str, tuple[tuple[int, str], bool]]:
        """id -> the version and kind (add?) of its latest change."""
        out: dict[str, tuple[tuple[int, str], bool]] = {}
        for _, _, rid, version, add in self.made:
            if rid not in out or version > out[rid][0]:
                out[rid] = (version, add)
        return out


def changes_scenario(seed: int) -> None:
    """Adds, removes and capacity changes on random members, racing joins, leaves and master changes."""
    rng = random.Random(seed)
    base = {f"r{i:02d}": {"id": f"r{i:02d}"} for i in range(rng.randint(0, 12))}
    hook_rng = random.Random(seed + 1)
    log = ChangeLog()

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        if hook == "start":
            log.starts.append((sim.now, node, args[0]["id"]))
            return hook_rng.uniform(0, 0.3), f"h:{args[0]['id']}", None
        if hook == "stop":
            return hook_rng.uniform(0, 1.5), None, None
        raise AssertionError(f"unexpected hook {hook}")

    def make(view: CoreView) -> ResourceMachine:
        return ResourceMachine(view, resources=base, has_stop=True)

    faults, unsafe = resource_faults(rng, 0.3)
    sim = BalancerSim(make, hooks, seed=seed)
    weights = iter(range(1000, 0, -1))

    def join() -> None:
        idx = sim.add_member(weight=next(weights) if rng.random() < 0.5 else 0, **TIMINGS)
        if rng.random() < 0.4:
            sim.feed(idx, sim.machine(idx).set_capacity, rng.choice([0, 2, 3]))

    for _ in range(rng.randint(2, 5)):
        join()
    sim.after_step = lambda: check_one_owner(sim, not unsafe, faults)

    def change() -> None:
        active = sim.active()
        if not active:
            return
        idx = rng.choice(active)
        roll = rng.random()
        known = sorted({*base, *(m for _, _, m, _, _ in log.made)})
        if roll < 0.45 or not known:
            fresh = f"x{len(log.made):03d}"
            rid = rng.choice([fresh, *known[:3]]) if known and rng.random() < 0.2 else fresh
            version = sim.feed(idx, sim.machine(idx).add, {"id": rid, "n": len(log.made)}, int(sim.now * 1000))
            log.made.append((sim.now, idx, rid, version, True))
        elif roll < 0.85:
            rid = rng.choice(known)
            version = sim.feed(idx, sim.machine(idx).remove, rid, int(sim.now * 1000))
            log.made.append((sim.now, idx, rid, version, False))
        else:
            sim.feed(idx, sim.machine(idx).set_capacity, rng.choice([0, 1, 1, 2, 3]))

    drive(sim, faults, lambda: _resource_fault(sim, faults, weights), change, lambda: rng.uniform(0.05, 1.5))
    heal_all(sim, faults)
    if not sim.active():
        sim.add_member(**TIMINGS)
    if all(sim.machine(i).capacity == 0 for i in sim.active()):
        idx = sim.active()[0]
        sim.feed(idx, sim.machine(idx).set_capacity, 1)
    sim.run_until(END)
    check_one_owner(sim, True, faults)
    alive = sim.alive()
    where = f"faults {faults.log}; changes {[(round(t, 3), i, r, a) for t, i, r, _, a in log.made]}"
    # Every member holds the same set and the same plan; no change of a member alive now is lost.
    sets = {tuple(sorted(sim.machine(i).resources)) for i in alive}
    assert len(sets) == 1, f"members hold different sets {sets}; {where}"
    expected = set(next(iter(sets)))
    changes = sim.machine(alive[0]).changes
    for _, idx, rid, version, _ in log.made:
        if idx in alive:
            assert changes.get(rid, ((-1, ""), None))[0] >= version, f"n{idx}'s change of {rid} was lost; {where}"
    final = log.final()
    if not unsafe:  # every change reached every member: the latest of each id is what holds
        assert expected == {r for r in base if r not in final} | {r for r, (_, add) in final.items() if add}, where
    # Every resource of the set runs once, in proportion to capacity.
    owners = Counter(rid for idx in alive for rid in sim.machine(idx).owned)
    assert set(owners) == expected and set(owners.values()) <= {1}, (
        f"owners {dict(owners)} of {sorted(expected)}; {where}")
    caps = {i: sim.machine(i).capacity for i in alive}
    total = sum(caps.values())
    for i in alive:
        share = len(expected) * caps[i] / total
        assert math.floor(share) <= len(sim.machine(i).owned) <= math.ceil(share), (
            f"n{i} (capacity {caps[i]}) runs {len(sim.machine(i).owned)} of {len(expected)}, share {share:.2f} "
            f"(capacities {caps}); {where}")
    # A removed resource is never started again once every member heard the removal.
    if not unsafe:
        for made_at, _, rid, version, add in log.made:
            if add or final[rid][0] != version:
                continue
            late = [(round(at, 3), n) for at, n, started in log.starts if started == rid and at > made_at + HEARD]
            assert not late, f"{rid}, removed at {made_at:.3f}, started again at {late}; {where}"


@SCALED_TIMEOUT
def test_run_time_changes_race_joins_leaves_and_master_changes() -> None:
    run_seeds(changes_scenario)


def capacity_example(capacities: list[int], count: int) -> list[int]:
    resources = {f"r{i}": {"id": f"r{i}"} for i in range(count)}

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        return 0.01, f"h:{args[0]['id']}" if hook == "start" else None, None

    sim = BalancerSim(lambda view: ResourceMachine(view, resources=resources), hooks, seed=1)
    members = []
    for weight, cap in zip(range(len(capacities), 0, -1), capacities, strict=True):
        members.append(sim.add_member(weight=weight, **TIMINGS))
        sim.feed(members[-1], sim.machine(members[-1]).set_capacity, cap)
    sim.run_until(10.0)
    return [len(sim.machine(i).owned) for i in members]


def test_shares_follow_capacity_rounded_to_whole_resources() -> None:
    assert capacity_example([2, 1, 1], 8) == [4, 2, 2]
    assert capacity_example([1, 1, 2], 6)[2] == 3
    assert capacity_example([0, 1, 1], 6) == [0, 3, 3]


# ---------------------------------------------------------------------- tasks
def tasks_scenario(seed: int) -> None:
    rng = random.Random(seed)
    hook_rng = random.Random(seed + 1)
    timeout = rng.choice([0.5, 1.0, 2.0])
    attempts = rng.randint(1, 4)
    strategy = rng.choice(["round_robin", "random", "least_loaded", "hash"])

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        assert hook == "handler", hook
        roll = hook_rng.random()
        took = hook_rng.uniform(0, timeout * 2) if roll < 0.1 else hook_rng.uniform(0, timeout / 3)
        return took, args[0] * 2, ValueError("bad input") if roll > 0.95 else None

    def make(view: CoreView) -> TaskMachine:
        return TaskMachine(view, strategy=strategy, rng=random.Random(rng.random()))

    sim = BalancerSim(make, hooks, seed=seed)
    faults = Faults(rng, ("crash", "restart", "stop", "bounce", "master_crash", "master_stop", "master_bounce",
                          "loss", "partition", "heal"))
    submitted: dict[int, list[int]] = {}  # submitter -> task ids

    def add() -> None:
        idx = sim.add_member(weight=rng.randint(0, 100), **TIMINGS)
        sim.feed(idx, sim.machine(idx).set_worker, rng.randint(1, 4))

    for _ in range(rng.randint(2, 5)):
        add()
    settled_once = SettledOnce(sim, submitted)
    sim.after_step = settled_once

    def submit() -> None:
        for idx in sim.active():
            if sim.nodes[idx].core.is_master:
                for _ in range(rng.randint(0, 3)):
                    key = str(rng.randint(0, 50)).encode()
                    task_id = sim.feed(idx, sim.machine(idx).submit, rng.randint(0, 1000), timeout, attempts, key)
                    submitted.setdefault(idx, []).append(task_id)

    drive(sim, faults, lambda: _task_fault(sim, faults, add), submit, lambda: rng.uniform(0.05, 0.5))
    sim.loss = 0.0
    sim.heal()
    sim.run_until(FAULTS_END + timeout * (attempts + 1) + 5 * TIMINGS["node_timeout"])
    settled_once(final=True)


class SettledOnce:
    """Every task ends at most once, and (``final``) every task of a member that did not crash ended.

    Incremental: each call looks only at the settlements since the last one.
    """

    def __init__(self, sim: BalancerSim, submitted: dict[int, list[int]]) -> None:
        self.sim, self.submitted = sim, submitted
        self.ended: dict[int, set[int]] = {}
        self.checked: dict[int, int] = {}

    def __call__(self, *, final: bool = False) -> None:
        for idx, member in self.sim.members.items():
            ended = self.ended.setdefault(idx, set())
            new = member.settled[self.checked.get(idx, 0):]
            self.checked[idx] = len(member.settled)
            for _, settle in new:
                assert settle.task_id not in ended, f"n{idx}: task {settle.task_id} ended twice"
                ended.add(settle.task_id)
            if new:
                unknown = ended - set(self.submitted.get(idx, []))
                assert not unknown, f"n{idx}: tasks {sorted(unknown)} ended without being submitted"
            if final and not member.crashed:  # (a crash takes its futures with it)
                missing = set(self.submitted.get(idx, [])) - ended
                assert not missing, f"n{idx}: tasks {sorted(missing)} never ended"
                assert self.sim.machine(idx).pending == 0


def _task_fault(sim: BalancerSim, faults: Faults, add: Callable[[], None]) -> None:
    rng, alive = faults.rng, sim.active()
    kind = rng.choice(faults.kinds)
    masters = [i for i in alive if sim.nodes[i].core.is_master]
    if kind in ("crash", "stop", "bounce", "master_crash", "master_stop", "master_bounce") and len(alive) > 1:
        if kind.startswith("master_"):
            if not masters:
                return
            victim = masters[0]
        else:
            victim = rng.choice(alive)
        if kind.endswith("crash"):
            sim.crash(victim)
        elif kind.endswith("stop"):
            sim.stop_member(victim)
        else:  # its discovery stops and starts again; the balancer lives on
            sim.bounce(victim, rng.uniform(0.1, 3 * TIMINGS["node_timeout"]))
    elif kind == "restart" or len(alive) < 2:
        kind = "restart"
        add()
    elif kind == "loss":
        sim.loss = rng.choice([0.0, 0.05, 0.2, 0.5])
    elif kind == "partition" and len(alive) > 1:
        sim.partition([rng.sample(alive, rng.randint(1, len(alive) - 1))])
    elif kind == "heal":
        sim.heal()
    else:
        return
    faults.log.append((round(sim.now, 3), kind))


# ---------------------------------------------------------------------- tests


@SCALED_TIMEOUT
def test_resource_ownership_is_exclusive_and_converges_evenly() -> None:
    run_seeds(resources_scenario)


@SCALED_TIMEOUT
def test_every_task_ends_exactly_once() -> None:
    run_seeds(tasks_scenario)


def newcomer_during_a_slow_close(listen_rounds: int) -> None:
    """A manager closes with slow stops; a newcomer joins meanwhile and is given its share."""
    resources = {f"r{i}": {"id": f"r{i}"} for i in range(6)}

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        return (3.0 if hook == "stop" else 0.05), f"h:{args[0]['id']}" if hook == "start" else None, None

    def make(view: CoreView) -> ResourceMachine:
        return ResourceMachine(view, resources=resources, listen_rounds=listen_rounds)

    sim = BalancerSim(make, hooks, seed=1)
    faults = Faults(random.Random(1), ())
    master = sim.add_member(weight=10, **TIMINGS)
    leaver = sim.add_member(**TIMINGS)
    sim.run_until(10.0)
    assert sim.machine(leaver).owned, "the leaver runs its share before it closes"
    sim.after_step = lambda: check_one_owner(sim, True, faults)
    sim.stop_member(leaver)
    sim.run_until(10.3)
    sim.add_member(**TIMINGS)
    sim.run_until(30.0)
    assert sorted(rid for idx in sim.alive() for rid in sim.machine(idx).owned) == sorted(resources)
    assert master in sim.alive()


def test_a_newcomer_never_starts_what_a_closing_manager_still_stops() -> None:
    newcomer_during_a_slow_close(listen_rounds=2)


def test_without_listening_first_the_newcomer_would_run_a_resource_twice() -> None:
    with pytest.raises(AssertionError, match="run on both"):
        newcomer_during_a_slow_close(listen_rounds=0)


@pytest.fixture
def thirty_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDISCOVER_SIM_SEEDS", "30")
    monkeypatch.delenv("PYDISCOVER_SIM_SEED", raising=False)


def test_a_manager_starting_without_waiting_for_the_release_is_caught(
        thirty_seeds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks can fail, and a failure names the seed that replays it."""
    monkeypatch.setattr(ResourceMachine, "_safe_to_start", lambda self: True)
    with pytest.raises(AssertionError, match=r"seed \d+ failed \(replay: PYDISCOVER_SIM_SEED=\d+"):
        run_seeds(resources_scenario)


def test_a_balancer_that_forgets_a_task_ended_is_caught(
        thirty_seeds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    settle = TaskMachine._settle

    def settle_but_keep_waiting(self: TaskMachine, task: Any, *args: Any, **kwargs: Any) -> Any:
        actions = settle(self, task, *args, **kwargs)
        self._tasks[task.id] = task  # a late answer or a timeout will end it again
        return actions

    monkeypatch.setattr(TaskMachine, "_settle", settle_but_keep_waiting)
    with pytest.raises(AssertionError, match=r"ended twice"):
        run_seeds(tasks_scenario)


def test_a_balancer_that_never_retries_is_caught(thirty_seeds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskMachine, "_retry", lambda self, now, task, reason: [])
    with pytest.raises(AssertionError, match=r"never ended"):
        run_seeds(tasks_scenario)


def test_run_time_changes_with_fenced_starts() -> None:
    """With a coordinator (owner keys, as etcd's): an added resource starts under a key, a removed one gives it
    back, a drained node's keys pass to the others with higher tokens; a key's holder is whoever runs it."""
    resources = {f"r{i}": {"id": f"r{i}"} for i in range(6)}
    keys: dict[str, tuple[int, int]] = {}  # id -> (holder, token)
    revision = [0]
    tokens: dict[str, list[int]] = {}

    def hooks(node: int, hook: str, args: tuple[Any, ...]) -> tuple[float, Any, BaseException | None]:
        if hook == "acquire":
            rid = args[0]
            if rid in keys and keys[rid][0] != node:
                return 0.002, None, None  # held by the previous owner still: the machine tries again
            revision[0] += 1
            keys[rid] = (node, revision[0])
            tokens.setdefault(rid, []).append(revision[0])
            return 0.002, revision[0], None
        if hook == "release":
            rid, token = args
            if rid in keys and keys[rid][0] == node and token in (None, keys[rid][1]):
                del keys[rid]
            return 0.002, None, None
        return (0.2 if hook == "stop" else 0.05), f"h:{args[0]['id']}" if hook == "start" else None, None

    sim = BalancerSim(lambda view: ResourceMachine(view, resources=resources, fenced=True), hooks, seed=3)
    faults = Faults(random.Random(3), ())
    members = [sim.add_member(weight=w, **TIMINGS) for w in (3, 2, 1)]
    for idx in members:
        sim.feed(idx, sim.machine(idx).fence_ready)

    def keys_follow_owners() -> None:
        check_one_owner(sim, True, faults)
        for idx in members:
            for rid in sim.machine(idx).owned:
                assert keys.get(rid, (None, 0))[0] == idx, f"n{idx} runs {rid} without its key: {keys}"

    sim.after_step = keys_follow_owners
    sim.run_until(10.0)
    master, one, other = members
    sim.feed(one, sim.machine(one).add, {"id": "extra"}, 0)
    sim.feed(other, sim.machine(other).remove, "r2", 0)
    sim.run_until(12.0)
    running = Counter(rid for idx in members for rid in sim.machine(idx).owned)
    assert set(running) == (set(resources) - {"r2"}) | {"extra"} and set(running.values()) == {1}
    assert "r2" not in keys and "extra" in keys
    sim.feed(one, sim.machine(one).set_capacity, 0)
    sim.run_until(16.0)
    assert sim.machine(one).owned == frozenset() and len(sim.machine(master).owned) == 3
    assert all(ts == sorted(ts) and len(set(ts)) == len(ts) for ts in tokens.values())
