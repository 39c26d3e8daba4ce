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

Everything runs on the discovery loop: the table, the timers and the network
handlers.  A :class:`~pydiscover.Discovery` (threads) gets ``concurrent.futures``
futures and may be called from any thread; an :class:`~pydiscover.AsyncDiscovery` gets
asyncio futures and must be called from its loop (``close``/``aclose`` excepted).

A balancer may be built before or after the discovery starts, and lives through a stop
and a restart: a stop fails the pending futures, the next start resumes announcing.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import math
import queue
import random
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload

import orjson

from .._threads import run_coro_with_timeout
from ..core import RESERVED_NAMES
from ..discovery import AsyncDiscovery, Discovery
from ..errors import DiscoveryError, PacketTooLarge
from ..node import Node, Packet
from .assignment import rendezvous
from .resources import FINISHED, running_loop

log = logging.getLogger("pydiscover.balancer.tasks")

#: The ways the master picks a worker (see :class:`TaskBalancer`).
STRATEGIES = ("round_robin", "random", "least_loaded", "hash")
#: How many (submitter, task, attempt) keys a worker remembers to refuse duplicates.
SEEN_TASKS = 4096
#: Remote error texts are cut to this many characters so a failure always fits a datagram.
MAX_ERROR_TEXT = 400
#: How long a close waits for cancelled coroutine handlers to unwind.
CLOSE_TIMEOUT = 10.0

F = TypeVar("F", bound=Callable[..., Any])


