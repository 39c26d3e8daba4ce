"""CPU per received hello, and the highest hello rate a node absorbs without loss.

A blaster (this process) sends node-discover-format hellos from 1,000 fake instances,
round-robin at a fixed rate, to one receiver over loopback: a pydiscover node
(``benchmarks/hello_receiver.py``) or a node-discover 1.2.1 node
(``benchmarks/js/hello_receiver.js``), each run in its own process.  Both receive the same
datagrams.  The receiver reports its own CPU time (all threads) and the hellos it handled;
the figure is CPU seconds / hellos handled over the blast window (median of alternating
rounds), plus the share of the blast handled and the node-table size (the 1,000 fake
instances).  Modes:

* ``plain`` and ``legacy``: node-discover 1.2.1's own hellos (no ``seq``), plaintext and
  with its cipher: each instance repeats byte-identical datagrams, as node-discover does.
* ``ours`` (pydiscover only): pydiscover-format plaintext hellos, a fresh ``seq`` in each,
  so no two datagrams are equal: the cost of a pydiscover peer's hello.
* ``aead`` (pydiscover only; node-discover has no such mode): the same, sealed with
  AES-256-GCM, fresh nonce each.
* ``... + listener``: the pydiscover receiver also has a ``helloReceived`` handler (a
  counter), as node-discover's receiver always has: the cost a user with one pays.
* ``plain, ServiceDiscovery with 10 needs``: the receiver is a ``ServiceDiscovery`` that
  needs ten services, one of them the ``"fake"`` every peer advertises (1,000 providers),
  against plain tracking in alternating rounds of the same run (goal: at most 1.2 times).

Absorption: the rate is doubled from 25k/s until the receiver handles less than 99.9 % of a
blast, then the last good rate is reported (plain mode).

    .venv/bin/python -m benchmarks.hello_cpu [--quick]

Loopback only.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
import uuid
from typing import Any

import orjson

from benchmarks._harness import Figure, LineChild, cli, node_major, python_env
from pydiscover.security import AeadCodec, LegacyCodec
from testbed.node_discover import node_discover_available, node_env
from testbed.ports import free_udp_port

INSTANCES = 1_000
#: The blaster sleeps this long between sends (~2,000 wake-ups a second for either receiver).
PACE = 0.0005
KEY = "benchmark-secret"
NAME = "hello_cpu"


def fake_hellos(mode: str) -> list[bytes]:
    """One hello per fake instance as node-discover 1.2.1 sends it (no seq), sealed in ``legacy``.

    :class:`Blaster` adds each instance's next ``seq`` (and seals) in the ``ours`` and ``aead`` modes.
    """
    out = []
    legacy = LegacyCodec([KEY]) if mode == "legacy" else None
    for i in range(INSTANCES):
        envelope: dict[str, Any] = {
            "event": "hello",
            "pid": str(uuid.uuid4()),
            "iid": str(uuid.uuid4()),
            "hostName": f"blast-{i}",
            "data": {
                "isMaster": False,
                "isMasterEligible": True,
                "weight": -0.5 - i / 10_000,
                "address": "127.0.0.1",
                "advertisement": {"name": "fake", "n": i},
            },
        }
        raw = orjson.dumps(envelope)
        out.append(legacy.seal(raw, 0.0) if legacy else raw)
    return out


class Blaster:
    """Sends the fake instances' hellos round-robin at a fixed rate (paced every ~0.5 ms)."""

    def __init__(self, mode: str, port: int) -> None:
        self.mode = mode
        self.port = port
        self.hellos = fake_hellos("legacy" if mode == "legacy" else "plain")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._fresh = mode in ("ours", "aead")
        self._aead = AeadCodec([KEY]) if mode == "aead" else None
        self._parsed = [orjson.loads(raw) for raw in self.hellos] if self._fresh else []
        self._seqs = [0] * INSTANCES
        self._next = 0

    def _datagrams(self, count: int) -> list[bytes]:
        if not self._fresh:
            out = [self.hellos[(self._next + k) % INSTANCES] for k in range(count)]
        else:
            # As pydiscover peers send them: every packet carries its instance's next seq
            # (and, sealed, a fresh nonce), so no two are equal and replays are refused.
            now = time.time()
            out = []
            for k in range(count):
                instance = (self._next + k) % INSTANCES
                self._seqs[instance] += 1
                raw = orjson.dumps({**self._parsed[instance], "seq": self._seqs[instance]})
                out.append(self._aead.seal(raw, now) if self._aead else raw)
        self._next = (self._next + count) % INSTANCES
        return out

    def send(self, rate: float, seconds: float) -> int:
        """Send ``rate * seconds`` hellos evenly over ``seconds``; return how many were sent.

        Every datagram is built before the clock starts: building (and sealing) them on
        the way cost the blaster several µs each, on the receiver's 2-vCPU machine, for
        the pydiscover-format modes only.
        """
        total = int(rate * seconds)
        datagrams = self._datagrams(total)
        dest = ("127.0.0.1", self.port)
        sendto = self.sock.sendto
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds * 3 + 5  # bounded even on a starved machine
        while sent < total and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            for datagram in datagrams[sent:due]:
                sendto(datagram, dest)
            sent = max(sent, due)
            time.sleep(PACE)
        return sent

    def close(self) -> None:
        self.sock.close()


