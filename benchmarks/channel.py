"""Channel messages between two processes on loopback: one-way latency and lossless throughput.

A sender and a receiver node (``benchmarks/channel_peer.py`` for pydiscover,
``benchmarks/js/channel_peer.js`` for node-discover 1.2.1), each bound to its own port on
127.0.0.1 and unicasting to the other, exchange messages ``{"t": stamp, "n": seq}`` on one
channel.  Each implementation talks to itself (pydiscover to pydiscover, node-discover to
node-discover).

* Latency: the sender sends ``MESSAGES`` messages one at a time, ``LATENCY_RATE`` per
  second, each stamped with CLOCK_MONOTONIC just before ``send``; the receiver's handler
  subtracts the stamp from its own CLOCK_MONOTONIC (same host, same system-wide clock:
  Python's ``time.monotonic`` and Node's ``process.hrtime``).  p50 and p99 of those
  deltas, in ``LATENCY_ROUNDS`` rounds alternating between the implementations (a fresh
  pair each), and the median of each over the rounds: one round's p50 moves by tens of
  microseconds with whatever else this machine runs.  pydiscover's sender drives an
  ``AsyncDiscovery`` on its own loop (like node-discover's single loop); the plain
  ``Discovery`` facade, whose ``send`` hands the message to the discovery thread, is
  measured too.
* Throughput: the sender sends at a fixed rate for ``BLAST_SECONDS`` (bursts every
  0.5-1 ms); the rate rises stepwise (``RATES``) while the receiver's handler gets every
  message; a rate that loses any gets up to ``ATTEMPTS`` tries in all (other processes
  share this machine, and the default 208 KB receive buffer holds only ~8 ms of messages at
  30,000/s, so one scheduling stall loses some), and the figure is the highest rate with
  none lost.  Each step also records CPU per message on both sides and the kernel's drop
  counter for the receiving socket.  It stops when the sender cannot
  keep up with the rate (reported as ``sender_bound``).

    .venv/bin/python -m benchmarks.channel [--quick]

Loopback only.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from benchmarks._harness import Figure, LineChild, cli, python_env
from testbed.node_discover import node_discover_available, node_env
from testbed.ports import free_udp_port

NAME = "channel"
LATENCY_RATE = 1_000.0
RATES = [5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 120_000, 160_000, 200_000]
#: Tries per rate: a rate counts once one blast at it loses nothing.
ATTEMPTS = 3
#: Latency rounds per implementation, alternating (the figure: the median round).
LATENCY_ROUNDS = 3
#: The blast rate whose CPU per message is reported (both implementations reach it).
CPU_RATE = 20_000
#: Goals (pydiscover).
LATENCY_GOAL_US = 300.0
THROUGHPUT_GOAL = 30_000.0


class Pair:
    """A receiver and a sender child of one implementation; ``close`` ends both."""

    def __init__(self, impl: str, api: str = "async") -> None:
        self.impl = impl
        recv_port, send_port = free_udp_port(), free_udp_port()
        while send_port == recv_port:
            send_port = free_udp_port()
        self.recv_port = recv_port
        self.tx_cpu = 0.0
        self.children: list[LineChild] = []
        try:
            self.rx = self._spawn("recv", recv_port, send_port, "async")
            self.tx = self._spawn("send", send_port, recv_port, api)
        except BaseException:
            self.close()
            raise

    def _spawn(self, role: str, port: int, peer: int, api: str) -> LineChild:
        common = ["--role", role, "--port", str(port), "--peer-port", str(peer)]
        if self.impl == "pydiscover":
            child = LineChild([sys.executable, "-m", "benchmarks.channel_peer", *common, "--api", api], python_env())
        else:
            child = LineChild(["node", "benchmarks/js/channel_peer.js", *common], node_env())
        self.children.append(child)
        if not child.first.get("ready"):
            raise RuntimeError(f"{self.impl} {role} did not start: {child.first}")
        return child

    def close(self) -> None:
        for child in self.children:
            try:
                child.close()
            except Exception:  # always try the next one
                if child.proc.poll() is None:
                    child.proc.kill()
                    child.proc.wait()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settled(self, expected: int, timeout: float = 3.0) -> dict[str, Any]:
        """The receiver's report once all ``expected`` arrived or the count stopped moving."""
        deadline = time.monotonic() + timeout
        last = self.rx.ask("report")
        moved = time.monotonic()
        while last["received"] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.rx.ask("report")
            if now["received"] != last["received"]:
                moved = time.monotonic()
            elif time.monotonic() - moved > 0.3:
                break
            last = now
        return last

    def blast(self, rate: float, seconds: float) -> dict[str, Any]:
        """One blast: how many were sent, and how many the receiver's handler got."""
        self.rx.ask("reset")
        rx_cpu = self.rx.ask("report")["cpu"]
        drops_before = kernel_drops(self.recv_port)
        sent = self.tx.ask(f"blast {rate:g} {seconds:g}", timeout=seconds * 3 + 15)
        got = self.settled(sent["sent"])
        tx_cpu, self.tx_cpu = sent["cpu"] - self.tx_cpu, sent["cpu"]
        drops_after = kernel_drops(self.recv_port)
        kernel = None if drops_before is None or drops_after is None else drops_after - drops_before
        return {
            "rate": rate,
            "sent": sent["sent"],
            "achieved": sent["sent"] / sent["seconds"] if sent["seconds"] else 0.0,
            "received": got["received"],
            "lost": sent["sent"] - got["received"],
            "kernel_drops": kernel,
            # CPU seconds (all threads) per message, each side, over the blast.
            "tx_cpu_per_msg_us": tx_cpu / sent["sent"] * 1e6 if sent["sent"] else None,
            "rx_cpu_per_msg_us": (got["cpu"] - rx_cpu) / got["received"] * 1e6 if got["received"] else None,
        }


