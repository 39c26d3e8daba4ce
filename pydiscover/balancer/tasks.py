"""TaskBalancer: the master hands tasks to live workers and collects their results.

Every node runs one :class:`TaskBalancer` on the same channel.  Nodes that call
:meth:`TaskBalancer.worker` announce themselves on the channel (at once and every
``hello_interval``); every node keeps that table, so whichever node is master knows
the live workers.  A worker is *live* while its discovery node is in ``nodes`` and its
last announcement is at most ``node_timeout`` old; the master itself is one when it
has a handler (its tasks run locally, without the network).

The master's :meth:`~TaskBalancer.submit` picks a worker by strategy and sends it
``{"type": "task", "id", "to", "from", "attempt", "payload"}``; the worker runs the
handler and answers ``{"type": "result", "id", "to", "from", "attempt", "ok", "value" |
"error"}``.  Delivery is **at least once**: a task whose worker leaves (``removed``, or
a worker that closes its balancer) or does not answer within ``timeout`` is sent again,
preferably to a worker not tried yet, up to ``attempts`` times; then the future fails
with ``TimeoutError``.  That same rule is the retransmission for datagrams UDP drops.
Whichever attempt answers first settles the future; any later answer (and any result
for an unknown task) is dropped and counted in ``stats["dropped_results"]``.  A worker
that receives the same task id and attempt twice runs it once.

A handler that *raises* settles the future with :class:`TaskError` and is **not**
retried: the worker was reachable and ran the task, so running it elsewhere would most
likely raise again, and retrying work that may have had side effects is the caller's
decision.  Only silence (loss, a crash, a hang) is retried.

Those rules live in :class:`~pydiscover.balancer.task_machine.TaskMachine`, a pure state
machine; this class checks the caller's arguments, runs the machine on the discovery
with the balancer's one :class:`~pydiscover.balancer.driver.Driver` (handlers on its
bounded thread pool or the loop, messages on the channel, timers on one loop timer) and
turns the machine's settlements into futures.  A :class:`~pydiscover.Discovery`
(threads) gets ``concurrent.futures`` futures and may be called from any thread; an
:class:`~pydiscover.AsyncDiscovery` gets asyncio futures and must be called from its
loop (``close``/``aclose`` excepted).

A balancer may be built before or after the discovery starts, and lives through a stop
and a restart: a stop fails the pending futures, the next start resumes announcing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast, overload

from ..core import RESERVED_NAMES
from ..discovery import AsyncDiscovery, Discovery
from .driver import Driver, is_coroutine_function
from .machine import Action, Assigned, Settle
from .task_machine import MAX_ERROR_TEXT, SEEN_TASKS, STRATEGIES, TaskError, TaskInfo, TaskMachine

log = logging.getLogger("pydiscover.balancer.tasks")

#: Tasks queued by other threads that one turn of the loop submits (then it reads its socket).
ARRIVALS_PER_TURN = 256
#: How long a close waits for cancelled coroutine handlers to unwind.
CLOSE_TIMEOUT = 10.0

F = TypeVar("F", bound=Callable[..., Any])


class TaskFuture(concurrent.futures.Future[Any]):
    """What :meth:`TaskBalancer.submit` returns with a :class:`~pydiscover.Discovery`.

    ``attempts`` counts the assignments so far (1 unless the task was reassigned) and
    ``worker`` is the instance id of the node whose result settled it.
    """

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id
        self.attempts = 0
        self.worker: str | None = None


class AsyncTaskFuture(asyncio.Future[Any]):
    """What :meth:`TaskBalancer.submit` returns with an :class:`~pydiscover.AsyncDiscovery` (await it)."""

    def __init__(self, task_id: int, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.task_id = task_id
        self.attempts = 0
        self.worker: str | None = None


AnyTaskFuture = TaskFuture | AsyncTaskFuture
#: What ``submit`` returns: a :class:`TaskFuture` or an :class:`AsyncTaskFuture`, by discovery class.
FutureT = TypeVar("FutureT", TaskFuture, AsyncTaskFuture)


def _wants_info(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a second positional argument (then it gets a :class:`TaskInfo`)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call them the simple way
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in positional) >= 2


def _as_hook(fn: Callable[..., Any]) -> Callable[[Any, TaskInfo], Any]:
    """``fn`` called as ``hook(payload, info)`` (the machine's one shape), keeping its kind.

    A coroutine function stays one, so the driver still awaits it on the loop rather
    than sending it to a thread.
    """
    if _wants_info(fn):
        return fn
    if is_coroutine_function(fn):

        async def run_async(payload: Any, _info: TaskInfo) -> Any:
            return await fn(payload)

        return run_async

    def run(payload: Any, _info: TaskInfo) -> Any:
        return fn(payload)

    return run


def _hash_key(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode("ascii")
    raise TypeError(f"key must be a str, bytes or int, got {type(key).__name__}")


def _resolve(future: AnyTaskFuture, value: Any = None, error: BaseException | None = None) -> None:
    """Settle ``future`` unless it is settled (or cancelled) already."""
    if isinstance(future, asyncio.Future):
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled from another thread meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop`` (a handler: the task is taken at once)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _replay(now: float, actions: list[Action]) -> list[Action]:
    """A step for :meth:`Driver.feed` that returns actions computed already."""
    return actions


class TaskBalancer(Generic[FutureT]):
    """Master-side task assignment over a discovery channel; one instance per node.

    ``discovery`` is a :class:`~pydiscover.Discovery` or an
    :class:`~pydiscover.AsyncDiscovery` (started or not).  ``strategy`` picks the worker
    of each task among the live ones:

    * ``"round_robin"`` (default): in turn, in instance-id order;
    * ``"random"``: uniformly;
    * ``"least_loaded"``: fewest tasks in flight from this master (ties: least recently
      picked);
    * ``"hash"``: by the ``key=`` given to :meth:`submit`, with rendezvous hashing: a key
      stays on its worker while that worker lives, and when a worker leaves only its keys
      move.

    Statistics are in :attr:`stats`.  ``close()`` (or ``with``/``async with``) leaves the
    channel and fails the futures still pending.  Built before ``start()``, it joins the
    channel at once and begins announcing at the discovery's ``started`` event; it lives
    through a stop (which fails its pending futures) and a restart.
    """

    @overload
    def __init__(
        self: TaskBalancer[TaskFuture], discovery: Discovery, channel: str = ..., strategy: str = ...
    ) -> None: ...

    @overload
    def __init__(
        self: TaskBalancer[AsyncTaskFuture], discovery: AsyncDiscovery, channel: str = ..., strategy: str = ...
    ) -> None: ...

    def __init__(
        self, discovery: Discovery | AsyncDiscovery, channel: str = "tasks", strategy: str = "round_robin"
    ) -> None:
        if not isinstance(discovery, (Discovery, AsyncDiscovery)):
            raise TypeError(f"discovery must be a Discovery or an AsyncDiscovery, got {type(discovery).__name__}")
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, got {channel!r}")
        if channel in RESERVED_NAMES:
            raise ValueError(f"channel {channel!r} is a reserved discovery event name; choose another channel")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")
        self.discovery = discovery
        self.channel = channel
        self.strategy = strategy
        self._sync = isinstance(discovery, Discovery)
        self._rng = random.Random()
        self._machine = TaskMachine(discovery.engine, channel=channel, strategy=strategy, rng=self._rng)
        self._futures: dict[int, AnyTaskFuture] = {}
        self._task_ids = itertools.count(1)  # next() is atomic: submits on any thread draw from it
        # Tasks submitted on other threads, waiting for the loop (see _submit_from_thread);
        # the lock makes "the discovery stopped" and "a task arrived" happen in one order.
        self._arrivals: deque[tuple[TaskFuture, Any, float, int, bytes | None]] = deque()
        self._arrivals_lock = threading.Lock()
        self._arrivals_open = False  # the discovery runs: an arrival will be taken
        self._arrivals_wake = False  # a take is scheduled on the loop
        self._driver = Driver(
            discovery,
            self._machine,
            {"handler": None},
            on_action=self._on_action,
            close_on_stop=False,
            close_timeout=CLOSE_TIMEOUT,
            join_error="channel {channel!r} is already joined on this node (one TaskBalancer per channel)",
            thread_name="pydiscover-task",
        )
        self._driver.call(self._watch_running)

    # ---------------------------------------------------------------- API
    @overload
    def worker(self, fn: F, *, concurrency: int = 16) -> F: ...

    @overload
    def worker(self, fn: None = None, *, concurrency: int = 16) -> Callable[[F], F]: ...

    def worker(self, fn: Callable[..., Any] | None = None, *, concurrency: int = 16) -> Any:
        """Run ``fn(payload)`` (or ``fn(payload, info)``) for tasks assigned to this node.

        A plain function runs on a daemon thread (at most ``concurrency`` at once), so
        it may block; a coroutine function is awaited on the discovery loop (at most
        ``concurrency`` at once).  The return value must be JSON and fit one datagram.
        Usable as ``@balancer.worker`` or ``@balancer.worker(concurrency=4)``; calling it
        again replaces the handler.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        if fn is None:
            return functools.partial(self.worker, concurrency=concurrency)
        if not callable(fn):
            raise TypeError(f"the worker handler must be callable, got {type(fn).__name__}")
        self._driver.call(self._driver.feed, self._set_worker, _as_hook(fn), concurrency)
        return fn

    def submit(self, payload: Any, timeout: float = 10.0, attempts: int = 3, key: Any = None) -> FutureT:
        """Assign ``payload`` to a live worker; only on the master.

        Returns a :class:`TaskFuture` (``concurrent.futures``) with a ``Discovery``, an
        awaitable :class:`AsyncTaskFuture` with an ``AsyncDiscovery``.  Each attempt may
        take ``timeout`` seconds before the task is reassigned; after ``attempts``
        assignments it fails with ``TimeoutError``.  With no live worker the task waits
        up to ``timeout`` for one to appear.  ``key`` (str, bytes or int) is required by
        the ``"hash"`` strategy and ignored by the others.

        Raises ``RuntimeError`` on a node that is not the master, ``PacketTooLarge`` for
        a payload that does not fit one datagram, ``TypeError`` for one that is not JSON.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a finite number of seconds, got {timeout!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        if key is not None:
            hashed: bytes | None = _hash_key(key)
        elif self.strategy == "hash":
            raise ValueError("the 'hash' strategy needs a key: submit(payload, key=...)")
        else:
            hashed = None
        loop = self._driver.engine.loop
        if not self._sync and loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                raise RuntimeError("with an AsyncDiscovery, call submit() from its event loop")
        elif self._sync and loop is not None and not _on_loop(loop):
            queued: AnyTaskFuture | None = self._submit_from_thread(payload, float(timeout), attempts, hashed)
            if queued is not None:
                return cast(FutureT, queued)
        return cast(FutureT, self._driver.call(self._submit, payload, float(timeout), attempts, hashed))

    def close(self) -> Awaitable[None]:
        """Stop working and assigning: say ``bye``, leave the channel, cancel timers, fail pending futures.

        Pending futures fail with ``RuntimeError`` at once; tasks this node is running
        are abandoned (their results are not sent): coroutine handlers are cancelled,
        queued thread jobs dropped, and a thread job already running (threads cannot be
        interrupted) finishes unheard.  Idempotent.

        All of it happens before this returns, so it never blocks the loop it is called
        on.  The awaitable it returns completes once the cancelled coroutine handlers
        have unwound (await it, or use :meth:`aclose`, before relying on their
        ``finally`` blocks).  From a thread other than the discovery loop's it blocks
        until then.
        """
        self._refuse_arrivals("TaskBalancer closed")
        self._driver.call(self._unwatch_running)
        return self._driver.close()

    async def aclose(self) -> None:
        """:meth:`close`, awaited until the cancelled coroutine handlers have unwound; from any event loop."""
        self._refuse_arrivals("TaskBalancer closed")
        self._driver.call(self._unwatch_running)
        await self._driver.aclose()

    def __enter__(self) -> TaskBalancer[FutureT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TaskBalancer[FutureT]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def workers(self) -> list[str]:
        """Instance ids of the live workers, sorted (this node's own included if it is one)."""
        return self._driver.call(self._live_workers)

    @property
    def is_worker(self) -> bool:
        return self._machine.is_worker

    @property
    def pending(self) -> int:
        """Tasks submitted here that are not settled yet."""
        return self._machine.pending

    @property
    def stats(self) -> dict[str, int]:
        """Counters (a copy): ``submitted``, ``completed``, ``failed``, ``timed_out``,
        ``cancelled``, ``abandoned``, ``reassigned``, ``dropped_results``, ``executed``,
        ``duplicate_tasks``, ``dropped_messages``."""
        return dict(self._machine.stats)

    @property
    def _inflight(self) -> dict[str, int]:
        """Tasks in flight per worker (the machine's; tests look at it)."""
        return self._machine.inflight

    # ------------------------------------------------- on the loop's thread
    def _set_worker(self, now: float, hook: Callable[..., Any], concurrency: int) -> list[Action]:
        actions = self._machine.set_worker(now, concurrency)  # raises first if closed
        self._driver.set_hook("handler", hook)
        self._driver.set_threads(concurrency)  # the machine runs at most this many at once
        return actions

    def _submit(self, payload: Any, timeout: float, attempts: int, key: bytes | None) -> AnyTaskFuture:
        driver = self._driver
        task_id, actions = self._machine.submit(driver.now(), payload, timeout, attempts, key,
                                                task_id=next(self._task_ids))
        loop = driver.engine.loop
        assert loop is not None  # a master is running
        future: AnyTaskFuture = TaskFuture(task_id) if self._sync else AsyncTaskFuture(task_id, loop=loop)
        self._track(future, actions)
        return future

    def _submit_from_thread(self, payload: Any, timeout: float, attempts: int,
                            key: bytes | None) -> TaskFuture | None:
        """Check the task here and queue it for the loop, without waiting for the loop to take it.

        A submitter then never waits a loop round trip per task, and the tasks that arrive
        in one turn of the loop leave in one datagram per worker (:meth:`TaskMachine.pack`).
        The checks run again on the loop: a node deposed meanwhile fails the future.  The
        task is in ``pending``, and its ``timeout`` runs, from when the loop takes it.
        ``None`` when the discovery is not running (the caller takes the usual path).
        """
        machine = self._machine
        machine.check_submitter()
        task_id = next(self._task_ids)
        checked = machine.check_payload(task_id, payload, attempts)
        future = TaskFuture(task_id)
        with self._arrivals_lock:
            # The loop read here, not before the lock: a restart in between would leave us
            # scheduling on the old one, which never runs again.
            loop = self._driver.engine.loop
            if not self._arrivals_open or loop is None or loop.is_closed():
                return None
            self._arrivals.append((future, checked, timeout, attempts, key))
            if not self._arrivals_wake:
                try:
                    loop.call_soon_threadsafe(self._take_arrivals)  # open: "stopped" not seen yet
                except RuntimeError:  # closed meanwhile after all: the usual path decides
                    self._arrivals.pop()
                    return None
                self._arrivals_wake = True
        return future

    def _take_arrivals(self) -> None:
        """Submit what threads queued, at most :data:`ARRIVALS_PER_TURN` a turn (the loop has hellos to read too)."""
        with self._arrivals_lock:
            count = min(len(self._arrivals), ARRIVALS_PER_TURN)
            arrivals = [self._arrivals.popleft() for _ in range(count)]
            self._arrivals_wake = bool(self._arrivals)
        if self._arrivals_wake:
            loop = self._driver.engine.loop
            assert loop is not None  # we run on it
            loop.call_soon(self._take_arrivals)
        for future, payload, timeout, attempts, key in arrivals:
            if future.cancelled():
                continue  # cancelled before the loop took it: never submitted
            try:
                _, actions = self._machine.submit(self._driver.now(), payload, timeout, attempts, key,
                                                  task_id=future.task_id, checked=True)
                self._track(future, actions)
            except Exception as exc:  # closed or deposed since the caller's check (or a bug: said aloud)
                if not isinstance(exc, RuntimeError):
                    log.exception("submitting task %s failed", future.task_id)
                _resolve(future, error=exc)

    def _refuse_arrivals(self, why: str) -> None:
        """No more arrivals until the next start; those not taken yet fail (any thread)."""
        with self._arrivals_lock:
            self._arrivals_open = False
            self._arrivals_wake = False  # a take still scheduled finds nothing; the next start schedules anew
            arrivals = list(self._arrivals)
            self._arrivals.clear()
        for future, *_ in arrivals:
            _resolve(future, error=RuntimeError(f"{why} before task {future.task_id} was assigned"))

    def _watch_running(self) -> None:
        engine = self._driver.engine
        engine.on("started", self._on_started)
        engine.on("stopped", self._on_stopped)
        self._arrivals_open = engine.running

    def _unwatch_running(self) -> None:
        engine = self._driver.engine
        engine.remove_listener("started", self._on_started)
        engine.remove_listener("stopped", self._on_stopped)

    def _on_started(self, _discovery: object) -> None:
        with self._arrivals_lock:
            self._arrivals_open = not self._driver.closed

    def _on_stopped(self, _discovery: object) -> None:
        self._refuse_arrivals("discovery stopped")

    def _track(self, future: AnyTaskFuture, actions: list[Action]) -> None:
        """A submitted task's future, settled by the machine's actions (this one's first)."""
        task_id = future.task_id
        loop = self._driver.engine.loop
        assert loop is not None
        self._futures[task_id] = future  # before the actions: they may already assign or settle it
        self._driver.feed(_replay, actions)

        def on_done(settled: Any) -> None:  # any thread, for a concurrent future
            if settled.cancelled():
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to forget
                    loop.call_soon_threadsafe(self._forget, task_id)

        future.add_done_callback(on_done)

    def _forget(self, task_id: int) -> None:
        if self._futures.pop(task_id, None) is not None and not self._driver.closed:
            self._driver.feed(self._machine.forget, task_id)

    def _live_workers(self) -> list[str]:
        return self._machine.live_workers(self._driver.now())

    def _on_action(self, action: Action) -> None:
        """The machine's task actions: an assignment shows in the future, a settlement resolves it."""
        if isinstance(action, Assigned):
            future = self._futures.get(action.task_id)
            if future is not None:
                future.attempts = action.attempt
        elif isinstance(action, Settle):
            settled = self._futures.pop(action.task_id, None)
            if settled is not None:
                if action.worker is not None:
                    settled.worker = action.worker
                _resolve(settled, action.value, action.error)
        else:
            raise TypeError(f"a TaskBalancer does not carry out {action!r}")


__all__ = [
    "MAX_ERROR_TEXT",
    "SEEN_TASKS",
    "STRATEGIES",
    "AsyncTaskFuture",
    "TaskBalancer",
    "TaskError",
    "TaskFuture",
    "TaskInfo",
]
