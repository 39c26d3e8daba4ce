"""ServiceDiscovery: every readiness transition, deterministically, then over real sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, eventually

from pydiscover import AsyncServiceDiscovery, Node, ServiceDiscovery
from pydiscover.core import Emit
from pydiscover.services import RunHook, ServiceState
from pydiscover.transports.memory import MemoryBus, MemoryTransport


def node(nid: str, name: str | None, **extra: Any) -> Node:
    advert = None if name is None else {"name": name, **extra}
    return Node(id=nid, pid="p", hostname=nid, address="10.0.0.1", port=1, is_master=False,
                is_master_eligible=True, weight=1, advertisement=advert)


def emitted(actions: list[Any]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples: nodes by id, services by name -> ids."""
    out = []
    for a in actions:
        if isinstance(a, Emit):
            args = tuple(
                x.id if isinstance(x, Node) else
                {k: [n.id for n in v] for k, v in x.items()} if isinstance(x, dict) else
                type(x).__name__ if isinstance(x, BaseException) else x
                for x in a.args
            )
            out.append((a.event, *args))
        elif isinstance(a, RunHook):
            out.append(("hook", a.name, a.node.id))
    return out


# ------------------------------------------------------------- pure state
def test_need_before_discovery_then_each_provider() -> None:
    s = ServiceState()
    assert emitted(s.need("db", "cache")) == []
    assert emitted(s.start()) == []
    assert emitted(s.node_seen(node("d1", "db"))) == [("service", "db", "d1")]
    assert not s.is_ready
    assert emitted(s.node_seen(node("c1", "cache"))) == [
        ("service", "cache", "c1"), ("ready", {"cache": ["c1"], "db": ["d1"]})]
    assert emitted(s.node_seen(node("c1", "cache"))) == []  # every hello re-checked, nothing new
    assert emitted(s.node_seen(node("c2", "cache"))) == [("service", "cache", "c2")]  # still ready: no repeat
    assert emitted(s.node_gone(node("c1", "cache"))) == [("serviceRemoved", "cache", "c1")]
    assert emitted(s.node_gone(node("c2", "cache"))) == [("serviceRemoved", "cache", "c2"), ("notready", "cache")]
    assert emitted(s.node_seen(node("c3", "cache"))) == [
        ("service", "cache", "c3"), ("ready", {"cache": ["c3"], "db": ["d1"]})]


def test_need_after_discovery_is_ready_at_once() -> None:
    s = ServiceState()
    s.start()
    s.node_seen(node("d1", "db"))
    assert emitted(s.need("db")) == [("ready", {"db": ["d1"]})]
    assert emitted(s.need("db")) == []  # the same needs again: nothing new


def test_no_needs_is_ready_without_an_event() -> None:
    s = ServiceState()
    assert emitted(s.start()) == [] and s.is_ready
    s.node_seen(node("d1", "db"))
    assert emitted(s.need("cache")) == []  # unmet
    assert emitted(s.node_seen(node("c1", "cache")))[-1] == ("ready", {"cache": ["c1"]})


def test_unwanted_services_do_not_emit_notready() -> None:
    s = ServiceState()
    s.need("db")
    s.start()
    s.node_seen(node("x", "other"))
    assert emitted(s.node_gone(node("x", "other"))) == [("serviceRemoved", "other", "x")]


def test_hook_gates_availability_and_failure_is_retried_on_readvertise() -> None:
    s = ServiceState()
    assert emitted(s.set_hook("db")) == []
    s.start()
    (request,) = s.node_seen(node("d1", "db", port=1))
    assert isinstance(request, RunHook) and not s.is_ready
    assert emitted(s.hook_done("d1", request.generation, RuntimeError("refused"))) == [("error", "RuntimeError")]
    assert not s.is_ready
    assert emitted(s.node_seen(node("d1", "db", port=1))) == []  # same advertisement: stays excluded
    (retry,) = s.node_seen(node("d1", "db", port=2))  # re-advertised: try again
    assert isinstance(retry, RunHook)
    assert emitted(s.hook_done("d1", retry.generation, None)) == [
        ("service", "db", "d1"), ("ready", {"db": ["d1"]})]


def test_restart_is_a_new_node_and_gets_its_hook() -> None:
    s = ServiceState()
    s.set_hook("db")
    s.start()
    (first,) = s.node_seen(node("d1", "db"))
    s.hook_done("d1", first.generation, ValueError("x"))
    s.node_gone(node("d1", "db"))
    assert emitted(s.node_seen(node("d1-restarted", "db"))) == [("hook", "db", "d1-restarted")]


