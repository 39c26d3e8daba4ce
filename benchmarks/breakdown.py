"""Where the microseconds go: each step of receiving a channel message and a hello, timed alone.

Issue 18 asks to measure before changing: this prints the cost of each step of the two
receive paths that the ``channel`` and ``scale`` figures add up, in one process, warm
(the same datagrams again and again, so caches are hot: a real process between wake-ups
is colder and slower):

* a channel message (``{"t": ..., "n": ...}``, plaintext, a fresh ``seq`` each): reading
  it (``recvfrom`` on loopback, the socket filled beforehand), ``orjson.loads``,
  ``wire.decode`` (parse and envelope checks), the replay check, the ``Packet`` handed to
  handlers, ``DiscoveryCore.datagram_received`` as a whole, and the same plus the event
  emitter calling one handler;
* a hello from a pydiscover peer whose only change is its ``seq`` (1,000 peers in
  turn): ``wire.hello_key`` (its iid, body and seq, read without parsing), then
  ``datagram_received`` as a whole; and a hello that changed (parsed in full);
* the same seq-only hello as one node among 1,000 peers at 1 Hz meets it: in batches of
  20 after 20 ms of idleness (the ``read_coalesce`` pause), the first of a batch and the
  others apart.  The difference from the warm figure is the machine's, not the code's:
  whatever ran or slept in between has taken the caches;
* the machine alone: a fixed pure-Python loop (a few µs, nothing of pydiscover), warm and
  as the first thing run after 20 ms asleep: what this machine charges any code for
  waking, the share of the idle rows above that no change to pydiscover can remove;
* one event-loop wake-up: an asyncio reader woken for a single datagram, as at a low rate
  (CPU of the loop's thread per wake-up, the datagram's own handling included).
* the floor of any asyncio receiver: a bare reader (``recvfrom`` only, up to 64 per
  wake-up, as pydiscover's) under ``benchmarks.channel``'s blast (pydiscover's sender at
  20,000 messages/s, bursts every 0.5-1 ms), CPU of the loop's thread per message: compare
  it with node-discover's whole receive CPU per message in the ``channel`` figure; and the
  same reader's one-way latency (it parses each message for its stamp) under the
  ``channel`` benchmark's latency run, one message at a time: compare it with both
  implementations' p50 there.

Each step is the best of several rounds of many calls, so the figures are lower bounds of
what a busy machine sees; compare them with each other and with the end-to-end figures of
``channel`` and ``scale``.

    .venv/bin/python -m benchmarks.breakdown [--quick]

Loopback only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from benchmarks._harness import Figure, LineChild, cli, python_env
from benchmarks.channel import percentile
from pydiscover import wire
from pydiscover.core import DiscoveryCore
from pydiscover.events import SafeEmitter
from pydiscover.node import received_packet
from pydiscover.options import build_options
from pydiscover.security import ReplayGuard
from testbed.ports import free_udp_port

T = TypeVar("T")
NAME = "breakdown"
CHANNEL = "bench"
ADDR = ("127.0.0.1", 40000)
PEERS = 1_000
#: benchmarks.channel's rate for CPU per message.
CHANNEL_RATE = 20_000


def best_of(rounds: int, calls: int, step: Callable[[int], object]) -> float:
    """µs per call of ``step(i)`` for ``i`` in ``range(calls)``: the best of ``rounds`` rounds."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(calls):
            step(i)
        best = min(best, time.perf_counter() - t)
    return best / calls * 1e6


def best_over(objects: list[T], calls: int, step: Callable[[T, int], object]) -> float:
    """:func:`best_of` with a fresh object each round (state that a round changes: a core, a guard)."""
    return min(best_of(1, calls, functools.partial(step, obj)) for obj in objects)


def message(n: int) -> bytes:
    return orjson.dumps({"event": CHANNEL, "pid": "p-sender", "iid": "i-sender", "hostName": "bench",
                         "data": {"t": 1234.567891, "n": n}, "seq": n + 1})


def fresh_core() -> DiscoveryCore:
    core = DiscoveryCore(build_options(hostname="me"), pid="p-me", iid="i-me")
    core.start(0.0)
    core.join(CHANNEL)
    return core


