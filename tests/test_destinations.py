"""Destinations changed at run time, and seeds that learn their peers (issue 15, parts 2 and 3).

Loopback only: every node binds its own port on 127.0.0.1 and sends to 127.0.0.1 (or
broadcasts to 127.255.255.255); real UDP sockets; every wait is on a condition with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, eventually, free_udp_port, running

import pydiscover.discovery as runtime
from pydiscover import AsyncDiscovery, Discovery, Node
from pydiscover.config import Endpoint
from pydiscover.peerbook import ASK, DestinationsChanged, PeerAction, PeerBook, SendTo
from pydiscover.transports.memory import MemoryBus, MemoryTransport
from pydiscover.transports.udp import UdpTransport

HELLO = 0.2
TIMING: dict[str, Any] = {"hello_interval": HELLO, "check_interval": 0.5, "node_timeout": 1.0, "ignore_process": False}


def node(port: int, **options: Any) -> AsyncDiscovery:
    return AsyncDiscovery(port=port, address="127.0.0.1", **{**TIMING, **options})


def seed(port: int) -> str:
    return f"127.0.0.1:{port}"


def ports_seen(d: AsyncDiscovery) -> set[int]:
    return {n.port for n in d.nodes.values()}


# ------------------------------------------------------ five nodes, one seed
#: Node 0, in its own process so that it can be killed (SIGKILL: no goodbye).  It prints the
#: port of every node it adds; the parent kills it in any case, and it exits by itself at 60 s.
NODE_ZERO = """
import sys, time
from pydiscover import Discovery
d = Discovery(port=int(sys.argv[1]), address="127.0.0.1", unicast=[], hello_interval={hello},
              check_interval=0.5, node_timeout={timeout}, stop_on_sigterm=False)
