"""The ResourceManager's rules as a sans-IO state machine: every resource owned by exactly one live node.

Protocol, over one discovery channel (``resources`` by default):

* Every node announces itself with ``{"type": "ack", "e": epoch, "m": master}``: the
  latest plan it has *applied* (stopped everything that plan does not give it).  Sent
  at once after applying, and every ``hello_interval`` as presence.
* The master computes a plan when the set of live managers or resources changes:
  ``assignment.rebalance(current, resources, members)`` (sticky, even, minimal
  moves), numbered ``(epoch, master id)``, and broadcasts it in parts
  ``{"type": "plan", "e", "m", "k": part, "c": parts, "n": node, "r": [ids]}``, repeated
  every ``hello_interval`` so lost datagrams and newcomers catch up.  Parts are cut to
  the channel's datagram budget (:meth:`Cluster.max_payload`); when that budget changes
  (a new key or cipher) the master cuts and issues the plan again under a new epoch.
* A node adopts the highest complete plan, stops what it no longer owns, acks, and
  starts a newly assigned resource only once its previous owner has acked this plan
  (so it released it) or has left the cluster: a resource is never started on a new
  owner while the old one may still run it.
* A new master continues from the plan it already holds, so failover moves nothing.
* A manager that closes stops what it runs, *then* says ``{"type": "bye", ...}``: the
  others take its share at once, and never while it may still run any of it.  Until
  the bye its presence says ``"closing": true``: the master plans without it, and a
  newcomer (which adopts a plan that no longer names it) still waits for its bye.  A
  manager starts nothing in its first ``LISTEN_ROUNDS`` rounds, so it has heard every
  manager that may still run something.
* Capacity: a manager whose capacity is not 1 says ``"cap": n`` in its acks (a manager
  that says nothing has capacity 1, as 0.2 managers do).  The master splits the
  resources in proportion (``assignment.rebalance``); capacity 0 takes nothing, so its
  resources move away by the ordinary stop-ack-start path.
* Run-time changes (``add`` / ``remove`` on any node) form the *overlay*: one entry per
  resource id changed at run time, ``[id, clock, origin, resource or null]`` (``null``:
  removed).  ``(clock, origin)`` orders two changes of one id, the higher wins (last
  writer wins); ``clock`` is a hybrid clock, above every clock this node has seen and
  at least the wall-clock milliseconds the caller gave, so a later change wins.  The
  overlay is a join-semilattice: merging in any order, any number of times, gives the
  same result, so every manager merges every change it hears.

  - The origin broadcasts ``{"type": "change", "x": [entries]}`` at once.
  - The master broadcasts its whole overlay ``{"type": "overlay", "m", "v": version,
    "k": part, "c": parts, "x": [entries]}`` when it changed (at the end of the turn)
    and every ``hello_interval``; a receiver merges it, and once it holds every part
    compares: the entries it holds that the master's overlay lacks (or holds older) are
    sent again as ``change``.  So a change made while there is no master, and the
    overlay that a new master has not heard, reach the master as soon as it speaks;
    until an overlay is heard at all, a manager repeats its unconfirmed changes every
    round.
  - The resources are the base set (the ``resources`` list, or the callable's latest
    result) with the overlay on top: an id the overlay names follows the overlay, an add
    with its definition, a remove dropping it, whatever the base set says later.
  - The master plans as soon as the overlay changes; a manager never starts an id its
    own overlay removed, and stops it at once when it hears the removal, even before the
    plan that drops it.

Short field names save datagram budget.  The kind was ``"t"`` before the balancer's one
wire convention (``"type"``, as the task channel has it); an incoming ``"t"`` is still read.

Pure: inputs carry ``now``, outputs are :mod:`~pydiscover.balancer.machine` actions, the
user's hooks are :class:`Run` requests answered by :meth:`ResourceMachine.hook_done`.  The
same machine runs under :class:`~pydiscover.balancer.driver.Driver` and in the simulator.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from .. import wire
from .assignment import rebalance
from .machine import Action, Cancel, Cluster, Emit, Machine, Run, Send, check_fits, json_size, message_kind
from .overlay import NO_VERSION, Change, Overlay, Version, parse_entry

log = logging.getLogger("pydiscover.balancer.resources")

Resource = dict[str, Any]
PlanKey = tuple[int, str]
#: The largest capacity a manager may announce.
MAX_CAPACITY = 1_000_000
_NO_PLAN: PlanKey = (-1, "")
#: A manager listens this many ``hello_interval`` after it starts before it starts anything:
#: a manager still stopping what it ran (closing) is named by no plan, only by its presence.
LISTEN_ROUNDS = 2
#: A departed manager is forgotten this many node timeouts after it left (and no plan we hold names it).
FORGET_AFTER_TIMEOUTS = 10
#: The most parts one plan may have (a plan claiming more is ignored).
MAX_PARTS = 100_000


def validate_capacity(capacity: Any) -> int:
    """``capacity`` if it is an int in ``[0, MAX_CAPACITY]``; else ``ValueError``/``TypeError``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int >= 0 (1 by default), got {capacity!r}")
    if not 0 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 0 and {MAX_CAPACITY}, got {capacity!r}")
    return capacity


def validate_resource(resource: Any) -> Resource:
    """A copy of ``resource`` if it is a dict with a non-empty string ``id`` and JSON values; else raises."""
    if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or not resource["id"]:
        raise ValueError(f"a resource must be a dict with a non-empty string 'id', got {resource!r}")
    json_size(resource)  # TypeError if it cannot travel
    return dict(resource)