def kernel_drops(port: int) -> int | None:
    """The receive-buffer drop counter of the UDP socket bound to ``port`` (Linux), or None."""
    try:
        with open("/proc/net/udp") as f:
            next(f)
            total = None
            for line in f:
                cols = line.split()
                if int(cols[1].split(":")[1], 16) == port:
                    total = (total or 0) + int(cols[-1])
            return total
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def latency(impl: str, messages: int, api: str = "async") -> dict[str, Any]:
    """One-way latency of ``messages`` messages sent one at a time at ``LATENCY_RATE``/s."""
    with Pair(impl, api) as pair:
        # Warm up (JIT, caches, first-packet paths), then measure on a fresh count.
        pair.tx.ask(f"latency {min(messages, 300)} {LATENCY_RATE * 2:g}", timeout=30)
        pair.settled(min(messages, 300))
        pair.rx.ask("reset")
        sent = pair.tx.ask(f"latency {messages} {LATENCY_RATE:g}", timeout=messages / LATENCY_RATE * 3 + 15)
        pair.settled(sent["sent"])
        report = pair.rx.ask("report lat")
    lat = sorted(x * 1e6 for x in report["lat"])
    if not lat:
        return {"impl": impl, "api": api, "sent": sent["sent"], "received": 0}
    return {
        "impl": impl,
        "api": api,
        "sent": sent["sent"],
        "received": report["received"],
        "p50_us": percentile(lat, 50),
        "p90_us": percentile(lat, 90),
        "p99_us": percentile(lat, 99),
        "max_us": lat[-1],
        "mean_us": statistics.fmean(lat),
    }