d.on("added", lambda n: print("added", n.port, flush=True))
print("ready", flush=True)
time.sleep(60)
"""
#: The five-node test measures wall-clock time in hello intervals on what may be a loaded
#: 2-core CI machine: intervals long enough that scheduling noise is small against them,
#: and a node timeout long enough that no live node is removed while the machine is busy.
FIVE_HELLO = 0.5
FIVE_TIMING: dict[str, Any] = {**TIMING, "hello_interval": FIVE_HELLO, "node_timeout": 4.0}


async def test_five_nodes_one_seed_full_view_survives_the_seed_and_a_sixth_joins_through_node_1() -> None:
    ports = [free_udp_port() for _ in range(6)]
    zero = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NODE_ZERO.format(hello=FIVE_HELLO, timeout=FIVE_TIMING["node_timeout"]), str(ports[0]),
        stdout=asyncio.subprocess.PIPE,
    )
    assert zero.stdout is not None
    zero_saw: set[int] = set()

    async def read_zero(until: Callable[[], bool], timeout: float) -> None:
        assert zero.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until():
            line = await asyncio.wait_for(zero.stdout.readline(), max(0.01, deadline - loop.time()))
            assert line, "node 0 exited early"
            word, _, rest = line.decode().partition(" ")
            if word == "added":
                zero_saw.add(int(rest))

    ready = False

    def is_ready() -> bool:
        return ready

    others = [node(p, unicast=[seed(ports[0])], **FIVE_TIMING) for p in ports[1:5]]
    removed: list[tuple[int, Node]] = []
    for i, d in enumerate(others, 1):
        d.on("removed", lambda n, i=i: removed.append((i, n)))
    try:
        line = await asyncio.wait_for(zero.stdout.readline(), 20)
        ready = line.strip() == b"ready"
        assert is_ready(), line
        loop = asyncio.get_running_loop()
        for d in others:
            last_start = loop.time()
            await d.start()
        everyone = set(ports[:5])

        def full_view() -> bool:
            return all(ports_seen(d) == everyone - {d.options.port} for d in others)

        await async_eventually(full_view, 10 * FIVE_HELLO, "nodes 1-4 see the other four")
        elapsed = loop.time() - last_start
        await read_zero(lambda: zero_saw == set(ports[1:5]), 5)
        # Three hello intervals: the newcomer's hello, its question to the seed and the seed's
        # answer, then one regular hello to each member named (the replies come within milliseconds).
        assert elapsed <= 3 * FIVE_HELLO, f"full view {elapsed:.3f} s after the last start"
        for d in others:
            assert d.learn_peers and d.stats["learned"] == 4
            assert set(d.destinations) == {("127.0.0.1", p) for p in everyone - {d.options.port}}
            assert d.unicast == (seed(ports[0]),)

        # Killed (no goodbye): the others time it out and keep their view of each other.
        zero.send_signal(signal.SIGKILL)
        await zero.wait()
        killed_at = loop.time()
        rest = set(ports[1:5])

        def survived() -> bool:
            return all(
                ports_seen(d) == rest - {d.options.port}
                and all(n.last_seen > killed_at + FIVE_TIMING["node_timeout"] for n in d.nodes.values())
                for d in others
            )

        await async_eventually(survived, FIVE_TIMING["node_timeout"] + 10,
                               "nodes 1-4 without node 0, heard after its timeout")
        assert {(i, n.port) for i, n in removed} == {(i, ports[0]) for i in range(1, 5)}
        for d in others:  # node 0 left the learned destinations with its node; it stays configured
            assert set(d.destinations) == {("127.0.0.1", p) for p in (rest - {d.options.port}) | {ports[0]}}

        # A sixth node that names only node 1 is seen by all four (and sees them).
        sixth = node(ports[5], unicast=[seed(ports[1])], **FIVE_TIMING)
        async with running(sixth):
            await async_eventually(
                lambda: all(ports[5] in ports_seen(d) for d in others) and ports_seen(sixth) == rest,
                10 * FIVE_HELLO, "the sixth node and nodes 1-4 see each other",
            )
    finally:
        if zero.returncode is None:
            zero.kill()
            await zero.wait()
        for d in others:
            await d.stop()


async def test_a_seed_that_says_hello_from_another_address_still_introduces_its_members() -> None:
    """The seed is configured as 127.0.0.2 (an alias: NAT, a multi-homed host, a name that
    resolves elsewhere look the same) but its hellos come from 127.0.0.1.  It is not
    recognised by its endpoint, so the newcomer asks the node that found it; without that
    question nodes 1 and 2 would each know the seed only."""
    ps, p1, p2 = free_udp_port(), free_udp_port(), free_udp_port()
    the_seed = AsyncDiscovery(port=ps, address="0.0.0.0", unicast=[], **TIMING)  # hears 127.0.0.2 too
    one = node(p1, unicast=[seed(ps)])
    two = node(p2, unicast=[f"127.0.0.2:{ps}"])
    async with running(the_seed, one):
        await async_eventually(lambda: ports_seen(one) == {ps}, 10 * HELLO, "node 1 joins the seed")
        async with running(two):
            await async_eventually(lambda: ports_seen(one) == {ps, p2} and ports_seen(two) == {ps, p1},
                                   15 * HELLO, "nodes 1 and 2 meet through the seed they name differently")
            assert ("127.0.0.1", ps) in two.destinations and ("127.0.0.2", ps) in two.destinations


# ------------------------------------------------------ destinations at run time
async def test_add_destination_at_run_time_finds_a_node_and_remove_destination_undoes_it() -> None:
    pa, pb = free_udp_port(), free_udp_port()
    a = node(pa, unicast=[], learn_peers=False)
    b = node(pb, unicast=[], learn_peers=False)
    assert a.unicast == () and a.destinations == ()
    async with running(a, b):
        assert a.add_destination("127.0.0.1", pb) is True
        assert a.add_destination("localhost", pb) is False  # the same endpoint, resolved
        assert a.destinations == (("127.0.0.1", pb),) and a.unicast == (seed(pb),)
        await async_eventually(lambda: ports_seen(b) == {pa}, 10 * HELLO, "b hears a")
        assert b.nodes and not a.nodes  # b learns nothing: it does not answer
        assert b.add_destination("127.0.0.1", pa)
        await async_eventually(lambda: ports_seen(a) == {pb}, 10 * HELLO, "a hears b")
        assert a.remove_destination("127.0.0.1", pb) is True
        assert a.remove_destination("127.0.0.1", pb) is False
        assert a.destinations == () and a.unicast == ()
        await b.wait_for("removed", timeout=5)  # a no longer says hello to b


async def test_destination_given_before_start_is_used_from_the_start() -> None:
    pa, pb = free_udp_port(), free_udp_port()
    a = node(pa, unicast=[])
    assert a.add_destination("127.0.0.1", pb)
    b = node(pb, unicast=[])  # knows nobody; learns a from its hellos
    async with running(b, a):
        await async_eventually(lambda: ports_seen(a) == {pb} and ports_seen(b) == {pa}, 10 * HELLO, "a and b")
        assert b.destinations == (("127.0.0.1", pa),) and b.unicast == ()


async def test_a_destination_next_to_broadcast_reaches_a_unicast_node_and_broadcast_does_not_learn() -> None:
    """Peers behind a router: a broadcast node also sends to a unicast node's address.

    The unicast node learns it and answers; the broadcast node (``learn_peers`` off)
    keeps sending only to its broadcast address and the destination it was given.
    """
    pb, pu = free_udp_port(), free_udp_port()
    bcast = AsyncDiscovery(port=pb, broadcast=LOOPBACK_BROADCAST, **TIMING)
    uni = node(pu, unicast=[])
    assert not bcast.learn_peers and uni.learn_peers
    async with running(bcast, uni):
        assert bcast.destinations == ((LOOPBACK_BROADCAST, pb),)
        assert bcast.add_destination("127.0.0.1", pu)
        assert bcast.destinations == ((LOOPBACK_BROADCAST, pb), ("127.0.0.1", pu))
        await async_eventually(lambda: ports_seen(uni) == {pb} and ports_seen(bcast) == {pu}, 10 * HELLO, "both")
        assert bcast.stats["learned"] == 0 and uni.stats["learned"] == 1


async def test_learn_peers_is_off_with_broadcast() -> None:
    pb, pu = free_udp_port(), free_udp_port()
    bcast = AsyncDiscovery(port=pb, broadcast=LOOPBACK_BROADCAST, **TIMING)
    uni = node(pu, unicast=[seed(pb)])  # a unicast node that names the broadcast node
    async with running(bcast, uni):
        await async_eventually(lambda: ports_seen(bcast) == {pu}, 10 * HELLO, "the broadcast node hears it")
        for _ in range(3):  # three more hellos of the broadcast node: none reaches the unicast port
            await bcast.wait_for("helloEmitted", timeout=5)
        assert bcast.destinations == ((LOOPBACK_BROADCAST, pb),)
        assert bcast.stats["learned"] == 0 and not uni.nodes


async def test_learn_peers_explicit_setting_wins() -> None:
    assert AsyncDiscovery(port=free_udp_port(), broadcast=LOOPBACK_BROADCAST, learn_peers=True).learn_peers
    assert not AsyncDiscovery(port=free_udp_port(), address="127.0.0.1", unicast=[], learn_peers=False).learn_peers
    with pytest.raises(TypeError, match="learn_peers"):
        AsyncDiscovery(port=free_udp_port(), unicast=[], learn_peers=1)  # type: ignore[arg-type]


def test_unicast_is_immutable_and_assignable_in_every_mode() -> None:
    port = free_udp_port()
    d = Discovery(start=False, port=port, broadcast=LOOPBACK_BROADCAST, **TIMING)
    assert d.unicast == () and isinstance(d.destinations, tuple)
    with pytest.raises(AttributeError):
        d.unicast.append("127.0.0.1:1")  # type: ignore[attr-defined]
    d.unicast = ["127.0.0.1:1", "127.0.0.2"]
    assert d.unicast == ("127.0.0.1:1", f"127.0.0.2:{port}")
    assert d.destinations == ((LOOPBACK_BROADCAST, port), ("127.0.0.1", 1), ("127.0.0.2", port))
    d.unicast = []
    assert d.unicast == () and d.destinations == ((LOOPBACK_BROADCAST, port),)


def test_sync_facade_add_and_remove_destination_cross_to_the_loop() -> None:
    pa, pb = free_udp_port(), free_udp_port()
    a = Discovery(port=pa, address="127.0.0.1", unicast=[], learn_peers=False, **TIMING)
    b = Discovery(port=pb, address="127.0.0.1", unicast=[], **TIMING)
    try:
        assert a.add_destination("127.0.0.1", pb)
        # Polled, not awaited: a wait_for registered after add_destination could miss the event.
        eventually(lambda: {n.port for n in b.nodes.values()} == {pa}, 5, "b hears a")
        eventually(lambda: {n.port for n in a.nodes.values()} == {pb}, 5, "b learned a and answers")
        assert a.remove_destination("localhost", pb)
        assert a.destinations == ()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize(
    ("host", "port", "error", "match"),
    [
        ("127.0.0.1", 0, ValueError, "port"),
        ("127.0.0.1", 65536, ValueError, "port"),
        ("127.0.0.1", "80", TypeError, "port"),
        ("127.0.0.1", True, TypeError, "port"),
        (5, 80, TypeError, "host"),
        ("", 80, ValueError, "host"),
        ("127.0.0.1:80", 80, ValueError, "port apart"),
        ("no such host.invalid", 80, ValueError, "neither"),
        ("::1", 80, ValueError, "IPv6"),  # on an IPv4 socket
    ],
)
def test_bad_destinations_are_refused_and_change_nothing(host: Any, port: Any, error: type[Exception],
                                                         match: str) -> None:
    d = AsyncDiscovery(port=free_udp_port(), address="127.0.0.1", unicast=["127.0.0.1:9"])
    with pytest.raises(error, match=match):
        d.add_destination(host, port)
    assert d.destinations == (("127.0.0.1", 9),) and d.unicast == ("127.0.0.1:9",)


def test_a_transport_without_destinations_says_so() -> None:
    d = AsyncDiscovery(transport=MemoryTransport(MemoryBus()), learn_peers=True)
    assert not d.learn_peers and d.destinations == () and d.unicast == ()
    with pytest.raises(ValueError, match="reaches every member"):
        d.add_destination("127.0.0.1", 9)
    with pytest.raises(ValueError, match="reaches every member"):
        d.unicast = ["127.0.0.1:9"]


def test_the_peers_channel_is_the_runtimes_own() -> None:
    d = AsyncDiscovery(port=free_udp_port(), address="127.0.0.1", unicast=[])
    assert runtime.PEERS_CHANNEL not in d.channels
    assert not d.join(runtime.PEERS_CHANNEL) and not d.leave(runtime.PEERS_CHANNEL)
    assert not d.send(runtime.PEERS_CHANNEL, {"peers": []})


# ------------------------------------------------------ bounds and keys
async def test_learning_is_bounded(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "MAX_LEARNED", 2)
    ports = [free_udp_port() for _ in range(5)]
    first = node(ports[0], unicast=[])
    others = [node(p, unicast=[seed(ports[0])], learn_peers=False) for p in ports[1:]]
    with caplog.at_level(logging.WARNING, logger="pydiscover.peerbook"):
        async with running(first, *others):
            await async_eventually(lambda: len(first.nodes) == 4, 10 * HELLO, "the first node hears all four")
            await async_eventually(lambda: first.stats["not_learned"] >= 2, 5, "two not learned")
            assert first.stats["learned"] == 2 and len(first.destinations) == 2
    assert sum("not learning more" in r.getMessage() for r in caplog.records) == 1


async def test_with_a_key_only_authenticated_peers_are_learned() -> None:
    pk, pp, pk2 = free_udp_port(), free_udp_port(), free_udp_port()
    keyed = node(pk, unicast=[], key="s3cret")
    stranger = node(pp, unicast=[seed(pk)])  # plaintext hellos: dropped before any node is added
    member = node(pk2, unicast=[seed(pk)], key="s3cret")
    async with running(keyed, stranger, member):
        await async_eventually(lambda: keyed.stats["dropped"].get("plaintext", 0) >= 2, 10 * HELLO, "plaintext")
        await async_eventually(lambda: ports_seen(keyed) == {pk2} and ports_seen(member) == {pk}, 10 * HELLO,
                               "the key holder")
        assert keyed.destinations == (("127.0.0.1", pk2),) and keyed.stats["learned"] == 1
        assert not stranger.nodes


# ------------------------------------------------------ the book's actions in the runtime
async def test_a_failing_book_action_never_escapes_the_datagram_path(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # endpoint_from_wire keeps such endpoints out; should one get in anyway (a bug), the
    # datagram path must go on: the user's event, the later changes, the timer.
    bad: Endpoint = ("::1", 9)  # IPv6 on an IPv4 socket: the transport refuses it
    original = PeerBook.node_added

    def node_added(self: PeerBook, now: float, iid: str, endpoint: Endpoint) -> list[PeerAction]:
        return [DestinationsChanged((*self.endpoints(), bad)), SendTo(bad, dict(ASK)),
                *original(self, now, iid, endpoint)]

    monkeypatch.setattr(PeerBook, "node_added", node_added)
    pa, pb = free_udp_port(), free_udp_port()
    a = node(pa, unicast=[])
    b = node(pb, unicast=[seed(pa)])
    added: list[int] = []
    a.on("added", lambda n: added.append(n.port))
    with caplog.at_level(logging.ERROR, logger="pydiscover.discovery"):
        async with running(a, b):
            await async_eventually(lambda: added == [pb] and ports_seen(b) == {pa}, 10 * HELLO, "a adds b")
            assert a.destinations == (("127.0.0.1", pb),)  # the bad list refused, the next change made
            assert a.stats["dropped"]["internal_error"] >= 2
    # Logged once per node (b's book fails the same way when it adds a), however often it fails.
    assert a.stats["dropped"]["internal_error"] + b.stats["dropped"]["internal_error"] > 2
    assert sum("internal error carrying out" in r.getMessage() for r in caplog.records) == 2


def test_a_change_of_destinations_parses_only_new_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    t = UdpTransport(address="127.0.0.1", port=free_udp_port())
    parsed: list[Endpoint] = []
    real = t._address_of

    def address_of(host: str, port: int, scope: int | None = None) -> Any:
        parsed.append((host, port))
        return real(host, port, scope)

    monkeypatch.setattr(t, "_address_of", address_of)
    many: list[Endpoint] = [("10.0.0.1", 1000 + i) for i in range(100)]
    t.set_destinations(many)
    assert len(parsed) == 100
    t.set_destinations([*many, ("10.0.0.2", 1)])
    assert parsed[100:] == [("10.0.0.2", 1)]
    # Still all or nothing (a user's list): one bad endpoint changes nothing.
    with pytest.raises(ValueError, match="IPv6"):
        t.set_destinations([*many, ("::1", 1)])
    assert t.destinations == (*many, ("10.0.0.2", 1))
    t.set_destinations([("10.0.0.2", 1), many[0], many[0]])
    assert t.destinations == (("10.0.0.2", 1), many[0]) and len(parsed) == 102  # the failed ::1 only
