"""ResourceManager: balanced sticky assignment, exactly-one ownership through churn, health, failures."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, eventually

from pydiscover import AsyncDiscovery, Discovery
from pydiscover.balancer.assignment import moved, rebalance
from pydiscover.balancer.resources import ResourceManager, validate_resources
from pydiscover.transports.memory import MemoryBus, MemoryTransport

# ------------------------------------------------------------ assignment (pure)


def loads(assignment: dict[str, str], members: list[str]) -> list[int]:
    return [sum(1 for m in assignment.values() if m == member) for member in members]


@pytest.mark.parametrize(("count", "size"), [(30, 3), (31, 3), (7, 5), (1, 4), (100, 7), (0, 3)])
def test_even_spread_and_every_resource_owned(count: int, size: int) -> None:
    ids = [f"r{i}" for i in range(count)]
    members = [f"n{i}" for i in range(size)]
    a = rebalance({}, ids, members)
    assert sorted(a) == sorted(ids) and set(a.values()) <= set(members)
    spread = loads(a, members)
    assert max(spread) - min(spread) <= 1


def test_minimal_movement_on_join_and_leave() -> None:
    ids = [f"res-{i}" for i in range(3000)]
    members = [f"node-{i}" for i in range(30)]
    a = rebalance({}, ids, members)
    joined = rebalance(a, ids, [*members, "node-new"])
    assert moved(a, joined) == loads(joined, [*members, "node-new"])[-1]  # only what the newcomer takes
    assert moved(a, joined) / len(ids) <= 1 / 31 + 0.01
    left = rebalance(a, ids, members[1:])
    assert moved(a, left) == loads(a, members)[0]  # only the leaver's share
    assert rebalance(a, ids, members) == a  # unchanged inputs: nothing moves
    assert rebalance(a, list(reversed(ids)), list(reversed(members))) == a  # order does not matter


def test_thirty_over_three_then_two_then_three() -> None:
    ids = [f"r{i}" for i in range(30)]
    a = rebalance({}, ids, ["a", "b", "c"])
    assert loads(a, ["a", "b", "c"]) == [10, 10, 10]
    b = rebalance(a, ids, ["b", "c"])
    assert loads(b, ["b", "c"]) == [15, 15]
    c = rebalance(b, ids, ["b", "c", "d"])
    assert loads(c, ["b", "c", "d"]) == [10, 10, 10] and moved(b, c) == 10


def test_shares_follow_capacity_with_minimal_movement() -> None:
    ids = [f"r{i}" for i in range(8)]
    caps = {"a": 2, "b": 1, "c": 1}
    a = rebalance({}, ids, ["a", "b", "c"], caps)
    assert loads(a, ["a", "b", "c"]) == [4, 2, 2]
    assert rebalance(a, ids, ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}) == rebalance(a, ids, ["a", "b", "c"])
    six = rebalance({}, ids[:6], ["a", "b", "c"], caps)
    assert loads(six, ["a", "b", "c"])[0] == 3 and sorted(loads(six, ["b", "c"])) == [1, 2]
    big = [f"r{i}" for i in range(3000)]
    members = [f"n{i}" for i in range(10)]
    before = rebalance({}, big, members)
    doubled = rebalance(before, big, members, {"n0": 2})
    assert loads(doubled, ["n0"]) == [545] and moved(before, doubled) == 545 - 300  # only what n0 gains moves
    drained = rebalance(before, big, members, {"n0": 0})
    assert loads(drained, ["n0"]) == [0] and moved(before, drained) == 300  # only n0's share moves
    assert rebalance(before, big, members, dict.fromkeys(members, 0)) == {}


def test_resource_validation() -> None:
    assert set(validate_resources([{"id": "a"}, {"id": "b", "x": 1}])) == {"a", "b"}
    for bad, error in (([{"id": "a"}, {"id": "a"}], "duplicate"), ([{"name": "a"}], "id"), ([{"id": 3}], "id"),
                       ("nope", "list")):
        with pytest.raises((ValueError, TypeError), match=error):
            validate_resources(bad)


# ------------------------------------------------------- runtime, in memory
QUICK = {"hello_interval": 0.05, "check_interval": 0.1, "node_timeout": 0.3, "ignore_process": False}


class Cluster:
    """Managers on one memory bus, with a global registry that catches double ownership."""

    def __init__(self, resources: list[dict[str, Any]], **rm: Any) -> None:
        self.bus = MemoryBus()
        self.resources = resources
        self.rm_options = rm
        self.registry: dict[str, str] = {}
        self.violations: list[str] = []
        self.nodes: list[tuple[AsyncDiscovery, ResourceManager, MemoryTransport]] = []

    async def add(self, weight: float, stop_delay: float = 0.0, **options: Any) -> ResourceManager:
        transport = MemoryTransport(self.bus)
        d = AsyncDiscovery(transport=transport, weight=weight, **QUICK)
        await d.start()
        me = d.me.id

        def start(resource: dict[str, Any]) -> str:
            rid = resource["id"]
            if rid in self.registry:
                self.violations.append(f"{rid} started on {me} while {self.registry[rid]} runs it")
            self.registry[rid] = me
            return rid

        def stop(handle: str) -> None:
            if stop_delay:
                import time

                time.sleep(stop_delay)  # a slow release, on the handler's own thread
            if self.registry.get(handle) == me:
                del self.registry[handle]

        rm = ResourceManager(d, resources=self.resources, start=start, stop=stop, **{**self.rm_options, **options})
        self.nodes.append((d, rm, transport))
        return rm

    async def crash(self, index: int) -> None:
        """The process dies: peers hear no goodbye; what it ran dies with it."""
        d, _, transport = self.nodes.pop(index)
        await transport.close()
        await d.stop()

    async def graceful(self, index: int) -> None:
        d, _, _ = self.nodes.pop(index)
        await d.stop()

    def converged(self) -> bool:
        owned = [rm.owned for _, rm, _ in self.nodes]
        total = sum(len(o) for o in owned)
        every = set().union(*owned) if owned else set()
        return (total == len(self.resources) and len(every) == total
                and max(map(len, owned)) - min(map(len, owned)) <= 1)

    async def close(self) -> None:
        for d, _, _ in self.nodes:
            await d.stop()


@pytest.mark.parametrize("seed", [5, 11, 23, 42])
async def test_churn_never_runs_a_resource_twice_and_always_converges(seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster([{"id": f"r{i}"} for i in range(24)])
    try:
        for w in range(3):
            await cluster.add(w)
        await async_eventually(cluster.converged, 5, "initial convergence")
        weight = 10
        for step in range(8):
            action = rng.choice(["crash", "graceful", "join"]) if len(cluster.nodes) > 2 else "join"
            if action == "join":
                weight += 1
                await cluster.add(weight)
            elif action == "crash":
                await cluster.crash(rng.randrange(len(cluster.nodes)))
            else:
                await cluster.graceful(rng.randrange(len(cluster.nodes)))
            await async_eventually(cluster.converged, 5, f"convergence after step {step} ({action})")
            assert cluster.violations == []
        assert sorted(cluster.registry) == sorted(r["id"] for r in cluster.resources)
    finally:
        await cluster.close()


async def test_master_failover_moves_nothing() -> None:
    cluster = Cluster([{"id": f"r{i}"} for i in range(12)])
    try:
        for w in (1, 2, 3):
            await cluster.add(w)
        await async_eventually(cluster.converged, 5, "convergence")
        survivors = {d.me.id: set(rm.owned) for d, rm, _ in cluster.nodes[:2]}
        master_share = set(cluster.nodes[2][1].owned)
        await cluster.graceful(2)  # the weight-3 master leaves
        await async_eventually(cluster.converged, 5, "after the master left")
        for d, rm, _ in cluster.nodes:
            assert survivors[d.me.id] <= rm.owned  # kept everything, only took the leaver's share
        assert set().union(*(rm.owned for _, rm, _ in cluster.nodes)) >= master_share
        assert cluster.violations == []
    finally:
        await cluster.close()


async def test_failed_start_and_healthcheck_are_retried_visibly() -> None:
    bus = MemoryBus()
    d = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    await d.start()
    attempts: dict[str, int] = {}
    failed: list[str] = []
    sick = {"r1"}

    async def start(resource: dict[str, Any]) -> str:
        attempts[resource["id"]] = attempts.get(resource["id"], 0) + 1
        if resource["id"] == "r0" and attempts["r0"] == 1:
            raise RuntimeError("first start fails")
        return str(resource["id"])

    def healthcheck(handle: str) -> None:
        if handle in sick:
            sick.discard(handle)
            raise RuntimeError("unhealthy once")

    d.on("resourceFailed", lambda resource, exc: failed.append(resource["id"]))
    rm = ResourceManager(d, resources=[{"id": "r0"}, {"id": "r1"}], start=start, healthcheck=healthcheck,
                         health_interval=0.05, retry_delay=0.05)
    try:
        await async_eventually(lambda: rm.owned == {"r0", "r1"} and "r1" in failed and attempts.get("r1", 0) >= 2,
                               5, "both running after a failed start and a failed healthcheck")
        assert failed.count("r0") == 1 and attempts["r0"] == 2
    finally:
        await d.stop()
    assert rm.owned == frozenset()  # stopped before the goodbye


async def test_resources_from_an_async_callable() -> None:
    bus = MemoryBus()
    d = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
    await d.start()

    async def fetch() -> list[dict[str, Any]]:
        return [{"id": "a"}, {"id": "b"}]

    rm = ResourceManager(d, resources=fetch, start=lambda r: r["id"])
    try:
        await async_eventually(lambda: rm.owned == {"a", "b"}, 5, "callable resources started")
    finally:
        await d.stop()


async def test_bad_arguments() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    with pytest.raises(ValueError, match="duplicate"):
        ResourceManager(d, resources=[{"id": "x"}, {"id": "x"}], start=lambda r: r)
    with pytest.raises(TypeError, match="start"):
        ResourceManager(d, resources=[], start=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_interval"):
        ResourceManager(d, resources=[], start=lambda r: r, health_interval=0)
    with pytest.raises(TypeError, match="Discovery"):
        ResourceManager(object(), resources=[], start=lambda r: r)  # type: ignore[arg-type]
    await asyncio.sleep(0)


async def test_a_slow_release_is_waited_for_even_if_the_new_owner_dies() -> None:
    """Review case: a join moves resources off a slow stopper, the newcomer crashes, the
    resources move on: nobody may start them while the slow node is still stopping them."""
    cluster = Cluster([{"id": f"r{i:02d}"} for i in range(30)])
    try:
        await cluster.add(10)
        await cluster.add(1, stop_delay=1.0)
        await cluster.add(1)
        await async_eventually(cluster.converged, 5, "three nodes")
        newcomer = await cluster.add(1)
        me = cluster.nodes[-1][0].me.id
        await async_eventually(lambda: me in newcomer.assignment.values(), 5, "plan with the newcomer")
        await cluster.crash(len(cluster.nodes) - 1)
        await async_eventually(cluster.converged, 10, "after the newcomer crashed")
        assert cluster.violations == []
    finally:
        await cluster.close()


async def test_closing_a_manager_hands_its_resources_over() -> None:
    cluster = Cluster([{"id": f"r{i}"} for i in range(12)])
    try:
        for w in (1, 2, 3):
            await cluster.add(w)
        await async_eventually(cluster.converged, 5, "convergence")
        d, rm, _ = cluster.nodes.pop(0)  # its discovery stays up; only the manager closes
        await rm.aclose()
        await async_eventually(cluster.converged, 5, "the others took its share")
        assert rm.owned == frozenset() and cluster.violations == []
        await d.stop()
    finally:
        await cluster.close()


async def test_plans_fit_the_budget_under_the_legacy_cipher() -> None:
    bus = MemoryBus()
    ds = [AsyncDiscovery(transport=MemoryTransport(bus), weight=w, key="k", encryption="node-discover", **QUICK)
          for w in (1, 2)]
    for d in ds:
        await d.start()
    managers = [ResourceManager(d, resources=[{"id": f"resource-{i:04d}"} for i in range(300)], start=lambda r: r)
                for d in ds]
    try:
        await async_eventually(lambda: [len(m.owned) for m in managers] == [150, 150], 10, "300 over two nodes")
    finally:
        for d in ds:
            await d.stop()


# ------------------------------------------------ lifecycle, real sockets on loopback
REAL: dict[str, Any] = {"broadcast": LOOPBACK_BROADCAST, "hello_interval": 0.1, "check_interval": 0.2,
                        "node_timeout": 1.0, "ignore_process": False}
FOUR = [{"id": f"r{i}"} for i in range(4)]
ALL_FOUR = frozenset(r["id"] for r in FOUR)


class Ledger:
    """Who runs what across nodes (hooks run on several threads); a start while another node runs it is a violation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: dict[str, str] = {}
        self.starts: collections.Counter[str] = collections.Counter()
        self.stopped: list[str] = []  # handles, "<node label>/<resource id>"
        self.violations: list[str] = []

    def start(self, label: str, resource: dict[str, Any]) -> str:
        rid = resource["id"]
        with self.lock:
            if rid in self.holder:
                self.violations.append(f"{rid} started on {label} while {self.holder[rid]} runs it")
            self.holder[rid] = label
            self.starts[rid] += 1
        return f"{label}/{rid}"

    def stop(self, handle: str) -> None:
        label, rid = handle.split("/")
        with self.lock:
            if self.holder.get(rid) == label:
                del self.holder[rid]
            self.stopped.append(handle)

    def manager(self, discovery: Discovery | AsyncDiscovery, label: str,
                stop: Callable[[str], Any] | None = None) -> ResourceManager:
        """A manager of the four resources whose hooks record into this ledger as ``label``."""
        return ResourceManager(discovery, resources=FOUR, start=lambda resource: self.start(label, resource),
                               stop=stop or self.stop)

    def each_runs_once(self) -> bool:
        with self.lock:
            return self.violations == [] and sorted(self.holder) == sorted(ALL_FOUR)


