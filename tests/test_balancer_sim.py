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

    kinds = ("crash", "restart", "stop", "master_crash", "master_stop")
    unsafe = rng.random() < 0.5
    if unsafe:
        kinds += ("loss", "partition", "heal")
    faults = Faults(rng, kinds)
    sim = BalancerSim(make, hooks, seed=seed)
    weights = iter(range(1000, 0, -1))
    for _ in range(rng.randint(2, 5)):
        sim.add_member(weight=next(weights) if rng.random() < 0.5 else 0, **TIMINGS)
    sim.after_step = lambda: check_one_owner(sim, not unsafe, faults)
    for at in faults.times():
        sim.run_until(at)
        _resource_fault(sim, faults, weights)
    if sim.loss or any(n.segment for n in sim.nodes):
        faults.last_unsafe = sim.now
        faults.log.append((round(sim.now, 3), "heal"))
    sim.loss = 0.0
    sim.heal()
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
    t = 1.0
    next_fault = iter(faults.times())
    fault_at = next(next_fault, FAULTS_END)
    while t < FAULTS_END:
        sim.run_until(t)
        if t >= fault_at:
            _task_fault(sim, faults, add)
            fault_at = next(next_fault, FAULTS_END)
        for idx in sim.active():
            if sim.nodes[idx].core.is_master:
                for _ in range(rng.randint(0, 3)):
                    key = str(rng.randint(0, 50)).encode()
                    task_id = sim.feed(idx, sim.machine(idx).submit, rng.randint(0, 1000), timeout, attempts, key)
                    submitted.setdefault(idx, []).append(task_id)
        t += rng.uniform(0.05, 0.5)
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
#: Long forms run longer than the suite's default timeout allows.
SCALED_TIMEOUT = pytest.mark.timeout(max(180.0, 60 + 0.5 * len(seeds())))


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