def test_stale_hook_results_are_ignored() -> None:
    s = ServiceState()
    s.set_hook("db")
    s.start()
    (first,) = s.node_seen(node("d1", "db"))
    s.node_gone(node("d1", "db"))
    assert s.hook_done("d1", first.generation, None) == []  # it left while being set up
    (again,) = s.node_seen(node("d1", "db"))
    assert s.hook_done("d1", first.generation, None) == []  # an older run
    assert emitted(s.hook_done("d1", again.generation, None))[0] == ("service", "db", "d1")


def test_readvertising_a_different_name_moves_the_node() -> None:
    s = ServiceState()
    s.need("db")
    s.start()
    s.node_seen(node("n", "db"))
    assert emitted(s.node_seen(node("n", "cache"))) == [
        ("serviceRemoved", "db", "n"), ("notready", "db"), ("service", "cache", "n")]
    assert emitted(s.node_seen(node("n", None))) == [("serviceRemoved", "cache", "n")]
    assert emitted(s.node_seen(node("n", "db"))) == [("service", "db", "n"), ("ready", {"db": ["n"]})]


def test_a_first_hello_without_a_name_is_not_the_end() -> None:
    """The fork matched services on the first hello only; we match on every one."""
    s = ServiceState()
    s.need("db")
    s.start()
    assert emitted(s.node_seen(node("n", None))) == []
    assert emitted(s.node_seen(node("n", "db")))[-1] == ("ready", {"db": ["n"]})


def test_a_hook_set_late_runs_for_providers_already_seen_without_flicker() -> None:
    s = ServiceState()
    s.start()
    s.node_seen(node("d1", "db"))
    s.node_seen(node("d2", "db"))
    out = s.set_hook("db")
    assert emitted(out) == [("hook", "db", "d1"), ("hook", "db", "d2"), ("ready", {"db": ["d1", "d2"]})]
    assert s.is_ready  # still usable while the late hook runs
    first, second = (a for a in out if isinstance(a, RunHook))
    assert emitted(s.hook_done("d1", first.generation, None)) == []  # no second "service" or "ready"
    assert emitted(s.hook_done("d2", second.generation, OSError("down"))) == [
        ("error", "OSError"), ("serviceRemoved", "db", "d2")]
    assert emitted(s.set_hook("db")) == []  # a second setup() does not re-run the hook


def test_reset_forgets_providers() -> None:
    s = ServiceState()
    s.need("db")
    s.start()
    s.node_seen(node("d1", "db"))
    s.reset()
    assert not s.is_ready and s.services() == {}
    assert emitted(s.node_seen(node("d1", "db")))[-1] == ("ready", {"db": ["d1"]})


def test_advertisement_must_name_a_service() -> None:
    for bad in ({"role": "db"}, {"name": 3}, {"name": ""}, "db", [1]):
        with pytest.raises(ValueError, match="name"):
            AsyncServiceDiscovery(advertisement=bad, transport=MemoryTransport(MemoryBus()))
    d = AsyncServiceDiscovery(transport=MemoryTransport(MemoryBus()))
    with pytest.raises(ValueError, match="name"):
        d.advertise({"port": 1})
    d.advertise({"name": "svc.web"})
    d.advertise(None)


# ---------------------------------------------------------------- runtime
QUICK = {"hello_interval": 0.2, "check_interval": 0.3, "node_timeout": 0.6, "ignore_process": False}


async def test_async_need_setup_ready_notready_on_the_memory_bus() -> None:
    bus = MemoryBus()
    web = AsyncServiceDiscovery(transport=MemoryTransport(bus), advertisement={"name": "web"}, **QUICK)
    log: list[tuple[str, Any]] = []
    set_up: list[str] = []

    async def setup_db(db: Node) -> None:
        await asyncio.sleep(0.01)
        set_up.append(db.advertisement["host"])

    web.setup("db", setup_db)
    web.need("cache")
    web.on("ready", lambda services: log.append(("ready", sorted(services))))
    web.on("notready", lambda name: log.append(("notready", name)))
    db = AsyncServiceDiscovery(transport=MemoryTransport(bus), advertisement={"name": "db", "host": "h1"}, **QUICK)
    async with web, db:
        waiter = asyncio.ensure_future(web.ready(timeout=5))
        await async_eventually(lambda: set_up == ["h1"], 2, "db hook")
        await asyncio.sleep(0.05)  # give a wrong "ready" the chance to show up
        assert not waiter.done() and log == []
        async with AsyncServiceDiscovery(transport=MemoryTransport(bus), advertisement={"name": "cache"}, **QUICK):
            services = await waiter
            assert sorted(services) == ["cache", "db"]
            assert log == [("ready", ["cache", "db"])]
        await async_eventually(lambda: log[-1] == ("notready", "cache"), 1, "notready")


