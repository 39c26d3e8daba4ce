"""The UDP transport's reader: batches per wake-up, and read coalescing for hello streams.

Loopback only.  Counts behaviour (every datagram once, in order; pauses only for
discovery traffic), never times it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import select
import socket
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
from conftest import async_eventually

from pydiscover import AsyncDiscovery
from pydiscover.transports.base import Address
from pydiscover.transports.udp import MIN_PAUSE, READ_BATCH, STREAM_SPAN, STREAM_WAKES, UdpTransport


async def stream(port: int, datagrams: list[bytes], bursts: int) -> None:
    """Send ``datagrams`` in ``bursts`` bursts about a millisecond apart."""
    per_burst = -(-len(datagrams) // bursts)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for start in range(0, len(datagrams), per_burst):
            for datagram in datagrams[start : start + per_burst]:
                out.sendto(datagram, ("127.0.0.1", port))
            await asyncio.sleep(0.001)


async def read_all(port: int, *, coalesce: float, bulk: bool | Callable[[bytes], bool],
                   bursts: int = 150, span: float = 0.0) -> tuple[list[bytes], int]:
    transport = UdpTransport(address="127.0.0.1", port=port, unicast=[("127.0.0.1", port)], read_coalesce=coalesce)
    transport.stream_gap = 1.0  # any two wake-ups count as a stream: no dependence on timing
    transport.stream_span = span
    got: list[bytes] = []
    pauses = 0
    pause = transport._pause_reading

    def counting_pause(sock: socket.socket) -> None:
        nonlocal pauses
        pauses += 1
        pause(sock)

    transport._pause_reading = counting_pause  # type: ignore[method-assign]

    def receive(data: bytes, addr: Address) -> bool:
        got.append(data)
        return bulk(data) if callable(bulk) else bulk

    await transport.open(receive)
    try:
        sent = [str(i).encode() for i in range(600)]
        await stream(port, sent, bursts=bursts)
        await async_eventually(lambda: len(got) == len(sent), what="every datagram")
        assert got == sent  # once each, in order
    finally:
        await transport.close()
    return got, pauses


async def test_a_stream_is_read_by_timer_without_putting_the_socket_back_in_the_selector(port: int) -> None:
    """Each batch of a stream used to cost an ``add_reader`` and a ``remove_reader`` (two ``epoll_ctl``)."""
    loop = asyncio.get_running_loop()
    registrations = 0
    resumes = 0
    add_reader = loop.add_reader

    def counting_add_reader(fd: int, callback: Callable[..., object], *args: object) -> None:
        nonlocal registrations
        registrations += 1
        add_reader(fd, callback, *args)

    transport = UdpTransport(address="127.0.0.1", port=port, unicast=[("127.0.0.1", port)], read_coalesce=0.004)
    transport.stream_gap, transport.stream_span = 1.0, 0.0
    resume = transport._resume_reading

    def counting_resume() -> None:
        nonlocal resumes
        resumes += 1
        resume()

    transport._resume_reading = counting_resume  # type: ignore[method-assign]
    got: list[bytes] = []
    loop.add_reader = counting_add_reader  # type: ignore[method-assign]
    try:
        await transport.open(lambda data, addr: got.append(data) is None)
        sent = [str(i).encode() for i in range(600)]
        await stream(port, sent, bursts=150)
        await async_eventually(lambda: len(got) == len(sent), what="every datagram")
    finally:
        del loop.add_reader
        await transport.close()
    assert got == sent
    assert resumes >= 5  # read by timer, batch after batch ...
    assert registrations <= 3  # ... with the socket out of the selector meanwhile (open, and a stream's end)


async def test_a_sparse_stream_of_discovery_traffic_is_read_in_coalesced_batches(port: int) -> None:
    _, pauses = await read_all(port, coalesce=0.004, bulk=True)  # 4 datagrams a millisecond
    assert pauses >= 1


async def test_a_burst_shorter_than_the_stream_span_is_read_at_once(port: int) -> None:
    """A newcomer's replies: a pause in the middle of them delayed its full view by ``read_coalesce``.

    (20 nodes converged in 28 ms instead of 13 in ``benchmarks/convergence.py``.)
    """
    _, pauses = await read_all(port, coalesce=0.004, bulk=True, span=60.0)
    assert pauses == 0


def test_draining_what_gathered_during_a_pause_keeps_the_stream_going() -> None:
    """After a pause, a few full batches drain the socket; the batch after them is the same stream.

    Before, the time spent draining looked like a gap between wake-ups: the count started
    again, and with STREAM_SPAN the node read every wake-up for a quarter second after
    each pause (a flood of 20,000 hellos/s cost 28 % of a core instead of 21 %).
    """
    clock = [10.0]

    class Clock:
        def time(self) -> float:
            return clock[0]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        transport = UdpTransport(address="127.0.0.1", port=0, unicast=[("127.0.0.1", 9)], read_coalesce=0.02)
        transport._sock, transport._receive = rx, lambda data, addr: True  # discovery traffic only
        transport._loop = Clock()  # type: ignore[assignment]
        transport._stream_wakes, transport._stream_since, transport._last_bulk_read = STREAM_WAKES, 0.0, 10.0
        for i in range(READ_BATCH + 16):
            tx.sendto(str(i).encode(), rx.getsockname())
        assert select.select([rx], [], [], 2.0)[0]  # loopback sends are queued at once; bounded anyway
        clock[0] = 10.001
        assert transport._read_batch(rx) is False  # a full batch: read again at once
        clock[0] = 10.0 + transport.stream_gap * 1.25  # more than a gap after the pause, less after that batch
        assert transport._read_batch(rx) is True  # the rest: still the stream, pause again


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@contextlib.contextmanager
def one_datagram_reads(messages: frozenset[int] = frozenset(),
                       room: float = math.inf) -> Iterator[tuple[FakeClock, Callable[[int], float]]]:
    """A transport whose reads are driven by hand: ``read(n)`` queues one datagram and reads it,
    ``n`` in ``messages`` standing for a channel message; returns how long reading pauses (0:
    it does not).  ``room``: the datagrams its receive buffer holds with room to spare."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        clock = FakeClock(100.0)
        transport = UdpTransport(address="127.0.0.1", port=0, unicast=[("127.0.0.1", 9)], read_coalesce=0.02)
        transport._sock, transport._receive = rx, lambda data, addr: int(data) not in messages
        transport._loop = clock  # type: ignore[assignment]
        transport._room = room

        def read(n: int) -> float:
            tx.sendto(str(n).encode(), rx.getsockname())
            assert select.select([rx], [], [], 2.0)[0]
            return transport._pause if transport._read_batch(rx) else 0.0

        yield clock, read