def test_managers_built_before_a_sync_discovery_starts_share_four_resources(port: int) -> None:
    ledger = Ledger()
    nodes = [Discovery(start=False, port=port, weight=w, **REAL) for w in (1, 2)]
    managers = [ledger.manager(d, label) for label, d in zip("ab", nodes, strict=True)]
    try:
        assert all("resources" in d.channels for d in nodes)  # joined at construction, before start
        for d in nodes:
            d.start()
        eventually(lambda: [len(m.owned) for m in managers] == [2, 2], 10, "two resources on each node")
        assert managers[0].owned | managers[1].owned == ALL_FOUR
        assert ledger.each_runs_once(), (ledger.holder, ledger.violations)
        with ledger.lock:
            assert sum(ledger.starts.values()) - len(ledger.stopped) == 4  # four instances live, no more
        mine = managers[0].owned
        managers[0].close()  # from this (non-loop) thread: blocks until released
        assert managers[0].owned == frozenset() and "resources" not in nodes[0].channels
        with ledger.lock:
            assert {f"a/{rid}" for rid in mine} <= set(ledger.stopped)
        eventually(lambda: managers[1].owned == ALL_FOUR, 10, "the other node took over")
        assert ledger.each_runs_once(), ledger.violations
    finally:
        for d in nodes:
            d.stop()
    assert managers[1].owned == frozenset() and ledger.holder == {}  # released before the goodbye


