"""Crossing threads: blocking user callbacks off the loop, and coroutines run from sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def in_daemon_thread(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run a blocking hook on its own daemon thread: it can neither stall the loop nor hold up
    interpreter exit (the default executor's threads are joined at exit, before the goodbye)."""
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="pydiscover-setup-hook", daemon=True).start()
    return future