def test_a_stream_of_hellos_arriving_at_random_is_coalesced() -> None:
    """1,000 peers at 1 Hz send at random moments: one gap in seven is over 2 ms.  Such a gap
    restarts the count of quick wake-ups but not the stream's span (it did, and then reading
    never paused)."""
    rng = random.Random(7)
    with one_datagram_reads() as (clock, read):
        for n in range(2_000):  # two seconds at 1,000 a second, bounded
            clock.now += rng.expovariate(1_000.0)
            if read(n):
                break
        else:
            raise AssertionError("reading never paused")
    assert STREAM_SPAN <= clock.now - 100.0 < STREAM_SPAN + 0.2


@pytest.mark.parametrize(("room", "expected"), [(math.inf, 0.02), (1_000, 0.02), (20, 0.01), (8, 0.004), (1, 0.0)])
def test_a_pause_ends_before_the_receive_buffer_could_fill(room: float, expected: float) -> None:
    """A stock kernel's receive buffer holds about 320 hellos: a 20 ms pause at 20,000 a
    second lost a fifth of them (measured).  The pause is bounded by the room in the buffer
    at the stream's rate (here 2,000 a second, read one by one, then what gathered during
    each pause in one read), and skipped when that leaves under MIN_PAUSE."""
    rate = 2_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        clock = FakeClock(100.0)
        transport = UdpTransport(address="127.0.0.1", port=0, unicast=[("127.0.0.1", 9)], read_coalesce=0.02)
        transport._sock, transport._receive = rx, lambda data, addr: True
        transport._loop = clock  # type: ignore[assignment]
        transport._room = room
        pauses: list[float] = []
        for _ in range(int(2 * STREAM_SPAN * rate)):  # bounded: twice the span
            gathered = round(pauses[-1] * rate) if pauses and pauses[-1] else 1
            clock.now += gathered / rate
            for _ in range(gathered):
                tx.sendto(b"hello", rx.getsockname())
            assert select.select([rx], [], [], 2.0)[0]
            if pauses and pauses[-1]:
                transport._last_bulk_read = clock.now  # as _resume_reading does
            pauses.append(transport._pause if transport._read_batch(rx) else 0.0)
    taken = [p for p in pauses if p]
    if expected:
        assert taken and all(p == pytest.approx(expected, rel=0.05) for p in taken)
    else:
        assert taken == [] and room / rate < MIN_PAUSE


