"""Runs a balancer state machine on a discovery: the one driver, bridge and hook pool.

A :class:`~pydiscover.balancer.machine.Machine` decides; this carries its actions out
on the discovery's event loop (DRIVER-READY):

* inputs: channel messages, the discovery's ``started``/``stopped``/``added``/
  ``removed``/``promotion`` events, hook results and one wake-up timer at the machine's
  next deadline are fed to it with ``now = loop.time()``;
* :class:`~.machine.Send` goes out on the channel, :class:`~pydiscover.core.Emit` to the
  discovery's handlers, :class:`~.machine.Run` calls a user hook: a coroutine function as
  a task on the loop, a plain function on a bounded pool of daemon threads
  (:class:`~pydiscover._threads.HookPool`), reported back exactly once;
* :meth:`Driver.call` is the one sync/async bridge: it runs code where the machine
  lives (the loop's thread), from any thread for a :class:`~pydiscover.Discovery`.

Testing the same machines without a loop is ``testbed.balancer_sim``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .._threads import HookPool, run_coro_with_timeout
from ..core import Emit
from ..discovery import AsyncDiscovery, Discovery
from ..errors import PacketTooLarge
from ..node import Node, Packet
from .machine import Action, Cancel, Cancelled, Machine, Outbox, Run, Send, message_kind

log = logging.getLogger("pydiscover.balancer.driver")

T = TypeVar("T")

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


def is_coroutine_function(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


@dataclass(eq=False)
class _Call:
    """A :class:`Run` being carried out."""

    #: A coroutine's (or a returned awaitable's) task; ``None`` on the pool.
    task: asyncio.Task[tuple[Any, BaseException | None]] | None
    done: asyncio.Future[None] | None  # set when reported (what a close waits on)
    cancelled: bool = False


class Driver:
    """Feeds ``machine`` from ``discovery`` and carries its actions out; see the module docstring.

    Built before or after the discovery starts (from any thread for a ``Discovery``, on
    the loop's thread for a running ``AsyncDiscovery``): it joins
    ``machine.channel`` at once (``ValueError(join_error)`` if it cannot).  With
    ``close_on_stop`` the discovery's stop closes the machine before the goodbye (what
    it holds is released before peers take it over); without, the machine is told
    ``stopped`` and lives on through a restart.  Actions the driver does not know (a
    :class:`~.machine.Settle`) go to ``on_action``.
    """

    def __init__(
        self,
        discovery: Discovery | AsyncDiscovery,
        machine: Machine,
        hooks: Mapping[str, Callable[..., Any] | None],
        *,
        threads: int = 16,
        on_action: Callable[[Action], None] | None = None,
        close_on_stop: bool = True,
        close_timeout: float = 30.0,
        join_error: str = "channel {channel!r} is reserved or already joined",
        thread_name: str = "pydiscover-hook",
    ) -> None:
        if not isinstance(discovery, (Discovery, AsyncDiscovery)):
            raise TypeError(f"discovery must be a Discovery or an AsyncDiscovery, got {type(discovery).__name__}")
        self.discovery = discovery
        self.engine: AsyncDiscovery = discovery.engine
        self.machine = machine
        self.close_timeout = close_timeout
        self.closed = False
        self._hooks: dict[str, Callable[..., Any] | None] = dict(hooks)
        self._pool = HookPool(threads, thread_name)
        self._on_action = on_action
        self._close_on_stop = close_on_stop
        self._calls: dict[int, _Call] = {}
        self._inline = False  # plain hooks run on the caller's thread (during close(inline=True))
        self._outbox = Outbox(machine)
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("started", self._on_started),
            ("stopped", self._on_stopped),
            ("added", self._on_added),
            ("removed", self._on_removed),
            ("promotion", self._on_promotion),
            ("coordinatorLost", self._on_fence_lost),
            ("coordinatorReady", self._on_fence_ready),
        ]
        self.call(self._attach, join_error)

    # ----------------------------------------------------------------- API
    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` where the machine lives (the discovery's loop thread) and return its result."""
        return self.discovery.call(fn, *args)

    def now(self) -> float:
        """The loop's clock (``0.0`` before the discovery's first start)."""
        loop = self.engine.loop
        return loop.time() if loop is not None else 0.0

    def feed(self, step: Callable[..., Any], *args: Any) -> Any:
        """``step(now, *args)`` on the machine, its actions carried out; returns the step's value.

        A step returns a list of actions, or ``(value, actions)``.  Call it on the loop's
        thread (through :meth:`call` from elsewhere).
        """
        engine = self.engine
        if engine.coordinator is not None and not engine.coordinator_ready and step != self.machine.fence_lost:
            # Past the lease's deadline (a pause): the machine hears so before anything else.
            lost = self.machine.fence_lost(self.now())
            if lost:
                self._carry_out(lost)
        result = step(self.now(), *args)
        value, actions = result if isinstance(result, tuple) else (None, result)
        if actions:
            self._carry_out(actions)
        self._rearm()
        return value

    def set_hook(self, name: str, fn: Callable[..., Any] | None) -> None:
        """Replace the hook ``Run`` actions named ``name`` call (calls in flight finish with the old one)."""
        self._hooks[name] = fn

    def set_threads(self, count: int) -> None:
        """How many plain hooks may run at once (the pool's threads)."""
        self._pool.resize(count)

    def close(self, *, inline: bool = False) -> Awaitable[None]:
        """Close the machine; returns what is left to wait for.  Idempotent.

        On the loop's thread (or where no loop runs) it does at once what needs no
        waiting: the machine is closed, its timer cancelled, the channel left and its
        actions carried out; with ``inline`` the plain hooks that close runs are called
        right here, on the caller's thread.  What needs waiting (the calls the machine's
        :meth:`~.machine.Machine.close_waits_for` names, up to ``close_timeout``, then its
        ``close_finished``) is left to the returned task.  From another thread it blocks
        until all is done.
        """
        loop = self._live_loop()
        if loop is None or running_loop() is loop:
            return self._begin_close(inline=inline)
        run_coro_with_timeout(self.aclose(), loop, self.close_timeout + 5)
        return FINISHED

    async def aclose(self) -> None:
        """:meth:`close`, awaited until it is all done; from any event loop (the discovery's stop hook)."""
        loop = self._live_loop()
        if loop is not None and running_loop() is not loop:  # e.g. a sync Discovery, from the user's own loop
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.aclose(), loop))
            return
        await self._begin_close(inline=False)

    # -------------------------------------------------------------- inputs
    def _attach(self, join_error: str) -> None:
        channel = self.machine.channel
        if not self.engine.join(channel, self._on_message):
            raise ValueError(join_error.format(channel=channel))
        for event, handler in self._listeners:
            self.engine.on(event, handler)
        if self._close_on_stop:
            self.engine.add_stop_hook(self.aclose)
        self.engine.add_stop_hook(self._send_held)
        if self.engine.running:
            self.feed(self.machine.started)
            if self.engine.coordinator_ready:  # built after the lease became good: no event will say so
                self.feed(self.machine.fence_ready)

    def _event(self, step: Callable[..., Any], *args: Any) -> None:
        """Feed an input the machine did not ask for; a failure is reported, never raised into the loop."""
        if self.closed:
            return
        try:
            self.feed(step, *args)
        except Exception as exc:
            log.exception("%s failed", getattr(step, "__qualname__", step))
            self.engine.emit("error", exc)

    def _on_message(self, data: Any, packet: Packet) -> None:
        self._event(self.machine.message, packet.iid, data)

    def _on_started(self, _discovery: object) -> None:
        self._event(self.machine.started)

    def _on_stopped(self, _discovery: object) -> None:
        self._cancel_timer()
        self._drop_held()  # the socket is gone: nothing held can leave
        self._event(self.machine.stopped)
        for call, entry in list(self._calls.items()):  # abandoned: what has not begun never will
            if entry.task is not None:
                entry.task.cancel()
            else:
                self._pool.cancel(call)
            self._report(call, None, Cancelled())

    def _on_added(self, node: Node) -> None:
        self._event(self.machine.node_added, node.id)

    def _on_removed(self, node: Node) -> None:
        self._event(self.machine.node_removed, node.id)

    def _on_promotion(self, _me: object) -> None:
        self._event(self.machine.promoted)

    def _on_fence_lost(self) -> None:
        self._event(self.machine.fence_lost)

    def _on_fence_ready(self) -> None:
        self._event(self.machine.fence_ready)

    def _wake(self) -> None:
        self._timer = self._timer_at = None
        try:  # (a closing machine may still keep time: the closing ResourceMachine's presence)
            self.feed(self.machine.tick)
        except Exception as exc:
            log.exception("tick failed")
            self.engine.emit("error", exc)

    def _rearm(self) -> None:
        """One timer, at the machine's next deadline, while the discovery runs.

        Runs after every input, so the common case comes first: a timer armed no later
        than the deadline stays (an early wake-up finds nothing due and re-arms).  A stop
        cancels the timer, so one armed on a loop that is gone is never kept.
        """
        deadline = self.machine.next_deadline()
        armed = self._timer_at
        if armed is not None and deadline is not None and armed <= deadline:
            return
        self._cancel_timer()
        loop = self.engine.loop
        if deadline is None or loop is None or not loop.is_running() or not self.engine.running:
            return
        self._timer = loop.call_at(deadline, self._wake)
        self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    # ------------------------------------------------------------- actions
    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.data)
            elif isinstance(action, Emit):
                self.engine.emit(action.event, *action.args)
            elif isinstance(action, Run):
                self._run(action)
            elif isinstance(action, Cancel):
                self._cancel(action.call)
            elif self._on_action is not None:
                self._on_action(action)
            else:
                raise TypeError(f"no one carries out {action!r}")

    def _send(self, data: Any) -> None:
        """Send now, or hold until the loop's turn is over so that the machine can pack (:class:`Outbox`)."""
        if not self.engine.running:
            return
        for message in self._outbox.post(data):
            self._send_now(message)
        if self._outbox.holding and self._flush_handle is None:
            loop = self._live_loop()
            if loop is None:
                self._flush()
            else:
                self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:  # (cancelling the call now running is harmless)
            self._flush_handle.cancel()
            self._flush_handle = None
        for message in self._outbox.flush():
            self._send_now(message)

    async def _send_held(self) -> None:
        """Before the goodbye: what is held goes out now, and what lands in the next turn (a
        result a thread hands back as the stop begins), not after the socket is gone."""
        self._flush()
        await asyncio.sleep(0)
        self._flush()

    def _drop_held(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._outbox.clear()

    def _send_now(self, data: Any) -> None:
        if not self.engine.running:
            return
        try:
            self.engine.send(self.machine.channel, data)
        except (PacketTooLarge, TypeError):
            log.exception("could not send a %r message on %r", message_kind(data), self.machine.channel)

    def _run(self, action: Run) -> None:
        fn = self._hooks.get(action.hook)
        call = action.call
        if fn is None:
            self._calls[call] = _Call(None, None)
            self._report(call, None, RuntimeError(f"no {action.hook!r} hook"))
            return
        loop = self._live_loop()
        if is_coroutine_function(fn):
            if loop is None:
                log.warning("cannot run the coroutine hook %s: the discovery's loop is not running", action.hook)
                self._calls[call] = _Call(None, None)
                self._report(call, None, RuntimeError("the discovery's loop is not running"))
                return
            self._calls[call] = _Call(None, loop.create_future())
            self._await(call, loop, fn(*action.args))
            return
        self._calls[call] = _Call(None, loop.create_future() if loop is not None else None)
        if self._inline or loop is None:
            value, error = _invoke(fn, action.args)
            self._settle_plain(call, loop, value, error)
            return

        def job() -> None:
            value, error = _invoke(fn, action.args)
            with contextlib.suppress(RuntimeError):  # the loop closed: the stop reported the call already
                loop.call_soon_threadsafe(self._settle_plain, call, loop, value, error)

        self._pool.submit(job, call)

    def _settle_plain(self, call: int, loop: asyncio.AbstractEventLoop | None, value: Any,
                      error: BaseException | None) -> None:
        """A plain hook returned: an awaitable it returned is awaited on the loop first."""
        if error is None and inspect.isawaitable(value):
            if call in self._calls and loop is not None and loop.is_running():
                self._await(call, loop, value)
                return
            if inspect.iscoroutine(value):
                value.close()  # nobody to run it for (never awaited otherwise: a warning at exit)
            value, error = None, RuntimeError("the hook returned an awaitable and the discovery's loop is gone")
        self._report(call, value, error)

    def _await(self, call: int, loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> None:
        task = loop.create_task(_outcome(awaitable))

        def finished(task: asyncio.Task[tuple[Any, BaseException | None]]) -> None:
            if task.cancelled():  # perhaps before it began: then the awaitable never ran
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                self._report(call, None, Cancelled())
            else:
                self._report(call, *task.result())

        task.add_done_callback(finished)
        self._calls[call].task = task

    def _cancel(self, call: int) -> None:
        entry = self._calls.get(call)
        if entry is None:
            return
        entry.cancelled = True
        if entry.task is not None:
            entry.task.cancel()  # it reports the cancellation as it unwinds
        elif self._pool.cancel(call):
            self._report(call, None, Cancelled())

    def _report(self, call: int, value: Any, error: BaseException | None) -> None:
        """Hand a call's outcome to the machine, once."""
        entry = self._calls.pop(call, None)
        if entry is None:
            return
        if entry.done is not None and not entry.done.done():
            entry.done.set_result(None)
        try:
            self.feed(self.machine.hook_done, call, value, error)
        except Exception as exc:
            log.exception("hook_done failed")
            self.engine.emit("error", exc)

    # --------------------------------------------------------------- close
    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        """The discovery's loop while it runs (a stopped ``Discovery`` has none; a stopped ``AsyncDiscovery`` may)."""
        loop = self.engine.loop
        return loop if loop is not None and loop.is_running() else None

    def _begin_close(self, *, inline: bool) -> Awaitable[None]:
        if self.closed:
            return self._close_task or FINISHED
        self._cancel_timer()
        self._inline = inline
        try:
            self.feed(self.machine.close)
        finally:
            self._inline = False
        self._flush()  # before leaving the channel: what the machine said goes out
        self.closed = True  # after the close's own actions: they run like any others
        self._pool.release_idle()
        for event, handler in self._listeners:
            self.engine.remove_listener(event, handler)
        self.engine.leave(self.machine.channel)  # nothing more to hear; a goodbye needs no membership
        waits = self._close_waits()
        if waits and self._live_loop() is not None:
            self._close_task = asyncio.ensure_future(self._finish_close(), loop=self.engine.loop)
            return self._close_task
        self._finish_close_now(gave_up=bool(waits))
        return FINISHED

    def _close_waits(self) -> list[asyncio.Future[Any]]:
        """What the close still waits for: the machine's answer, asked anew (a start that
        ends during the close adds the stop that releases it)."""
        waits: list[asyncio.Future[Any]] = []
        for call in self.machine.close_waits_for():
            entry = self._calls.get(call)
            if entry is None or entry.done is None or (entry.cancelled and entry.task is None):
                continue  # reported already, or a blocking hook nobody can interrupt: not waited for
            waits.append(entry.task if entry.task is not None else entry.done)
        return waits

    async def _finish_close(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        gave_up = True  # unless the waiting ends normally
        try:
            while waits := self._close_waits():
                left = deadline - loop.time()
                if left <= 0:
                    log.warning("%d hook(s) of %r still running %.0fs into close; going on without them",
                                len(waits), self.machine.channel, self.close_timeout)
                    return
                await asyncio.wait(waits, timeout=left)
            gave_up = False
        finally:
            self._finish_close_now(gave_up=gave_up)

    def _finish_close_now(self, *, gave_up: bool) -> None:
        self.engine.remove_stop_hook(self.aclose)
        self.engine.remove_stop_hook(self._send_held)
        self._carry_out(self.machine.close_finished(self.now(), gave_up))


def _invoke(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except BaseException as exc:  # the machine decides what a failure means
        return None, exc


async def _outcome(awaitable: Awaitable[Any]) -> tuple[Any, BaseException | None]:
    try:
        return await awaitable, None
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # SystemExit in a hook must not end the loop
        return None, exc




__all__ = ["FINISHED", "Driver", "HookPool", "is_coroutine_function", "running_loop"]