class TaskError(DiscoveryError):
    """The worker's handler raised (or its result could not be sent back).

    ``error`` is the remote text (``"ValueError: bad input"``), ``worker`` the instance
    id of the node that ran the task, ``task_id`` the task.
    """

    def __init__(self, task_id: int, worker: str, error: str) -> None:
        self.task_id = task_id
        self.worker = worker
        self.error = error
        super().__init__(f"task {task_id} failed on worker {worker}: {error}")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a handler taking a second argument receives about the task it runs."""

    #: The task id (unique per submitting node).
    id: int
    #: 1 for the first assignment, 2 for the first reassignment, ...
    attempt: int
    #: Instance id of the node that submitted the task (its result goes there).
    master: str


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


@dataclass(eq=False)
class _Task:
    """One submitted task, owned by the node that submitted it."""

    id: int
    payload: Any
    key: bytes | None
    timeout: float
    max_attempts: int
    future: AnyTaskFuture
    attempt: int = 0
    #: The worker of the current attempt; ``None`` while waiting for a live worker.
    worker: str | None = None
    tried: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[..., Any]
    is_async: bool
    wants_info: bool


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


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _describe(exc: BaseException) -> str:
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described if len(described) <= MAX_ERROR_TEXT else described[: MAX_ERROR_TEXT - 3] + "..."


def _hash_key(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode("ascii")
    raise TypeError(f"key must be a str, bytes or int, got {type(key).__name__}")


def _resolve(future: AnyTaskFuture, value: Any = None, error: BaseException | None = None) -> bool:
    """Settle ``future`` unless it is settled (or cancelled) already; whether it was settled here."""
    if isinstance(future, asyncio.Future):
        if future.done():
            return False
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
        return True
    try:  # a concurrent future may be cancelled from another thread at any moment
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True


class _DaemonPool:
    """At most ``size`` daemon threads for blocking handlers, started as needed.

    Daemon threads, like the service hooks': a handler stuck in I/O can neither stall
    the discovery loop nor keep the interpreter from exiting (``ThreadPoolExecutor``
    threads are joined at exit, before the goodbye is sent).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for work that no queued item has claimed yet
        self._unclaimed = 0  # queued items no thread was free for
        self._closed = False
        self._drop_queued = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("task pool is closed")
            if self._idle:
                self._idle -= 1
            elif self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._work, name="pydiscover-task", daemon=True).start()
            else:
                self._unclaimed += 1
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._drop_queued:
                continue
            try:
                job()  # jobs catch the handler's exceptions themselves; this is a last resort
            except BaseException:
                log.exception("task job failed")
            with self._lock:
                if self._unclaimed:
                    self._unclaimed -= 1
                else:
                    self._idle += 1

    def shutdown(self, *, drop_queued: bool = False) -> None:
        """End every thread once the jobs running finish (no waiting here).

        Queued jobs run first, unless ``drop_queued``: a closed balancer would drop their
        results anyway, and its master reassigns them, so running them is wasted work.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_queued = drop_queued
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)


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
        if isinstance(discovery, (Discovery, AsyncDiscovery)):
            self._sync: Discovery | None = discovery if isinstance(discovery, Discovery) else None
            self._ad = discovery.engine
        else:
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
        self._me = self._ad.id
        self._interval = self._ad.options.hello_interval
        self._freshness = self._ad.options.node_timeout
        self._closed = False
        # Worker side.
        self._handler: _Handler | None = None
        self._pool: _DaemonPool | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._concurrency = 0
        self._running: set[asyncio.Future[Any]] = set()
        self._started_on: asyncio.AbstractEventLoop | None = None  # the loop of the last start
        self._close_task: asyncio.Future[None] | None = None  # the part of close that waits
        self._seen: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        # Master side (every node keeps the worker table: any of them may become master).
        self._presence: dict[str, float] = {}
        self._tasks: dict[int, _Task] = {}
        self._waiting: dict[int, None] = {}  # tasks with no live worker, oldest first
        self._inflight: dict[str, int] = {}
        self._last_pick: dict[str, int] = {}
        self._picks = itertools.count()
        self._rr_last: str | None = None
        self._rng = random.Random()
        self._ids = itertools.count(1)
        self._tick_timer: asyncio.TimerHandle | None = None
        self._announce_timer: asyncio.TimerHandle | None = None
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "submitted",  # accepted by submit()
                "completed",  # settled with a value
                "failed",  # settled with TaskError (the handler raised, or its result could not be sent)
                "timed_out",  # settled with TimeoutError (attempts used up, or no worker within timeout)
                "cancelled",  # the caller cancelled the future
                "abandoned",  # close() or a discovery stop while pending
                "reassigned",  # assignments after the first (a worker left or was silent)
                "dropped_results",  # results nobody waits for: late duplicates, unknown ids
                "executed",  # tasks this node ran as a worker
                "duplicate_tasks",  # the same task id and attempt received again (not run twice)
                "dropped_messages",  # malformed channel messages
            ),
            0,
        )
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("started", self._on_started),
            ("stopped", self._on_stopped),
            ("added", self._on_added),
            ("removed", self._on_removed),
        ]
        self._on_loop(self._setup)

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
        self._on_loop(self._set_worker, fn, concurrency)
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
        if self._sync is None and self._ad.loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not self._ad.loop:
                raise RuntimeError("with an AsyncDiscovery, call submit() from its event loop")
        return cast(FutureT, self._on_loop(self._submit, payload, float(timeout), attempts, hashed))

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
        loop = self._live_loop()
        if loop is None or running_loop() is loop:
            return self._begin_close()
        run_coro_with_timeout(self.aclose(), loop, CLOSE_TIMEOUT + 5)
        return FINISHED

    async def aclose(self) -> None:
        """:meth:`close`, awaited until the cancelled coroutine handlers have unwound; from any event loop."""
        loop = self._live_loop()
        if loop is not None and running_loop() is not loop:  # e.g. a sync Discovery, from the user's own loop
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.aclose(), loop))
            return
        await self._begin_close()

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
        workers: list[str] = self._on_loop(self._live_workers)
        return workers

    @property
    def is_worker(self) -> bool:
        return self._handler is not None

    @property
    def pending(self) -> int:
        """Tasks submitted here that are not settled yet."""
        return len(self._tasks)

    @property
    def stats(self) -> dict[str, int]:
        """Counters (a copy): ``submitted``, ``completed``, ``failed``, ``timed_out``,
        ``cancelled``, ``abandoned``, ``reassigned``, ``dropped_results``, ``executed``,
        ``duplicate_tasks``, ``dropped_messages``."""
        return dict(self._stats)

    # ------------------------------------------------------ loop plumbing
    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` where the discovery state lives (the loop thread for a ``Discovery``)."""
        if self._sync is not None:
            return self._sync.call(fn, *args)
        return fn(*args)

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._ad.loop
        return loop if loop is not None and not loop.is_closed() else None

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        """The discovery's loop while it runs (a stopped ``Discovery`` has none; a stopped ``AsyncDiscovery`` may)."""
        loop = self._ad.loop
        return loop if loop is not None and loop.is_running() else None

    def _setup(self) -> None:
        if not self._ad.join(self.channel, self._on_message):
            raise ValueError(f"channel {self.channel!r} is already joined on this node (one TaskBalancer per channel)")
        for event, handler in self._listeners:
            self._ad.on(event, handler)
        if self._ad.running:
            self._arm_tick()

    def _begin_close(self) -> Awaitable[None]:
        """Close now (on the loop thread, or where no loop runs); what is left to wait for."""
        if self._closed:
            return self._close_task or FINISHED
        self._close()
        unwinding = {task for task in self._running if not task.done()}  # cancelled by _close()
        loop = self._live_loop()
        if loop is None or not unwinding:
            return FINISHED
        self._close_task = asyncio.ensure_future(self._finish_close(unwinding), loop=loop)
        return self._close_task

    async def _finish_close(self, unwinding: set[asyncio.Future[Any]]) -> None:
        _, late = await asyncio.wait(unwinding, timeout=CLOSE_TIMEOUT)
        if late:
            log.warning("%d cancelled task handler(s) still running %.0fs after close", len(late), CLOSE_TIMEOUT)

    def _close(self) -> None:
        if self._closed:
            return
        if self._handler is not None and self._ad.running:
            self._send({"type": "bye"})  # the master reassigns our tasks now, not at their timeout
        self._closed = True
        self._handler = None
        self._ad.leave(self.channel)
        for event, handler in self._listeners:
            self._ad.remove_listener(event, handler)
        self._cancel_timers()
        self._abandon("TaskBalancer closed")
        for running in list(self._running):
            running.cancel()
        if self._pool is not None:
            self._pool.shutdown(drop_queued=True)
            self._pool = None

    def _cancel_timers(self) -> None:
        for timer in (self._tick_timer, self._announce_timer):
            if timer is not None:
                timer.cancel()
        self._tick_timer = self._announce_timer = None

    def _abandon(self, why: str) -> None:
        for task in list(self._tasks.values()):
            self._settle(task, error=RuntimeError(f"{why} before task {task.id} finished"), counter="abandoned")

    def _send(self, data: dict[str, Any]) -> bool:
        try:
            return self._ad.send(self.channel, data)
        except (PacketTooLarge, TypeError):
            log.exception("could not send %s on %r", data.get("type"), self.channel)
            return False

    def _check_fits(self, data: dict[str, Any], what: str) -> bytes:
        """Encode ``data`` as it would go out on our channel; raise like ``send`` if it cannot."""
        return self._ad.message_bytes(self.channel, data, what=what)

    # ------------------------------------------------------------- events
    def _on_started(self, _: object) -> None:
        if self._closed:
            return
        loop = self._loop()
        if loop is not self._started_on and self._semaphore is not None:
            # A sync Discovery restarts on a new loop, and a semaphore that ever made a
            # handler wait is bound to the loop it waited on.
            self._semaphore = asyncio.Semaphore(self._concurrency)
        self._started_on = loop
        if self._handler is not None:
            self._announce()
        self._arm_tick()

    def _on_stopped(self, _: object) -> None:
        self._cancel_timers()
        self._presence.clear()
        self._abandon("discovery stopped")

    def _on_added(self, node: Node) -> None:
        if self._closed:
            return
        if self._handler is not None:
            self._announce_soon()  # a newcomer (maybe the next master) learns us in milliseconds
        self._pump()

    def _on_removed(self, node: Node) -> None:
        self._presence.pop(node.id, None)
        self._worker_gone(node.id, "left the cluster")

    def _arm_tick(self) -> None:
        loop = self._loop()
        if self._tick_timer is None and loop is not None and not self._closed:
            self._tick_timer = loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._tick_timer = None
        if self._closed or not self._ad.running:
            return
        if self._handler is not None:
            self._announce()
        loop = self._loop()
        if loop is not None:
            stale = loop.time() - self._freshness
            for worker, seen in list(self._presence.items()):
                if seen < stale:
                    del self._presence[worker]
        self._pump()
        self._arm_tick()

    def _announce(self) -> None:
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        if self._ad.running:
            self._send({"type": "worker"})

    def _announce_soon(self) -> None:
        """Announce within a few jittered ms, once for a burst of joins (no storm on a big join)."""
        loop = self._loop()
        if self._announce_timer is None and loop is not None:
            delay = self._rng.uniform(0, min(0.05, self._interval / 4))
            self._announce_timer = loop.call_later(delay, self._announce)

    # ----------------------------------------------------------- messages
    def _on_message(self, data: Any, packet: Packet) -> None:
        if self._closed:
            return
        sender = packet.iid
        if sender == self._me:  # only with ignore_instance=False
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "worker":
            loop = self._loop()
            if loop is not None:
                self._presence[sender] = loop.time()
                self._pump()
        elif kind == "bye":
            self._presence.pop(sender, None)
            self._worker_gone(sender, "stopped working")
        elif kind in ("task", "result"):
            assert isinstance(data, dict)
            if data.get("to") != self._me:
                return  # for another node (everyone hears everything)
            task_id, attempt = data.get("id"), data.get("attempt")
            if (
                type(task_id) is not int
                or type(attempt) is not int
                or attempt < 1
                or data.get("from") != sender
            ):
                self._stats["dropped_messages"] += 1
                return
            if kind == "task":
                if "payload" not in data:
                    self._stats["dropped_messages"] += 1
                    return
                self._execute(sender, task_id, attempt, data["payload"])
            else:
                ok, error = data.get("ok"), data.get("error")
                if not isinstance(ok, bool) or (not ok and not isinstance(error, str)):
                    self._stats["dropped_messages"] += 1
                    return
                self._on_result(sender, data)
        else:
            self._stats["dropped_messages"] += 1

    # --------------------------------------------------------- the worker
    def _set_worker(self, fn: Callable[..., Any], concurrency: int) -> None:
        if self._closed:
            raise RuntimeError("TaskBalancer is closed")
        is_async = _is_coroutine_function(fn)
        if is_async:
            if self._semaphore is None or self._concurrency != concurrency:
                self._semaphore = asyncio.Semaphore(concurrency)
        elif self._pool is None or self._pool.size != concurrency:
            if self._pool is not None:
                self._pool.shutdown()  # its queued tasks still run, then its threads end
            self._pool = _DaemonPool(concurrency)
        self._concurrency = concurrency
        first = self._handler is None
        self._handler = _Handler(fn, is_async, _wants_info(fn))
        if first:
            self._announce()
            self._pump()  # tasks of our own waiting for a worker can run here now

    def _execute(self, submitter: str, task_id: int, attempt: int, payload: Any) -> None:
        key = (submitter, task_id, attempt)
        if key in self._seen:
            self._stats["duplicate_tasks"] += 1
            return
        self._seen[key] = None
        if len(self._seen) > SEEN_TASKS:
            self._seen.popitem(last=False)
        handler = self._handler
        if handler is None:
            self._reply(submitter, task_id, attempt, ok=False, error="this node has no task handler", retry=True)
            return
        self._stats["executed"] += 1
        info = TaskInfo(task_id, attempt, submitter)
        args = (payload, info) if handler.wants_info else (payload,)
        done = functools.partial(self._task_done, submitter, task_id, attempt)
        if handler.is_async:
            semaphore = self._semaphore
            assert semaphore is not None

            async def run() -> None:
                async with semaphore:
                    try:
                        value = await handler.fn(*args)
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:  # SystemExit in a handler must not end the loop
                        done(None, exc)
                        return
                done(value, None)

            running = asyncio.ensure_future(run())
            self._running.add(running)
            running.add_done_callback(self._running.discard)
            return
        loop = self._loop()
        pool = self._pool
        if loop is None or pool is None:
            return

        def job() -> None:
            try:
                value, error = handler.fn(*args), None
            except BaseException as exc:
                value, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: discovery stopped, nobody to answer
                loop.call_soon_threadsafe(done, value, error)

        pool.submit(job)

    def _task_done(self, submitter: str, task_id: int, attempt: int, value: Any, error: BaseException | None) -> None:
        if self._closed or self._loop() is None:
            return
        if error is None and inspect.isawaitable(value):  # a plain function that returned a coroutine

            async def finish(awaitable: Any) -> None:
                try:
                    result = await awaitable
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self._task_done(submitter, task_id, attempt, None, exc)
                    return
                self._task_done(submitter, task_id, attempt, result, None)

            running = asyncio.ensure_future(finish(value))
            self._running.add(running)
            running.add_done_callback(self._running.discard)
            return
        if error is not None:
            log.debug("task %s from %s raised", task_id, submitter, exc_info=error)
            self._reply(submitter, task_id, attempt, ok=False, error=_describe(error))
        else:
            self._reply(submitter, task_id, attempt, ok=True, value=value)

    def _reply(
        self,
        to: str,
        task_id: int,
        attempt: int,
        *,
        ok: bool,
        value: Any = None,
        error: str = "",
        retry: bool = False,
    ) -> None:
        message: dict[str, Any] = {"type": "result", "id": task_id, "to": to, "from": self._me, "attempt": attempt}
        message.update({"ok": True, "value": value} if ok else {"ok": False, "error": error})
        if retry:
            message["retry"] = True
        try:
            if to == self._me:  # our own task: no network, but the same rules as if it had one
                self._on_result(self._me, orjson.loads(self._check_fits(message, f"result of task {task_id}"))["data"])
            else:
                self._ad.send(self.channel, message)
            return
        except PacketTooLarge as exc:
            problem = (
                f"result of task {task_id} encodes to {exc.size} bytes, over the {exc.budget}-byte datagram "
                f"budget; return less (e.g. a reference to where the data is)"
            )
        except TypeError as exc:
            problem = f"result of task {task_id} is not JSON-serializable: {exc}"
        log.warning("%s", problem)
        self._reply(to, task_id, attempt, ok=False, error=problem[:MAX_ERROR_TEXT])

    # --------------------------------------------------------- the master
    def _submit(self, payload: Any, timeout: float, attempts: int, key: bytes | None) -> AnyTaskFuture:
        if self._closed:
            raise RuntimeError("TaskBalancer is closed")
        if not self._ad.is_master:
            raise RuntimeError(
                "tasks are assigned by the master: this node is not the master "
                "(submit from the master, e.g. once is_master is true or after the 'promotion' event)"
            )
        loop = self._loop()
        assert loop is not None  # a master is running
        task_id = next(self._ids)
        probe = {"type": "task", "id": task_id, "to": self._me, "from": self._me, "attempt": attempts,
                 "payload": payload}
        raw = self._check_fits(probe, f"task {task_id} payload (in its message)")
        payload = orjson.loads(raw)["data"]["payload"]  # what every worker sees, local or remote
        future: AnyTaskFuture = TaskFuture(task_id) if self._sync is not None else AsyncTaskFuture(task_id, loop=loop)
        task = _Task(task_id, payload, key, timeout, attempts, future)
        self._tasks[task_id] = task
        self._stats["submitted"] += 1
        self._dispatch(task)

        def on_done(settled: Any) -> None:  # any thread, for a concurrent future
            if settled.cancelled():
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to forget
                    loop.call_soon_threadsafe(self._forget, task_id)

        future.add_done_callback(on_done)
        return future

    def _live_workers(self) -> list[str]:
        loop = self._loop()
        if loop is None or self._closed or not self._ad.running:
            return []
        fresh = loop.time() - self._freshness
        nodes = self._ad.nodes
        live = [w for w, seen in self._presence.items() if seen >= fresh and w in nodes]
        if self._handler is not None:
            live.append(self._me)
        live.sort()
        return live

    def _choose(self, candidates: list[str], task: _Task) -> str:
        if self.strategy == "round_robin":
            start = 0 if self._rr_last is None else bisect.bisect_right(candidates, self._rr_last)
            chosen = candidates[start % len(candidates)]
            self._rr_last = chosen
        elif self.strategy == "random":
            chosen = self._rng.choice(candidates)
        elif self.strategy == "least_loaded":
            chosen = min(candidates, key=lambda w: (self._inflight.get(w, 0), self._last_pick.get(w, -1)))
            self._last_pick[chosen] = next(self._picks)
        else:
            assert task.key is not None
            key = task.key
            chosen = max(candidates, key=lambda w: rendezvous(key, w))
        return chosen

    def _dispatch(self, task: _Task) -> None:
        """Assign ``task`` (a new attempt) to a live worker, preferring one not tried yet; or wait for one."""
        live = self._live_workers()
        candidates = [w for w in live if w not in task.tried] or live
        loop = self._loop()
        if loop is None:
            return
        if not candidates:
            self._waiting[task.id] = None
            self._set_timer(task, loop.call_later(task.timeout, self._wait_expired, task.id))
            return
        self._waiting.pop(task.id, None)
        worker = self._choose(candidates, task)
        task.attempt += 1
        task.worker = worker
        task.tried.add(worker)
        task.future.attempts = task.attempt
        self._inflight[worker] = self._inflight.get(worker, 0) + 1
        if task.attempt > 1:
            self._stats["reassigned"] += 1
        self._set_timer(task, loop.call_later(task.timeout, self._attempt_expired, task.id, task.attempt))
        if worker == self._me:
            self._execute(self._me, task.id, task.attempt, task.payload)
        else:
            self._send({"type": "task", "id": task.id, "to": worker, "from": self._me, "attempt": task.attempt,
                        "payload": task.payload})

    def _pump(self) -> None:
        """Dispatch waiting tasks, oldest first, if a worker is live now."""
        if not self._waiting or not self._live_workers():
            return
        for task_id in list(self._waiting):
            task = self._tasks.get(task_id)
            if task is None:
                self._waiting.pop(task_id, None)
            else:
                self._dispatch(task)

    def _set_timer(self, task: _Task, timer: asyncio.TimerHandle) -> None:
        if task.timer is not None:
            task.timer.cancel()
        task.timer = timer

    def _release(self, task: _Task) -> None:
        """The current attempt is over: its worker has one task fewer in flight."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        if task.worker is not None:
            left = self._inflight.get(task.worker, 0) - 1
            if left > 0:
                self._inflight[task.worker] = left
            else:
                self._inflight.pop(task.worker, None)
            task.worker = None

    def _settle(self, task: _Task, value: Any = None, error: BaseException | None = None, *, counter: str) -> None:
        self._release(task)
        self._tasks.pop(task.id, None)
        self._waiting.pop(task.id, None)
        if _resolve(task.future, value, error):
            self._stats[counter] += 1

    def _forget(self, task_id: int) -> None:
        """The caller cancelled the future: stop tracking the task (a late result is dropped)."""
        task = self._tasks.get(task_id)
        if task is not None:
            self._release(task)
            self._tasks.pop(task_id, None)
            self._waiting.pop(task_id, None)
            self._stats["cancelled"] += 1

    def _retry(self, task: _Task, reason: str) -> None:
        self._release(task)
        if task.attempt >= task.max_attempts:
            error = TimeoutError(f"task {task.id}: {reason}; gave up after {task.attempt} attempt(s)")
            self._settle(task, error=error, counter="timed_out")
            return
        log.info("task %s: %s; reassigning (attempt %d of %d)", task.id, reason, task.attempt + 1, task.max_attempts)
        self._dispatch(task)

    def _attempt_expired(self, task_id: int, attempt: int) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.attempt != attempt or task.worker is None:
            return
        self._retry(task, f"no result from worker {task.worker} within {task.timeout:g}s")

    def _wait_expired(self, task_id: int) -> None:
        task = self._tasks.get(task_id)
        if task is None or task_id not in self._waiting:
            return
        after = f" after {task.attempt} attempt(s)" if task.attempt else ""
        error = TimeoutError(f"task {task_id}: no live worker on channel {self.channel!r} for {task.timeout:g}s{after}")
        self._settle(task, error=error, counter="timed_out")

    def _worker_gone(self, worker: str, why: str) -> None:
        for task in [t for t in self._tasks.values() if t.worker == worker]:
            self._retry(task, f"worker {worker} {why}")

    def _on_result(self, sender: str, message: dict[str, Any]) -> None:
        task = self._tasks.get(message["id"])
        if task is None or sender not in task.tried:
            self._stats["dropped_results"] += 1
            log.debug("dropped a result for task %s from %s: nobody waits for it", message["id"], sender)
            return
        if not message["ok"] and message.get("retry") is True:
            if task.worker == sender:
                self._retry(task, f"worker {sender} has no handler")
            return
        task.future.worker = sender
        if message["ok"]:
            self._settle(task, message.get("value"), counter="completed")
        else:
            self._settle(task, error=TaskError(task.id, sender, message["error"]), counter="failed")


__all__ = ["STRATEGIES", "AsyncTaskFuture", "TaskBalancer", "TaskError", "TaskFuture", "TaskInfo"]