def latency_rounds(messages: int, rounds: int) -> dict[str, dict[str, Any]]:
    """``rounds`` latency runs per implementation, alternating; each figure the median over the rounds."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls()}
    for _ in range(rounds):
        for impl in runs:
            runs[impl].append(latency(impl, messages))
    out: dict[str, dict[str, Any]] = {}
    for impl, results in runs.items():
        done = [r for r in results if "p50_us" in r]
        out[impl] = {"impl": impl, "rounds": results}
        for key in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us"):
            if done:
                out[impl][key] = statistics.median(r[key] for r in done)
    return out


def throughput(impl: str, seconds: float, rates: list[int] = RATES) -> dict[str, Any]:
    """Raise the rate until ``ATTEMPTS`` blasts in a row lose messages, or the sender falls behind."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    stop = ""
    with Pair(impl) as pair:
        pair.blast(rates[0], 0.5)  # warm-up
        for rate in rates:
            for _ in range(ATTEMPTS):  # more tries: the machine is shared, a stall loses packets
                result = pair.blast(rate, seconds)
                steps.append(result)
                if not result["lost"] or result["achieved"] < 0.95 * rate:
                    break
            if result["achieved"] < 0.95 * rate:
                stop = "sender_bound"
                break
            if result["lost"]:
                stop = "loss"
                break
            best = result
        else:
            stop = "top_rate"
    return {"impl": impl, "rate": best["rate"] if best else 0.0, "stop": stop, "steps": steps}


def cpu_at(result: dict[str, Any], side: str, rate: int = CPU_RATE) -> float | None:
    """CPU per message on ``side`` ("tx"/"rx") in the least costly blast at ``rate`` (None if not reached)."""
    values = [s[f"{side}_cpu_per_msg_us"] for s in result["steps"] if s["rate"] == rate]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def impls() -> list[str]:
    return ["pydiscover", "node-discover"] if node_discover_available() else ["pydiscover"]


def run(quick: bool) -> list[Figure]:
    messages = 500 if quick else 1_000
    seconds = 1.0 if quick else 2.0
    lat = latency_rounds(messages, 1 if quick else LATENCY_ROUNDS)
    lat_sync = latency("pydiscover", messages, api="sync")
    thr = {impl: throughput(impl, seconds) for impl in impls()}
    py, js = lat["pydiscover"], lat.get("node-discover")
    figures = [
        Figure(
            NAME,
            "one-way latency p50",
            "µs",
            py.get("p50_us"),
            js.get("p50_us") if js else None,
            goal=f"< {LATENCY_GOAL_US:g} µs",
            met=py.get("p50_us") is not None and py["p50_us"] < LATENCY_GOAL_US,
            detail={"rate_per_s": LATENCY_RATE, "rounds": 1 if quick else LATENCY_ROUNDS, "results": lat},
        ),
        Figure(
            NAME,
            "one-way latency p99",
            "µs",
            py.get("p99_us"),
            js.get("p99_us") if js else None,
            detail={"rate_per_s": LATENCY_RATE},
        ),
        Figure(
            NAME,
            "one-way latency p50, sync Discovery sender",
            "µs",
            lat_sync.get("p50_us"),
            None,
            detail={"rate_per_s": LATENCY_RATE, "result": lat_sync},
        ),
    ]
    pt, jt = thr["pydiscover"], thr.get("node-discover")
    figures.append(
        Figure(
            NAME,
            "max msgs/s with no loss",
            "msgs/s",
            pt["rate"],
            jt["rate"] if jt else None,
            better="higher",
            goal=f">= {THROUGHPUT_GOAL:,.0f}",
            met=pt["rate"] >= THROUGHPUT_GOAL,
            detail={"blast_seconds": seconds, "rmem_default": rmem_default(), "results": thr},
        )
    )
    for side, who in (("rx", "receiver"), ("tx", "sender")):
        figures.append(
            Figure(
                NAME,
                f"{who} CPU per message at {CPU_RATE:,}/s",
                "µs",
                cpu_at(pt, side),
                cpu_at(jt, side) if jt else None,
                detail={"note": "process CPU time (all threads, user+system) over the blast / messages"},
            )
        )
    return figures


def rmem_default() -> int | None:
    try:
        with open("/proc/sys/net/core/rmem_default") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    for f in cli(run, __doc__, argv):
        if f.name == "max msgs/s with no loss":
            for impl, result in f.detail["results"].items():
                steps = ", ".join(f"{s['rate']:,.0f}:{s['received']}/{s['sent']}" for s in result["steps"])
                print(f"{impl}: stopped ({result['stop']}) after {steps}")


if __name__ == "__main__":
    main()
