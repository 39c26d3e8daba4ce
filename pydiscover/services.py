"""ServiceDiscovery: declare what a process provides and needs; serve once the needs are met.

A *service* is a node whose advertisement is an object with a string ``name``.  A
process ``need()``\\ s names and may ``setup(name, hook)`` each provider before counting
it.  :class:`ServiceState` holds the rules (pure: fed node sightings and hook results,
it returns what to emit and which hooks to run); :class:`AsyncServiceDiscovery` and
:class:`ServiceDiscovery` run it on top of the discovery runtime.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._threads import HookPool
from .core import Emit
from .discovery import AsyncDiscovery, Discovery, wait_with_timeout
from .node import Node
from .options import document_options

log = logging.getLogger("pydiscover.services")

Hook = Callable[[Node], Any]
#: How many plain (blocking) setup hooks run at once per node.
SETUP_THREADS = 16
_USABLE = ("available", "checking")


def service_name(advertisement: Any) -> str | None:
    """The service a node provides, or ``None`` (a plain node, or a malformed advertisement)."""
    if isinstance(advertisement, dict):
        name = advertisement.get("name")
        if isinstance(name, str) and name:
            return name
    return None


def check_service_advertisement(advertisement: Any) -> None:
    """A service advertisement is ``None`` (provides nothing) or an object with a string ``name``."""
    if advertisement is None:
        return
    if not isinstance(advertisement, dict) or service_name(advertisement) is None:
        raise ValueError(
            f"a service advertisement must be an object with a non-empty string 'name', got {advertisement!r}"
        )


@dataclass(frozen=True, slots=True)
class RunHook:
    """Run the setup hook of ``name`` for ``node``; report back with ``generation``."""

    name: str
    node: Node
    generation: int


@dataclass
class _Provider:
    node: Node
    name: str
    #: "setting_up" (hook running, not usable yet), "available", "checking" (usable, and a
    #: hook set after it was found is running for it) or "failed" (its hook raised)
    status: str
    generation: int
    #: Whether ``service`` was emitted for it (so ``serviceRemoved`` is owed when it goes).
    announced: bool = False


@dataclass
class ServiceState:
    """Who provides what, which needs are met, and which hooks must run.  No I/O, no clock."""

    needs: set[str] = field(default_factory=set)
    hooks: set[str] = field(default_factory=set)
    _providers: dict[str, _Provider] = field(default_factory=dict)
    _generation: int = 0
    _met: bool | None = None  # None: never evaluated (so the first evaluation can fire "ready")

    # ---------------------------------------------------------------- views
    def available(self, name: str) -> list[Node]:
        """Nodes of ``name`` that are ready to use (their setup hook, if any, succeeded)."""
        return [p.node for p in self._providers.values() if p.name == name and p.status in _USABLE]

    def services(self) -> dict[str, list[Node]]:
        names = sorted({p.name for p in self._providers.values() if p.status in _USABLE})
        return {name: self.available(name) for name in names}

    @property
    def is_ready(self) -> bool:
        return all(self.available(name) for name in self.needs)

    # --------------------------------------------------------------- inputs
    def need(self, *names: str) -> list[Emit | RunHook]:
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"service names are non-empty strings, got {name!r}")
        if not set(names) <= self.needs:
            self.needs.update(names)
            self._met = None  # a new set of needs: if it is met already, say so
        return self._evaluate()

    def set_hook(self, name: str) -> list[Emit | RunHook]:
        """``name`` now has a setup hook.

        Providers found from now on are set up before they count.  Providers already
        usable stay usable while the hook runs for them (readiness does not flicker);
        if it raises they are excluded like any other.  Setting a hook again for the
        same name only changes what runs for providers found later.
        """
        out: list[Emit | RunHook] = []
        if name not in self.hooks:
            self.hooks.add(name)
            for provider in list(self._providers.values()):
                if provider.name == name and provider.status == "available":
                    self._generation += 1
                    provider.status, provider.generation = "checking", self._generation
                    out.append(RunHook(name, provider.node, self._generation))
        return out + self.need(name)

    def reset(self) -> None:
        """This node stopped: it knows no providers any more (silently; ``stopped`` says it)."""
        self._providers.clear()
        self._met = None

    def start(self) -> list[Emit | RunHook]:
        """Evaluate once at start: needs already met by then (rare) fire ``ready``."""
        return self._evaluate()

    def node_seen(self, node: Node) -> list[Emit | RunHook]:
        """``node`` was added or its data changed (the runtime feeds ``added`` and ``nodeUpdated``)."""
        name = service_name(node.advertisement)
        current = self._providers.get(node.id)
        out: list[Emit | RunHook] = []
        if current is not None and current.name == name:
            changed = current.node.advertisement != node.advertisement
            current.node = node
            if current.status == "failed" and changed:
                out += self._begin(node, name)  # re-advertised: try its setup again
            return out + self._evaluate()
        if current is not None:
            out += self._drop(current)
        if name is not None:
            out += self._begin(node, name)
        return out + self._evaluate()

    def node_gone(self, node: Node) -> list[Emit | RunHook]:
        current = self._providers.get(node.id)
        if current is None:
            return []
        return self._drop(current) + self._evaluate()

    def hook_done(self, node_id: str, generation: int, error: BaseException | None) -> list[Emit | RunHook]:
        """A setup hook finished; stale results (the node changed or left meanwhile) are ignored."""
        current = self._providers.get(node_id)
        if current is None or current.generation != generation or current.status not in ("setting_up", "checking"):
            return []
        if error is not None:
            current.status = "failed"
            log.warning("setup of %s on %s failed: %r", current.name, node_id, error)
            out: list[Emit | RunHook] = [Emit("error", (error,))]
            if current.announced:
                current.announced = False
                out += self._lost(current)
            return out + self._evaluate()
        current.status = "available"
        if current.announced:
            return self._evaluate()
        current.announced = True
        return [Emit("service", (current.name, current.node)), *self._evaluate()]

    # ------------------------------------------------------------ internals
    def _begin(self, node: Node, name: str) -> list[Emit | RunHook]:
        self._generation += 1
        if name in self.hooks:
            self._providers[node.id] = _Provider(node, name, "setting_up", self._generation)
            return [RunHook(name, node, self._generation)]
        self._providers[node.id] = _Provider(node, name, "available", self._generation, announced=True)
        return [Emit("service", (name, node))]

    def _drop(self, provider: _Provider) -> list[Emit | RunHook]:
        del self._providers[provider.node.id]
        return self._lost(provider) if provider.announced else []

    def _lost(self, provider: _Provider) -> list[Emit | RunHook]:
        out: list[Emit | RunHook] = [Emit("serviceRemoved", (provider.name, provider.node))]
        if provider.name in self.needs and not self.available(provider.name):
            out.append(Emit("notready", (provider.name,)))
        return out

    def _evaluate(self) -> list[Emit | RunHook]:
        met = self.is_ready
        was, self._met = self._met, met
        if met and not was and self.needs:  # nothing needed: never unmet, so no transition
            return [Emit("ready", ({name: self.available(name) for name in sorted(self.needs)},))]
        return []


class AsyncServiceDiscovery(AsyncDiscovery):
    """:class:`AsyncDiscovery` plus needs, setup hooks and readiness (asyncio).

    Events: ``service(name, node)``, ``serviceRemoved(name, node)``, ``ready(services)``
    (needs went from unmet to met; ``services`` maps each needed name to its nodes) and
    ``notready(name)`` (a needed service lost its last node).  Only peers count as
    providers, not this process itself.
    """

    def _init_layer(self) -> None:
        self._state = ServiceState()
        self._setup_hooks: dict[str, Hook] = {}
        self._hook_tasks: set[asyncio.Future[Any]] = set()
        #: Plain setup hooks run here, at most SETUP_THREADS at once (a burst of providers
        #: queues rather than starting a thread each).
        self._hook_pool = HookPool(SETUP_THREADS, name="pydiscover-setup-hook")
        # A node's data changes only with "added" or "nodeUpdated": not every hello needs looking at.
        self.on("added", lambda node: self._apply_service(self._state.node_seen(node)))
        self.on("nodeUpdated", lambda node, previous: self._apply_service(self._state.node_seen(node)))
        self.on("removed", lambda node: self._apply_service(self._state.node_gone(node)))
        self.on("started", lambda _: self._apply_service(self._state.start()))

    def advertise(self, advertisement: Any) -> None:
        """Advertise a service (``{"name": ..., ...}``) or ``None``; peers follow changes."""
        super().advertise(advertisement)

    def _check_advertisement(self, advertisement: Any) -> None:
        check_service_advertisement(advertisement)

    def need(self, *names: str) -> None:
        """Do not be ``ready`` until every one of ``names`` has a live provider."""
        self._apply_service(self._state.need(*names))

    def setup(self, name: str, hook: Hook) -> None:
        """Need ``name`` and run ``hook(node)`` (sync, in a thread; or a coroutine) once per provider.

        A provider counts toward readiness only after its hook returned.  If the hook
        raises, that node is left out and ``error`` is emitted; it is tried again when it
        re-advertises or restarts.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"service names are non-empty strings, got {name!r}")
        if not callable(hook):
            raise TypeError("setup hook must be callable")
        self._setup_hooks[name] = hook
        self._apply_service(self._state.set_hook(name))

    async def stop(self) -> bool:
        """Stop; running setup hooks are abandoned and all service knowledge is dropped."""
        for task in list(self._hook_tasks):
            task.cancel()
        stopped = await super().stop()
        self._state.reset()
        return stopped

    @property
    def services(self) -> dict[str, list[Node]]:
        """Every service with at least one usable provider: name -> nodes (current records)."""
        return self._current(self._state.services())

    def _current(self, services: dict[str, list[Node]]) -> dict[str, list[Node]]:
        """The same providers as the table's current records (the state sees a node only when its data
        changes; the table also has its last-seen time)."""
        nodes = self.nodes
        return {name: [nodes.get(n.id, n) for n in providers] for name, providers in services.items()}

    @property
    def is_ready(self) -> bool:
        return self._state.is_ready

    async def ready(self, timeout: float | None = None) -> dict[str, list[Node]]:
        """Wait until every need is met (at once if it already is); the needed services.

        Raises ``TimeoutError`` after ``timeout`` seconds and ``RuntimeError`` if the
        node is stopped meanwhile (or is not running).
        """
        if not self.running:
            raise RuntimeError("not running: start() first")
        if self._state.is_ready:
            return self._current({name: self._state.available(name) for name in sorted(self._state.needs)})
        future: asyncio.Future[dict[str, list[Node]]] = asyncio.get_running_loop().create_future()

        def on_ready(services: dict[str, list[Node]]) -> None:
            if not future.done():
                future.set_result(self._current(services))

        def on_stopped(_: object) -> None:
            if not future.done():
                future.set_exception(RuntimeError("stopped while waiting to be ready"))

        self.on("ready", on_ready)
        self.on("stopped", on_stopped)
        try:
            return await wait_with_timeout(future, timeout)
        finally:
            self.remove_listener("ready", on_ready)
            self.remove_listener("stopped", on_stopped)

    def _apply_service(self, actions: list[Emit | RunHook]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                self._emitter.emit(action.event, *action.args)
            else:
                self._run_hook(action)

    def _run_hook(self, request: RunHook) -> None:
        hook = self._setup_hooks[request.name]
        if not self.running or self._loop is None:
            return  # stopped: the state was reset, providers will be found (and set up) anew
        loop = self._loop

        async def run() -> None:
            error: BaseException | None = None
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(request.node)
                else:
                    result = await self._hook_pool.run(loop, functools.partial(hook, request.node))
                    if inspect.isawaitable(result):
                        await result
            except asyncio.CancelledError:
                raise  # stop(): abandoned, not failed
            except BaseException as exc:  # SystemExit in a hook must not kill the discovery loop
                error = exc
            if self.running:
                self._apply_service(self._state.hook_done(request.node.id, request.generation, error))

        task = asyncio.ensure_future(run())
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)


class ServiceDiscovery(Discovery):
    """The sync (thread-backed) :class:`AsyncServiceDiscovery`."""

    _async: AsyncServiceDiscovery
    _async_class = AsyncServiceDiscovery

    def need(self, *names: str) -> None:
        self.call(self._async.need, *names)

    def setup(self, name: str, hook: Hook) -> None:
        """See :meth:`AsyncServiceDiscovery.setup`; sync hooks run in a worker thread."""
        self.call(self._async.setup, name, hook)

    @property
    def services(self) -> dict[str, list[Node]]:
        return self.call(lambda: self._async.services)

    @property
    def is_ready(self) -> bool:
        return self.call(lambda: self._async.is_ready)

    def wait_ready(self, timeout: float | None = 10.0) -> dict[str, list[Node]]:
        """Block until every need is met; ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).

        Raises ``RuntimeError`` if not running or stopped meanwhile.  Not from a handler.
        """
        if self._loop is None:
            raise RuntimeError("not running: start() first")
        return self._run(self._async.ready(timeout), None if timeout is None else timeout + 1)


document_options(AsyncServiceDiscovery)
document_options(ServiceDiscovery)

__all__ = ["AsyncServiceDiscovery", "ServiceDiscovery", "ServiceState", "service_name"]