def hello(i: int, seq: int, weight: float = 1.0) -> bytes:
    """A pydiscover hello as ``wire.encode`` writes it (``seq`` last)."""
    return wire.encode(wire.Envelope("hello", f"p{i}", f"i{i:04d}", "bench", {
        "isMaster": False, "isMasterEligible": True, "weight": weight, "address": "127.0.0.1"}, seq))


def channel_steps(rounds: int, calls: int) -> dict[str, float]:
    datagrams = [message(n) for n in range(calls)]
    out: dict[str, float] = {}
    # recvfrom: fill a socket with the round's datagrams, then time reading them.
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        best = float("inf")
        batch = min(calls, 2_000)  # what fits in the receive buffer
        for _ in range(rounds):
            for d in datagrams[:batch]:
                tx.sendto(d, rx.getsockname())
            t = time.perf_counter()
            for _ in range(batch):
                rx.recvfrom(65508)
            best = min(best, time.perf_counter() - t)
        out["recvfrom"] = best / batch * 1e6
    finally:
        rx.close()
        tx.close()
    out["orjson.loads"] = best_of(rounds, calls, lambda i: orjson.loads(datagrams[i]))
    out["wire.decode"] = best_of(rounds, calls, lambda i: wire.decode(datagrams[i]))
    out["replay check"] = best_over([ReplayGuard(60.0) for _ in range(rounds)], calls,
                                    lambda guard, i: guard.accept("i-sender", i + 1, 1.0))
    out["Packet for handlers"] = best_of(rounds, calls, lambda i: received_packet(
        CHANNEL, "p-sender", "i-sender", "bench", None, "127.0.0.1", 40000, i))
    out["datagram_received, whole"] = best_over([fresh_core() for _ in range(rounds)], calls,
                                                lambda core, i: core.datagram_received(0.001, datagrams[i], ADDR))
    emitter = SafeEmitter()  # the runtime's emitter
    got = [0]

    def handler(data: Any, packet: Any) -> None:
        got[0] += 1

    emitter.on(CHANNEL, handler)

    def received_and_emitted(core: DiscoveryCore, i: int) -> None:
        for action in core.datagram_received(0.001, datagrams[i], ADDR):
            emitter.emit(action.event, *action.args)  # type: ignore[union-attr]

    out["datagram_received + emit to one handler"] = best_over([fresh_core() for _ in range(rounds)], calls,
                                                               received_and_emitted)
    assert got[0] == rounds * calls, got  # every message reached the handler
    return out


