"""TaskBalancer: strategies, reassignment, duplicates, limits; in memory, then over real sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, eventually, free_udp_port

from pydiscover import AsyncDiscovery, Discovery, PacketTooLarge, TaskBalancer, TaskError
from pydiscover.balancer import AsyncTaskFuture, TaskInfo
from pydiscover.balancer.assignment import rendezvous
from pydiscover.transports.memory import MemoryBus, MemoryTransport

ROOT = Path(__file__).resolve().parent.parent
Member = tuple[AsyncDiscovery, TaskBalancer[AsyncTaskFuture]]
QUICK: dict[str, Any] = {"hello_interval": 0.2, "check_interval": 0.3, "node_timeout": 0.6, "ignore_process": False}


class Cluster:
    """Nodes on one memory bus; the first one added with ``master=True`` gets the highest weight."""

    def __init__(self) -> None:
        self.bus = MemoryBus()
        self.nodes: list[Member] = []

    async def add(self, *, master: bool = False, handler: Callable[..., Any] | None = None,
                  strategy: str = "round_robin", **options: Any) -> Member:
        d = AsyncDiscovery(transport=MemoryTransport(self.bus), weight=100 if master else -len(self.nodes) - 1,
                           **{**QUICK, **options})
        balancer = TaskBalancer(d, strategy=strategy)
        if handler is not None:
            balancer.worker(handler)
        await d.start()
        self.nodes.append((d, balancer))
        if master and not d.is_master:
            await d.wait_for("promotion", timeout=3)
        return d, balancer

    async def close(self) -> None:
        for d, balancer in self.nodes:
            balancer.close()
            await d.stop()


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


async def sees_workers(balancer: TaskBalancer[Any], count: int) -> None:
    await async_eventually(lambda: len(balancer.workers) == count, 3, f"{count} live workers")


def triple(x: int) -> int:
    return x * 3


# ------------------------------------------------------------ strategies
async def test_round_robin_spreads_evenly_over_the_workers() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True)
        workers = [await c.add(handler=triple) for _ in range(3)]
        await sees_workers(master, 3)
        futures = [master.submit(i) for i in range(30)]
        assert await asyncio.gather(*futures) == [i * 3 for i in range(30)]
        by_worker = collections.Counter(f.worker for f in futures)
        assert set(by_worker) == {d._core.iid for d, _ in workers}
        assert set(by_worker.values()) == {10}
        assert all(f.attempts == 1 for f in futures)
        assert master.stats["submitted"] == master.stats["completed"] == 30
        assert [b.stats["executed"] for _, b in workers] == [10, 10, 10]
        assert master.pending == 0


async def test_the_master_is_a_worker_too_running_its_share_locally() -> None:
    async with cluster() as c:
        md, master = await c.add(master=True, handler=triple)
        await c.add(handler=triple)
        await sees_workers(master, 2)
        sent_before = md.stats["packets_out"]
        futures = [master.submit(i) for i in range(10)]
        assert await asyncio.gather(*futures) == [i * 3 for i in range(10)]
        local = [f for f in futures if f.worker == md._core.iid]
        assert len(local) == 5 and master.stats["executed"] == 5
        # five task messages went out, none for the local five (hellos may add a few packets)
        assert md.stats["packets_out"] - sent_before < 10


async def test_random_strategy_uses_every_live_worker() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True, strategy="random")
        master._rng.seed(7)
        workers = [await c.add(handler=triple) for _ in range(3)]
        await sees_workers(master, 3)
        futures = [master.submit(i) for i in range(60)]
        assert await asyncio.gather(*futures) == [i * 3 for i in range(60)]
        assert {f.worker for f in futures} == {d._core.iid for d, _ in workers}


async def test_least_loaded_avoids_the_busy_worker() -> None:
    gate = asyncio.Event()

    async def slow(x: int) -> int:
        await gate.wait()
        return x * 3

    async with cluster() as c:
        _, master = await c.add(master=True, strategy="least_loaded")
        busy, _ = await c.add(handler=slow)
        await c.add(handler=triple)
        await c.add(handler=triple)
        await sees_workers(master, 3)
        first = [master.submit(i, timeout=10) for i in range(3)]  # all idle: one each
        assert sorted(master._inflight.values()) == [1, 1, 1]
        await async_eventually(lambda: sum(f.done() for f in first) == 2, 3, "the two fast tasks")
        later = []
        for i in range(6):  # one at a time: the busy worker always has one in flight, the others none
            future = master.submit(100 + i)
            assert await future == (100 + i) * 3
            later.append(future.worker)
        assert busy._core.iid not in later
        assert len(set(later)) == 2  # and the two idle ones share the load
        gate.set()
        assert await asyncio.gather(*first) == [0, 3, 6]
        assert busy._core.iid in {f.worker for f in first}


async def test_hash_strategy_is_stable_and_moves_only_the_keys_of_a_leaving_worker() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True, strategy="hash")
        workers = [await c.add(handler=triple) for _ in range(3)]
        await sees_workers(master, 3)
        keys = [f"user-{i}" for i in range(30)]

        async def placement() -> dict[str, str | None]:
            futures = {k: master.submit(1, key=k) for k in keys}
            await asyncio.gather(*futures.values())
            return {k: f.worker for k, f in futures.items()}

        first = await placement()
        assert await placement() == first  # stable
        assert len(set(first.values())) == 3  # spread
        ids = sorted(d._core.iid for d, _ in workers)
        assert first == {k: max(ids, key=lambda w: rendezvous(k.encode(), w)) for k in keys}
        leaving, leaving_balancer = workers[0]
        gone = leaving._core.iid
        leaving_balancer.close()  # says "bye": the master stops using it at once
        await sees_workers(master, 2)
        second = await placement()
        assert {k: w for k, w in second.items() if first[k] != gone} == {k: w for k, w in first.items() if w != gone}
        assert gone not in second.values()
        with pytest.raises(ValueError, match="needs a key"):
            master.submit(1)
        with pytest.raises(TypeError, match="key must be"):
            master.submit(1, key=1.5)


# ---------------------------------------------------------- reassignment
async def test_a_task_moves_when_its_worker_stops() -> None:
    started = asyncio.Event()

    async def hang(x: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return -1

    async with cluster() as c:
        _, master = await c.add(master=True)
        first_d, _ = await c.add(handler=hang)
        await sees_workers(master, 1)
        future = master.submit(7, timeout=30)
        await asyncio.wait_for(started.wait(), 3)
        assert future.worker is None and future.attempts == 1
        second_d, _ = await c.add(handler=triple)
        await sees_workers(master, 2)
        began = time.monotonic()
        await first_d.stop()  # graceful: its goodbye removes it at once
        assert await asyncio.wait_for(future, 3) == 21
        assert time.monotonic() - began < 1  # the removal moved it, not the 30 s timeout
        assert future.attempts == 2 and future.worker == second_d._core.iid
        assert master.stats["reassigned"] == 1 and master.stats["completed"] == 1


async def test_a_task_moves_when_its_worker_crashes_without_goodbye() -> None:
    started = asyncio.Event()

    async def hang(x: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return -1

    async with cluster() as c:
        md, master = await c.add(master=True)
        crashing, _ = await c.add(handler=hang)
        await sees_workers(master, 1)
        future = master.submit(5, timeout=30)
        await asyncio.wait_for(started.wait(), 3)
        survivor, _ = await c.add(handler=triple)
        await sees_workers(master, 2)
        removed = asyncio.ensure_future(md.wait_for("removed", timeout=5))
        await crashing._transport.close()  # silent from now on, like a SIGKILL
        crashed = time.monotonic()
        assert await asyncio.wait_for(future, 5) == 15
        assert (await removed)[0].id == crashing._core.iid
        assert time.monotonic() - crashed < 2  # node_timeout (0.6 s), not the task timeout
        assert future.attempts == 2 and future.worker == survivor._core.iid


async def test_a_silent_attempt_times_out_and_is_retried_with_the_attempt_visible() -> None:
    seen: list[TaskInfo] = []

    async def first_attempt_hangs(x: int, info: TaskInfo) -> list[int]:
        seen.append(info)
        if info.attempt == 1:
            await asyncio.Event().wait()
        return [x * 3, info.attempt]

    async with cluster() as c:
        md, master = await c.add(master=True)
        await c.add(handler=first_attempt_hangs)
        await sees_workers(master, 1)
        future = master.submit(4, timeout=0.3, attempts=3)
        assert await asyncio.wait_for(future, 3) == [12, 2]
        assert future.attempts == 2
        assert [(i.id, i.attempt, i.master) for i in seen] == [(future.task_id, 1, md._core.iid),
                                                              (future.task_id, 2, md._core.iid)]
        assert master.stats["reassigned"] == 1


async def test_a_retry_prefers_a_worker_not_tried_yet() -> None:
    async def hang(x: int) -> int:
        await asyncio.Event().wait()
        return -1

    async with cluster() as c:
        _, master = await c.add(master=True)
        stuck, _ = await c.add(handler=hang)
        await sees_workers(master, 1)
        future = master.submit(2, timeout=0.5)
        other, _ = await c.add(handler=triple)
        await sees_workers(master, 2)
        assert await asyncio.wait_for(future, 3) == 6
        assert future.worker == other._core.iid and future.attempts == 2
        assert stuck._core.iid != other._core.iid


async def test_attempts_used_up_fail_with_timeout_error() -> None:
    calls: list[int] = []

    async def hang(x: int, info: TaskInfo) -> int:
        calls.append(info.attempt)
        await asyncio.Event().wait()
        return -1

    async with cluster() as c:
        _, master = await c.add(master=True)
        await c.add(handler=hang)
        await sees_workers(master, 1)
        future = master.submit(1, timeout=0.2, attempts=3)
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="gave up after 3 attempt"):
            await asyncio.wait_for(future, 3)
        assert 0.5 < time.monotonic() - began < 2
        assert future.attempts == 3 and calls == [1, 2, 3]
        assert master.stats["timed_out"] == 1 and master.stats["reassigned"] == 2


async def test_with_no_worker_a_task_waits_for_one_then_gives_up_at_its_timeout() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True)
        waiting = master.submit(3, timeout=3)
        lonely = master.submit(4, timeout=0.2)
        with pytest.raises(TimeoutError, match="no live worker"):
            await asyncio.wait_for(lonely, 2)
        assert not waiting.done()
        await c.add(handler=triple)
        assert await asyncio.wait_for(waiting, 3) == 9
        assert waiting.attempts == 1
        assert master.stats["timed_out"] == 1 and master.stats["completed"] == 1


class LossyTransport(MemoryTransport):
    """Drops the first ``drops`` outgoing datagrams that contain ``marker`` (a lost UDP packet)."""

    def __init__(self, bus: MemoryBus, marker: bytes, drops: int = 1) -> None:
        super().__init__(bus)
        self.marker, self.drops = marker, drops

    def send(self, datagram: bytes) -> None:
        if self.drops and self.marker in datagram:
            self.drops -= 1
            return
        super().send(datagram)


@pytest.mark.parametrize("lost", [b'"type":"task"', b'"type":"result"'], ids=["task-lost", "result-lost"])
async def test_a_lost_datagram_is_covered_by_the_timeout_reassignment(lost: bytes) -> None:
    runs: list[int] = []

    def record(x: int, info: TaskInfo) -> int:
        runs.append(info.attempt)
        return x * 3

    bus = MemoryBus()
    master_d = AsyncDiscovery(transport=LossyTransport(bus, lost), weight=100, **QUICK)
    worker_d = AsyncDiscovery(transport=LossyTransport(bus, lost), **QUICK)
    master, worker = TaskBalancer(master_d), TaskBalancer(worker_d)
    worker.worker(record)
    async with master_d, worker_d, master, worker:
        await master_d.wait_for("promotion", timeout=3)
        await sees_workers(master, 1)
        future = master.submit(5, timeout=0.3)
        assert await asyncio.wait_for(future, 3) == 15
        assert future.attempts == 2 and master.stats["reassigned"] == 1
        assert runs == ([2] if lost == b'"type":"task"' else [1, 2])  # at least once


# ------------------------------------------------------------- duplicates
async def test_a_late_result_after_reassignment_is_dropped_and_counted() -> None:
    async def slow_first(x: int, info: TaskInfo) -> int:
        if info.attempt == 1:
            await asyncio.sleep(0.5)
        return x * 3 + info.attempt

    async with cluster() as c:
        _, master = await c.add(master=True)
        await c.add(handler=slow_first)
        await sees_workers(master, 1)
        future = master.submit(10, timeout=0.2)
        assert await asyncio.wait_for(future, 3) == 32  # the second attempt answered first
        await async_eventually(lambda: master.stats["dropped_results"] == 1, 3, "the late first result dropped")
        assert master.stats["completed"] == 1


async def test_unknown_results_and_malformed_messages_are_dropped_and_counted() -> None:
    async with cluster() as c:
        md, master = await c.add(master=True)
        intruder, _ = await c.add()
        await sees_workers(master, 0)
        await async_eventually(lambda: intruder._core.iid in md.nodes, 2, "intruder seen")
        me, it = md._core.iid, intruder._core.iid
        intruder.send("tasks", {"type": "result", "id": 999, "to": me, "from": it, "attempt": 1, "ok": True,
                                "value": 1})
        await async_eventually(lambda: master.stats["dropped_results"] == 1, 2, "unknown result counted")
        for junk in ([1, 2], {"type": "nope"}, {"type": "result", "id": "x", "to": me, "from": it, "attempt": 1},
                     {"type": "task", "id": 1, "to": me, "from": "someone-else", "attempt": 1, "payload": 1},
                     {"type": "result", "id": 1, "to": me, "from": it, "attempt": 1, "ok": "yes"}):
            intruder.send("tasks", junk)
        await async_eventually(lambda: master.stats["dropped_messages"] == 5, 2, "malformed messages counted")
        intruder.send("tasks", {"type": "result", "id": 5, "to": "not-me", "from": it, "attempt": 1, "ok": True})
        await asyncio.sleep(0.05)  # for someone else: ignored, not counted
        assert master.stats["dropped_messages"] == 5 and master.stats["dropped_results"] == 1


async def test_a_task_delivered_twice_runs_once() -> None:
    runs: list[int] = []

    def record(x: int) -> int:
        runs.append(x)
        return x * 3

    async with cluster() as c:
        # a bare node plays a master that sends the same datagram twice
        sender = AsyncDiscovery(transport=MemoryTransport(c.bus), **QUICK)
        results: list[Any] = []
        assert sender.join("tasks", lambda data, packet: results.append(data) if data["type"] == "result" else None)
        wd, worker = await c.add(handler=record)
        await sender.start()
        await async_eventually(lambda: wd._core.iid in sender.nodes, 2, "worker seen")
        task = {"type": "task", "id": 1, "to": wd._core.iid, "from": sender._core.iid, "attempt": 1, "payload": 2}
        sender.send("tasks", task)
        sender.send("tasks", task)
        await async_eventually(lambda: len(results) == 1, 2, "one result")
        await async_eventually(lambda: worker.stats["duplicate_tasks"] == 1, 2, "duplicate counted")
        sender.send("tasks", {**task, "attempt": 2})  # a new attempt of the same task does run
        await async_eventually(lambda: len(results) == 2, 2, "second attempt's result")
        assert runs == [2, 2] and worker.stats["executed"] == 2
        assert [(r["attempt"], r["ok"], r["value"]) for r in results] == [(1, True, 6), (2, True, 6)]
        await sender.stop()


# ------------------------------------------------------------------ limits
async def test_an_oversized_or_non_json_payload_is_refused_at_submit() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True, handler=len)
        with pytest.raises(PacketTooLarge, match=r"task \d+ payload .* over the 1472-byte datagram budget"):
            master.submit("x" * 2000)
        with pytest.raises(TypeError, match="not JSON-serializable"):
            master.submit({1, 2})
        assert master.stats["submitted"] == 0 and master.pending == 0
        assert await master.submit("x" * 1100) == 1100  # near the limit is fine


async def test_an_oversized_result_comes_back_as_a_clear_failure() -> None:
    def huge(x: int) -> str:
        return "y" * 5000

    async with cluster() as c:
        _, master = await c.add(master=True)
        await c.add(handler=huge)
        await sees_workers(master, 1)
        with pytest.raises(TaskError, match=r"encodes to \d+ bytes, over the 1472-byte datagram budget") as remote:
            await asyncio.wait_for(master.submit(1), 3)
        assert remote.value.task_id == 1 and "result of task 1" in remote.value.error
        master.worker(huge)  # the master's own worker obeys the same rule
        c.nodes[1][1].close()
        await sees_workers(master, 1)
        with pytest.raises(TaskError, match="datagram budget"):
            await asyncio.wait_for(master.submit(1), 3)
        assert master.stats["failed"] == 2 and master.stats["reassigned"] == 0


async def test_a_non_json_result_is_a_failure() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True, handler=lambda x: {x})
        with pytest.raises(TaskError, match="not JSON-serializable"):
            await asyncio.wait_for(master.submit(1), 3)


# ----------------------------------------------------- errors and roles
async def test_submit_on_a_non_master_raises() -> None:
    async with cluster() as c:
        await c.add(master=True)
        _, worker = await c.add(handler=triple)
        with pytest.raises(RuntimeError, match="tasks are assigned by the master"):
            worker.submit(1)
        assert worker.stats["submitted"] == 0


async def test_a_worker_exception_fails_the_task_without_a_retry() -> None:
    calls: list[int] = []

    def bad(x: int) -> int:
        calls.append(x)
        raise ValueError(f"bad input {x}")

    async with cluster() as c:
        _, master = await c.add(master=True)
        wd, _ = await c.add(handler=bad)
        await sees_workers(master, 1)
        future = master.submit(3)
        with pytest.raises(TaskError) as failure:
            await asyncio.wait_for(future, 3)
        assert failure.value.error == "ValueError: bad input 3"
        assert failure.value.worker == wd._core.iid == future.worker
        assert "task 1 failed on worker" in str(failure.value)
        assert calls == [3] and future.attempts == 1
        assert master.stats["failed"] == 1 and master.stats["reassigned"] == 0


async def test_sync_handlers_run_off_the_loop_and_coroutines_on_it() -> None:
    threads: list[str] = []
    gate = threading.Event()

    def blocking(x: int) -> int:
        threads.append(threading.current_thread().name)
        gate.wait(5)  # blocks its thread, never the discovery loop
        return x * 3

    async def on_loop(x: int) -> int:
        threads.append(threading.current_thread().name)
        return x * 3

    async with cluster() as c:
        _, master = await c.add(master=True, handler=blocking)
        blocked = master.submit(1)
        await async_eventually(lambda: len(threads) == 1, 2, "the handler started")
        assert threads[0].startswith("pydiscover-task")
        await asyncio.sleep(0.05)  # the loop still runs (this sleep returns) while the handler blocks
        gate.set()
        assert await asyncio.wait_for(blocked, 3) == 3
        master.worker(on_loop)
        assert await asyncio.wait_for(master.submit(2), 3) == 6
        assert threads[1] == threading.current_thread().name


async def test_a_handler_may_return_an_awaitable_and_decorators_work() -> None:
    async with cluster() as c:
        _, master = await c.add(master=True)

        @master.worker(concurrency=2)
        def later(x: int) -> Any:
            async def compute() -> int:
                return x * 3
            return compute()

        assert later.__name__ == "later"  # the decorator returns the function itself
        assert await asyncio.wait_for(master.submit(5), 3) == 15


async def test_cancelling_a_future_forgets_the_task() -> None:
    async def hang(x: int) -> int:
        await asyncio.Event().wait()
        return 0

    async with cluster() as c:
        _, master = await c.add(master=True, handler=hang)
        future = master.submit(1)
        await asyncio.sleep(0.01)
        future.cancel()
        await async_eventually(lambda: master.pending == 0, 2, "task forgotten")
        assert master.stats["cancelled"] == 1


async def test_close_fails_pending_futures_and_leaves_the_channel() -> None:
    async def hang(x: int) -> int:
        await asyncio.Event().wait()
        return 0

    async with cluster() as c:
        md, master = await c.add(master=True)
        await c.add(handler=hang)
        await sees_workers(master, 1)
        future = master.submit(1)
        waiting = master.submit(2)
        assert "tasks" in md.channels
        master.close()
        master.close()  # idempotent
        for f in (future, waiting):
            with pytest.raises(RuntimeError, match="closed before task"):
                await f
        assert "tasks" not in md.channels
        assert master.stats["abandoned"] == 2
        with pytest.raises(RuntimeError, match="closed"):
            master.submit(3)
        again = TaskBalancer(md)  # the channel is free again
        again.close()


async def test_stopping_discovery_fails_pending_futures() -> None:
    async with cluster() as c:
        md, master = await c.add(master=True)
        future = master.submit(1)
        await md.stop()
        with pytest.raises(RuntimeError, match="discovery stopped"):
            await future


async def test_tasks_assigned_in_one_loop_turn_leave_in_one_datagram_per_worker() -> None:
    """Twenty tasks submitted together: one ``tasks`` message per worker, one ``results`` back each.

    The workers' handler is a coroutine, so each worker finishes its ten in one turn of the
    loop (a thread handler's results come back when each thread is done: packed or not).
    """

    async def triple_soon(x: int) -> int:
        return x * 3

    async with cluster() as c:
        md, master = await c.add(master=True)
        workers = [await c.add(handler=triple_soon) for _ in range(2)]
        await sees_workers(master, 2)
        await asyncio.sleep(0)  # (the announce round's own sends leave first)
        sent_before, received_before = md.stats["packets_out"], md.stats["packets_in"]
        futures = [master.submit(i) for i in range(20)]
        assert await asyncio.gather(*futures) == [i * 3 for i in range(20)]
        # Two batches out, two back (and perhaps a hello or an announce each way meanwhile);
        # unpacked, it would be 20 out and 20 back.
        assert md.stats["packets_out"] - sent_before <= 2 + 2
        assert md.stats["packets_in"] - received_before <= 2 + 6
        assert [w.stats["executed"] for _, w in workers] == [10, 10]
        assert master.stats["completed"] == 20 and master.stats["dropped_messages"] == 0


def test_thread_submits_keep_working_across_a_restart_of_a_sync_discovery() -> None:
    """A restart gives a ``Discovery`` a new loop: queued submits follow it, none is left behind."""
    d = Discovery(transport=MemoryTransport(MemoryBus()), weight=100, start=False, **QUICK)
    balancer = TaskBalancer(d)
    balancer.worker(lambda x: x + 1)
    try:
        for round_ in range(3):
            d.start()
            eventually(lambda: d.is_master, 3, "master")
            results: list[Any] = []

            def submit_all(into: list[Any] = results) -> None:
                futures = [balancer.submit(n) for n in range(300)]
                into.extend(f.result(3) for f in futures)

            thread = threading.Thread(target=submit_all)
            thread.start()
            thread.join(10)
            assert results == [n + 1 for n in range(300)], f"round {round_}"
            d.stop()
    finally:
        balancer.close()
        d.stop()


def test_submits_from_threads_do_not_wait_for_the_loop_and_a_stop_settles_every_one(port: int) -> None:
    """Four threads submit 200 tasks each without waiting; then a stop while more arrive: none hangs."""
    opts: dict[str, Any] = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    with Discovery(weight=100, **opts) as master_d, Discovery(**opts) as worker_d:
        master, worker = TaskBalancer(master_d), TaskBalancer(worker_d)
        with master, worker:
            worker.worker(lambda x: x * 3)
            eventually(lambda: master_d.is_master and len(master.workers) == 1, 3, "a master and a worker")
            futures: dict[int, list[Any]] = {n: [] for n in range(4)}

            def submit_many(n: int) -> None:
                futures[n] += [master.submit(n * 1000 + i, timeout=5) for i in range(200)]

            threads = [threading.Thread(target=submit_many, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            for n, batch in futures.items():
                assert [f.result(10) for f in batch] == [(n * 1000 + i) * 3 for i in range(200)]
            assert master.stats["completed"] == 800

            late: list[Any] = []
            refused: list[BaseException] = []
            stop = threading.Event()

            def keep_submitting() -> None:
                for i in range(100_000):  # bounded; ends at the stop
                    try:
                        late.append(master.submit(i, timeout=5))
                    except RuntimeError as exc:
                        refused.append(exc)
                        return
                    if stop.is_set() and i % 50 == 0:
                        time.sleep(0.001)

            submitter = threading.Thread(target=keep_submitting)
            submitter.start()
            eventually(lambda: len(late) > 100, 5, "tasks arriving")
            stop.set()
            master_d.stop()
            submitter.join(10)
            assert not submitter.is_alive() and refused  # a submit after the stop raises at once
            for f in late:  # each one settled: a result, or the stop's RuntimeError
                try:
                    f.result(5)
                except RuntimeError as exc:
                    assert "stopped" in str(exc) or "not the master" in str(exc)


async def test_arguments_are_validated() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    with pytest.raises(TypeError, match="Discovery or an AsyncDiscovery"):
        TaskBalancer(object())  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="strategy must be one of"):
        TaskBalancer(d, strategy="fastest")
    with pytest.raises(ValueError, match="reserved"):
        TaskBalancer(d, channel="hello")
    with pytest.raises(ValueError, match="non-empty"):
        TaskBalancer(d, channel="")
    balancer = TaskBalancer(d)
    with pytest.raises(ValueError, match="already joined"):
        TaskBalancer(d)
    with pytest.raises(TypeError, match="callable"):
        balancer.worker(3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="concurrency"):
        balancer.worker(triple, concurrency=0)
    async with d:
        await d.wait_for("promotion", timeout=3)
        for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"timeout": True}, {"attempts": 0},
                    {"attempts": 1.5}):
            with pytest.raises(ValueError):
                balancer.submit(1, **bad)
        with balancer:
            pass
        with pytest.raises(RuntimeError, match="closed"):
            balancer.worker(triple)


async def test_async_submit_must_come_from_the_loop() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    balancer = TaskBalancer(d)
    with pytest.raises(RuntimeError, match="tasks are assigned by the master"):
        balancer.submit(1)  # not started: not the master
    async with d:
        await d.wait_for("promotion", timeout=3)
        with pytest.raises(RuntimeError, match="from its event loop"):
            await asyncio.to_thread(balancer.submit, 1)
        balancer.worker(triple)
        assert await balancer.submit(1) == 3
        balancer.close()


async def test_close_drops_queued_thread_jobs() -> None:
    """A job still queued for the worker's threads when the balancer closes never runs: nobody waits for it."""
    release = threading.Event()
    ran: list[int] = []
    threads: list[threading.Thread] = []

    def blocking(x: int) -> int:
        ran.append(x)
        threads.append(threading.current_thread())
        release.wait(10)
        return x

    async with cluster() as c:
        _, master = await c.add(master=True)
        master.worker(blocking, concurrency=1)
        running, queued = master.submit(1), master.submit(2)
        await async_eventually(lambda: ran == [1], 3, "the first job running, the second queued")
        await master.aclose()
        for future in (running, queued):
            with pytest.raises(RuntimeError, match="closed before task"):
                await future
        release.set()
        try:
            await async_eventually(lambda: not threads[0].is_alive(), 5, "the worker thread ended")
        except AssertionError as exc:  # (seen once on CI, not reproduced: say where the thread is)
            frame = sys._current_frames().get(threads[0].ident or 0)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            raise AssertionError(f"{exc}; ran={ran}; the thread is at:\n{where}") from None
        assert ran == [1]


# ------------------------------------------------------------ real sockets
def test_forty_tasks_over_three_workers_on_loopback(port: int) -> None:
    """The issue's Must show, in one process: 40 correct results, spread over all three workers."""
    opts: dict[str, Any] = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    master_d = Discovery(weight=100, **opts)
    nodes = [master_d]
    balancers = [TaskBalancer(master_d)]
    try:
        for _ in range(3):
            d = Discovery(**opts)
            nodes.append(d)
            balancers.append(TaskBalancer(d))
            balancers[-1].worker(lambda x: x * 3)
        master = balancers[0]
        eventually(lambda: master_d.is_master, 3, "master elected")
        eventually(lambda: len(master.workers) == 3, 3, "three workers seen")
        futures = [master.submit(n, timeout=2) for n in range(40)]
        assert [f.result(10) for f in futures] == [n * 3 for n in range(40)]
        spread = collections.Counter(f.worker for f in futures)
        assert set(spread) == {d.me.id for d in nodes[1:]}
        assert sorted(spread.values()) == [13, 13, 14]
        assert master.stats["completed"] == 40
        assert all(isinstance(f, concurrent_future_type()) for f in futures)
    finally:
        for balancer in balancers:
            balancer.close()
        for d in nodes:
            d.stop()


def concurrent_future_type() -> type:
    import concurrent.futures

    return concurrent.futures.Future


def test_sync_api_from_threads_and_handlers(port: int) -> None:
    opts: dict[str, Any] = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    with Discovery(weight=100, **opts) as master_d, Discovery(**opts) as worker_d:
        master, worker = TaskBalancer(master_d, strategy="least_loaded"), TaskBalancer(worker_d)
        with master, worker:
            worker.worker(lambda x, info: [x * 3, info.attempt])
            eventually(lambda: master_d.is_master and len(master.workers) == 1, 3, "a master and a worker")
            chained: list[Any] = []
            # submit from a discovery handler (the loop thread): returns a future at once
            master_d.on("check", lambda: chained.append(master.submit(1)) if not chained else None)
            eventually(lambda: bool(chained), 3, "submitted from a handler")
            assert chained[0].result(3) == [3, 1]
            with pytest.raises(RuntimeError, match="tasks are assigned by the master"):
                worker.submit(1)
            futures: list[Any] = []
            threads = [threading.Thread(target=lambda: futures.append(master.submit(2))) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            assert [f.result(3) for f in futures] == [[6, 1]] * 8


WORKER_SCRIPT = """
import sys, time
from pydiscover import Discovery, TaskBalancer
d = Discovery(port=int(sys.argv[1]), broadcast="127.255.255.255", hello_interval=0.2, check_interval=0.3,
              node_timeout=0.6)
balancer = TaskBalancer(d)
balancer.worker(lambda x: x * 3)
print("up", d.me.id, flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and sys.stdin.readline():  # until the parent closes stdin
    pass
balancer.close()
d.stop()
"""


def test_forty_tasks_over_three_worker_processes(port: int) -> None:
    master_d = Discovery(weight=100, port=port, broadcast=LOOPBACK_BROADCAST, hello_interval=0.2,
                         check_interval=0.3, node_timeout=0.6)
    master = TaskBalancer(master_d)
    procs: list[subprocess.Popen[str]] = []
    try:
        ids = []
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(port)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line[:1] == ["up"], line
            ids.append(line[1])
        eventually(lambda: master_d.is_master, 3, "master elected")
        eventually(lambda: sorted(master.workers) == sorted(ids), 5, "three worker processes seen")
        futures = [master.submit(n, timeout=2) for n in range(40)]
        assert [f.result(10) for f in futures] == [n * 3 for n in range(40)]
        spread = collections.Counter(f.worker for f in futures)
        assert set(spread) == set(ids) and sorted(spread.values()) == [13, 13, 14]
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        master.close()
        master_d.stop()


def test_task_balancer_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "examples/task_balancer.py", "--port", str(free_udp_port()), "--workers", "3",
         "--tasks", "24"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "24/24 results correct" in out
    assert out.count("worker-") >= 3
    refused = subprocess.run([sys.executable, "examples/task_balancer.py", "--broadcast", "255.255.255.255"],
                             capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert refused.returncode == 2 and "loopback" in refused.stderr


def test_balancers_built_before_a_sync_discovery_starts(port: int) -> None:
    opts: dict[str, Any] = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    master_d, worker_d = Discovery(start=False, weight=100, **opts), Discovery(start=False, **opts)
    master, worker = TaskBalancer(master_d), TaskBalancer(worker_d)
    worker.worker(triple)
    try:
        assert "tasks" in master_d.channels and "tasks" in worker_d.channels
        master_d.start()
        worker_d.start()
        eventually(lambda: master_d.is_master and master.workers == [worker_d.me.id], 5, "a master and a worker")
        future = master.submit(14, timeout=2)
        assert future.result(5) == 42 and future.worker == worker_d.me.id
    finally:
        master.close()
        worker.close()
        master_d.stop()
        worker_d.stop()


async def test_balancers_built_before_an_async_discovery_starts_and_close_releases_what_they_hold(
        port: int) -> None:
    opts: dict[str, Any] = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    master_d, worker_d = AsyncDiscovery(weight=100, **opts), AsyncDiscovery(**opts)
    master, worker = TaskBalancer(master_d), TaskBalancer(worker_d)
    entered = asyncio.Event()
    unwound: list[int] = []

    @worker.worker
    async def handler(x: int) -> int:
        if x >= 0:
            return x * 3
        entered.set()
        try:
            await asyncio.Event().wait()  # hangs until cancelled
        finally:
            unwound.append(x)
        return 0

    await master_d.start()
    await worker_d.start()
    try:
        await async_eventually(lambda: master_d.is_master and master.workers == [worker_d.me.id], 5, "a worker")
        assert await asyncio.wait_for(master.submit(14, timeout=2), 5) == 42
        hung = master.submit(-1, timeout=30)
        await asyncio.wait_for(entered.wait(), 5)
        closing = worker.close()  # on the loop: releases at once, returns what is left to wait for
        assert "tasks" not in worker_d.channels and not worker.is_worker
        await asyncio.wait_for(closing, 5)
        assert unwound == [-1]  # the cancelled handler has unwound
        assert not hung.done()  # its bye made the master look for another worker; there is none
        closing = master.close()
        assert hung.done() and master.pending == 0 and "tasks" not in master_d.channels
        with pytest.raises(RuntimeError, match="closed before task"):
            await hung
        await closing
        await master.aclose()  # idempotent
    finally:
        await master.aclose()
        await worker.aclose()
        await master_d.stop()
        await worker_d.stop()


def test_a_restarted_sync_discovery_keeps_its_coroutine_worker_working(port: int) -> None:
    """A restart runs on a new loop: the worker's concurrency limit must not stay bound to the old one."""
    go = threading.Event()

    async def slow(x: int) -> int:
        if x == 0:
            await asyncio.to_thread(go.wait, 5)  # hold the one slot until the others wait for it
        return x * 3

    with Discovery(port=port, broadcast=LOOPBACK_BROADCAST, weight=100, **QUICK) as d:
        balancer = TaskBalancer(d)
        balancer.worker(slow, concurrency=1)
        for round_ in range(2):
            go.clear()
            eventually(lambda: d.is_master, 5, f"master (round {round_})")
            futures = [balancer.submit(n, timeout=2, attempts=1) for n in range(3)]
            go.set()
            assert [f.result(5) for f in futures] == [0, 3, 6]
            if round_ == 0:
                d.stop()
                d.start()
        balancer.close()