#: Extra command-line options for the pydiscover receiver (the scale benchmark's variants).
RECEIVER_OPTIONS: list[str] = []


def receiver(impl: str, mode: str, listener: bool = False, needs: int = 0) -> LineChild:
    port, sink = free_udp_port(), free_udp_port()
    keyed = mode in ("legacy", "aead")
    if impl == "pydiscover":
        argv = [sys.executable, "-m", "benchmarks.hello_receiver", "--port", str(port), "--sink-port", str(sink)]
        argv += RECEIVER_OPTIONS + (["--listener"] if listener else []) + (["--needs", str(needs)] if needs else [])
        if keyed:
            argv += ["--key", KEY, "--encryption", "node-discover" if mode == "legacy" else "aead"]
        child = LineChild(argv, python_env())
    else:
        argv = ["node", "benchmarks/js/hello_receiver.js", "--port", str(port), "--sink-port", str(sink)]
        if keyed:
            argv += ["--key", KEY]
        child = LineChild(argv, node_env())
    child.port = port  # type: ignore[attr-defined]
    return child


def measure(impl: str, mode: str, rate: float, seconds: float, listener: bool = False,
            needs: int = 0) -> dict[str, Any]:
    """One blast against a fresh receiver: CPU per hello, share handled, table size."""
    with receiver(impl, mode, listener, needs) as rx:
        blaster = Blaster(mode, rx.port)  # type: ignore[attr-defined]
        idle = rx.ask("mark")
        try:
            # Warm up: every fake instance once, then a second of the blast, so tables,
            # caches and JITs are in their steady state before the window opens.
            blaster.send(min(rate, 20_000), INSTANCES / min(rate, 20_000))
            blaster.send(rate, 1.0)
            time.sleep(0.3)
            before = rx.ask("mark")
            sent = blaster.send(rate, seconds)
            after = _settled(rx, before)
        finally:
            blaster.close()
    received = after["received"] - before["received"]
    cpu = after["cpu"] - before["cpu"]
    return {
        "impl": impl,
        "mode": mode,
        "rate": rate,
        "sent": sent,
        "received": received,
        "share": received / sent if sent else 0.0,
        "cpu_s": cpu,
        "cpu_per_hello_us": cpu / received * 1e6 if received else None,
        "nodes": after["nodes"],
        "providers": after.get("providers"),  # with needs: the peers the ServiceDiscovery counts as "fake"
        # Resident memory after the blast over the same process before any hello: the cost
        # of tracking the 1,000 instances (and of whatever the blast left allocated).
        "rss_over_idle_mb": (after["rss"] - idle["rss"]) / 1e6 if "rss" in idle else None,
    }


def _settled(rx: LineChild, before: dict[str, Any]) -> dict[str, Any]:
    """Mark once the receiver has stopped handling packets (bounded: 3 s)."""
    last = rx.ask("mark")
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = rx.ask("mark")
        if now["received"] == last["received"]:
            return last
        last = now
    return last


def impls() -> list[str]:
    return ["pydiscover", "node-discover"] if node_discover_available() else ["pydiscover"]


