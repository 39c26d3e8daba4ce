"""ResourceManager: every resource owned by exactly one live node, spread evenly.

Protocol, over one discovery channel (``resources`` by default):

* Every node announces itself with ``{"t": "ack", "e": epoch, "m": master}``: the
  latest plan it has *applied* (stopped everything that plan does not give it).  Sent
  at once after applying, and every ``hello_interval`` as presence.
* The master computes a plan when the set of live managers or resources changes:
  ``assignment.rebalance(current, resources, members)`` (sticky, even, minimal
  moves), numbered ``(epoch, master id)``, and broadcasts it in parts
  ``{"t": "plan", "e", "m", "k": part, "c": parts, "n": node, "r": [ids]}``, repeated
  every ``hello_interval`` so lost datagrams and newcomers catch up.
* A node adopts the highest complete plan, stops what it no longer owns, acks, and
  starts a newly assigned resource only once its previous owner has acked this plan
  (so it released it) or has left the cluster: a resource is never started on a new
  owner while the old one may still run it.
* A new master continues from the plan it already holds, so failover moves nothing.
* A manager that closes stops what it runs, *then* says ``{"t": "bye", ...}``: the others
  take its share at once, and never while it may still run any of it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any

import orjson

from .. import wire
from .._threads import in_daemon_thread, run_coro_with_timeout
from ..discovery import AsyncDiscovery, Discovery
from ..node import Packet
from .assignment import rebalance

log = logging.getLogger("pydiscover.balancer.resources")

Resource = dict[str, Any]
PlanKey = tuple[int, str]
_NO_PLAN: PlanKey = (-1, "")
#: The most parts one plan may have (a plan claiming more is ignored).
MAX_PARTS = 100_000
#: How long a close waits for ``start``/``stop`` hooks in flight before it says bye anyway.
CLOSE_TIMEOUT = 30.0


class _Finished:
    """What ``close()`` returns when nothing is left to wait for: awaiting it returns at once.

    Not an asyncio future: ``close()`` may run where no event loop is running (a
    discovery never started, a plain thread), and one must still be able to await it.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()

    def done(self) -> bool:
        """Like a task's: always true."""
        return True


FINISHED = _Finished()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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


