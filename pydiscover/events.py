"""The event emitter of the runtime: handlers can fail without stopping discovery.

pyee keeps the registry (``on``, ``once``, ``remove_listener``); emitting is ours, so
that a failing handler is reported with the event it was handling and never raises
into the network loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

log = logging.getLogger("pydiscover.events")

#: The arguments each built-in event passes (channel handlers get ``(data, packet)``),
#: named in the log when a handler cannot take them.
EVENT_ARGUMENTS = {
    "added": "(node)",
    "removed": "(node)",
    "master": "(node)",
    "promotion": "(me)",
    "demotion": "(me)",
    "helloReceived": "(node, is_new)",
    "helloEmitted": "()",
    "nodeUpdated": "(node, previous)",
    "check": "()",
    "started": "(discovery)",
    "stopped": "(discovery)",
    "error": "(exception)",
}


#: Handlers whose failures are counted (to log the 1st, 10th, 100th...); past it, counting restarts.
MAX_TRACKED_FAILURES = 1024


class SafeEmitter(AsyncIOEventEmitter):
    """Runs sync handlers and schedules coroutine handlers on the loop.

    A handler that raises (or a coroutine that fails) is logged, naming the event, and
    re-emitted as ``error``; a failing ``error`` handler, or an ``error`` with no
    listener, is only logged.  pyee would raise into the emitter's caller, which here
    is the network loop.

    Relies on pyee's handler table ``_events`` and on its ``_add_event_handler`` and
    ``_remove_listener``, through which every way in and out passes (the pinned major
    version is checked in the tests); everything else it keeps itself.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, Callable[[bool], None]] = {}
        self._watch_lock = threading.Lock()
        super().__init__()
        self._handler_loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Future[Any]] = set()
        self._failures: dict[tuple[str, Callable[..., Any]], int] = {}
        self._in_error_event = False

    def set_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop coroutine handlers are scheduled on (the runtime's, once started)."""
        self._handler_loop = loop

    def running_handlers(self) -> set[asyncio.Future[Any]]:
        """Coroutine handlers not finished yet (``stop()`` lets them finish)."""
        return set(self._running)

    def has_listeners(self, event: str) -> bool:
        """Cheaper than ``listeners(event)`` (no copy, no lock)."""
        return bool(self._events.get(event))

    def watch(self, event: str, callback: Callable[[bool], None]) -> None:
        """Call ``callback(has_listeners)`` now and whenever ``event``'s handlers change, on the
        thread that changed them: so the core learns whether anyone listens once per change,
        not once per datagram."""
        self._watchers[event] = callback
        self._handlers_changed(event)

    # pyee's three ways in and out of its handler table.
    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        super()._add_event_handler(event, k, v)
        self._handlers_changed(event)

    def _remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        super()._remove_listener(event, f)
        self._handlers_changed(event)

    def remove_all_listeners(self, event: str | None = None) -> None:
        super().remove_all_listeners(event)
        for name in list(self._watchers) if event is None else [event]:
            self._handlers_changed(name)

    def _handlers_changed(self, event: str) -> None:
        # Read and tell under one lock: with handlers changing on two threads (the sync facade's
        # user thread, a once handler firing on the loop), the last report is the last state.
        watcher = self._watchers.get(event)
        if watcher is not None:
            with self._watch_lock:
                watcher(self.has_listeners(event))

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        # The hot path (every hello, every channel message): pyee's emit takes a lock
        # and two more calls per event.  Copying the handlers is one C call, atomic
        # under the GIL, so handlers added from other threads are safe without it.
        handlers = self._events.get(event)
        if not handlers:
            if event == "error":
                error = args[0] if args else None
                trace = error if isinstance(error, BaseException) else None
                log.error("unhandled error event: %r", error, exc_info=trace)
            return False
        outer = self._in_error_event
        self._in_error_event = outer or event == "error"
        try:
            # Inline, not one method call per handler: this loop runs for every hello a
            # helloReceived handler hears.  ``call`` is pyee's wrapper for once(); a report
            # names the user's ``handler``.
            for handler, call in list(handlers.items()):
                try:
                    result = call(*args, **kwargs)
                except Exception as exc:
                    self._handler_failed(event, handler, exc, args)
                    continue
                if result is not None:
                    self._schedule(event, handler, result, args)
        finally:
            self._in_error_event = outer
        return True

    def _schedule(self, event: str, f: Callable[..., Any], result: Any, args: tuple[Any, ...]) -> None:
        """A handler returned a coroutine (or future): run it on the loop, report its failure."""
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            future = asyncio.ensure_future(result, loop=self._handler_loop)
            self._running.add(future)
            in_error_event = self._in_error_event

            def done(fut: asyncio.Future[Any]) -> None:
                self._running.discard(fut)
                if not fut.cancelled() and fut.exception() is not None:
                    outer, self._in_error_event = self._in_error_event, in_error_event
                    try:
                        self._handler_failed(event, f, fut.exception(), args)  # type: ignore[arg-type]
                    finally:
                        self._in_error_event = outer

            future.add_done_callback(done)

    def _handler_failed(self, event: str, f: Callable[..., Any], exc: BaseException, args: tuple[Any, ...]) -> None:
        if self._in_error_event or not self.has_listeners("error"):
            # Either an "error" handler failed, or nobody listens: logging is all that is safe.
            # Logged on the 1st, 10th, 100th... failure of the same handler: a handler that
            # cannot take its arguments fails on every hello and must not flood the log.
            key = (event, f)
            if key not in self._failures and len(self._failures) >= MAX_TRACKED_FAILURES:
                self._failures.clear()  # bounded: e.g. one closure per wait_for call
            count = self._failures[key] = self._failures.get(key, 0) + 1
            if count == 10 ** (len(str(count)) - 1):
                log.error(
                    "handler %s for event %r raised %s%s", _name(f), event, _describe(exc),
                    f" ({count} failures so far)" if count > 1 else _arity_hint(event, f, args, exc),
                    exc_info=exc if count == 1 else None,
                )
            else:
                log.debug("handler %s for event %r raised %s", _name(f), event, _describe(exc), exc_info=exc)
            return
        log.debug("handler %s for event %r raised", _name(f), event, exc_info=exc)
        self.emit("error", exc)


def _name(f: Callable[..., Any]) -> str:
    return getattr(f, "__qualname__", None) or repr(f)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _arity_hint(event: str, f: Callable[..., Any], args: tuple[Any, ...], exc: BaseException) -> str:
    """When the handler cannot even take the event's arguments, say what they are."""
    if not isinstance(exc, TypeError):
        return ""
    try:
        inspect.signature(f).bind(*args)
    except TypeError:
        return f"; handlers of {event!r} are called with {EVENT_ARGUMENTS.get(event, '(data, packet)')}"
    except ValueError:  # no signature (a builtin)
        return ""
    return ""