async def test_managers_built_before_an_async_discovery_starts_share_four_resources(port: int) -> None:
    ledger = Ledger()
    nodes = [AsyncDiscovery(port=port, weight=w, **REAL) for w in (1, 2)]
    managers = [ledger.manager(d, label) for label, d in zip("ab", nodes, strict=True)]
    try:
        for d in nodes:
            await d.start()
        await async_eventually(lambda: [len(m.owned) for m in managers] == [2, 2], 10, "two resources each")
        assert managers[0].owned | managers[1].owned == ALL_FOUR
        assert ledger.each_runs_once(), (ledger.holder, ledger.violations)
        assert sum(ledger.starts.values()) - len(ledger.stopped) == 4
    finally:
        for d in nodes:
            await d.stop()
    assert [m.owned for m in managers] == [frozenset(), frozenset()] and ledger.holder == {}


async def two_started_nodes(port: int, ledger: Ledger, stop: Callable[[str], Any] | None = None,
                            ) -> tuple[list[AsyncDiscovery], list[ResourceManager]]:
    nodes = [AsyncDiscovery(port=port, weight=w, **REAL) for w in (1, 2)]
    for d in nodes:
        await d.start()  # built after start this time
    managers = [ledger.manager(d, label, stop) for label, d in zip("ab", nodes, strict=True)]
    await async_eventually(lambda: [len(m.owned) for m in managers] == [2, 2], 10, "two resources each")
    return nodes, managers


