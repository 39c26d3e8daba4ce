"""AsyncDiscovery and Discovery over real loopback sockets and the in-memory bus."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, eventually, free_udp_port

from pydiscover import AsyncDiscovery, BindError, Discovery, Node, Packet, PacketTooLarge
from pydiscover.transports.memory import MemoryBus, MemoryTransport

QUICK = {"hello_interval": 0.2, "check_interval": 0.3, "node_timeout": 0.6, "ignore_process": False}


def loopback(port: int, **extra: Any) -> Discovery:
    return Discovery(port=port, broadcast=LOOPBACK_BROADCAST, **{**QUICK, **extra})


def all_see_each_other(nodes: list[Discovery]) -> bool:
    return all(len(d.nodes) == len(nodes) - 1 for d in nodes)


# --------------------------------------------------------------- asyncio
async def test_async_cluster_on_the_memory_bus() -> None:
    bus = MemoryBus()
    got: list[tuple[Any, Packet]] = []

    async def on_chat(data: Any, packet: Packet) -> None:  # coroutine handlers are awaited on the loop
        got.append((data, packet))

    async with AsyncDiscovery(transport=MemoryTransport(bus), weight=1, **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), weight=2, **QUICK) as b:
        assert a.join("chat", on_chat)
        await async_eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 2, "mutual view")
        await b.wait_for("promotion", timeout=2)
        assert b.is_master and not a.is_master
        assert b.send("chat", {"n": 1})
        await async_eventually(lambda: bool(got), 2, "message")
        assert got[0][0] == {"n": 1} and got[0][1].iid == b.me.id
        removed = asyncio.ensure_future(a.wait_for("removed", timeout=2))
        await asyncio.sleep(0)
        await b.stop()
        (node,) = await removed
        assert node.id == b.me.id
        assert a.is_master  # promoted on the goodbye itself: no timeout involved


async def test_a_hello_received_listener_hears_every_unchanged_hello_with_its_time() -> None:
    """With a listener, a hello that changed nothing takes the runtime's short path (no timer
    work): it is still reported, once each, not new, with the time it arrived."""
    bus = MemoryBus()
    heard: list[tuple[Node, bool]] = []
    async with AsyncDiscovery(transport=MemoryTransport(bus), weight=1, **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), weight=2, **QUICK) as b:
        a.on("helloReceived", lambda node, is_new: heard.append((node, is_new)))
        await async_eventually(lambda: sum(1 for n, _ in heard if n.id == b.me.id) >= 4, 5, "four hellos from b")
        from_b = [(n, new) for n, new in heard if n.id == b.me.id]
        assert not any(new for _, new in from_b[1:])
        times = [n.last_seen for n, _ in from_b]
        assert times == sorted(times) and len(set(times)) == len(times)  # each with its own arrival time
        assert a.nodes[b.me.id].last_seen >= times[-1]


async def test_a_raising_handler_is_reported_and_the_loop_goes_on() -> None:
    bus = MemoryBus()
    errors: list[BaseException] = []
    seen: list[int] = []

    def boom(data: int, packet: Packet) -> None:
        seen.append(data)
        raise RuntimeError("handler bug")

    async with AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as b:
        a.on("error", errors.append)
        a.join("chat", boom)
        b.send("chat", 1)
        b.send("chat", 2)
        await async_eventually(lambda: seen == [1, 2], 2, "both messages despite the first failure")
        assert [str(e) for e in errors] == ["handler bug", "handler bug"]
        await async_eventually(lambda: len(a.nodes) == 1, 2, "discovery still running")


async def test_async_start_twice_and_stop_twice() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK)
    assert await d.start() is True
    assert await d.start() is False
    assert await d.stop() is True
    assert await d.stop() is False
    assert d.send("chat", 1) is False


# ------------------------------------------------------------ real UDP
def test_loopback_broadcast_cluster_messages_and_goodbye(port: int) -> None:
    nodes = [loopback(port, weight=w) for w in (1, 2, 3)]
    try:
        took = eventually(lambda: all_see_each_other(nodes), 2, "mutual view")
        assert took < 0.5  # prompt replies, not a hello interval
        inbox: dict[int, list[Any]] = {i: [] for i in range(3)}
        for i, d in enumerate(nodes):
            assert d.join("chat", lambda data, packet, i=i: inbox[i].append(data))
        assert nodes[0].send("chat", {"from": 0})
        eventually(lambda: inbox[1] == [{"from": 0}] and inbox[2] == [{"from": 0}], 2, "delivery")
        assert inbox[0] == []  # ignore_instance: not our own broadcast
        eventually(lambda: nodes[2].is_master, 3, "weight 3 elected")
        assert [d.is_master for d in nodes] == [False, False, True]
        nodes[2].stop()
        took = eventually(lambda: nodes[1].is_master, 1, "successor")
        assert took < 0.2
        stats = nodes[0].stats
        assert stats["packets_in"] > 0 and stats["packets_out"] > 0
        assert stats["dropped"].get("own_instance", 0) > 0
    finally:
        for d in nodes:
            d.stop()


def test_loopback_multicast_cluster(port: int) -> None:
    nodes = [Discovery(port=port, multicast="239.255.91.7", interface="127.0.0.1", weight=w, **QUICK)
             for w in (1, 2, 3)]
    try:
        eventually(lambda: all_see_each_other(nodes), 2, "mutual view over multicast")
        eventually(lambda: nodes[2].is_master, 3, "election over multicast")
    finally:
        for d in nodes:
            d.stop()


def test_unicast_between_distinct_ports_and_runtime_change() -> None:
    ports = [free_udp_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    a = Discovery(port=ports[0], address="127.0.0.1", unicast=peers, **QUICK)
    b = Discovery(port=ports[1], address="127.0.0.1", unicast=",".join(peers), **QUICK)
    # talks to nobody yet (learn_peers=False: it would otherwise answer whoever it hears)
    c = Discovery(port=ports[2], address="127.0.0.1", unicast=peers[2:], learn_peers=False, **QUICK)
    try:
        eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 2, "a and b")
        eventually(lambda: len(c.nodes) == 2, 2, "c hears a and b")
        assert len(a.nodes) == 1  # but c sends only to itself so far
        c.unicast = peers
        assert c.unicast == tuple(peers)
        eventually(lambda: len(a.nodes) == 2 and len(b.nodes) == 2, 2, "c after the unicast change")
        assert {n.port for n in a.nodes.values()} == {ports[1], ports[2]}
    finally:
        for d in (a, b, c):
            d.stop()


def test_bind_failure_names_address_and_port() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(BindError, match=f"127.0.0.1:{port}") as info:
            Discovery(port=port, address="127.0.0.1", reuse_addr=False, unicast=f"127.0.0.1:{port}")
        assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE
    finally:
        holder.close()
    with pytest.raises(BindError, match=r"192\.0\.2\.1"):  # TEST-NET address: not on this host; nothing is sent
        Discovery(port=port, address="192.0.2.1", unicast="127.0.0.1")


def test_sync_api_errors_cross_the_thread(port: int) -> None:
    with loopback(port) as d:
        with pytest.raises(PacketTooLarge, match="1472-byte"):
            d.send("chat", "x" * 1500)
        with pytest.raises(PacketTooLarge):
            d.advertise({"blob": "y" * 1500})
        with pytest.raises(TypeError, match="JSON"):
            d.send("chat", object())
        assert d.send("promotion", {}) is False
        assert d.join("error", print) is False
        assert d.join("chat") and not d.join("chat")
        assert d.leave("chat") and not d.leave("chat")
    assert not d.running


def test_handlers_may_call_back_into_discovery(port: int) -> None:
    """Handlers run on the discovery thread; calling the API from them must not deadlock."""
    a, b = loopback(port), loopback(port)
    echoed = threading.Event()
    try:
        a.join("ping", lambda data, packet: a.send("pong", data + 1))
        b.join("pong", lambda data, packet: echoed.set() if data == 2 else None)
        eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 2, "mutual view")
        b.send("ping", 1)
        assert echoed.wait(2)
    finally:
        a.stop()
        b.stop()


def test_advertisement_and_node_fields(port: int) -> None:
    a = loopback(port, advertisement={"role": "db"}, hostname="alpha", weight=3)
    b = loopback(port)
    try:
        eventually(lambda: len(b.nodes) == 1, 2, "b sees a")
        (node,) = b.nodes.values()
        assert isinstance(node, Node)
        assert (node.id, node.hostname, node.weight, node.advertisement) == (a.me.id, "alpha", 3, {"role": "db"})
        assert node.address == "127.0.0.1" and node.port == port and node.is_master_eligible
        a.advertise({"role": "cache"})
        eventually(lambda: next(iter(b.nodes.values())).advertisement == {"role": "cache"}, 2, "new advert")
    finally:
        a.stop()
        b.stop()


def test_client_mode_listens_without_being_seen(port: int) -> None:
    server = loopback(port)
    client = loopback(port, client=True)
    try:
        eventually(lambda: len(client.nodes) == 1, 2, "client sees the server")
        eventually(lambda: server.is_master, 2, "server alone becomes master")
        assert server.nodes == {} and not client.is_master and not client.me.is_master_eligible
    finally:
        client.stop()
        server.stop()


def test_a_script_that_forgets_stop_still_says_goodbye(port: int) -> None:
    import subprocess
    import sys

    watcher = loopback(port, weight=1, node_timeout=30, check_interval=1)  # only a goodbye removes fast
    seen: list[str] = []
    watcher.on("added", lambda node: seen.append("added"))
    watcher.on("removed", lambda node: seen.append("removed"))
    try:
        script = (
            "from pydiscover import Discovery; import time\n"
            f"d = Discovery(port={port}, broadcast='127.255.255.255', hello_interval=0.2)\n"
            "t = time.monotonic()\n"
            "while len(d.nodes) < 1 and time.monotonic() - t < 5: time.sleep(0.01)\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
        eventually(lambda: seen == ["added", "removed"], 2, "goodbye at interpreter exit")
    finally:
        watcher.stop()


def test_sigterm_without_a_handler_says_goodbye_then_dies_of_it(port: int) -> None:
    import signal
    import subprocess
    import sys

    watcher = loopback(port, weight=1, node_timeout=30, check_interval=1)
    seen: list[str] = []
    watcher.on("added", lambda node: seen.append("added"))
    watcher.on("removed", lambda node: seen.append("removed"))
    script = (
        "from pydiscover import Discovery; import time\n"
        f"d = Discovery(port={port}, broadcast='127.255.255.255', hello_interval=0.2)\n"
        "print('up', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        eventually(lambda: seen == ["added"], 2, "peer added")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM  # still dies of the signal
        eventually(lambda: seen == ["added", "removed"], 2, "goodbye on SIGTERM")
    finally:
        proc.kill()
        proc.wait()
        watcher.stop()


def test_started_and_stopped_receive_the_object_the_user_holds(port: int) -> None:
    d = loopback(port, start=False)
    got: list[object] = []
    d.on("started", got.append)
    d.on("stopped", got.append)
    d.start()
    d.stop()
    assert got == [d, d]


def test_peer_addresses_are_normalised() -> None:
    from pydiscover.transports.udp import _peer_address

    assert _peer_address(("::ffff:10.1.2.3", 5, 0, 0)) == ("10.1.2.3", 5)
    assert _peer_address(("fe80::1", 5, 0, 1)) == ("fe80::1%lo", 5)  # index 1 is always lo on Linux
    assert _peer_address(("127.0.0.1", 5)) == ("127.0.0.1", 5)


async def test_async_restart_rebinds_without_reuse_addr(port: int) -> None:
    d = AsyncDiscovery(port=port, address="127.0.0.1", unicast=f"127.0.0.1:{port}", reuse_addr=False, **QUICK)
    await d.start()
    await d.stop()
    assert await d.start() is True  # the socket really is closed when stop() returns
    await d.stop()


def test_stop_from_a_handler_does_not_deadlock(port: int) -> None:
    d = loopback(port)
    stopped = threading.Event()
    d.on("stopped", lambda _: stopped.set())
    d.join("halt", lambda data, packet: d.stop())
    other = loopback(port)
    try:
        eventually(lambda: len(other.nodes) == 1, 2, "peer")
        other.send("halt", None)
        assert stopped.wait(3)
        eventually(lambda: not d.running and len(other.nodes) == 0, 2, "goodbye after a handler's stop()")
    finally:
        d.stop()
        other.stop()


def test_start_from_a_handler_is_refused(port: int) -> None:
    d = loopback(port)
    refused: list[Exception] = []

    def try_start(*_: object) -> None:
        try:
            d.start()
        except RuntimeError as exc:
            refused.append(exc)

    d.once("helloEmitted", try_start)
    try:
        eventually(lambda: bool(refused), 2, "a hello")
        assert "handler" in str(refused[0])
    finally:
        d.stop()


def test_stop_during_stop_from_a_handler(port: int) -> None:
    d = loopback(port)
    d.on("demotion", lambda me: d.stop())
    d.promote()
    assert d.stop() is True  # returns promptly instead of a 10 s deadlock
    assert not d.running


def test_async_handlers_finish_before_stop_returns(port: int) -> None:
    finished = threading.Event()

    async def slow_goodbye(_: object) -> None:
        await asyncio.sleep(0.05)
        finished.set()

    d = loopback(port)
    d.on("stopped", slow_goodbye)
    d.stop()
    assert finished.is_set()


def _signal_then_sleep(running: Any) -> None:
    import time

    running.set()
    time.sleep(10)


def test_forked_child_exits_promptly(port: int) -> None:
    import multiprocessing
    import time

    d = loopback(port)
    try:
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=lambda: None)
        started = time.monotonic()
        child.start()
        child.join(5)
        assert child.exitcode == 0 and time.monotonic() - started < 3  # no wait on the parent's thread
        running = ctx.Event()
        sleeper = ctx.Process(target=_signal_then_sleep, args=(running,))
        sleeper.start()
        assert running.wait(5)
        sleeper.terminate()
        sleeper.join(5)
        assert sleeper.exitcode == -15  # the parent's SIGTERM handler is not inherited
    finally:
        d.stop()


def test_garbage_on_the_wire_is_counted_and_harmless(port: int) -> None:
    d = loopback(port, check_interval=5, node_timeout=5)  # no election during the test: any event is the garbage's
    fired: list[str] = []
    for event in ("added", "removed", "master", "promotion", "demotion", "error", "chat"):
        d.on(event, lambda *args, event=event: fired.append(event))
    d.join("chat")
    garbage = [
        b"", b"\x00\xff", b"not json", b"[1,2]", b"{\"event\": \"hello\"}",
        b'{"event":"error","pid":"x","iid":"y","data":{"boom":1}}',
        b'{"event":"promotion","pid":"x","iid":"y","data":{}}',
        b'{"event":"hello","pid":"x","iid":"y","data":{"weight":"heavy"}}',
        b'{"event":"news","pid":"x","iid":"y","data":1}',
        b'{"event":"chat","pid":"x","iid":"y","data":"' + b"x" * 3000 + b'"}',
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for datagram in garbage:
            raw.sendto(datagram, ("127.0.0.1", port))
    try:
        expected = {"not_json": 3, "not_object": 1, "bad_envelope": 1, "reserved_event": 2, "bad_hello": 1,
                    "unknown_event": 1, "oversized": 1}
        eventually(lambda: all(d.stats["dropped"].get(k, 0) >= n for k, n in expected.items()), 2, "drop counters")
        peer = loopback(port)
        eventually(lambda: len(d.nodes) == 1, 2, "still discovering")
        peer.stop()
        assert [e for e in fired if e not in ("added", "removed")] == []
    finally:
        d.stop()


# ------------------------------------------------------------- pyee pin
def test_the_emitter_and_the_pinned_pyee_agree() -> None:
    """SafeEmitter reads pyee's handler table ``_events``; setup.cfg pins the majors where that holds."""
    from importlib.metadata import version

    from pydiscover.events import SafeEmitter

    assert 11 <= int(version("pyee").split(".")[0]) < 14
    emitter = SafeEmitter()
    seen: list[tuple[str, int]] = []
    emitter.on("x", lambda n: seen.append(("on", n)))
    emitter.once("x", lambda n: seen.append(("once", n)))
    assert emitter.has_listeners("x") and not emitter.has_listeners("y")
    assert emitter.emit("x", 1) and emitter.emit("x", 2)
    assert seen == [("on", 1), ("once", 1), ("on", 2)]
    emitter.remove_all_listeners("x")
    assert not emitter.has_listeners("x") and not emitter.emit("x", 3)


