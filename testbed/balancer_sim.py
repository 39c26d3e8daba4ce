"""Balancer state machines on simulated nodes: real discovery cores, a fake clock, user hooks as delays.

Each member is a :class:`~pydiscover.core.DiscoveryCore` of :class:`testbed.sim.Sim`
with one balancer :class:`~pydiscover.balancer.machine.Machine` on top, fed exactly
what :class:`~pydiscover.balancer.driver.Driver` feeds it at run time: channel
messages, ``added``/``removed``/``promotion``, hook results and its own deadlines.
User hooks take the time a *hook model* says and then return or raise; a crash takes
the process (its hooks and what they ran) with it.  Faults are the simulator's:
``crash``, ``stop_member`` (a graceful close: like the driver, it waits for what
``close_waits_for`` names, asked anew after every call, then says goodbye), ``bounce``
(the discovery stops and starts again under a machine that lives on), partitions
(``partition``/``heal``) and datagram loss (``loss``).  Not modelled: a close that gives
up waiting (the driver's ``close_timeout``; the simulated hooks end well before it).

Deterministic for a seed, so a failing seed replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydiscover.balancer.machine import Action, Assigned, Cancel, Cancelled, Machine, Outbox, Run, Send, Settle
from pydiscover.config import Options
from pydiscover.core import DiscoveryCore, Emit

from .sim import Sim

#: ``(node index, hook name, args) -> (seconds it takes, value, error)``.
HookModel = Callable[[int, str, tuple[Any, ...]], tuple[float, Any, BaseException | None]]


class CoreView:
    """A simulated core as a :class:`~pydiscover.balancer.machine.Cluster` (what a machine may ask)."""

    def __init__(self, core: DiscoveryCore) -> None:
        self._core = core

    @property
    def id(self) -> str:
        return self._core.iid

    @property
    def is_master(self) -> bool:
        return self._core.is_master

    @property
    def running(self) -> bool:
        return self._core.running

    @property
    def fencing_token(self) -> int | None:
        return self._core.fencing_token

    @property
    def options(self) -> Options:
        return self._core.options

    def has_node(self, node_id: str) -> bool:
        return self._core.has_node(node_id)

    def max_payload(self, channel: str) -> int:
        return self._core.max_payload(channel)


@dataclass
class HookCall:
    """A hook running on a simulated node."""

    node: int
    call: int
    hook: str
    args: tuple[Any, ...]
    began: float
    ends: float
    value: Any
    error: BaseException | None


@dataclass
class Member:
    """One simulated process: its machine and what it has done."""

    machine: Machine
    alive: bool = True
    #: Crashed: it said nothing more (a graceful stop ends with ``alive`` false and this false).
    crashed: bool = False
    #: Its discovery is stopped for a while (``bounce``): the machine lives on, told ``stopped``.
    down: bool = False
    #: Closing gracefully: the calls its close waits for, then the goodbye and the core's stop.
    closing: bool = False
    events: list[tuple[float, str, tuple[Any, ...]]] = field(default_factory=list)
    settled: list[tuple[float, Settle]] = field(default_factory=list)
    #: Sends held to the end of the step and packed, as the driver holds them to the end of a loop turn.
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.machine)


class BalancerSim(Sim):
    """A cluster of balancer machines; see the module docstring."""

    def __init__(self, make_machine: Callable[[CoreView], Machine], hooks: HookModel, *, seed: int = 1,
                 latency: float = 0.002, loss: float = 0.0) -> None:
        super().__init__(latency=latency, seed=seed, record_hellos=False, record_events=False)
        self.make_machine = make_machine
        self.hooks = hooks
        self.loss = loss
        self.members: dict[int, Member] = {}
        self.calls: dict[tuple[int, int], HookCall] = {}
        self._machine_due: dict[int, float] = {}
        self._loss_rng = random.Random(seed * 7919 + 1)
        self.link = self._link
        #: Called after every step of the simulation (a test's invariant check).
        self.after_step: Callable[[], None] | None = None

    # ------------------------------------------------------------- faults
    def add_member(self, **options: Any) -> int:
        """A new process (a restart is a new one: a new instance id) joining now."""
        idx = self.add(start=False, **options)
        core = self.nodes[idx].core
        machine = self.make_machine(CoreView(core))
        core.join(machine.channel)
        self.members[idx] = Member(machine)
        self.call(idx, core.start)
        self.feed(idx, machine.started)
        return idx

    def crash(self, idx: int) -> None:
        """The process dies: no goodbye, its hooks and what they ran are gone."""
        self.kill(idx)
        self.members[idx].alive = False
        self.members[idx].crashed = True
        for key in [k for k in self.calls if k[0] == idx]:
            del self.calls[key]

    def stop_member(self, idx: int) -> None:
        """A graceful stop, as the runtime's: close the machine, wait for its calls, goodbye, core stop."""
        member = self.members[idx]
        if not member.alive or member.closing:
            return
        member.closing = True
        self.feed(idx, member.machine.close)
        self._maybe_finish_close(idx)

    def bounce(self, idx: int, down_for: float) -> None:
        """Stop the member's discovery and start it again ``down_for`` later (same instance).

        As the driver does for a machine that lives through a stop: ``stopped``, then every
        call in flight reported cancelled, then ``started`` once the discovery runs again.
        """
        member = self.members[idx]
        if not member.alive or member.closing or member.down:
            return
        member.down = True
        self.feed(idx, member.machine.stopped)
        for key in [k for k in self.calls if k[0] == idx]:
            del self.calls[key]
            self.feed(idx, member.machine.hook_done, key[1], None, Cancelled())
        self.call(idx, self.nodes[idx].core.stop)
        self._push(self.now + down_for, "start", idx)

    def _link(self, src: int, dst: int) -> bool:
        return src == dst or self.loss <= 0 or self._loss_rng.random() >= self.loss

    # ------------------------------------------------------------- queries
    def alive(self) -> list[int]:
        """Members whose process runs (closing ones included: they may still run hooks)."""
        return [i for i, m in self.members.items() if m.alive]

    def active(self) -> list[int]:
        """Members running, not closing and not down: what a fault may still hit, where work converges."""
        return [i for i, m in self.members.items() if m.alive and not m.closing and not m.down]

    def machine(self, idx: int) -> Any:
        return self.members[idx].machine

    def can_hear(self, a: int, b: int) -> bool:
        return self.nodes[a].alive and self.nodes[b].alive and self.nodes[a].segment == self.nodes[b].segment

    def calls_on(self, idx: int, hook: str | None = None) -> list[HookCall]:
        return [c for (node, _), c in self.calls.items() if node == idx and (hook is None or c.hook == hook)]

    # ------------------------------------------------------------- driving
    def feed(self, idx: int, step: Callable[..., Any], *args: Any) -> Any:
        """Like :meth:`Driver.feed`: run a machine input now and carry its actions out."""
        result = step(self.now, *args)
        value, actions = result if isinstance(result, tuple) else (None, result)
        self._carry_out(idx, actions)
        member = self.members[idx]
        if member.outbox.holding:
            for data in member.outbox.flush():
                self._send(idx, data)
        self._schedule_machine(idx)
        return value

    def _send(self, idx: int, data: Any) -> None:
        if not self.members[idx].alive:
            return
        sent = self.nodes[idx].core.send(self.now, self.members[idx].machine.channel, data)
        if sent:
            self._route(idx, sent)

    def _carry_out(self, idx: int, actions: list[Action]) -> None:
        member = self.members[idx]
        for action in actions:
            if not member.alive:
                return
            if isinstance(action, Send):
                for data in member.outbox.post(action.data):
                    self._send(idx, data)
            elif isinstance(action, Emit):
                member.events.append((self.now, action.event, action.args))
            elif isinstance(action, Run):
                took, value, error = self.hooks(idx, action.hook, action.args)
                self.calls[(idx, action.call)] = HookCall(idx, action.call, action.hook, action.args, self.now,
                                                          self.now + took, value, error)
                self._push(self.now + took, "hook", (idx, action.call))
            elif isinstance(action, Cancel):
                if self.calls.pop((idx, action.call), None) is not None:
                    self.feed(idx, member.machine.hook_done, action.call, None, Cancelled())
            elif isinstance(action, Settle):
                member.settled.append((self.now, action))
            elif isinstance(action, Assigned):
                pass  # what a future shows (its attempt count); nothing to simulate
            else:
                raise TypeError(f"unknown action {action!r}")

    def _schedule_machine(self, idx: int) -> None:
        member = self.members[idx]
        deadline = member.machine.next_deadline() if member.alive and self.nodes[idx].core.running else None
        if deadline is not None and self._machine_due.get(idx) != deadline:
            self._machine_due[idx] = max(deadline, self.now)
            self._push(max(deadline, self.now), "machine", idx)

    def _dispatch(self, at: float, kind: str, payload: Any) -> None:
        if kind == "machine":
            if self._machine_due.get(payload) == at and self.members[payload].alive:
                del self._machine_due[payload]
                self.feed(payload, self.members[payload].machine.tick)
        elif kind == "start":
            member = self.members[payload]
            if member.alive and member.down:
                member.down = False
                self.call(payload, self.nodes[payload].core.start)
                self.feed(payload, member.machine.started)
        elif kind == "hook":
            call = self.calls.pop(payload, None)
            if call is not None:  # not crashed or cancelled meanwhile
                self.feed(call.node, self.members[call.node].machine.hook_done, call.call, call.value, call.error)
                self._maybe_finish_close(call.node)
        else:
            super()._dispatch(at, kind, payload)
        if self.after_step is not None:
            self.after_step()

    def _route(self, idx: int, actions: list[Any]) -> None:
        super()._route(idx, actions)
        member = self.members.get(idx)
        if member is None or not member.alive or member.closing:
            return
        machine = member.machine
        for action in actions:
            if not isinstance(action, Emit):
                continue
            if action.event == machine.channel:
                data, packet = action.args
                self.feed(idx, machine.message, packet.iid, data)
            elif action.event == "added":
                self.feed(idx, machine.node_added, action.args[0].id)
            elif action.event == "removed":
                self.feed(idx, machine.node_removed, action.args[0].id)
            elif action.event == "promotion":
                self.feed(idx, machine.promoted)

    def _maybe_finish_close(self, idx: int) -> None:
        member = self.members[idx]
        if not member.closing or not member.alive:
            return
        waiting = {key[1] for key in self.calls if key[0] == idx} & member.machine.close_waits_for()
        if waiting:
            return
        self.feed(idx, member.machine.close_finished, False)
        self.call(idx, self.nodes[idx].core.stop)
        self.nodes[idx].alive = False
        member.alive = False
        for key in [k for k in self.calls if k[0] == idx]:  # blocking hooks nobody waits for end with the process
            del self.calls[key]


__all__ = ["BalancerSim", "CoreView", "HookCall", "HookModel", "Member"]