def validate_resources(items: Any) -> dict[str, Resource]:
    """``{id: resource}``; raises on anything but a list of dicts with unique non-empty string ``id``."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"resources must be a list of dicts (or a callable returning one), got {type(items).__name__}")
    out: dict[str, Resource] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise ValueError(f"each resource must be a dict with a non-empty string 'id', got {item!r}")
        if item["id"] in out:
            raise ValueError(f"duplicate resource id {item['id']!r}")
        out[item["id"]] = item
    return out


#: Seconds between two tries for an owner key still held by the previous owner.
OWNER_RETRY = 0.25


class _Call:
    """A hook call in flight: what it is for, so its answer can be applied."""

    __slots__ = ("failure", "handle", "hook", "resource", "rid")

    def __init__(self, hook: str, rid: str = "", resource: Resource | None = None, handle: Any = None,
                 failure: BaseException | None = None) -> None:
        self.hook, self.rid, self.resource, self.handle, self.failure = hook, rid, resource, handle, failure


class ResourceMachine(Machine):
    """One node's share of the resources: plans, acks, stops before starts, health and retries.

    ``resources``: ``{id: resource}`` (checked against the datagram budget here), or
    ``None`` to read them with ``Run(call, "resources", ())`` at start and every
    ``refresh_interval`` (while none were read, every round).  ``has_stop`` /
    ``has_healthcheck``: whether those hooks exist (without ``stop`` a release is
    immediate; without ``healthcheck`` there are no health rounds).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        channel: str = "resources",
        resources: dict[str, Resource] | None,
        refresh_interval: float | None = None,
        health_interval: float = 5.0,
        retry_delay: float = 1.0,
        has_stop: bool = True,
        has_healthcheck: bool = False,
        listen_rounds: int = LISTEN_ROUNDS,
        fenced: bool = False,
        capacity: int = 1,
    ) -> None:
        self.cluster = cluster
        #: This node's share of the resources relative to the others' (0: it runs nothing).
        self.capacity = validate_capacity(capacity)
        #: With a coordinator: a resource starts only after ``Run("acquire", rid)`` returned its
        #: owner key's revision (the fencing token), and every resource stops on :meth:`fence_lost`.
        self.fenced = fenced
        self._fence_ok = not fenced
        self._tokens: dict[str, int] = {}
        self._releasing: set[str] = set()  # owner keys being given back (acquired again only after)
        self.channel = channel
        self.refresh_interval, self.health_interval, self.retry_delay = refresh_interval, health_interval, retry_delay
        self.has_stop, self.has_healthcheck = has_stop, has_healthcheck
        self.listen_rounds = listen_rounds
        self._me = cluster.id
        self._header_size: int | None = None  # bytes of a plan part with no ids
        self._from_source = resources is None
        self._base: dict[str, Resource] = {}  # the list, or the callable's latest result
        if resources is not None:
            room = cluster.max_payload(channel)
            for rid in resources:
                if not self._fits(rid, room):
                    raise ValueError(f"resource id {rid!r} does not fit in a plan message of the channel "
                                     f"{channel!r} (budget {room} bytes): use a shorter id")
            self._base = dict(resources)
        self._overlay = Overlay()  # run-time changes, by id (see the module docstring)
        self._defs: dict[str, Resource] = dict(self._base)  # the base set with the overlay on top
        self._overlay_cut: tuple[int, int, list[list[Any]]] | None = None  # (version, budget, parts)
        self._overlay_due: float | None = None  # the master broadcasts its changed overlay then
        self._overlay_parts: dict[tuple[str, int], dict[int, list[Any]]] = {}  # a master's overlay, arriving
        self._overlay_heard_at = -math.inf  # when a master's whole overlay last arrived
        self._unconfirmed: set[str] = set()  # ids whose entry the master has not shown yet
        self._caps: dict[str, int] = {}  # the other managers' capacities (1 unless they said)
        self._running_defs: dict[str, Resource] = {}  # what each running resource was started with
        self._now = 0.0
        self._out: list[Action] = []
        self._running: dict[str, Any] = {}
        self._busy: set[str] = set()  # starting or stopping
        self._retry_at: dict[str, float] = {}
        self._parts: dict[PlanKey, dict[int, tuple[str, list[str]]]] = {}
        self._part_counts: dict[PlanKey, int] = {}
        self._plan: PlanKey = _NO_PLAN
        self._assignment: dict[str, str] = {}
        self._mine: frozenset[str] = frozenset()  # my share of the adopted plan
        self._plan_members: frozenset[str] = frozenset()
        self._previous_members: frozenset[str] = frozenset()
        self._applied: PlanKey = _NO_PLAN
        self._acks: dict[str, PlanKey] = {}
        self._presence: dict[str, float] = {}
        self._gone: dict[str, float] = {}  # managers that closed (their node may live on) -> when
        self._closing: set[str] = set()  # managers releasing what they run before their bye
        self._unfenced: set[str] = set()  # managers without a coordinator lease: they can own nothing
        self._removed: dict[str, float] = {}  # nodes discovery saw leave (goodbye or timeout) -> when
        self._published_inputs: tuple[tuple[tuple[str, int], ...], tuple[str, ...]] | None = None
        self._cut_budget = 0  # the budget my current plan's parts were cut with
        self._refused: set[tuple[str, int]] = set()  # (id, budget) already reported as too long
        self._highest_epoch = -1
        self._began = False
        #: Start nothing before this: time to hear every manager that may hold resources,
        #: closing ones included (they are in no plan a newcomer adopts).
        self._listen_until = math.inf
        self._closed = False
        self._bye_sent = False
        self._bye_pending = False  # close_finished came while a stop still ran
        self._calls: dict[int, _Call] = {}
        self._next_call = 0
        self._round_at: float | None = None  # the periodic round, every hello_interval
        self._replan_at: float | None = None  # a debounced replan
        self._health_at: float | None = None  # the next health round
        self._health_queue: deque[tuple[str, Any]] = deque()  # this health round's resources still to check
        self._health_call: int | None = None
        self._refresh_call: int | None = None
        self._next_refresh = 0.0
        self.stats: dict[str, int] = {"plans_published": 0, "plans_adopted": 0, "starts": 0, "stops": 0,
                                      "failures": 0, "added": 0, "removed": 0}

    # ---------------------------------------------------------------- views
    def token(self, rid: str) -> int | None:
        """With a coordinator: the fencing token of this node's ownership of ``rid``, or ``None``."""
        return self._tokens.get(rid)

    @property
    def owned(self) -> frozenset[str]:
        """Ids running here: the start hook returned and no stop finished since."""
        return frozenset(self._running)

    @property
    def handles(self) -> dict[str, Any]:
        """Id -> the handle its start hook returned."""
        return dict(self._running)

    @property
    def busy(self) -> frozenset[str]:
        """Ids whose start or stop hook is in flight (a start in flight may already run the resource)."""
        return frozenset(self._busy)

    @property
    def assignment(self) -> dict[str, str]:
        """The adopted plan: resource id -> node id."""
        return dict(self._assignment)

    @property
    def epoch(self) -> int:
        return self._plan[0]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def resources(self) -> dict[str, Resource]:
        """The resources known now (``{id: resource}``): the base set with the run-time changes on top."""
        return dict(self._defs)

    @property
    def changes(self) -> dict[str, tuple[Version, Resource | None]]:
        """The overlay: id -> (version, resource added, or ``None`` for removed)."""
        return {rid: ((c[0], c[1]), c[2]) for rid, c in self._overlay.items()}

    @property
    def unconfirmed(self) -> frozenset[str]:
        """Ids changed here (or known here) that the master's overlay does not show yet."""
        return frozenset(self._unconfirmed)

    @property
    def remembered(self) -> int:
        """How many other managers the machine keeps anything about (live, and lately departed)."""
        return len(self._presence.keys() | self._gone.keys() | self._removed.keys() | self._acks.keys()
                   | self._caps.keys() | self._closing | self._unfenced)

    # ------------------------------------------------------------- plumbing
    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _enter(self, now: float) -> None:
        self._now = now

    def _send(self, data: dict[str, Any]) -> None:
        self._out.append(Send(data))

    def _emit(self, event: str, *args: Any) -> None:
        self._out.append(Emit(event, args))

    def _run(self, call: _Call, *args: Any) -> int:
        self._next_call += 1
        self._calls[self._next_call] = call
        self._out.append(Run(self._next_call, call.hook, args))
        return self._next_call

    def _send_ack(self) -> None:
        ack: dict[str, Any] = {"type": "ack", "e": self._applied[0], "m": self._applied[1]}
        if self.capacity != 1:
            ack["cap"] = self.capacity  # (no field: capacity 1, as a 0.2 manager has)
        if self._closed:
            ack["closing"] = True  # still running what it stops: nobody may take it yet
        if not self._fence_ok:
            ack["unfenced"] = True  # no lease to own anything under: plan without this node
        self._send(ack)

    # --------------------------------------------------------------- inputs
    def next_deadline(self) -> float | None:
        if self._closed:
            return None if self._bye_sent else self._round_at  # the closing presence, until the bye
        times = [t for t in (self._round_at, self._replan_at, self._health_at, self._overlay_due) if t is not None]
        times.extend(self._retry_at.values())
        return min(times) if times else None

    def started(self, now: float) -> list[Action]:
        """Begin the rounds (once: a closed manager stays closed, also through a restart)."""
        self._enter(now)
        if self._began or self._closed:
            return []
        self._began = True
        self._listen_until = now + self.listen_rounds * self.cluster.options.hello_interval
        if self.has_healthcheck:
            self._health_at = now + self.health_interval
        self._round()
        return self._take()

    def tick(self, now: float) -> list[Action]:
        self._enter(now)
        if self._closed:
            if not self._bye_sent and self._round_at is not None and self._round_at <= now:
                self._round_at = now + self.cluster.options.hello_interval
                self._send_ack()
            return self._take()
        due = [rid for rid, at in self._retry_at.items() if at <= now]
        for rid in due:
            del self._retry_at[rid]
        if self._overlay_due is not None and self._overlay_due <= now:
            self._overlay_due = None
            if self.cluster.is_master:
                self._broadcast_overlay()  # before the plan: receivers know what it names
        if self._replan_at is not None and self._replan_at <= now:
            self._replan_at = None
            self._replan_now()
        if self._round_at is not None and self._round_at <= now:
            self._round()
        elif due:
            self._reconcile()  # a retry delay ran out
        if self._health_at is not None and self._health_at <= now:
            self._health_at = None
            self._health_queue = deque(self._running.items())
            self._health_next()
        return self._take()

    def message(self, now: float, sender: str, data: Any) -> list[Action]:
        self._enter(now)
        if not isinstance(data, dict) or self._closed:
            return []
        kind = message_kind(data)
        if kind == "change":
            self._on_change(data)
            return self._take()
        if kind == "overlay":
            self._on_overlay(sender, data)
            return self._take()
        self._presence[sender] = now
        try:
            key: PlanKey = (int(data["e"]), str(data["m"]))
        except (KeyError, TypeError, ValueError):
            return []
        if not -1 <= key[0] <= wire.MAX_SEQ:
            return []  # an epoch no honest manager reaches: it would break our plan headers
        self._highest_epoch = max(self._highest_epoch, key[0])
        if kind == "bye":  # its manager closed: it runs nothing and takes nothing
            self._presence.pop(sender, None)
            self._acks.pop(sender, None)
            self._closing.discard(sender)
            self._gone[sender] = now
            if self.cluster.is_master:
                self._replan()
            self._reconcile()
            return self._take()
        self._gone.pop(sender, None)
        self._removed.pop(sender, None)  # heard again: it may hold resources after all
        if kind == "ack":
            fresh = sender not in self._acks
            if fresh and self.cluster.is_master:
                self._overlay_due = now  # a newcomer learns the run-time changes at once, not next round
            self._acks[sender] = key
            closing = data.get("closing") is True
            if closing != (sender in self._closing):
                fresh = True  # it began closing (or, restarted, it is back): plan without it (or with it)
                (self._closing.add if closing else self._closing.discard)(sender)
            unfenced = data.get("unfenced") is True
            if unfenced != (sender in self._unfenced):
                fresh = True  # it lost its coordinator lease (or has it back): plan without it (or with it)
                (self._unfenced.add if unfenced else self._unfenced.discard)(sender)
            cap = data.get("cap", 1)
            if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_CAPACITY:
                cap = 1  # nonsense: as a manager that says nothing
            if cap != self._caps.get(sender, 1):
                fresh = True  # its share changes
                self._caps[sender] = cap
            if key > self._plan and self.cluster.is_master:
                # It applied a plan above ours that we never saw whole (the other side of a
                # healed partition): it ignores ours, so plan again, numbered above both.
                self._published_inputs = None
                fresh = True
            if fresh and self.cluster.is_master:
                self._replan()
            self._reconcile()
        elif kind == "plan":
            self._on_part(key, data)
        return self._take()

    def node_removed(self, now: float, node_id: str) -> list[Action]:
        self._enter(now)
        if self._closed:
            return []
        self._removed[node_id] = now
        self._presence.pop(node_id, None)
        self._acks.pop(node_id, None)
        if self.cluster.is_master:
            self._replan()
        self._reconcile()
        return self._take()

    def promoted(self, now: float) -> list[Action]:
        self._enter(now)
        self._replan()
        if not self._closed:
            # The overlay at once: the others answer with what it lacks before the plan is due.
            self._overlay_due = now
        return self._take()

    # ------------------------------------------------------ run-time changes
    def add(self, now: float, resource: Resource, stamp: int = 0) -> tuple[Version, list[Action]]:
        """Add (or redefine) ``resource`` cluster-wide; returns the change's version and the actions.

        ``stamp``: wall-clock milliseconds (the change's clock is at least that, so a
        later change of the same id on another node wins).  Raises ``ValueError`` for a
        resource without a string ``id``, :class:`~pydiscover.errors.PacketTooLarge` if it
        cannot travel in one datagram, ``TypeError`` if it is not JSON, ``RuntimeError``
        once closed.
        """
        self._enter(now)
        resource = validate_resource(resource)
        rid = resource["id"]
        room = self.cluster.max_payload(self.channel)
        if not self._fits(rid, room):
            raise ValueError(f"resource id {rid!r} does not fit in a plan message of the channel "
                             f"{self.channel!r} (budget {room} bytes): use a shorter id")
        check_fits(self._overlay_header([[rid, wire.MAX_SEQ, self._me, resource]]), room,
                   f"resource {rid!r} (in an overlay message)")
        return self._change(rid, resource, stamp)

    def remove(self, now: float, resource_id: str, stamp: int = 0) -> tuple[Version, list[Action]]:
        """Remove ``resource_id`` cluster-wide (known or not: it may be on its way); see :meth:`add`."""
        self._enter(now)
        if not isinstance(resource_id, str) or not resource_id:
            raise ValueError(f"resource_id must be a non-empty string, got {resource_id!r}")
        check_fits(self._overlay_header([[resource_id, wire.MAX_SEQ, self._me, None]]),
                   self.cluster.max_payload(self.channel), f"resource id {resource_id!r} (in an overlay message)")
        return self._change(resource_id, None, stamp)

    def set_capacity(self, now: float, capacity: int) -> list[Action]:
        """This node's capacity from now on; the master hears it at once and plans with it."""
        self._enter(now)
        capacity = validate_capacity(capacity)
        if capacity == self.capacity:
            return []
        self.capacity = capacity
        if self._began and not self._closed:
            self._send_ack()
            if self.cluster.is_master:
                self._replan()
        return self._take()

    def _change(self, rid: str, resource: Resource | None, stamp: int) -> tuple[Version, list[Action]]:
        if self._closed:
            raise RuntimeError("the resource manager is closed")
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            stamp = 0
        clock = self._overlay.next_clock(stamp)
        change: Change = (clock, self._me, resource)
        self._merge(rid, change)
        self._after_merge()
        if not self.cluster.is_master:
            self._unconfirmed.add(rid)  # sent again until the master's overlay shows it
            self._send_changes([rid])
        return (clock, self._me), self._take()

    def _merge(self, rid: str, change: Change) -> bool:
        """Take ``change`` into the overlay if it is newer than what we hold; events for what it changes."""
        if not self._overlay.merge(rid, change):
            return False
        before, after = self._defs.get(rid), change[2]
        if after is None:
            self._defs.pop(rid, None)
            if before is not None:
                self.stats["removed"] += 1
                self._emit("resourceRemoved", before)
        else:
            self._defs[rid] = after
            if after != before:
                self.stats["added"] += 1
                self._emit("resourceAdded", after)
        return True

    def _after_merge(self) -> None:
        """The overlay changed: the master shows it and plans at the end of this turn; stop what was removed."""
        if self._closed:
            return
        if self.cluster.is_master:
            self._overlay_due = self._now
            self._replan_at = self._now if self._replan_at is None else min(self._replan_at, self._now)
        self._reconcile()

    def _overlay_header(self, entries: list[list[Any]]) -> dict[str, Any]:
        """An overlay part with its numbers as long as they can be (the size it may reach when sent)."""
        return {"type": "overlay", "m": self._me, "v": wire.MAX_SEQ, "k": MAX_PARTS, "c": MAX_PARTS, "x": entries}

    def _chunks(self, entries: list[list[Any]], room: int) -> list[list[list[Any]]]:
        """``entries`` cut into lists that each fit an overlay part (at least one list, perhaps empty)."""
        budget = room - json_size(self._overlay_header([]))
        chunks: list[list[list[Any]]] = [[]]
        size = 0
        for entry in entries:
            cost = json_size(entry) + 1  # and a comma
            if cost > budget:
                log.warning("overlay entry for %r does not fit a datagram (%d bytes): not sent", entry[0], cost)
                continue
            if chunks[-1] and size + cost > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += cost
        return chunks

    def _send_changes(self, rids: Iterable[str]) -> None:
        for chunk in self._chunks(self._overlay.wire(rids), self.cluster.max_payload(self.channel)):
            if chunk:
                self._send({"type": "change", "x": chunk})

    def _broadcast_overlay(self) -> None:
        """The master's whole overlay, in parts (one, empty, when there is none: the others compare)."""
        room = self.cluster.max_payload(self.channel)
        cut = self._overlay_cut
        if cut is None or cut[0] != self._overlay.version or cut[1] != room:
            every = self._overlay.wire(rid for rid, _ in self._overlay.items())
            cut = (self._overlay.version, room, self._chunks(every, room))
            self._overlay_cut = cut
        version, _, parts = cut
        for k, chunk in enumerate(parts):
            self._send({"type": "overlay", "m": self._me, "v": version, "k": k, "c": len(parts), "x": chunk})

    def _on_change(self, data: dict[str, Any]) -> None:
        items = data.get("x")
        if not isinstance(items, list):
            return
        changed = False
        for item in items:
            entry = parse_entry(item)
            if entry is not None and self._merge(*entry):
                changed = True
        if changed:
            self._after_merge()
        elif self.cluster.is_master:
            self._overlay_due = self._now  # sent again: its origin missed our overlay, show it again

    def _on_overlay(self, sender: str, data: dict[str, Any]) -> None:
        try:
            master, version, k, count = str(data["m"]), int(data["v"]), int(data["k"]), int(data["c"])
            items = data["x"]
        except (KeyError, TypeError, ValueError):
            return
        if master != sender or not 0 <= k < count <= MAX_PARTS or not isinstance(items, list):
            return
        entries = [e for e in map(parse_entry, items) if e is not None]
        changed = False
        for entry in entries:
            changed = self._merge(*entry) or changed
        key = (sender, version)
        held = [other for other in self._overlay_parts if other[0] == sender]
        if any(other[1] > version for other in held):
            parts = None  # an older version than one already arriving: merged, not compared
        else:
            for other in held:
                if other != key:
                    del self._overlay_parts[other]
            if len(self._overlay_parts) >= 16 and key not in self._overlay_parts:
                self._overlay_parts.pop(next(iter(self._overlay_parts)))  # several masters at once: bounded
            parts = self._overlay_parts.setdefault(key, {})
            parts[k] = items
        if parts is not None and len(parts) == count:
            del self._overlay_parts[key]
            shown: dict[str, Version] = {}
            for chunk in parts.values():
                for rid, change in (e for e in map(parse_entry, chunk) if e is not None):
                    shown[rid] = max(shown.get(rid, NO_VERSION), (change[0], change[1]))
            self._overlay_heard_at = self._now
            lacking = self._overlay.lacking(shown)
            self._unconfirmed = lacking
            if lacking:
                self._send_changes(lacking)  # what that master has not heard: ours, or from before it
        if changed:
            self._after_merge()

    def hook_done(self, now: float, call: int, value: Any, error: BaseException | None) -> list[Action]:
        self._enter(now)
        record = self._calls.pop(call, None)
        if record is None:
            return []
        if record.hook == "acquire":
            self._acquire_done(record, value, error)
        elif record.hook == "release":
            self._releasing.discard(record.rid)
            self._reconcile()
        elif record.hook == "start":
            self._start_done(record, value, error)
        elif record.hook == "stop":
            if error is not None:
                log.warning("stop(%s) raised %r; treating it as stopped", record.rid, error)
            self._stop_done(record)
        elif record.hook == "healthcheck":
            self._health_done(record, error)
        elif record.hook == "resources":
            self._refresh_done(value, error)
        if self._bye_pending and not self.close_waits_for():
            self._bye()
        return self._take()

    def fence_lost(self, now: float) -> list[Action]:
        """The lease may not be acted on: stop every resource now (a start in flight stops when it ends)."""
        self._enter(now)
        if not self._fence_ok:
            return []
        self._fence_ok = False
        for rid in [r for r in self._running if r not in self._busy]:
            self._begin_stop(rid)
        if self._began and not self._closed:
            self._send_ack()  # the master plans without this node at once
            if self.cluster.is_master:
                self._replan()
        return self._take()

    def fence_ready(self, now: float) -> list[Action]:
        """The lease is good (again): this node may own resources; the master plans with it."""
        self._enter(now)
        if self._fence_ok and self._began:
            return []
        self._fence_ok = True
        if self._began and not self._closed:
            self._send_ack()  # and with it again
            if self.cluster.is_master:
                self._replan()
        self._reconcile()
        return self._take()

    def close(self, now: float) -> list[Action]:
        """Closed at once: rounds end, in-flight checks are cancelled, each idle resource is stopped.

        The ``bye`` waits for :meth:`close_finished`, since it lets the others start this
        node's resources: every start and stop in flight must end first.
        """
        self._enter(now)
        if self._closed:
            return []
        self._closed = True
        self._round_at = now  # the closing presence goes out now and every round until the bye
        self._replan_at = self._health_at = self._overlay_due = None
        if self.cluster.is_master and self._overlay:
            self._broadcast_overlay()  # once more for whoever masters next (a newcomer may not have it)
        elif self._unconfirmed:
            self._send_changes(self._unconfirmed)  # a last chance for changes the master has not shown
        self._health_queue.clear()
        self._retry_at.clear()
        for call in (self._health_call, self._refresh_call):
            if call is not None and call in self._calls:
                del self._calls[call]
                self._out.append(Cancel(call))
        self._health_call = self._refresh_call = None
        for rid in [r for r in self._running if r not in self._busy]:
            self._begin_stop(rid)
        return self._take()

    def close_waits_for(self) -> frozenset[int]:
        """The calls in flight that may hold or run something: acquire, start, stop (a start ending
        during the close adds its stop; an acquire ending, its release)."""
        return frozenset(c for c, record in self._calls.items() if record.hook in ("acquire", "start", "stop"))

    def close_finished(self, now: float, gave_up: bool) -> list[Action]:
        """Say ``bye``; if a start ended during the wait and its stop still runs, once that stop ends."""
        self._enter(now)
        if gave_up:
            log.warning("%d resource start/stop hook(s) still running into close; saying bye anyway",
                        len(self.close_waits_for()))
        elif self.close_waits_for():
            self._bye_pending = True
            return []
        self._bye()
        return self._take()

    def _bye(self) -> None:
        self._bye_pending = False
        self._bye_sent = True
        self._round_at = None
        self._send({"type": "bye", "e": self._applied[0], "m": self._applied[1]})

    # ------------------------------------------------------------- periodic
    def _round(self) -> None:
        """Presence ack; the master replans (when inputs or the budget changed) and repeats its plan; reconcile."""
        self._round_at = self._now + self.cluster.options.hello_interval
        try:
            if self._from_source and self._refresh_call is None and (not self._base or (
                    self.refresh_interval is not None and self._now >= self._next_refresh)):
                self._refresh_call = self._run(_Call("resources"))  # a slow plugin must not stall the rounds
            self._send_ack()
            if self.cluster.is_master:
                self._overlay_due = None
                self._broadcast_overlay()  # before the plan: receivers know what it names
                if not self._replan_now() and not self._recut_if_budget_changed():
                    self._broadcast_plan()  # (a plan just issued went out already)
            elif self._unconfirmed and self._now - self._overlay_heard_at > 1.5 * self.cluster.options.hello_interval:
                self._send_changes(self._unconfirmed)  # no master's overlay lately: ours again, for whoever masters
            self._reconcile()
            self._forget_departed()
        except Exception as exc:  # never let one bad round end the manager
            log.exception("resource manager round failed")
            self._emit("error", exc)

    def _forget_departed(self) -> None:
        """Forget managers that left long ago: a cluster churning for months must not grow the machine.

        A departed id is kept while a plan we hold names it (``_released`` reads it) or its
        node is still in the table (a closed manager on a live node), and for
        :data:`FORGET_AFTER_TIMEOUTS` node timeouts after that, so a late plan part naming it
        still finds it released.  Past that, a late plan naming it holds our starts until a
        master plans again (it replans on our ack of that plan): a delay, never a double run.
        A manager heard after that is simply new again.
        """
        horizon = self._now - FORGET_AFTER_TIMEOUTS * self.cluster.options.node_timeout
        named = self._plan_members | self._previous_members
        has_node = self.cluster.has_node
        for when in (self._gone, self._removed, self._presence):
            for node in [n for n, t in when.items() if t < horizon and n not in named and not has_node(n)]:
                del when[node]
        for node in [n for n in self._acks if n not in self._presence]:
            del self._acks[node]
        remembered = self._presence.keys() | self._gone.keys() | self._removed.keys()
        self._caps = {n: c for n, c in self._caps.items() if n in remembered}
        self._closing &= remembered
        self._unfenced &= remembered

    def _refresh_done(self, value: Any, error: BaseException | None) -> None:
        self._refresh_call = None
        if self._closed:
            return
        self._next_refresh = self._now + (self.refresh_interval or 0)
        try:
            if error is not None:
                raise error
            defs = validate_resources(value)
        except Exception as exc:
            log.warning("resources() failed: %r", exc)
            self._emit("error", exc)
            return
        room = self.cluster.max_payload(self.channel)
        for rid in [r for r in defs if not self._fits(r, room)]:
            del defs[rid]
            self._refuse(rid, room)
        self._base = defs
        self._defs = self._overlay.apply(defs)
        if self.cluster.is_master:
            self._replan_now()
        self._reconcile()

    # --------------------------------------------------------------- master
    def _members(self) -> tuple[tuple[str, int], ...]:
        """The managers a plan may give resources to, each with its capacity (none of capacity 0)."""
        now, timeout = self._now, self.cluster.options.node_timeout
        has_node = self.cluster.has_node
        me = {self._me} if self._fence_ok and self.capacity > 0 else set()
        names = me | {n for n, t in self._presence.items()
                      if has_node(n) and now - t <= timeout and n not in self._closing
                      and n not in self._unfenced and self._caps.get(n, 1) > 0}
        return tuple((n, self.capacity if n == self._me else self._caps.get(n, 1)) for n in sorted(names))

    def _replan(self) -> None:
        """Plan soon: a burst of joins or leaves (a cluster starting) becomes one plan, not one each."""
        if self._replan_at is None and not self._closed:
            self._replan_at = self._now + self.cluster.options.hello_interval / 4

    def _replan_now(self) -> bool:
        """Issue a plan when the live managers or the resources changed (or we just took over)."""
        if not self.cluster.is_master or self._closed:
            return False
        inputs = (self._members(), tuple(sorted(self._defs)))
        if inputs == self._published_inputs:
            return False
        # Sticky: starting from the plan we hold, a new master with the same members moves nothing.
        members = dict(inputs[0])
        self._issue(rebalance(self._assignment, self._placeable(inputs[1]), members, members), *inputs)
        return True

    def _recut_if_budget_changed(self) -> bool:
        """My plan was cut for another budget (a new key or cipher): issue it again, cut anew.

        A new epoch, not the same one re-cut: receivers holding parts of the old cut must
        never mix them with the new one.  The assignment is the same, so nothing moves.
        """
        if self._plan[1] != self._me or self._published_inputs is None:
            return False
        if self.cluster.max_payload(self.channel) == self._cut_budget:
            return False
        members, ids = self._published_inputs
        log.info("datagram budget changed (%d -> %d bytes): cutting plan %s again",
                 self._cut_budget, self.cluster.max_payload(self.channel), self._plan)
        kept = set(self._placeable(ids))
        self._issue({r: m for r, m in self._assignment.items() if r in kept}, members, ids)
        return True

    def _placeable(self, ids: Iterable[str]) -> list[str]:
        """The ids that fit in a plan part under today's budget (the others are reported, once each)."""
        room = self.cluster.max_payload(self.channel)
        out = []
        for rid in ids:
            if self._fits(rid, room):
                out.append(rid)
            else:
                self._refuse(rid, room)
        return out

    def _header(self, member: str, ids: list[str]) -> dict[str, Any]:
        """A plan part with its numbers as long as they can be (the size it may reach when sent)."""
        return {"type": "plan", "e": wire.MAX_SEQ, "m": self._me, "k": MAX_PARTS, "c": MAX_PARTS,
                "n": member, "r": ids}

    def _fits(self, rid: str, room: int) -> bool:
        """Whether a plan part holding only ``rid`` fits ``room`` (the part without ids, plus the id's JSON)."""
        if self._header_size is None:
            self._header_size = json_size(self._header(self._me, []))
        return self._header_size + json_size(rid) <= room

    def _refuse(self, rid: str, room: int) -> None:
        if (rid, room) in self._refused:
            return
        self._refused.add((rid, room))
        exc = ValueError(f"resource id {rid!r} does not fit in a plan message of the channel {self.channel!r} "
                         f"(budget {room} bytes): skipped")
        log.warning("%s", exc)
        self._emit("error", exc)

    def _issue(self, assignment: dict[str, str], members: tuple[tuple[str, int], ...], ids: tuple[str, ...]) -> None:
        self._highest_epoch = max(self._highest_epoch, self._plan[0]) + 1
        key: PlanKey = (self._highest_epoch, self._me)
        self._published_inputs = (members, ids)
        self._cut_budget = self.cluster.max_payload(self.channel)
        parts = self._split(assignment, [m for m, _ in members], self._cut_budget)
        self._parts[key] = dict(enumerate(parts))
        self._part_counts[key] = len(parts)
        self.stats["plans_published"] += 1
        log.info("plan %s: %d resources over %d members", key, len(assignment), len(members))
        self._adopt(key)
        self._broadcast_plan()

    def _split(self, assignment: dict[str, str], members: Iterable[str], room: int) -> list[tuple[str, list[str]]]:
        """One part per member, cut further so each fits the datagram budget."""
        parts: list[tuple[str, list[str]]] = []
        for member in members:
            ids = sorted(r for r, m in assignment.items() if m == member)
            budget = room - json_size(self._header(member, []))
            chunk: list[str] = []
            size = 0
            for rid in ids:
                cost = json_size(rid) + 1  # and a comma
                if chunk and size + cost > budget:
                    parts.append((member, chunk))
                    chunk, size = [], 0
                chunk.append(rid)
                size += cost
            parts.append((member, chunk))
        if not parts:  # nobody may own anything (capacity 0 everywhere): a plan all the same, empty
            parts.append((self._me, []))
        return parts

    def _broadcast_plan(self) -> None:
        key = self._plan
        if key[1] != self._me or key not in self._parts:
            return
        count = self._part_counts[key]
        for k, (node, ids) in self._parts[key].items():
            self._send({"type": "plan", "e": key[0], "m": key[1], "k": k, "c": count, "n": node, "r": ids})

    # ---------------------------------------------------------------- plans
    def _on_part(self, key: PlanKey, data: dict[str, Any]) -> None:
        if key <= self._plan:
            return
        try:
            k, count, node, ids = int(data["k"]), int(data["c"]), str(data["n"]), [str(r) for r in data["r"]]
        except (KeyError, TypeError, ValueError):
            return
        if not 0 <= k < count <= MAX_PARTS:
            return
        self._parts.setdefault(key, {})[k] = (node, ids)
        self._part_counts[key] = count
        if len(self._parts[key]) == count:
            self._adopt(key)

    def _adopt(self, key: PlanKey) -> None:
        assignment = {rid: node for node, ids in self._parts[key].values() for rid in ids}
        self._previous_members = self._plan_members
        self._plan, self._assignment = key, assignment
        if key[1] != self._me:
            # Another master's plan: if we are (or become) master, plan afresh from it.
            self._published_inputs = None
        self._mine = frozenset(rid for rid, node in assignment.items() if node == self._me)
        self._plan_members = frozenset(assignment.values())
        for old in [k for k in self._parts if k < key]:
            del self._parts[old]
            self._part_counts.pop(old, None)
        self.stats["plans_adopted"] += 1
        self._reconcile()

    # ------------------------------------------------------------ reconcile
    def _reconcile(self) -> None:
        """Converge what runs here on the adopted plan: stop first, ack, then start what is safe."""
        if self._closed:
            return
        mine, defs = self._mine, self._defs
        for rid in [r for r in self._running if (r not in mine or r not in defs) and r not in self._busy]:
            self._begin_stop(rid)  # moved away, or removed (perhaps before the master's plan says so)
        released = not any(r not in mine for r in self._running) and not any(r not in mine for r in self._busy)
        if released and self._applied != self._plan:
            self._applied = self._plan
            self._send_ack()
        if self._applied != self._plan:
            return
        now = self._now
        if now < self._listen_until:
            self._round_at = min(self._round_at or math.inf, self._listen_until)
            return
        if not self._fence_ok or self.capacity == 0:
            return  # no lease to own anything under, or draining: the master's next plan takes it all
        safe: bool | None = None  # the same for every resource: asked once, and only if one waits
        for rid in sorted(mine):
            if (rid in self._running or rid in self._busy or rid in self._releasing
                    or self._retry_at.get(rid, 0) > now or rid not in self._defs):
                continue
            if safe is None:
                safe = self._safe_to_start()
            if not safe:
                return
            self._busy.add(rid)  # now: a second reconcile must not start it again
            if self.fenced:
                self._run(_Call("acquire", rid), rid)  # the owner key first: it is gone only once released
            else:
                self._run(_Call("start", rid, self._defs[rid]), self._defs[rid])

    def _acquire_done(self, record: _Call, token: Any, error: BaseException | None) -> None:
        rid = record.rid
        self._busy.discard(rid)
        if error is not None and not isinstance(error, Exception):
            # Cancelled: the key may have been created all the same; give back whatever holds our id.
            self._releasing.add(rid)
            self._run(_Call("release", rid), rid, None)
            return
        if error is not None or not isinstance(token, int) or isinstance(token, bool):
            self._retry_at[rid] = self._now + OWNER_RETRY  # held by the previous owner still: try again
            return
        if self._closed or not self._fence_ok or rid not in self._mine or rid not in self._defs:
            self._releasing.add(rid)
            self._run(_Call("release", rid), rid, token)  # no longer ours to start
            return
        self._tokens[rid] = token
        self._busy.add(rid)
        self._run(_Call("start", rid, self._defs[rid]), self._defs[rid])

    def _release_owner(self, rid: str) -> None:
        token = self._tokens.pop(rid, None)
        if token is not None:
            self._releasing.add(rid)  # not acquired again before the release is through
            self._run(_Call("release", rid), rid, token)

    def _safe_to_start(self) -> bool:
        """Start only once every other manager that may hold resources has applied this plan.

        Checking only the resource's last owner is not enough: an owner from two plans
        ago may still be stopping it.  So every manager named by this plan or the one
        before, or heard recently, must have acknowledged this plan, closed, or left.
        One slow ``stop`` delays others' starts; that is the price of never running a
        resource twice.  And nothing starts while a manager says it applied a plan above
        ours: that plan may give back what ours moved here, and its ack (sent before the
        plan's parts) says nothing about ours; we adopt it first.
        """
        plan = self._plan
        if any(ack > plan for ack in self._acks.values()):
            return False
        return all(self._released(node) for node in set(self._presence) | self._plan_members | self._previous_members
                   if node != self._me)

    def _released(self, node: str) -> bool:
        if node in self._gone or node in self._removed or self._acks.get(node, _NO_PLAN) >= self._plan:
            return True
        if self.cluster.has_node(node):
            return False
        # Not in our table: a newcomer may simply not have heard its hello yet, so only a
        # manager the plan no longer names and that has gone quiet counts as gone.
        heard = self._presence.get(node)
        quiet = heard is None or self._now - heard > self.cluster.options.node_timeout
        return node not in self._plan_members and quiet

    # ------------------------------------------------------- starts, stops
    def _start_done(self, record: _Call, handle: Any, error: BaseException | None) -> None:
        rid, resource = record.rid, record.resource or {"id": record.rid}
        self._busy.discard(rid)
        if error is not None:
            self._release_owner(rid)
            if self._closed and not isinstance(error, Exception):
                return  # abandoned by the close (cancelled): not a failure of the resource
            self._failed(rid, resource, error)
            return
        self._running[rid] = handle
        self._running_defs[rid] = resource
        self.stats["starts"] += 1
        self._emit("resourceStarted", resource, handle)
        if self._closed or not self._fence_ok:
            self._begin_stop(rid)  # closed, or the lease lapsed, while it was starting: release it now
            return
        self._reconcile()  # unassigned meanwhile? stop it now

    def _begin_stop(self, rid: str, failure: BaseException | None = None) -> None:
        """Stop ``rid`` (its ``stop`` hook, if any); ``failure``: it was unhealthy, report it once stopped."""
        handle = self._running[rid]
        if self.has_stop:
            self._busy.add(rid)  # now: a second reconcile must not stop it again
            self._run(_Call("stop", rid, handle=handle, failure=failure), handle)
        else:
            self._finish_stop(rid, failure)

    def _stop_done(self, record: _Call) -> None:
        self._busy.discard(record.rid)
        self._finish_stop(record.rid, record.failure)
        self._reconcile()

    def _finish_stop(self, rid: str, failure: BaseException | None) -> None:
        self._running.pop(rid, None)
        self._release_owner(rid)  # once stopped: the next owner's key can be created
        self.stats["stops"] += 1
        resource = self._running_defs.pop(rid, None) or self._defs.get(rid, {"id": rid})
        self._emit("resourceStopped", resource)
        if failure is not None:
            self._failed(rid, resource, failure)

    def _failed(self, rid: str, resource: Resource, exc: BaseException) -> None:
        self.stats["failures"] += 1
        if not self._closed:
            self._retry_at[rid] = self._now + self.retry_delay  # tick() reconciles when it runs out
        log.warning("resource %s failed: %r (retry in %.1fs)", rid, exc, self.retry_delay)
        self._emit("resourceFailed", resource, exc)

    # --------------------------------------------------------------- health
    def _health_next(self) -> None:
        """Check the next resource of this health round (one at a time); none left: the next round."""
        while self._health_queue:
            rid, handle = self._health_queue.popleft()
            if rid in self._busy or self._running.get(rid) is not handle:
                continue  # being stopped or restarted, or gone
            self._health_call = self._run(_Call("healthcheck", rid, handle=handle), handle)
            return
        self._health_call = None
        self._health_at = self._now + self.health_interval

    def _health_done(self, record: _Call, error: BaseException | None) -> None:
        self._health_call = None
        if self._closed:
            return
        rid = record.rid
        if error is not None and self._running.get(rid) is record.handle and rid not in self._busy:
            self._retry_at[rid] = self._now + self.retry_delay  # before the stop's reconcile
            self._begin_stop(rid, error)
            if not self.has_stop:
                self._reconcile()
        self._health_next()


__all__ = ["MAX_CAPACITY", "MAX_PARTS", "Resource", "ResourceMachine", "validate_capacity", "validate_resource",
           "validate_resources"]
