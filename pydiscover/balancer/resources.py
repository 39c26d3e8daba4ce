"""ResourceManager: every resource owned by exactly one live node, spread evenly.

The rules (plans in parts, acks, epochs, the safe-to-start rule, the ``bye``) live in
:class:`~pydiscover.balancer.resource_machine.ResourceMachine`, a pure state machine (its
module docstring describes the protocol).  This class only checks the user's arguments
and runs that machine on the discovery with the balancer's one
:class:`~pydiscover.balancer.driver.Driver`: its hooks on a bounded thread pool (plain
functions) or the loop (coroutine functions), its messages on the channel, its timers on
one loop timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..discovery import AsyncDiscovery, Discovery
from .driver import FINISHED, Driver, running_loop
from .resource_machine import (
    MAX_PARTS,
    Resource,
    ResourceMachine,
    validate_capacity,
    validate_resource,
    validate_resources,
)

#: How long a close waits for ``start``/``stop`` hooks in flight before it says bye anyway.
CLOSE_TIMEOUT = 30.0
#: Plain (blocking) hooks of one manager that may run at once.
HOOK_THREADS = 32


class ResourceManager:
    """Run this on every node; each resource is started by exactly one of them.

    ``start(resource) -> handle``, ``stop(handle)`` and ``healthcheck(handle)`` (raising
    means unhealthy) may be plain functions (run on a bounded pool of daemon threads) or
    coroutine functions.  ``resources`` is a list of dicts with a unique string ``id``,
    or a callable (sync or async) returning one, re-read every ``refresh_interval``: the
    *base set*.  :meth:`add` and :meth:`remove`, on any node, change the set at run time
    for the whole cluster; a resource id changed at run time follows those changes, not
    the base set, from then on.  ``capacity`` (an int from 0 to 1,000,000, 1 by default; see
    :meth:`set_capacity`) is this node's share relative to the others': resources are
    spread in proportion, and a node of capacity 0 runs nothing.
    Events, on the discovery object: ``resourceStarted(resource, handle)``,
    ``resourceStopped(resource)``, ``resourceFailed(resource, error)``, and on every
    node as a run-time change reaches it ``resourceAdded(resource)`` and
    ``resourceRemoved(resource)``.

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
        capacity: int = 1,
    ) -> None:
        if not isinstance(discovery, (Discovery, AsyncDiscovery)):
            raise TypeError("discovery must be a Discovery or an AsyncDiscovery")
        for name, fn in (("start", start), ("stop", stop), ("healthcheck", healthcheck)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        for name, value in (("health_interval", health_interval), ("retry_delay", retry_delay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if refresh_interval is not None and (not isinstance(refresh_interval, (int, float)) or refresh_interval <= 0):
            raise ValueError(f"refresh_interval must be > 0 seconds or None, got {refresh_interval!r}")
        validate_capacity(capacity)
        source = resources if callable(resources) else None
        self.health_interval, self.retry_delay, self.refresh_interval = health_interval, retry_delay, refresh_interval
        self.channel = channel
        self._engine: AsyncDiscovery = discovery.engine
        coordinator = self._engine.coordinator
        self._machine = ResourceMachine(
            self._engine, channel=channel, resources=None if source is not None else validate_resources(resources),
            refresh_interval=refresh_interval, health_interval=health_interval, retry_delay=retry_delay,
            has_stop=stop is not None, has_healthcheck=healthcheck is not None, fenced=coordinator is not None,
            capacity=capacity)
        hooks: dict[str, Callable[..., Any] | None] = {
            "start": start, "stop": stop, "healthcheck": healthcheck, "resources": source}
        if coordinator is not None:  # ownership keys under the node's lease (see docs/etcd.rst)
            hooks.update(acquire=coordinator.acquire_owner, release=coordinator.release_owner)
        self._driver = Driver(discovery, self._machine, hooks,
                              threads=HOOK_THREADS, close_on_stop=True, close_timeout=CLOSE_TIMEOUT)

    # --------------------------------------------------------------- public
    @property
    def owned(self) -> frozenset[str]:
        """Ids of the resources running on this node."""
        return self._machine.owned

    def token(self, resource_id: str) -> int | None:
        """With a coordinator: the fencing token of this node's ownership of ``resource_id`` (its owner
        key's revision; it only grows from one owner to the next), during and after ``start``; else ``None``."""
        return self._machine.token(resource_id)

    @property
    def assignment(self) -> dict[str, str]:
        """The adopted plan: resource id -> node id."""
        return self._machine.assignment

    @property
    def epoch(self) -> int:
        """The number of the plan this node follows (the master's count of plans it made)."""
        return self._machine.epoch

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the discovery stopped): the manager does nothing more."""
        return self._machine.closed

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``plans_published``, ``plans_adopted``, ``starts``, ``stops``, ``failures``,
        ``added`` and ``removed`` (the ``resourceAdded`` / ``resourceRemoved`` events of this node)."""
        return self._machine.stats

    @property
    def resources(self) -> dict[str, Resource]:
        """The resources as this node knows them (id -> resource): the base set with the run-time changes on top."""
        return self._machine.resources

    @property
    def capacity(self) -> int:
        """This node's capacity (see :meth:`set_capacity`)."""
        return self._machine.capacity

    # ------------------------------------------------------ run-time changes
    def add(self, resource: Resource) -> None:
        """Add ``resource`` (a dict with a string ``id``) to the whole cluster's set, from any node.

        The change reaches the master at once, which gives it to one node in its next plan
        (at once too); that node starts it.  Adding an id again replaces its definition
        (used by the next start; a running instance is not restarted).  Works while there
        is no master: the change is sent again until a master shows it in its overlay.
        Raises ``ValueError`` for a resource without a non-empty string ``id``,
        :class:`~pydiscover.errors.PacketTooLarge` if it does not fit in one datagram,
        ``TypeError`` if it is not JSON, ``RuntimeError`` once the manager is closed.
        From any thread (it runs on the discovery's loop); :meth:`aadd` from a coroutine.
        """
        self._driver.call(self._change, self._machine.add, resource)

    def remove(self, resource_id: str) -> None:
        """Remove ``resource_id`` from the whole cluster's set, from any node: it stops wherever it runs.

        The node running it stops it as soon as it hears the change, and no node starts it
        again (unless it is added again).  Removing an id the cluster does not know is not
        an error (an add of it may be on its way; the later change wins).  See :meth:`add`.
        """
        self._driver.call(self._change, self._machine.remove, resource_id)

    async def aadd(self, resource: Resource) -> None:
        """:meth:`add`, awaitable from any event loop without blocking it."""
        await self._acall(self.add, resource)

    async def aremove(self, resource_id: str) -> None:
        """:meth:`remove`, awaitable from any event loop without blocking it."""
        await self._acall(self.remove, resource_id)

    def set_capacity(self, capacity: int) -> None:
        """This node's share from now on, relative to the others' (an int >= 0; 1 by default).

        The node says it in its next ack, sent at once; the master plans again, moving as
        few resources as the new shares allow.  ``0`` drains the node: its resources move
        to the others (each stopped here before it starts there), and it runs nothing until
        its capacity is raised again.
        """
        validate_capacity(capacity)
        self._driver.call(self._driver.feed, self._machine.set_capacity, capacity)

    def _change(self, step: Callable[..., Any], arg: Any) -> None:
        self._driver.feed(step, arg, time.time_ns() // 1_000_000)

    async def _acall(self, fn: Callable[[Any], None], arg: Any) -> None:
        loop = self._engine.loop
        if loop is None or not loop.is_running() or running_loop() is loop:
            fn(arg)  # on the discovery's loop (or none runs): at once, without blocking
            return

        async def there() -> None:
            fn(arg)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), loop))

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        return self._engine.on(event, handler)

    def close(self) -> Awaitable[None]:
        """Stop every resource this node runs, say ``bye`` on the channel, leave it.  Idempotent.

        Returns an awaitable that completes once everything is released.  On the
        discovery's loop thread (a coroutine of an ``AsyncDiscovery``, a handler of a
        ``Discovery``) this call must not block the loop, so it does at once what needs
        no waiting: the manager is closed, its rounds end (until its ``bye`` it only says,
        every round, that it is closing), the channel is left, and a
        plain ``stop`` hook runs right here for each resource not mid-start or mid-stop,
        so ``owned`` is empty on return.  What needs waiting (coroutine ``stop`` hooks,
        starts and stops in flight, then the ``bye``) is left to the returned task: await
        it to know they are done.  The ``bye`` goes out only after every release, because
        it lets the other nodes start this node's resources.  From any other thread it
        blocks until all is released.  On a discovery never started nothing runs: it only
        leaves the channel.  Hooks still running after ``CLOSE_TIMEOUT`` are given up on
        (logged) and the ``bye`` sent anyway.
        """
        return self._driver.close(inline=True)

    async def aclose(self) -> None:
        """:meth:`close`, awaited until everything is released; from any event loop.

        Plain ``stop`` hooks run on the hook threads here, as elsewhere, since awaiting
        lets the loop run meanwhile.  The discovery calls this before its goodbye.
        """
        await self._driver.aclose()


__all__ = ["CLOSE_TIMEOUT", "FINISHED", "MAX_PARTS", "Resource", "ResourceManager", "running_loop",
           "validate_resource", "validate_resources"]