class ResourceManager:
    """Run this on every node; each resource is started by exactly one of them.

    ``start(resource) -> handle``, ``stop(handle)`` and ``healthcheck(handle)`` (raising
    means unhealthy) may be plain functions (run on a daemon thread of their own) or
    coroutine functions.  ``resources`` is a list of dicts with a unique string ``id``,
    or a callable (sync or async) returning one, re-read every ``refresh_interval``.
    Events, on the discovery object: ``resourceStarted(resource, handle)``,
    ``resourceStopped(resource)``, ``resourceFailed(resource, error)``.

    Build it before or after the discovery starts: before, it joins its channel at once
    and begins its rounds at the discovery's ``started`` event, so the natural order
    (build everything, then ``start()``) works.  Stopping the discovery closes the
    manager (its resources are released before the goodbye); a closed manager stays
    closed, also when the discovery starts again: build a new one then.
    """

    def __init__(
        self,
        discovery: Discovery | AsyncDiscovery,
        *,
        resources: list[Resource] | Callable[[], Any],
        start: Callable[[Resource], Any],
        stop: Callable[[Any], Any] | None = None,
        healthcheck: Callable[[Any], Any] | None = None,
        health_interval: float = 5.0,
        retry_delay: float = 1.0,
        refresh_interval: float | None = None,
        channel: str = "resources",
    ) -> None:
        if not isinstance(discovery, (Discovery, AsyncDiscovery)):
            raise TypeError("discovery must be a Discovery or an AsyncDiscovery")
        self._discovery = discovery  # its call() runs code where the engine's state lives
        self._engine: AsyncDiscovery = discovery.engine
        for name, fn in (("start", start), ("stop", stop), ("healthcheck", healthcheck)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        for name, value in (("health_interval", health_interval), ("retry_delay", retry_delay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if refresh_interval is not None and (not isinstance(refresh_interval, (int, float)) or refresh_interval <= 0):
            raise ValueError(f"refresh_interval must be > 0 seconds or None, got {refresh_interval!r}")
        self._source = resources
        self._defs: dict[str, Resource] = {} if callable(resources) else validate_resources(resources)
        self._start_fn, self._stop_fn, self._health_fn = start, stop, healthcheck
        self.health_interval, self.retry_delay, self.refresh_interval = health_interval, retry_delay, refresh_interval
        self.channel = channel
        self._running: dict[str, Any] = {}
        self._busy: set[str] = set()  # starting or stopping
        self._retry_at: dict[str, float] = {}
        self._parts: dict[PlanKey, dict[int, tuple[str, list[str]]]] = {}
        self._part_counts: dict[PlanKey, int] = {}
        self._plan: PlanKey = _NO_PLAN
        self._assignment: dict[str, str] = {}
        self._iid = self._engine.id
        self._mine_cache: frozenset[str] = frozenset()  # my share of the adopted plan
        self._plan_members: frozenset[str] = frozenset()
        self._previous_members: frozenset[str] = frozenset()
        self._previous: dict[str, str] | None = None  # the plan before the current one, if we held it
        self._applied: PlanKey = _NO_PLAN
        self._acks: dict[str, PlanKey] = {}
        self._presence: dict[str, float] = {}
        self._gone: set[str] = set()  # managers that closed (their node may live on)
        self._removed: set[str] = set()  # nodes discovery saw leave (goodbye or timeout)
        self._published_inputs: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._highest_epoch = -1
        self._replan_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop_tasks: list[asyncio.Future[Any]] = []
        self._began = False  # the periodic and health loops were started
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None  # the part of close that waits
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("started", self._on_started),
            ("removed", self._on_removed),
            ("promotion", self._on_promotion),
        ]
        self.stats: dict[str, int] = {"plans_published": 0, "plans_adopted": 0, "starts": 0, "stops": 0,
                                      "failures": 0}
        self._run_on_loop(self._attach)

    # --------------------------------------------------------------- public
    @property
    def owned(self) -> frozenset[str]:
        """Ids of the resources running on this node."""
        return frozenset(self._running)

    @property
    def assignment(self) -> dict[str, str]:
        """The adopted plan: resource id -> node id."""
        return dict(self._assignment)

    @property
    def epoch(self) -> int:
        return self._plan[0]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the discovery stopped): the manager does nothing more."""
        return self._closed

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        return self._engine.on(event, handler)

    def close(self) -> Awaitable[None]:
        """Stop every resource this node runs, say ``bye`` on the channel, leave it.  Idempotent.

        Returns an awaitable that completes once everything is released.  On the
        discovery's loop thread (a coroutine of an ``AsyncDiscovery``, a handler of a
        ``Discovery``) this call must not block the loop, so it does at once what needs
        no waiting: the manager is closed, its rounds cancelled, the channel left, and a
        plain ``stop`` hook runs right here for each resource not mid-start or mid-stop,
        so ``owned`` is empty on return.  What needs waiting (coroutine ``stop`` hooks,
        starts and stops in flight, then the ``bye``) is left to the returned task: await
        it to know they are done.  The ``bye`` goes out only after every release, because
        it lets the other nodes start this node's resources.  From any other thread it
        blocks until all is released.  On a discovery never started nothing runs: it only
        leaves the channel.  Hooks still running after ``CLOSE_TIMEOUT`` are given up on
        (logged) and the ``bye`` sent anyway.
        """
        loop = self._live_loop()
        if loop is None or running_loop() is loop:
            return self._begin_close(inline=True)
        run_coro_with_timeout(self.aclose(), loop, CLOSE_TIMEOUT + 5)
        return FINISHED

    async def aclose(self) -> None:
        """:meth:`close`, awaited until everything is released; from any event loop.

        Plain ``stop`` hooks run on daemon threads of their own here, as elsewhere, since
        awaiting lets the loop run meanwhile.  The discovery calls this before its goodbye.
        """
        loop = self._live_loop()
        if loop is not None and running_loop() is not loop:  # e.g. a sync Discovery, from the user's own loop
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.aclose(), loop))
            return
        await self._begin_close(inline=False)

    # ------------------------------------------------------------ internals
    def _run_on_loop(self, fn: Callable[[], Any]) -> None:
        self._discovery.call(fn)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._engine.loop
        if loop is None:
            raise RuntimeError("the discovery has not started")
        return loop

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        """The discovery's loop while it runs; ``None`` before its first start or once it ended.

        (A stopped ``AsyncDiscovery`` keeps a running loop; a stopped ``Discovery`` does not.)
        """
        loop = self._engine.loop
        return loop if loop is not None and loop.is_running() else None

    def _attach(self) -> None:
        """Join and listen now (both work before start); the rounds begin once the discovery runs."""
        if not self._engine.join(self.channel, self._on_message):
            raise ValueError(f"channel {self.channel!r} is reserved or already joined")
        for event, handler in self._listeners:
            self._engine.on(event, handler)
        self._engine.add_stop_hook(self.aclose)  # release everything before the goodbye
        if self._engine.running:
            self._begin()

    def _on_started(self, _discovery: object) -> None:
        self._begin()

    def _on_promotion(self, _me: object) -> None:
        self._replan()

    def _begin(self) -> None:
        if self._began or self._closed:
            return
        self._began = True
        self._spawn(self._periodic(), loop_task=True)
        self._spawn(self._health_loop(), loop_task=True)

    def _spawn(self, coro: Awaitable[Any], *, loop_task: bool = False) -> None:
        task = asyncio.ensure_future(coro, loop=self._loop)
        if loop_task:
            self._loop_tasks.append(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_user(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await in_daemon_thread(self._loop, lambda: fn(*args))
        return await result if inspect.isawaitable(result) else result

    def _now(self) -> float:
        return self._loop.time()

    @property
    def _me(self) -> str:
        return self._iid

    def _emit(self, event: str, *args: Any) -> None:
        self._engine.emit(event, *args)

    def _send(self, data: dict[str, Any]) -> None:
        if self._engine.running:
            self._engine.send(self.channel, data)

    # ------------------------------------------------------------- periodic
    async def _periodic(self) -> None:
        next_refresh = 0.0
        while not self._closed:
            try:
                if callable(self._source) and (not self._defs or (
                        self.refresh_interval is not None and self._now() >= next_refresh)):
                    await self._refresh()
                    next_refresh = self._now() + (self.refresh_interval or 0)
                self._send_ack()
                if self._engine.is_master:
                    self._replan_now()
                    self._broadcast_plan()
                self._reconcile()
            except Exception as exc:  # never let one bad round end the manager
                log.exception("resource manager round failed")
                self._emit("error", exc)
            await asyncio.sleep(self._engine.options.hello_interval)

    async def _refresh(self) -> None:
        source = self._source
        assert callable(source)
        try:
            items = await self._call_user(source)  # a slow plugin must not stall the loop
            self._defs = validate_resources(items)
        except Exception as exc:
            log.warning("resources() failed: %r", exc)
            self._emit("error", exc)

    def _send_ack(self) -> None:
        self._send({"t": "ack", "e": self._applied[0], "m": self._applied[1]})

    # ---------------------------------------------------------------- master
    def _members(self) -> list[str]:
        now, timeout = self._now(), self._engine.options.node_timeout
        has_node = self._engine.has_node
        return sorted({self._me} | {n for n, t in self._presence.items() if has_node(n) and now - t <= timeout})

    def _replan(self) -> None:
        """Plan soon: a burst of joins or leaves (a cluster starting) becomes one plan, not one each."""
        if self._replan_handle is None and not self._closed:
            delay = self._engine.options.hello_interval / 4
            self._replan_handle = self._loop.call_later(delay, self._replan_now)

    def _replan_now(self) -> None:
        """Issue a plan when the live managers or the resources changed (or we just took over)."""
        self._replan_handle = None
        if not self._engine.is_master or self._closed:
            return
        inputs = (tuple(self._members()), tuple(sorted(self._defs)))
        if inputs == self._published_inputs:
            return
        # Sticky: starting from the plan we hold, a new master with the same members moves nothing.
        self._issue(rebalance(self._assignment, inputs[1], inputs[0]), *inputs)

    def _issue(self, assignment: dict[str, str], members: tuple[str, ...], ids: tuple[str, ...]) -> None:
        self._highest_epoch = max(self._highest_epoch, self._plan[0]) + 1
        key: PlanKey = (self._highest_epoch, self._me)
        self._published_inputs = (members, ids)
        parts = self._split(assignment, members)
        self._parts[key] = dict(enumerate(parts))
        self._part_counts[key] = len(parts)
        self.stats["plans_published"] += 1
        log.info("plan %s: %d resources over %d members", key, len(assignment), len(members))
        self._adopt(key)
        self._broadcast_plan()

    def _split(self, assignment: dict[str, str], members: Iterable[str]) -> list[tuple[str, list[str]]]:
        """One part per member, cut further so each fits the datagram budget."""
        room = self._engine.max_payload(self.channel)
        parts: list[tuple[str, list[str]]] = []
        for member in members:
            ids = sorted(r for r, m in assignment.items() if m == member)
            # The part message with no ids, its numbers as long as they can be.
            header = {"t": "plan", "e": wire.MAX_SEQ, "m": self._me, "k": MAX_PARTS, "c": MAX_PARTS,
                      "n": member, "r": []}
            budget = room - len(orjson.dumps(header))
            chunk: list[str] = []
            size = 0
            for rid in ids:
                cost = len(orjson.dumps(rid)) + 1  # and a comma
                if chunk and size + cost > budget:
                    parts.append((member, chunk))
                    chunk, size = [], 0
                chunk.append(rid)
                size += cost
            parts.append((member, chunk))
        return parts

    def _broadcast_plan(self) -> None:
        key = self._plan
        if key[1] != self._me or key not in self._parts:
            return
        count = self._part_counts[key]
        for k, (node, ids) in self._parts[key].items():
            self._send({"t": "plan", "e": key[0], "m": key[1], "k": k, "c": count, "n": node, "r": ids})

    # --------------------------------------------------------------- inputs
    def _on_message(self, data: Any, packet: Packet) -> None:
        if not isinstance(data, dict) or self._closed:
            return
        sender = packet.iid
        self._presence[sender] = self._now()
        kind = data.get("t")
        try:
            key: PlanKey = (int(data["e"]), str(data["m"]))
        except (KeyError, TypeError, ValueError):
            return
        if not -1 <= key[0] <= wire.MAX_SEQ:
            return  # an epoch no honest manager reaches: it would break our plan headers
        self._highest_epoch = max(self._highest_epoch, key[0])
        if kind == "bye":  # its manager closed: it runs nothing and takes nothing
            self._presence.pop(sender, None)
            self._acks.pop(sender, None)
            self._gone.add(sender)
            if self._engine.is_master:
                self._replan()
            self._reconcile()
            return
        self._gone.discard(sender)
        self._removed.discard(sender)  # heard again: it may hold resources after all
        if kind == "ack":
            fresh = sender not in self._acks
            self._acks[sender] = key
            if fresh and self._engine.is_master:
                self._replan()
            self._reconcile()
        elif kind == "plan":
            self._on_part(key, data)

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
        self._previous = self._assignment if self._plan != _NO_PLAN else None
        self._previous_members = self._plan_members
        self._plan, self._assignment = key, assignment
        if key[1] != self._me:
            # Another master's plan: if we are (or become) master, plan afresh from it.
            self._published_inputs = None
        self._mine_cache = frozenset(rid for rid, node in assignment.items() if node == self._iid)
        self._plan_members = frozenset(assignment.values())
        for old in [k for k in self._parts if k < key]:
            del self._parts[old]
            self._part_counts.pop(old, None)
        self.stats["plans_adopted"] += 1
        self._reconcile()

    def _on_removed(self, node: Any) -> None:
        self._removed.add(node.id)
        self._presence.pop(node.id, None)
        self._acks.pop(node.id, None)
        if self._engine.is_master:
            self._replan()
        self._reconcile()

    # ------------------------------------------------------------ reconcile
    def _mine(self) -> frozenset[str]:
        return self._mine_cache

    def _reconcile(self) -> None:
        """Converge what runs here on the adopted plan: stop first, ack, then start what is safe."""
        if self._closed:
            return
        mine = self._mine()
        for rid in [r for r in self._running if r not in mine and r not in self._busy]:
            self._busy.add(rid)  # now, not when the task first runs: a second reconcile must not repeat it
            self._spawn(self._stop(rid))
        released = not any(r not in mine for r in self._running) and not any(r not in mine for r in self._busy)
        if released and self._applied != self._plan:
            self._applied = self._plan
            self._send_ack()
        if self._applied != self._plan:
            return
        now = self._now()
        for rid in sorted(mine):
            if rid in self._running or rid in self._busy or self._retry_at.get(rid, 0) > now:
                continue
            if rid in self._defs and self._safe_to_start(rid):
                self._busy.add(rid)
                self._spawn(self._start(rid))

    def _safe_to_start(self, rid: str) -> bool:
        """Start only once every other manager that may hold resources has applied this plan.

        Checking only the resource's last owner is not enough: an owner from two plans
        ago may still be stopping it.  So every manager named by this plan or the one
        before, or heard recently, must have acknowledged this plan, closed, or left.
        One slow ``stop`` delays others' starts; that is the price of never running a
        resource twice.
        """
        return all(self._released(node) for node in set(self._presence) | self._plan_members | self._previous_members
                   if node != self._me)

    def _released(self, node: str) -> bool:
        if node in self._gone or node in self._removed or self._acks.get(node, _NO_PLAN) >= self._plan:
            return True
        if self._engine.has_node(node):
            return False
        # Not in our table: a newcomer may simply not have heard its hello yet, so only a
        # manager the plan no longer names and that has gone quiet counts as gone.
        heard = self._presence.get(node)
        quiet = heard is None or self._now() - heard > self._engine.options.node_timeout
        return node not in self._plan_members and quiet

    async def _start(self, rid: str) -> None:
        resource = self._defs[rid]
        try:
            handle = await self._call_user(self._start_fn, resource)
        except Exception as exc:
            self._busy.discard(rid)
            self._failed(rid, resource, exc)
            return
        self._busy.discard(rid)
        self._running[rid] = handle
        self.stats["starts"] += 1
        self._emit("resourceStarted", resource, handle)
        if self._closed:
            if rid in self._running and rid not in self._busy:  # (a resourceStarted handler may have closed)
                await self._stop(rid)  # closed while it was starting: release it now
            return
        self._reconcile()  # unassigned meanwhile? stop it now

    async def _stop(self, rid: str, started: Awaitable[Any] | None = None) -> None:
        """Stop ``rid``: call its ``stop`` hook, or await what a hook already ``started`` returned."""
        handle = self._running.get(rid)
        self._busy.add(rid)  # (already set by the caller, so no second stop starts meanwhile)
        try:
            if started is not None:
                await started
            elif self._stop_fn is not None:
                await self._call_user(self._stop_fn, handle)
        except Exception as exc:
            log.warning("stop(%s) raised %r; treating it as stopped", rid, exc)
        finally:
            self._busy.discard(rid)
            self._running.pop(rid, None)
        self._stopped(rid)
        self._reconcile()

    def _stopped(self, rid: str) -> None:
        self.stats["stops"] += 1
        self._emit("resourceStopped", self._defs.get(rid, {"id": rid}))

    def _failed(self, rid: str, resource: Resource, exc: BaseException) -> None:
        self.stats["failures"] += 1
        self._retry_at[rid] = self._now() + self.retry_delay
        log.warning("resource %s failed: %r (retry in %.1fs)", rid, exc, self.retry_delay)
        self._emit("resourceFailed", resource, exc)
        self._loop.call_later(self.retry_delay, self._reconcile)

    async def _health_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.health_interval)
            if self._health_fn is None:
                continue
            for rid, handle in list(self._running.items()):
                if rid in self._busy or self._closed:
                    continue
                try:
                    await self._call_user(self._health_fn, handle)
                except Exception as exc:
                    if self._closed or self._running.get(rid) is not handle or rid in self._busy:
                        continue  # stopped or restarted meanwhile
                    self._retry_at[rid] = self._now() + self.retry_delay  # before the stop's reconcile
                    self._busy.add(rid)
                    # A task of its own, not awaited here: close() cancels this loop, and a
                    # cancelled stop would count as released while its hook still runs.
                    self._spawn(self._stop_unhealthy(rid, self._defs.get(rid, {"id": rid}), exc))

    async def _stop_unhealthy(self, rid: str, resource: Resource, exc: BaseException) -> None:
        await self._stop(rid)
        self._failed(rid, resource, exc)

    # ----------------------------------------------------------------- close
    def _begin_close(self, *, inline: bool) -> Awaitable[None]:
        """Close at once as far as possible; return what is left to wait for (see :meth:`close`).

        Runs on the loop thread, or on the caller's when no loop runs.  ``inline``: plain
        ``stop`` hooks run here (``close()``: the caller checks ``owned`` next) rather
        than on their own threads (``aclose()``, which can wait for them).
        """
        if self._closed:
            return self._close_task or FINISHED
        self._closed = True
        if self._replan_handle is not None:
            self._replan_handle.cancel()
            self._replan_handle = None
        for task in self._loop_tasks:
            task.cancel()  # the periodic and health rounds; starts and stops in flight run to the end
        for event, handler in self._listeners:
            self._engine.remove_listener(event, handler)
        self._engine.leave(self.channel)  # nothing more to hear; sending the bye needs no membership
        live = self._live_loop() is not None
        plain = self._stop_fn is None or not inspect.iscoroutinefunction(self._stop_fn)
        for rid in [r for r in self._running if r not in self._busy]:
            if plain and (inline or not live):
                self._stop_here(rid, live)
            elif live:
                self._busy.add(rid)
                self._spawn(self._stop(rid))
            else:
                log.warning("cannot stop %s: its stop hook is a coroutine and the discovery's loop is gone", rid)
                self._running.pop(rid, None)
        pending = {task for task in self._tasks if task not in self._loop_tasks}
        if live and pending:
            self._close_task = asyncio.ensure_future(self._finish_close(pending), loop=self._loop)
            return self._close_task
        self._finish_close_now()
        return FINISHED

    def _stop_here(self, rid: str, live: bool) -> None:
        """Call a plain ``stop`` hook on this thread; an awaitable it returns is awaited in a task."""
        handle = self._running[rid]
        result = None
        try:
            if self._stop_fn is not None:
                result = self._stop_fn(handle)
        except Exception as exc:
            log.warning("stop(%s) raised %r during close; treating it as stopped", rid, exc)
        if inspect.isawaitable(result):
            if live:
                self._busy.add(rid)
                self._spawn(self._stop(rid, result))
                return
            if inspect.iscoroutine(result):
                result.close()  # no loop to run it on (never awaited otherwise: a warning at exit)
            log.warning("cannot await stop(%s): the discovery's loop is gone", rid)
        self._running.pop(rid, None)
        self._stopped(rid)

    async def _finish_close(self, pending: set[asyncio.Future[Any]]) -> None:
        """Wait for the starts and stops in flight (a start that ends now stops itself), then say bye."""
        try:
            _, late = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
            if late:
                log.warning("%d resource start/stop hook(s) still running %.0fs into close; saying bye anyway",
                            len(late), CLOSE_TIMEOUT)
        finally:
            self._finish_close_now()

    def _finish_close_now(self) -> None:
        self._send({"t": "bye", "e": self._applied[0], "m": self._applied[1]})
        self._engine.remove_stop_hook(self.aclose)
