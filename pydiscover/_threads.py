"""Crossing threads: blocking user hooks off the loop (one bounded pool), coroutines run from sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("pydiscover.hooks")

#: Seconds an idle pool thread waits for work before it ends.
IDLE_THREAD_SECONDS = 30.0


def run_coro_with_timeout(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, timeout: float | None) -> T:
    """Run ``coro`` on ``loop`` (another thread's) and wait for its result (python-zeroconf's helper).

    On timeout the coroutine is cancelled (it must not go on unobserved) and the builtin
    ``TimeoutError`` raised: before 3.11 ``concurrent.futures`` raises its own class.
    """
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no result within {timeout} s") from None


class HookPool:
    """At most ``size`` daemon threads for blocking user hooks, started as needed.

    Daemon threads: a hook stuck in I/O can neither stall the discovery loop nor keep the
    interpreter from exiting (``ThreadPoolExecutor`` threads are joined at exit, before
    the goodbye is sent).  Queued jobs can be withdrawn (:meth:`cancel`) until a thread
    takes them; idle threads end after :data:`IDLE_THREAD_SECONDS`.
    """

    def __init__(self, size: int, name: str = "pydiscover-hook") -> None:
        if size < 1:
            raise ValueError(f"a hook pool needs at least one thread, got {size}")
        self.size = size
        self._name = name
        self._jobs: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self._cond = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._linger = IDLE_THREAD_SECONDS
        self._keys = itertools.count(-1, -1)  # generated keys are negative: callers' own are not

    @property
    def threads(self) -> int:
        """Threads alive now (busy or idle)."""
        return self._threads

    def submit(self, job: Callable[[], None], key: int | None = None) -> int:
        """Queue ``job`` (under ``key``, unique among queued jobs, or a new one); a thread starts if none is free."""
        with self._cond:
            key = next(self._keys) if key is None else key
            self._jobs[key] = job
            self._grow()
            self._cond.notify()
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
        with self._cond:
            self.size = size
            self._grow()
            self._cond.notify_all()  # idle threads above the size end now

    def release_idle(self) -> None:
        """Idle threads end now, and from now on as soon as they run out of work (the owner closed).

        Jobs submitted later still run: a closing owner may still need one (a stop hook).
        """
        with self._cond:
            self._linger = 0.0
            self._cond.notify_all()

    def cancel(self, key: int) -> bool:
        """Withdraw a queued job; ``False`` if a thread already took it (or it never was)."""
        with self._cond:
            return self._jobs.pop(key, None) is not None

    def _grow(self) -> None:  # holding the lock
        while len(self._jobs) > self._idle and self._threads < self.size:
            self._threads += 1
            self._idle += 1  # counted idle until it takes a job, so one job starts one thread
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        with self._cond:
            while True:
                if self._jobs:  # (a thread above a shrunk size finishes the work queued, then ends)
                    _, job = self._jobs.popitem(last=False)
                    self._idle -= 1
                    self._cond.release()
                    try:
                        job()  # jobs catch the hook's exceptions themselves; this is a last resort
                    except BaseException:
                        log.exception("hook job failed")
                    finally:
                        self._cond.acquire()
                    self._idle += 1
                    continue
                if self._threads > self.size or not self._cond.wait(self._linger):
                    if self._jobs:
                        continue  # work arrived as the wait ended
                    self._threads -= 1
                    self._idle -= 1
                    return
