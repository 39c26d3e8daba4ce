"""A deterministic simulator: many cores, one fake clock, an in-memory broadcast domain.

No sockets and no sleeps: time jumps straight to the next delivery or deadline, so a
200-node minute runs in seconds and every run with the same seed is identical.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydiscover.core import Action, DiscoveryCore, Emit, Transmit
from pydiscover.options import build_options


@dataclass
class SimNode:
    core: DiscoveryCore
    address: tuple[str, int]
    events: list[tuple[float, str, tuple[Any, ...]]] = field(default_factory=list)
    alive: bool = True
    #: Partition label: datagrams only reach nodes with the same label.
    segment: int = 0


class Sim:
    def __init__(
        self, *, latency: float = 0.0005, seed: int = 1, record_hellos: bool = True, record_events: bool = True
    ) -> None:
        self.now = 0.0
        #: Keep every node's events in ``SimNode.events`` (off: a long run that only checks state).
        self.record_events = record_events
        #: Record ``helloReceived`` for hellos that changed nothing (off: a big, fast simulation).
        self.record_hellos = record_hellos
        self.latency = latency
        self.rng = random.Random(seed)
        self.nodes: list[SimNode] = []
        self._queue: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._scheduled: dict[int, float] = {}
        #: Optional filter: return False to lose a datagram (sender index, receiver index).
        self.link: Callable[[int, int], bool] = lambda src, dst: True
        #: Every datagram sent, as (time, sender index, bytes): what an eavesdropper captures.
        self.captured: list[tuple[float, int, bytes]] = []

    def add(self, *, start: bool = True, **options: Any) -> int:
        options.setdefault("hostname", "sim")
        options.setdefault("ignore_process", False)
        idx = len(self.nodes)
        core = DiscoveryCore(
            build_options(**options), pid=f"p{idx}", iid=f"n{idx:04d}", rng=random.Random(self.rng.random())
        )
        core.set_listening(hello_received=self.record_hellos)
        self.nodes.append(SimNode(core, ("10.0.0.1", 10000 + idx)))
        if start:
            self.call(idx, core.start)
        return idx

    def call(self, idx: int, fn: Callable[..., list[Action] | None], *args: Any) -> Any:
        """Run a core method with ``now`` and route what it returns."""
        actions = fn(self.now, *args)
        self._route(idx, actions or [])
        return actions

    def inject(self, datagram: bytes, *, source: tuple[str, int] = ("10.6.6.6", 666)) -> None:
        """An attacker's datagram, delivered now to every live node."""
        for dst, node in enumerate(self.nodes):
            if node.alive:
                self._received(dst, node.core.datagram_received(self.now, datagram, source))

    def kill(self, idx: int) -> None:
        """A crash: no goodbye, the node simply goes silent."""
        self.nodes[idx].alive = False

    def stop(self, idx: int) -> None:
        self.call(idx, self.nodes[idx].core.stop)
        self.nodes[idx].alive = False

    def _route(self, idx: int, actions: list[Action]) -> None:
        node = self.nodes[idx]
        for action in actions:
            if isinstance(action, Transmit):
                self.captured.append((self.now, idx, action.datagram))
                self._push(self.now + self.latency, "deliver", (idx, action.datagram))
            elif isinstance(action, Emit) and self.record_events:
                node.events.append((self.now, action.event, action.args))
        deadline = node.core.next_deadline()
        if deadline is not None and node.alive and self._scheduled.get(idx) != deadline:
            self._scheduled[idx] = deadline
            self._push(deadline, "tick", idx)

    def _received(self, idx: int, actions: list[Action]) -> None:
        if actions:  # none: the core moved no deadline earlier (DiscoveryCore.datagram_received)
            self._route(idx, actions)

    def _push(self, at: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._queue, (at, next(self._order), kind, payload))

    def run_until(self, t: float, *, max_steps: int = 10_000_000) -> None:
        for _ in range(max_steps):
            if not self._queue or self._queue[0][0] > t:
                break
            at, _, kind, payload = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            self._dispatch(at, kind, payload)
        else:
            raise AssertionError("simulation did not settle within max_steps")
        self.now = max(self.now, t)

    def _dispatch(self, at: float, kind: str, payload: Any) -> None:
        """One queued event; a subclass adds kinds of its own (testbed.balancer_sim)."""
        if kind == "tick":
            if self._scheduled.get(payload) == at:
                del self._scheduled[payload]
                self._tick_due(payload)
        else:
            self._deliver(*payload)

    # The two steps a subclass may change (tests/test_chaos.py adds loss, freezes, clocks).
    def _tick_due(self, idx: int) -> None:
        node = self.nodes[idx]
        if node.alive:
            self._route(idx, node.core.tick(self.now))

    def _deliver(self, src: int, datagram: bytes) -> None:
        sender = self.nodes[src]
        for dst, node in enumerate(self.nodes):
            if node.alive and node.segment == sender.segment and self.link(src, dst):
                self._received(dst, node.core.datagram_received(self.now, datagram, sender.address))

    # ---------------------------------------------------------------- faults
    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Only nodes of the same group hear each other (nodes in no group form one of their own)."""
        groups = [list(group) for group in groups]
        for node in self.nodes:
            node.segment = len(groups)
        for label, members in enumerate(groups):
            for idx in members:
                self.nodes[idx].segment = label

    def heal(self) -> None:
        for node in self.nodes:
            node.segment = 0

    # --------------------------------------------------------------- queries
    def masters(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.alive and n.core.is_master]

    def events(self, idx: int, name: str) -> list[tuple[float, tuple[Any, ...]]]:
        return [(t, args) for t, ev, args in self.nodes[idx].events if ev == name]