def test_a_channel_message_restarts_the_count_of_a_stream_but_not_its_span() -> None:
    paused_at = []
    with one_datagram_reads(frozenset({300})) as (clock, read):
        for n in range(320):
            clock.now += 0.001
            if read(n):
                paused_at.append(n)
    # Paused once the stream had lasted STREAM_SPAN; after the message (itself no discovery read,
    # so the next hello comes two reads after the last one: a gap), STREAM_WAKES quick reads on.
    assert paused_at[0] == int(STREAM_SPAN / 0.001)
    assert next(n for n in paused_at if n > 300) == 301 + STREAM_WAKES


async def test_a_dense_stream_is_read_at_once(port: int) -> None:
    """Pausing with dozens waiting per wake-up would overflow the socket buffer."""
    _, pauses = await read_all(port, coalesce=0.004, bulk=True, bursts=15)  # 40 datagrams a burst, read in one wake-up
    assert pauses == 0


async def test_channel_messages_never_pause_reading(port: int) -> None:
    _, pauses = await read_all(port, coalesce=0.004, bulk=False)
    assert pauses == 0


async def test_discovery_traffic_between_channel_messages_never_pauses_reading(port: int) -> None:
    """A request/response exchange (a task and our own echo, in turns) is no hello stream.

    Each wake-up that holds a channel message starts the count again: before, the echoes
    alone reached it, and from then on every task waited ``read_coalesce`` (20 ms by default).
    """
    _, pauses = await read_all(port, coalesce=0.004, bulk=lambda data: int(data) % 2 == 0, bursts=600)
    assert pauses == 0


async def test_coalescing_off_never_pauses(port: int) -> None:
    _, pauses = await read_all(port, coalesce=0.0, bulk=True)
    assert pauses == 0


def node_discover_hello(i: int) -> bytes:
    data = {"isMaster": False, "isMasterEligible": False, "weight": 0, "address": "127.0.0.1"}
    return orjson.dumps({"event": "hello", "pid": f"p{i}", "iid": f"i{i}", "hostName": "h", "data": data})


async def test_hellos_and_a_message_during_a_coalesced_stream_all_arrive(port: int) -> None:
    """200 peers x 5 hellos streaming in, one channel message in the middle: nothing lost."""
    messages: list[object] = []
    async with AsyncDiscovery(address="127.0.0.1", port=port, unicast=[f"127.0.0.1:{port + 1}"]) as d:
        d.join("chat", lambda data, packet: messages.append(data))
        hellos = [node_discover_hello(i) for i in range(200)] * 5
        message = orjson.dumps({"event": "chat", "pid": "x", "iid": str(uuid.uuid4()), "data": {"n": 1}})
        before = d.stats["packets_in"]
        await stream(port, [*hellos[:500], message, *hellos[500:]], bursts=50)
        await async_eventually(lambda: d.stats["packets_in"] - before == len(hellos) + 1, what="every datagram")
        assert len(d.nodes) == 200
        assert messages == [{"n": 1}]