async def test_close_on_an_async_discovery_runs_plain_stop_hooks_before_it_returns(port: int) -> None:
    ledger = Ledger()
    nodes, managers = await two_started_nodes(port, ledger)
    stopped_events: list[str] = []
    nodes[0].on("resourceStopped", lambda resource: stopped_events.append(resource["id"]))
    try:
        mine = managers[0].owned
        closing = managers[0].close()  # from a coroutine on the loop: must not block, need not be awaited
        assert managers[0].owned == frozenset() and managers[0].closed
        assert sorted(ledger.stopped) == sorted(f"a/{rid}" for rid in mine)
        assert sorted(stopped_events) == sorted(mine)
        assert "resources" not in nodes[0].channels
        await asyncio.wait_for(closing, 5)  # nothing was left: completes at once
        await async_eventually(lambda: managers[1].owned == ALL_FOUR, 10, "the other node took over")
        assert ledger.each_runs_once(), ledger.violations
        assert nodes[0].running  # only the manager closed
        await managers[0].close()  # idempotent: nothing is stopped twice
        assert sorted(stopped_events) == sorted(mine) and len(ledger.stopped) == len(mine)
    finally:
        for d in nodes:
            await d.stop()


async def test_close_with_coroutine_stop_hooks_says_bye_only_once_they_finish(port: int) -> None:
    ledger = Ledger()
    gate = asyncio.Event()

    async def stop(handle: str) -> None:
        if handle.startswith("a/"):
            await gate.wait()  # a slow release
        ledger.stop(handle)

    nodes, managers = await two_started_nodes(port, ledger, stop)
    a, b = managers
    try:
        mine = a.owned
        closing: Awaitable[None] = a.close()
        assert a.closed and "resources" not in nodes[0].channels
        assert a.owned == mine  # still being released
        # The master (b) plans a's share onto itself once a falls silent, but may not start it
        # before a's bye: a still runs it.
        b_id = nodes[1].me.id
        await async_eventually(lambda: set(b.assignment.values()) == {b_id}, 10, "a plan without a")
        for _ in range(3):  # b's rounds go on (one per hello): it would have started them by now
            await nodes[1].wait_for("helloEmitted", timeout=5)
        assert not b.owned & mine and ledger.violations == []
        gate.set()
        await asyncio.wait_for(closing, 5)
        assert a.owned == frozenset()
        assert sorted(h for h in ledger.stopped if h.startswith("a/")) == sorted(f"a/{rid}" for rid in mine)
        await a.aclose()  # idempotent
        await async_eventually(lambda: b.owned == ALL_FOUR, 10, "b took over after the bye")
        assert ledger.each_runs_once(), ledger.violations
    finally:
        gate.set()
        for d in nodes:
            await d.stop()