def median_run(impls: list[str], mode: str, rate: float, seconds: float, rounds: int,
               listener: bool = False, needs: int = 0) -> dict[str, dict[str, Any]]:
    """``rounds`` blasts per implementation, alternating, so both see the same machine; medians."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            runs[impl].append(measure(impl, mode, rate, seconds, listener, needs))
    out = {}
    for impl, results in runs.items():
        costs = [r["cpu_per_hello_us"] for r in results if r["cpu_per_hello_us"] is not None]
        memory = [r["rss_over_idle_mb"] for r in results if r.get("rss_over_idle_mb") is not None]
        out[impl] = {
            "cpu_per_hello_us": statistics.median(costs) if costs else None,
            "rss_over_idle_mb": statistics.median(memory) if memory else None,
            "share": min(r["share"] for r in results),
            "nodes": min(r["nodes"] for r in results),
            "rounds": results,
        }
    return out


def cpu_figures(quick: bool, rate: float = 10_000) -> list[Figure]:
    seconds = 2.0 if quick else 4.0
    rounds = 3
    legacy_ok = (node_major() or 0) < 22  # node-discover's createCipher is gone in Node 22
    figures = []
    for mode, listener in (("plain", False), ("legacy", False), ("ours", False), ("aead", False),
                           ("plain", True), ("legacy", True)):
        compared = [i for i in impls() if i == "pydiscover" or mode == "plain" or (mode == "legacy" and legacy_ok)]
        results = median_run(compared, mode, rate, seconds, rounds, listener)
        py = results["pydiscover"]
        js = results.get("node-discover")
        met = py["share"] >= 0.99 and py["nodes"] == INSTANCES
        if js is not None and py["cpu_per_hello_us"] and js["cpu_per_hello_us"]:
            met = met and py["cpu_per_hello_us"] <= js["cpu_per_hello_us"]
        goal = "<= node-discover, >= 99 % handled, 1,000 in table" if js else ">= 99 % handled, 1,000 in table"
        figures.append(
            Figure(
                NAME,
                f"CPU per received hello, {mode}" + (" + listener" if listener else ""),
                "µs",
                py["cpu_per_hello_us"],
                js["cpu_per_hello_us"] if js else None,
                goal=goal,
                met=met,
                detail={"rate": rate, "seconds": seconds, **results},
            )
        )
        if mode in ("plain", "ours") and not listener:
            js_mb = js["rss_over_idle_mb"] if js else None
            figures.append(
                Figure(
                    NAME,
                    f"memory to track {INSTANCES:,} peers over idle, {mode}",
                    "MB",
                    py["rss_over_idle_mb"],
                    js_mb,
                    goal="<= 4 MB",
                    met=py["rss_over_idle_mb"] is not None and py["rss_over_idle_mb"] <= 4.0,
                    detail={impl: [r["rss_over_idle_mb"] for r in v["rounds"]] for impl, v in results.items()},
                )
            )
    figures.append(services_figure(seconds, rounds, rate))
    return figures


#: The ServiceDiscovery row: this many needs, and its goal over plain tracking.
NEEDS = 10
SERVICES_GOAL = 1.2


def services_figure(seconds: float, rounds: int, rate: float) -> Figure:
    """A ``ServiceDiscovery`` needing ``NEEDS`` services among the 1,000 peers, against plain
    tracking measured in the same rounds (alternating), so both see the same machine."""
    plain: list[float] = []
    services: list[float] = []
    shares: list[float] = []
    for _ in range(rounds):
        plain.append(measure("pydiscover", "plain", rate, seconds)["cpu_per_hello_us"])
        r = measure("pydiscover", "plain", rate, seconds, needs=NEEDS)
        services.append(r["cpu_per_hello_us"])
        shares.append(r["share"] if r["nodes"] == INSTANCES else 0.0)
    ours, base = statistics.median(services), statistics.median(plain)
    return Figure(
        NAME,
        f"CPU per received hello, plain, ServiceDiscovery with {NEEDS} needs",
        "µs",
        ours,
        goal=f"<= {SERVICES_GOAL:g} x plain tracking in the same rounds ({base:.3g} µs), >= 99 % handled",
        met=ours <= SERVICES_GOAL * base and min(shares) >= 0.99,
        detail={"rate": rate, "seconds": seconds, "services": services, "plain": plain, "shares": shares,
                "over_plain": ours / base},
    )


def absorption(quick: bool, impl: str = "pydiscover", start: float = 25_000, limit: float = 400_000) -> dict[str, Any]:
    """Double the rate until less than 99.9 % of a blast is handled; report the last good rate."""
    seconds = 1.0 if quick else 3.0
    best: dict[str, Any] | None = None
    rate = start
    while rate <= limit:
        result = measure(impl, "plain", rate, seconds)
        achieved = result["sent"] / seconds
        if result["share"] < 0.999 or achieved < 0.95 * rate:
            break
        best = result
        rate *= 2
    if best is None:
        return {"rate": 0.0, "tried": rate}
    return best


def absorption_figures(quick: bool) -> list[Figure]:
    results = {impl: absorption(quick, impl) for impl in impls()}
    py = results["pydiscover"]
    js = results.get("node-discover")
    return [
        Figure(
            NAME,
            "max hellos/s absorbed with no loss, plain",
            "hellos/s",
            py["rate"],
            js["rate"] if js else None,
            better="higher",
            goal=">= 100,000",
            met=py["rate"] >= 100_000,
            detail=results,
        )
    ]


def run(quick: bool) -> list[Figure]:
    return cpu_figures(quick) + absorption_figures(quick)


if __name__ == "__main__":
    cli(run, __doc__)
