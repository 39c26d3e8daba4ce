"""The simulator with a fake coordinator: leader keys under leases, on the same fake clock.

Each node is fenced (``DiscoveryCore.set_fenced``): it is master only while it holds one
of ``masters_required`` leader keys.  The fake etcd grants a free key in one round trip
(``etcd_latency``), numbers each grant with a revision that only grows, and frees a key
when its holder gives it back or its lease expires.  A node's lease stays good while the
node is alive and reaches etcd; :meth:`FencedSim.cut` takes a node off etcd (its lease then
expires ``ttl`` later, and the node itself stops believing ``margin`` before that, as the
runtime does).  :meth:`FencedSim.holders_ok` is the invariant: whoever believes itself master
holds a key, and no key has two holders.
"""

from __future__ import annotations

from typing import Any

from pydiscover.core import Action, MastershipWanted
from testbed.sim import Sim


class FencedSim(Sim):
    def __init__(self, *, ttl: float = 4.0, margin: float = 1.0, etcd_latency: float = 0.002, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ttl = ttl
        self.margin = margin
        self.etcd_latency = etcd_latency
        self.revision = 0
        #: Leader key slot -> (holder index, its token).
        self.slots: dict[int, tuple[int, int]] = {}
        self.slot_count = 1
        self.wanted: dict[int, bool] = {}
        self.want_seq: dict[int, int] = {}
        self.cut_off: set[int] = set()
        #: Every grant, as (time, node index, token): tokens must only grow.
        self.grants: list[tuple[float, int, int]] = []

    def add(self, *, start: bool = True, **options: Any) -> int:
        self.slot_count = int(options.get("masters_required", 1))
        idx = super().add(start=False, **options)
        core = self.nodes[idx].core
        core.set_fenced(True)
        if start:
            self.call(idx, core.start)
            self.call(idx, core.set_fence_ready, True)
        return idx

    def _route(self, idx: int, actions: list[Action]) -> None:
        super()._route(idx, actions)
        for action in actions:
            if isinstance(action, MastershipWanted):
                self._push(self.now + self.etcd_latency, "etcd", (idx, action.wanted, action.seq))

    def _dispatch(self, at: float, kind: str, payload: Any) -> None:
        if kind == "etcd":
            idx, wanted, seq = payload
            if seq >= self.want_seq.get(idx, 0):  # the coordinator follows the latest request
                self.want_seq[idx] = seq
                self.wanted[idx] = wanted
                self._etcd(idx)
        elif kind == "retry":
            if self.wanted.get(payload):
                self._etcd(payload)
        elif kind == "granted":
            idx, token, seq = payload
            if self.nodes[idx].alive:
                self._route(idx, self.nodes[idx].core.grant_mastership(self.now, token, seq))
        elif kind == "lease_expired":
            idx = payload
            if idx in self.cut_off or not self.nodes[idx].alive:
                self.slots = {s: h for s, h in self.slots.items() if h[0] != idx}
        elif kind == "fence_deadline":
            idx = payload
            if idx in self.cut_off and self.nodes[idx].alive:
                self.call(idx, self.nodes[idx].core.set_fence_ready, False)
        else:
            super()._dispatch(at, kind, payload)

    def _etcd(self, idx: int) -> None:
        """The node's latest request reaches etcd (unless cut off): acquire a free slot, or give it back.

        The grant travels back with ``etcd_latency`` (the election may change its mind meanwhile)."""
        if idx in self.cut_off or not self.nodes[idx].alive:
            return
        held = [s for s, (holder, _) in self.slots.items() if holder == idx]
        if not self.wanted.get(idx):
            for slot in held:
                del self.slots[slot]
            return
        if held:
            self._push(self.now + self.etcd_latency, "granted", (idx, self.slots[held[0]][1], self.want_seq[idx]))
            return
        free = [s for s in range(self.slot_count) if s not in self.slots]
        if not free:
            self._push(self.now + 0.25, "retry", idx)  # as the coordinator: try again shortly
            return
        self.revision += 1
        self.slots[free[0]] = (idx, self.revision)
        self.grants.append((self.now, idx, self.revision))
        self._push(self.now + self.etcd_latency, "granted", (idx, self.revision, self.want_seq[idx]))

    # ---------------------------------------------------------------- faults
    def kill(self, idx: int) -> None:
        super().kill(idx)
        self._push(self.now + self.ttl, "lease_expired", idx)

    def cut(self, idx: int) -> None:
        """``idx`` loses etcd (UDP intact): it stops believing at ttl - margin, its lease ends at ttl."""
        self.cut_off.add(idx)
        self._push(self.now + self.ttl - self.margin, "fence_deadline", idx)
        self._push(self.now + self.ttl, "lease_expired", idx)

    # --------------------------------------------------------------- queries
    def holders_ok(self) -> bool:
        """Every node that believes itself master holds a key, and holds it under its token."""
        holders = {holder: token for holder, token in self.slots.values()}
        for idx in self.masters():
            if idx in self.cut_off and idx not in holders:
                return False
            if holders.get(idx) != self.nodes[idx].core.fencing_token:
                return False
        return len(holders) <= self.slot_count