async def test_close_before_start_runs_nothing_and_a_stopped_manager_stays_closed(port: int) -> None:
    d = AsyncDiscovery(port=port, **REAL)
    early_starts: list[str] = []
    early = ResourceManager(d, resources=FOUR, start=lambda r: early_starts.append(r["id"]))
    assert "resources" in d.channels
    await early.close()  # never started: nothing runs, it only leaves the channel
    assert early.closed and "resources" not in d.channels
    ledger = Ledger()
    late = ledger.manager(d, "late")  # the channel is free again
    await d.start()
    try:
        await async_eventually(lambda: late.owned == ALL_FOUR, 10, "the late manager runs everything")
        await d.stop()  # closes the manager before the goodbye
        assert late.closed and late.owned == frozenset() and ledger.holder == {}
        await d.start()
        fresh = ledger.manager(d, "fresh")
        await async_eventually(lambda: fresh.owned == ALL_FOUR, 10, "a new manager after the restart")
        assert late.owned == frozenset() and sum(ledger.starts.values()) == 8  # 4 late + 4 fresh, none again
        assert early_starts == []
    finally:
        await d.stop()


def test_a_manager_built_while_a_sync_discovery_is_stopped_runs_after_restart(port: int) -> None:
    ledger = Ledger()
    d = Discovery(port=port, **REAL)
    try:
        first = ledger.manager(d, "first")
        eventually(lambda: first.owned == ALL_FOUR, 10, "first manager")
        d.stop()
        assert first.closed and first.owned == frozenset() and ledger.holder == {}
        second = ledger.manager(d, "second")  # between stop and start
        d.start()  # a new loop: the manager begins on it
        eventually(lambda: second.owned == ALL_FOUR, 10, "second manager after the restart")
        # From a handler (the discovery thread) close cannot block: plain hooks run there at once.
        closed: list[Any] = []
        d.on("check", lambda: closed.append(second.close()) if not closed else None)
        eventually(lambda: bool(closed), 5, "closed from a handler")
        assert second.owned == frozenset() and ledger.holder == {}
        assert first.owned == frozenset() and ledger.starts == collections.Counter(
            {rid: 2 for rid in ALL_FOUR})
    finally:
        d.stop()