# ---------------------------------------------------------------- sockets
def test_real_sockets_setup_ready_and_notready_on_a_graceful_stop(port: int) -> None:
    opts = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    web = ServiceDiscovery(start=False, advertisement={"name": "web"}, **opts)
    hooked: list[str] = []
    ready: list[dict[str, list[Node]]] = []
    notready: list[tuple[str, float]] = []
    hook_thread: list[str] = []

    def setup_db(db: Node) -> None:  # a blocking hook: runs in a worker thread, not the loop
        hook_thread.append(threading.current_thread().name)
        time.sleep(0.05)
        hooked.append(db.id)

    web.setup("db", setup_db)
    web.need("cache")
    web.on("ready", ready.append)
    web.on("notready", lambda name: notready.append((name, time.monotonic())))
    web.start()
    db = ServiceDiscovery(advertisement={"name": "db"}, **opts)
    cache = None
    try:
        eventually(lambda: hooked == [db.me.id], 3, "db set up")
        assert hook_thread[0] != "pydiscover"
        assert ready == [] and not web.is_ready
        cache = ServiceDiscovery(advertisement={"name": "cache"}, **opts)
        services = web.wait_ready(3)
        assert sorted(services) == ["cache", "db"] and len(ready) == 1
        assert [n.id for n in ready[0]["cache"]] == [cache.me.id]
        stopped = time.monotonic()
        cache.stop()
        eventually(lambda: bool(notready), 1, "notready within 1 s of the stop")
        assert notready[0][0] == "cache" and notready[0][1] - stopped < 1
        assert sorted(web.services) == ["db"]  # peers only: its own "web" is not a provider to itself
    finally:
        for d in (web, db, cache):
            if d is not None:
                d.stop()


PROVIDER = """
import sys, time
from pydiscover import ServiceDiscovery
d = ServiceDiscovery(port=int(sys.argv[1]), broadcast="127.255.255.255", advertisement={"name": sys.argv[2]},
                     hello_interval=0.5, node_timeout=2)
print("up", flush=True)
time.sleep(60)
"""


def test_providers_in_other_processes_and_sigterm(port: int) -> None:
    import signal
    import subprocess
    import sys

    web = ServiceDiscovery(start=False, port=port, broadcast=LOOPBACK_BROADCAST, hello_interval=0.5, node_timeout=2)
    hooked: list[str] = []
    events: list[tuple[str, Any, float]] = []
    web.setup("db", lambda n: hooked.append(n.advertisement["name"]))
    web.need("cache")
    web.on("ready", lambda s: events.append(("ready", sorted(s), time.monotonic())))
    web.on("notready", lambda name: events.append(("notready", name, time.monotonic())))
    web.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        for name in ("db", "cache"):
            command = [sys.executable, "-c", PROVIDER, str(port), name]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            if name == "db":
                eventually(lambda: hooked == ["db"], 3, "db hook")
                assert events == []
        eventually(lambda: [e[:2] for e in events] == [("ready", ["cache", "db"])], 3, "ready")
        stopped = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)  # graceful: the library says goodbye on SIGTERM
        eventually(lambda: len(events) == 2, 1.5, "notready")
        assert events[1][:2] == ("notready", "cache") and events[1][2] - stopped < 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        web.stop()


def test_stop_resets_services_and_wakes_waiters(port: int) -> None:
    opts = {"port": port, "broadcast": LOOPBACK_BROADCAST, **QUICK}
    web = ServiceDiscovery(**opts)
    db = ServiceDiscovery(advertisement={"name": "db"}, **opts)
    try:
        web.need("db", "cache")
        eventually(lambda: "db" in web.services, 2, "db seen")
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                web.wait_ready(30)
            except RuntimeError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.05)
        started = time.monotonic()
        web.stop()
        waiter.join(5)
        assert errors and time.monotonic() - started < 2  # woken by the stop, not the timeout
        assert web.services == {} and not web.is_ready
        with pytest.raises(RuntimeError, match="not running"):
            web.wait_ready(1)
    finally:
        web.stop()
        db.stop()


async def test_a_hook_raising_system_exit_is_a_failure_not_a_crash() -> None:
    bus = MemoryBus()
    web = AsyncServiceDiscovery(transport=MemoryTransport(bus), **QUICK)
    errors: list[BaseException] = []
    web.on("error", errors.append)

    def bad(_: Node) -> None:
        raise SystemExit(3)

    web.setup("db", bad)
    with pytest.raises(ValueError):
        web.setup("", bad)
    async with web, AsyncServiceDiscovery(transport=MemoryTransport(bus), advertisement={"name": "db"}, **QUICK):
        await async_eventually(lambda: bool(errors), 2, "hook failure reported")
        assert isinstance(errors[0], SystemExit) and web.running and not web.is_ready