def hello_steps(rounds: int, calls: int) -> dict[str, float]:
    out: dict[str, float] = {}
    core = fresh_core()
    for i in range(PEERS):
        core.datagram_received(0.001, hello(i, 1), ADDR)
    assert len(core.nodes) == PEERS
    seqs = max(1, calls // PEERS)
    # Unchanged but the seq: every peer in turn, seqs 2, 3, ...
    steady = [hello(i, 2 + s) for s in range(seqs * rounds) for i in range(PEERS)]
    out["wire.hello_key"] = best_of(rounds, len(steady) // rounds, lambda i: wire.hello_key(steady[i]))
    position = [0]

    def next_steady(_: int) -> None:
        core.datagram_received(0.002, steady[position[0]], ADDR)
        position[0] += 1

    out["datagram_received, seq-only hello"] = best_of(rounds, len(steady) // rounds, next_steady)
    assert core.dropped.total() == 0, core.dropped
    changed = [hello(i, 10_000 + s, weight=2.0 + s) for s in range(seqs * rounds) for i in range(PEERS)]
    position[0] = 0

    def next_changed(_: int) -> None:
        core.datagram_received(0.003, changed[position[0]], ADDR)
        position[0] += 1

    out["datagram_received, changed hello (parsed)"] = best_of(rounds, len(changed) // rounds, next_changed)
    # The hundreds of MB of datagrams above would be what the idle rows measure (paged out,
    # read back after each sleep: 40-90 µs a hello instead of 10-20): only the core stays.
    steady.clear()
    changed.clear()
    gc.collect()
    out.update(after_idle(core, 25 if rounds <= 3 else 100))
    return out


#: The 1 Hz pattern: 20 ms of idleness (``read_coalesce``), then the 20 hellos that gathered.
IDLE, BATCH = 0.02, 20


def after_idle(core: DiscoveryCore, batches: int) -> dict[str, float]:
    """Seq-only hellos in batches of :data:`BATCH`, each after :data:`IDLE` s asleep (µs each, means)."""
    seq, now = 1_000_000, 0.004
    for i in range(PEERS):  # the peers' bodies as hello() writes them (the step before changed them)
        core.datagram_received(now, hello(i, seq), ADDR)
    first = rest = 0.0
    clock = time.perf_counter
    for b in range(batches):
        if b % (PEERS // BATCH) == 0:
            seq, now = seq + 1, now + 0.01
        datagrams = [hello((b * BATCH + k) % PEERS, seq) for k in range(BATCH)]
        time.sleep(IDLE)
        for k, datagram in enumerate(datagrams):
            start = clock()
            core.datagram_received(now, datagram, ADDR)
            took = clock() - start
            if k:
                rest += took
            else:
                first += took
    assert core.dropped.total() == 0 and len(core.nodes) == PEERS, core.dropped
    return {"seq-only hello after 20 ms idle, first of a batch": first / batches * 1e6,
            "seq-only hello after 20 ms idle, the others": rest / (batches * (BATCH - 1)) * 1e6}


def fixed_work() -> int:
    """The machine step's loop: a few µs of pure Python, the same every time."""
    total = 0
    for i in range(200):
        total += i
    return total


def machine_step(samples: int) -> dict[str, float]:
    """Medians of :func:`fixed_work`: right after itself (warm), and first after :data:`IDLE` s asleep."""
    clock = time.perf_counter
    warm, first = [], []
    for _ in range(samples):
        time.sleep(IDLE)
        a = clock()
        fixed_work()
        b = clock()
        fixed_work()
        c = clock()
        first.append(b - a)
        warm.append(c - b)
    return {"a fixed pure-Python loop, warm": statistics.median(warm) * 1e6,
            "the same loop, first after 20 ms asleep": statistics.median(first) * 1e6}


SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
port, count, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
d = bytes(100)
start = time.monotonic()
for i in range(count):
    while time.monotonic() < start + i * gap:
        pass
    s.sendto(d, ("127.0.0.1", port))
"""


class BareReader:
    """A bare asyncio reader on 127.0.0.1: ``recvfrom`` only, up to 64 per wake-up (as pydiscover's), counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[], object] | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams = self.wake_ups = 0
        #: With a list: also the one-way latency of each channel message (``{"t": stamp}``), seconds.
        self.latencies: list[float] | None = None
        self._loop, self._on_wake = loop, on_wake
        loop.add_reader(self.sock.fileno(), self._ready)

    def _stamp(self, data: bytes) -> None:
        """The least a receiver must do to know a message's latency: parse it, read its stamp."""
        now = time.monotonic()
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # not ours: a stray datagram must not cost the rest of the batch
        payload = message.get("data") if isinstance(message, dict) else None
        if isinstance(payload, dict) and "t" in payload:  # not the sender's own hellos
            assert self.latencies is not None
            self.latencies.append(now - payload["t"])

    def _ready(self) -> None:
        self.wake_ups += 1
        for _ in range(64):
            try:
                data, _ = self.sock.recvfrom(65508)
            except BlockingIOError:
                break
            self.datagrams += 1
            if self.latencies is not None:
                self._stamp(data)
        if self._on_wake is not None:
            self._on_wake()

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def wakeup_step(count: int) -> dict[str, float]:
    """CPU of the loop's thread per wake-up for one datagram (a sender paced 1 ms apart)."""

    async def main() -> dict[str, float]:
        done = asyncio.Event()

        def all_read() -> None:
            if reader.datagrams >= count:
                done.set()

        reader = BareReader(asyncio.get_running_loop(), all_read)
        cpu = time.thread_time()
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(reader.port), str(count), "0.001"],
                                  env=python_env())
        try:
            await asyncio.wait_for(done.wait(), timeout=count * 0.001 + 30)
        finally:
            cpu = time.thread_time() - cpu
            reader.close()
            sender.wait(30)
        return {"event-loop wake-up for one datagram": cpu / reader.wake_ups * 1e6, "wake_ups": reader.wake_ups,
                "datagrams": reader.datagrams}

    return asyncio.run(main())


def bare_reader_floor(rate: int, seconds: float) -> dict[str, float]:
    """CPU per message of a bare asyncio reader (``recvfrom`` only, 64 per wake-up, like ours) under
    ``benchmarks.channel``'s blast: what any receiver on asyncio pays before doing anything.
    (The sender is a pydiscover node: its two hellos a second are read and counted too.)"""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        reader = BareReader(loop)
        sender = LineChild([sys.executable, "-m", "benchmarks.channel_peer", "--role", "send", "--port",
                            str(free_udp_port()), "--peer-port", str(reader.port)], python_env())
        try:
            await loop.run_in_executor(None, sender.ask, f"blast {rate} 0.5", 30)  # warm-up
            reader.datagrams = reader.wake_ups = 0
            cpu = time.thread_time()  # the loop's thread only: the sender's hand-over runs in another
            sent = await loop.run_in_executor(None, sender.ask, f"blast {rate} {seconds:g}", seconds * 3 + 15)
            await asyncio.sleep(0.2)  # the last ones in flight
            cpu = time.thread_time() - cpu
        finally:
            reader.close()
            sender.close()
        return {"bare asyncio reader, CPU per message under the channel blast": cpu / max(reader.datagrams, 1) * 1e6,
                "messages": reader.datagrams, "sent": sent["sent"], "wake_ups": reader.wake_ups, "rate": rate}

    return asyncio.run(main())


def bare_reader_latency(messages: int) -> dict[str, float]:
    """One-way latency of a bare asyncio reader (``recvfrom`` and ``orjson.loads`` only) for
    ``benchmarks.channel``'s latency run: pydiscover's sender, one message at a time at
    1,000/s, stamped with the shared monotonic clock.  Compare with both implementations'
    whole latency in the ``channel`` figure: what is left is the event loop's wake-up."""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        reader = BareReader(loop)
        reader.latencies = []
        sender = LineChild([sys.executable, "-m", "benchmarks.channel_peer", "--role", "send", "--port",
                            str(free_udp_port()), "--peer-port", str(reader.port)], python_env())
        try:
            await loop.run_in_executor(None, sender.ask, f"latency {min(messages, 300)} 2000", 30)  # warm-up
            await asyncio.sleep(0.2)
            reader.latencies = []
            sent = await loop.run_in_executor(None, sender.ask, f"latency {messages} 1000", messages / 1000 * 3 + 15)
            await asyncio.sleep(0.2)  # the last one in flight
        finally:
            reader.close()
            sender.close()
        lat = sorted(x * 1e6 for x in reader.latencies)
        return {"bare asyncio reader, one-way latency p50 (one at a time)": percentile(lat, 50) if lat else 0.0,
                "p99_us": percentile(lat, 99) if lat else 0.0,
                "messages": len(lat), "sent": sent["sent"]}

    return asyncio.run(main())


def run(quick: bool) -> list[Figure]:
    rounds, calls = (3, 20_000) if quick else (7, 100_000)
    steps: dict[str, dict[str, float]] = {
        "channel message": channel_steps(rounds, calls),
        "hello": hello_steps(rounds, calls),
    }
    machine_samples = 25 if quick else 100
    steps["machine"] = machine_step(machine_samples)
    wake = wakeup_step(1_000 if quick else 3_000)
    steps["wake-up"] = {k: v for k, v in wake.items() if k.startswith("event-loop")}
    floor = bare_reader_floor(CHANNEL_RATE, 0.5 if quick else 2.0)
    floor_latency = bare_reader_latency(300 if quick else 1_000)
    steps["floor"] = {k: v for k, v in [*floor.items(), *floor_latency.items()] if k.startswith("bare")}
    figures = []
    for path, timings in steps.items():
        for step, us in timings.items():
            how = {"median_of_samples": machine_samples} if path == "machine" else {"rounds": rounds, "calls": calls}
            figures.append(Figure(NAME, f"{path}: {step}", "µs", us, detail=how))
    figures[-3].detail = dict(wake)
    figures[-2].detail = floor
    figures[-1].detail = floor_latency
    return figures


if __name__ == "__main__":
    cli(run, __doc__)
