"""A pyee emitter whose handlers can fail without stopping discovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

log = logging.getLogger("pydiscover.events")


class SafeEmitter(AsyncIOEventEmitter):
    """Runs sync handlers and schedules coroutine handlers on the loop.

    A handler that raises (or a coroutine that fails) is logged and re-emitted as
    ``error``; a failing ``error`` handler, or an ``error`` with no listener, is only
    logged.  pyee would raise into the emitter's caller, which here is the network loop.
    """

    _in_error_event = False

    def has_listeners(self, event: str) -> bool:
        """Cheaper than ``listeners(event)`` (no copy, no lock): for per-datagram checks."""
        return bool(self._events.get(event))

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        if event != "error":
            # The hot path (every hello, every channel message): pyee's emit takes a lock
            # and two more calls per event.  Copying the handlers is one C call, atomic
            # under the GIL, so handlers added from other threads are safe without it.
            handlers = self._events.get(event)
            if not handlers:
                return False
            for f in list(handlers.values()):
                self._emit_run(f, args, kwargs)
            return True
        outer, self._in_error_event = self._in_error_event, True
        try:
            return super().emit(event, *args, **kwargs)
        finally:
            self._in_error_event = outer

    def _emit_run(self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            result = f(*args, **kwargs)
        except Exception as exc:
            self._handler_failed(f, exc, args)
            return
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            future = asyncio.ensure_future(result, loop=self._loop)
            self._waiting.add(future)

            def done(fut: asyncio.Future[Any]) -> None:
                self._waiting.discard(fut)
                if not fut.cancelled() and fut.exception() is not None:
                    self._handler_failed(f, fut.exception(), args)  # type: ignore[arg-type]

            future.add_done_callback(done)

    def _handler_failed(self, f: Callable[..., Any], exc: BaseException, args: tuple[Any, ...]) -> None:
        if self._in_error_event or not self.listeners("error"):
            # Either an "error" handler failed, or nobody listens: logging is all that is safe.
            log.error("event handler %r raised", f, exc_info=exc)
            return
        log.debug("event handler %r raised", f, exc_info=exc)
        self.emit("error", exc)

    def _emit_handle_potential_error(self, event: str, error: Any) -> None:
        if event == "error":
            log.error("unhandled error event: %r", error, exc_info=error if isinstance(error, BaseException) else None)