def test_close_from_another_thread_blocks_until_released() -> None:
    """An AsyncDiscovery whose loop runs on another thread: close() waits there, plain hooks off the loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ledger = Ledger()
    stop_threads: list[str] = []

    def stop(handle: str) -> None:
        stop_threads.append(threading.current_thread().name)
        ledger.stop(handle)

    async def build() -> tuple[AsyncDiscovery, ResourceManager]:
        d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
        rm = ledger.manager(d, "a", stop)
        await d.start()
        return d, rm

    try:
        d, rm = asyncio.run_coroutine_threadsafe(build(), loop).result(5)
        eventually(lambda: rm.owned == ALL_FOUR, 5, "all four running")
        rm.close()
        assert rm.owned == frozenset() and ledger.holder == {} and len(stop_threads) == 4
        assert thread.name not in stop_threads  # not on the loop's thread: it was not blocked
        assert "resources" not in d.channels
        asyncio.run_coroutine_threadsafe(d.stop(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ------------------------------------------------ run-time changes and capacity (issue 21)
async def test_add_remove_and_capacity_in_memory() -> None:
    cluster = Cluster([{"id": f"r{i}"} for i in range(6)])
    try:
        managers = [await cluster.add(w) for w in (3, 2, 1)]
        await async_eventually(cluster.converged, 5, "six over three")
        added: list[str] = []
        cluster.nodes[0][0].on("resourceAdded", lambda resource: added.append(resource["id"]))
        await managers[2].aadd({"id": "extra"})  # on the discovery's own loop: at once
        managers[1].remove("r2")
        cluster.resources = [r for r in cluster.resources if r["id"] != "r2"] + [{"id": "extra"}]
        await async_eventually(lambda: "extra" in cluster.registry and "r2" not in cluster.registry
                               and cluster.converged(), 5, "extra running, r2 gone")
        assert "r2" not in cluster.registry and added == ["extra"]
        assert all(m.stats["added"] == 1 and m.stats["removed"] == 1 for m in managers)
        assert all(sorted(m.resources) == sorted(r["id"] for r in cluster.resources) for m in managers)
        managers[0].set_capacity(0)
        assert managers[0].capacity == 0
        await async_eventually(lambda: not managers[0].owned and len(cluster.registry) == 6
                               and sorted(len(m.owned) for m in managers[1:]) == [3, 3], 5, "drained")
        with pytest.raises(ValueError, match="id"):
            managers[1].add({"no": "id"})
        with pytest.raises(TypeError, match="capacity"):
            managers[1].set_capacity(1.5)  # type: ignore[arg-type]
        assert cluster.violations == []
    finally:
        await cluster.close()


def test_add_from_a_thread_and_from_another_event_loop(port: int) -> None:
    """A sync Discovery: add from the user's thread blocks until applied; aadd from the user's own loop."""
    ledger = Ledger()
    d = Discovery(port=port, **REAL)
    try:
        rm = ledger.manager(d, "a")
        eventually(lambda: rm.owned == ALL_FOUR, 10, "all four running")
        rm.add({"id": "extra"})
        asyncio.run(rm.aremove("r0"))
        eventually(lambda: rm.owned == (ALL_FOUR - {"r0"}) | {"extra"}, 5, "extra running, r0 stopped")
        with pytest.raises(ValueError, match=r"budget|bytes"):
            rm.add({"id": "big", "blob": "x" * 2000})
    finally:
        d.stop()
    with pytest.raises(RuntimeError, match="closed"):
        rm.add({"id": "late"})
