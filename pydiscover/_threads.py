"""Crossing threads: blocking user hooks off the loop (one bounded pool), coroutines run from sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("pydiscover.hooks")

#: Seconds an idle pool thread waits for work before it ends.
IDLE_THREAD_SECONDS = 30.0


def run_coro_with_timeout(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, timeout: float | None,
                          cleanup_timeout: float = 5.0) -> T:
    """Run ``coro`` on ``loop`` (another thread's) and wait for its result (python-zeroconf's helper).

    On timeout the coroutine is cancelled (it must not go on unobserved), given up to
    ``cleanup_timeout`` seconds to run its own clean-up (a start that times out closes
    what it opened: the caller may stop the loop next), and the builtin ``TimeoutError``
    raised: before 3.11 ``concurrent.futures`` raises its own class.
    """
    tasks: list[asyncio.Task[Any]] = []

    async def run() -> T:
        task = asyncio.current_task()
        if task is not None:
            tasks.append(task)
        return await coro

    future = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()  # schedules the task's cancellation first: the wait below comes after it

        async def settled() -> None:
            if tasks and not tasks[0].done():
                await asyncio.wait(tasks, timeout=cleanup_timeout)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(settled(), loop).result(cleanup_timeout + 1)
        raise TimeoutError(f"no result within {timeout} s") from None


class HookPool:
    """At most ``size`` daemon threads for blocking user hooks, started as needed.

    Daemon threads: a hook stuck in I/O can neither stall the discovery loop nor keep the
    interpreter from exiting (``ThreadPoolExecutor`` threads are joined at exit, before
    the goodbye is sent).  Queued jobs can be withdrawn (:meth:`cancel`) until a thread
    takes them; idle threads end after :data:`IDLE_THREAD_SECONDS`.

    Threads wait on a ``queue.SimpleQueue`` of job keys (C code: a hand-off costs a few
    microseconds, where a ``threading.Condition`` costs several times that); the jobs sit
    in a dict beside it, so withdrawing one is a ``pop``.  The counters say whether a job
    needs a new thread: ``_idle`` threads wait unclaimed, ``_unclaimed`` jobs wait for a
    busy thread to finish.
    """

    def __init__(self, size: int, name: str = "pydiscover-hook") -> None:
        if size < 1:
            raise ValueError(f"a hook pool needs at least one thread, got {size}")
        self.size = size
        self._name = name
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # None: end, one thread
        self._jobs: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._unclaimed = 0
        self._linger = IDLE_THREAD_SECONDS
        self._keys = itertools.count(-1, -1)  # generated keys are negative: callers' own are not

    @property
    def threads(self) -> int:
        """Threads alive now (busy or idle)."""
        return self._threads

    def submit(self, job: Callable[[], None], key: int | None = None) -> int:
        """Queue ``job`` (under ``key``, unique among queued jobs, or a new one); a thread starts if none is free."""
        start = False
        with self._lock:
            key = next(self._keys) if key is None else key
            self._jobs[key] = job
            if self._idle:
                self._idle -= 1  # that thread is this job's
            elif self._threads < self.size:
                self._threads += 1
                start = True
            else:
                self._unclaimed += 1  # the next thread to finish takes it
        self._queue.put(key)
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return key

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """``fn()`` on the pool; the returned future (of ``loop``) gets its result or exception."""
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def job() -> None:
            try:
                result, error = fn(), None
            except BaseException as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(settle, result, error)

        self.submit(job)
        return future

    def resize(self, size: int) -> None:
        """Allow ``size`` threads from now on (threads above it end once no job waits)."""
        if size < 1:
            raise ValueError(f"a hook pool needs at least one thread, got {size}")
        with self._lock:
            self.size = size
            more = min(self._unclaimed, size - self._threads)
            if more > 0:  # queued jobs get the threads they waited for
                self._unclaimed -= more
                self._threads += more
            fewer = min(self._idle, self._threads - size)
            self._end_idle(max(fewer, 0))
        for _ in range(max(more, 0)):
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def release_idle(self) -> None:
        """Idle threads end now, and from now on as soon as they run out of work (the owner closed).

        Jobs submitted later still run: a closing owner may still need one (a stop hook).
        """
        with self._lock:
            self._linger = 0.0
            self._end_idle(self._idle)

    def cancel(self, key: int) -> bool:
        """Withdraw a queued job; ``False`` if a thread already took it (or it never was)."""
        with self._lock:
            return self._jobs.pop(key, None) is not None

    def _end_idle(self, count: int) -> None:  # holding the lock
        """``count`` idle threads end: they are uncounted now and each takes one ``None``."""
        self._idle -= count
        self._threads -= count
        for _ in range(count):
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            try:
                key = self._queue.get(timeout=self._linger)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody claimed this thread meanwhile: it ends
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # a job was queued for it as the wait ended
            if key is None:
                return  # counted out already (_end_idle)
            job = self._jobs.pop(key, None)  # None: withdrawn (a pop is atomic: cancel's or ours wins)
            if job is not None:
                try:
                    job()  # jobs catch the hook's exceptions themselves; this is a last resort
                except BaseException:
                    log.exception("hook job failed")
            with self._lock:
                if self._unclaimed:
                    self._unclaimed -= 1  # a queued job is this thread's next
                elif self._threads > self.size:
                    self._threads -= 1  # the pool shrank: this one ends
                    return
                else:
                    self._idle += 1