def test_a_watcher_hears_every_way_handlers_come_and_go() -> None:
    """The core learns whether anyone listens for helloReceived from these calls alone (not per
    datagram): on, once (and its firing), remove_listener, remove_all_listeners."""
    from pydiscover.events import SafeEmitter

    emitter = SafeEmitter()
    heard: list[bool] = []
    emitter.watch("x", heard.append)
    assert heard == [False]

    def handler(n: int) -> None:
        pass

    emitter.on("x", handler)
    assert heard[-1] is True
    emitter.remove_listener("x", handler)
    assert heard[-1] is False
    emitter.once("x", handler)
    assert heard[-1] is True
    emitter.emit("x", 1)  # a once handler leaves as it fires
    assert heard[-1] is False and not emitter.has_listeners("x")
    emitter.on("x", handler)
    emitter.on("y", handler)
    emitter.remove_all_listeners()
    assert heard[-1] is False


async def test_a_hello_listener_added_and_removed_at_run_time_is_heard_only_meanwhile() -> None:
    bus = MemoryBus()
    heard: list[str] = []

    def on_hello(node: Node, is_new: bool) -> None:
        heard.append(node.id)

    async with AsyncDiscovery(transport=MemoryTransport(bus), weight=1, **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), weight=2, **QUICK) as b:
        await async_eventually(lambda: b.me.id in a.nodes, 2, "a sees b")
        a.on("helloReceived", on_hello)
        await async_eventually(lambda: heard.count(b.me.id) >= 2, 2, "unchanged hellos heard")
        a.remove_listener("helloReceived", on_hello)
        count = len(heard)
        seen_at = a.nodes[b.me.id].last_seen
        await async_eventually(lambda: a.nodes[b.me.id].last_seen > seen_at, 2, "another hello from b")
        assert len(heard) == count
