"""The balancer's driver and hook pool, with a toy machine: what the real machines rely on."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import async_eventually, eventually

from pydiscover import AsyncDiscovery, Discovery
from pydiscover._threads import HookPool
from pydiscover.balancer.driver import Driver
from pydiscover.balancer.machine import Action, Cancel, Cluster, Machine, Run, Send
from pydiscover.core import Emit
from pydiscover.transports.memory import MemoryBus, MemoryTransport

QUICK: dict[str, Any] = {"hello_interval": 0.2, "check_interval": 0.3, "node_timeout": 0.6, "ignore_process": False}


class Echo(Machine):
    """Runs hook ``work`` for each message, sends its result; wakes at the deadlines it is given."""

    def __init__(self, cluster: Cluster, channel: str = "echo") -> None:
        self.cluster = cluster
        self.channel = channel
        self.log: list[tuple[str, Any]] = []
        self.deadlines: list[float] = []
        self.in_flight: set[int] = set()
        self._calls = 0
        self.closed_with: bool | None = None

    def _run(self, hook: str, *args: Any) -> Run:
        self._calls += 1
        self.in_flight.add(self._calls)
        return Run(self._calls, hook, args)

    def next_deadline(self) -> float | None:
        return min(self.deadlines, default=None)

    def tick(self, now: float) -> list[Action]:
        due = [d for d in self.deadlines if d <= now]
        self.deadlines = [d for d in self.deadlines if d > now]
        return [Emit("woke", (len(due),))] if due else []

    def started(self, now: float) -> list[Action]:
        self.log.append(("started", None))
        return []

    def stopped(self, now: float) -> list[Action]:
        self.log.append(("stopped", None))
        return []

    def message(self, now: float, sender: str, data: Any) -> list[Action]:
        self.log.append(("message", data))
        return [self._run("work", data)] if isinstance(data, dict) and "work" in data else []

    def hook_done(self, now: float, call: int, value: Any, error: BaseException | None) -> list[Action]:
        self.in_flight.discard(call)
        self.log.append(("done", (value, type(error).__name__ if error else None)))
        return [Send({"result": value})] if error is None else [Emit("failed", (error,))]

    def close(self, now: float) -> list[Action]:
        return [Cancel(call) for call in sorted(self.in_flight)] if self.channel == "cancelling" else []

    def close_waits_for(self) -> frozenset[int]:
        return frozenset(self.in_flight)

    def close_finished(self, now: float, gave_up: bool) -> list[Action]:
        self.closed_with = gave_up
        return [Send({"bye": True})]


def test_the_pool_runs_at_most_its_size_and_withdraws_queued_jobs() -> None:
    pool = HookPool(2)
    gate = threading.Event()
    running, peak, ran = [0], [0], []
    lock = threading.Lock()

    def job(n: int) -> Any:
        def run() -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            gate.wait(5)
            with lock:
                running[0] -= 1
                ran.append(n)
        return run

    for n in range(6):
        pool.submit(job(n), n)
    eventually(lambda: running[0] == 2, 3, "two jobs running")
    assert pool.threads == 2
    assert pool.cancel(5) and not pool.cancel(5) and not pool.cancel(0)  # 0 is running already
    gate.set()
    eventually(lambda: len(ran) == 5, 5, "the other jobs ran")
    assert peak[0] == 2 and 5 not in ran


async def test_driver_feeds_messages_runs_hooks_off_the_loop_and_sends_results() -> None:
    bus = MemoryBus()
    a = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    b = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    threads: list[str] = []

    def work(data: dict[str, Any]) -> int:
        threads.append(threading.current_thread().name)
        return int(data["work"]) * 2

    machine = Echo(a.engine)
    driver = Driver(a, machine, {"work": work})  # before start: joins now, starts with the discovery
    results: list[Any] = []
    b.join("echo", lambda data, packet: results.append(data))
    await a.start()
    await b.start()
    assert ("started", None) in machine.log
    b.send("echo", {"work": 21})
    await async_eventually(lambda: {"result": 42} in results, 3, "the result")
    assert threads and threads[0] != threading.current_thread().name  # the pool, not the loop

    woke: list[int] = []
    a.on("woke", woke.append)
    driver.feed(lambda now: machine.deadlines.append(now + 0.05) or [])
    await async_eventually(lambda: woke == [1], 3, "the machine's deadline woke it")

    await driver.aclose()
    assert machine.closed_with is False and "echo" not in a.channels
    await async_eventually(lambda: {"bye": True} in results, 3, "the bye")
    await a.stop()
    await b.stop()


async def test_close_waits_for_calls_in_flight_and_gives_up_after_its_timeout() -> None:
    bus = MemoryBus()
    a = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    release = asyncio.Event()

    async def work(data: Any) -> str:
        await release.wait()
        return "late"

    machine = Echo(a.engine)
    driver = Driver(a, machine, {"work": work}, close_timeout=0.2)
    await a.start()
    driver.feed(machine.message, "x", {"work": 1})
    assert machine.in_flight
    closing = driver.close()
    assert not closing.done()
    await closing
    assert machine.closed_with is True  # the hook was still running
    release.set()
    await async_eventually(lambda: not machine.in_flight, 3, "the late result reported once")
    assert [entry for entry in machine.log if entry[0] == "done"] == [("done", ("late", None))]
    await a.stop()


async def test_cancel_interrupts_coroutines_and_is_reported_once() -> None:
    a = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)

    async def work(data: Any) -> None:
        await asyncio.sleep(30)

    machine = Echo(a.engine, channel="cancelling")
    driver = Driver(a, machine, {"work": work})
    await a.start()
    driver.feed(machine.message, "x", {"work": 1})
    await driver.close()  # waits for the cancelled coroutine to unwind, not for its 30 s
    assert machine.log[-1] == ("done", (None, "Cancelled"))
    assert machine.closed_with is False
    await a.stop()


def test_a_sync_discovery_crosses_threads_through_call_and_closes_from_any_thread() -> None:
    d = Discovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    machine = Echo(d.engine)
    gate = threading.Event()

    def work(data: Any) -> str:
        gate.wait(5)
        return "done"

    driver = Driver(d, machine, {"work": work})
    d.start()
    try:
        loop_thread = driver.call(threading.current_thread)
        assert loop_thread is not threading.current_thread()
        driver.call(driver.feed, machine.message, "x", {"work": 1})
        threading.Timer(0.1, gate.set).start()
        driver.close()  # blocks until the machine's call finished and close_finished ran
        assert machine.closed_with is False and not machine.in_flight
    finally:
        d.stop()


def test_a_driver_refuses_a_channel_already_joined() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    d.join("echo")
    with pytest.raises(ValueError, match="'echo' is taken"):
        Driver(d, Echo(d.engine), {}, join_error="{channel!r} is taken")


def test_a_shrunk_pool_still_runs_new_jobs_at_once_and_sheds_its_idle_threads() -> None:
    pool = HookPool(4)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def blocker() -> None:
        started.release()
        gate.wait(5)

    for _ in range(4):
        pool.submit(blocker)
    for _ in range(4):
        assert started.acquire(timeout=3)
    gate.set()
    eventually(lambda: pool.threads == 4, 3, "four threads, idle")
    pool.resize(1)
    eventually(lambda: pool.threads == 1, 3, "the idle threads above the new size ended")
    ran = threading.Event()
    pool.submit(ran.set)
    assert ran.wait(3)  # not after the idle timeout


class StartThenStop(Echo):
    """A start ending during the close is answered by a stop: the close must wait for it too."""

    closing = False

    def close(self, now: float) -> list[Action]:
        self.closing = True
        return []

    def hook_done(self, now: float, call: int, value: Any, error: BaseException | None) -> list[Action]:
        self.in_flight.discard(call)
        self.log.append(("done", value))
        return [self._run("stop")] if value == "started" and self.closing else []


async def test_close_asks_again_what_to_wait_for_until_nothing_is_left() -> None:
    a = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    stop_ended = threading.Event()

    def start() -> str:
        time.sleep(0.2)
        return "started"

    def stop() -> str:
        time.sleep(0.3)
        stop_ended.set()
        return "stopped"

    machine = StartThenStop(a.engine)
    driver = Driver(a, machine, {"start": start, "stop": stop})
    await a.start()
    driver.feed(lambda now: [machine._run("start")])
    await driver.close()
    assert stop_ended.is_set() and machine.closed_with is False
    assert [entry for entry in machine.log if entry[0] == "done"] == [("done", "started"), ("done", "stopped")]
    await a.stop()


class Packing(Machine):
    """Every send may wait for the end of the loop's turn (and packs to nothing but itself)."""

    channel = "held"

    def packable(self, data: Any) -> bool:
        return True


async def test_a_stop_sends_what_the_driver_holds_before_its_goodbye() -> None:
    """A send held for packing when the stop begins, in the same turn, still goes out.

    Before, the stop said goodbye first and the held message (a worker's result) was
    dropped with the socket: its task then ran twice, or failed with ``attempts=1``.
    """
    bus = MemoryBus()
    sender = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    receiver = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    got: list[Any] = []
    receiver.join("held", lambda data, packet: got.append(data))
    await sender.start()
    await receiver.start()
    try:
        driver = Driver(sender, Packing(), {}, close_on_stop=False)
        driver.feed(lambda now: [Send({"n": 1})])
        assert got == []  # held until the end of the turn...
        await sender.stop()  # ...which this stop begins before
        await async_eventually(lambda: got == [{"n": 1}], 2, "the held message")
    finally:
        await sender.stop()
        await receiver.stop()
