"""A flood of made-up instances against a default node: bounded memory, no false removal.

A default pydiscover node ``A`` (plaintext, ``max_nodes`` 4096) on loopback unicast with
one real peer ``B``, each in its own process (``benchmarks/flood_node.py``).  This process
sends ``A`` hellos from ``INSTANCES`` distinct made-up instances (node-discover's format,
one hello each) at ``RATE`` per second, paced every 0.5 ms.  Figures: ``A``'s resident
memory growth over the flood (peak of samples), its CPU over the flood, the share of the
flood it read, whether ``B`` was ever removed, and how soon a new real peer ``C``, started
as the flood ends, is in ``A``'s table.  (Issue 20's check: RSS +64 MB at most, ``B``
never removed, the drops counted, ``C`` seen within 1 s.)

pydiscover only: node-discover bounds nothing and tracks every instance it hears.

    .venv/bin/python -m benchmarks.flood [--quick]

Loopback only.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from typing import Any

import orjson

from benchmarks._harness import Figure, LineChild, cli, python_env
from testbed.ports import free_udp_ports

NAME = "flood"
INSTANCES = 200_000
RATE = 20_000.0
#: Issue 20's bounds.
RSS_GOAL_MB = 64.0
NEWCOMER_GOAL_S = 1.0
PACE = 0.0005


def node(port: int, peer: str, max_nodes: int | None = None) -> LineChild:
    argv = [sys.executable, "-m", "benchmarks.flood_node", "--port", str(port), "--peer", peer]
    return LineChild(argv + ([] if max_nodes is None else ["--max-nodes", str(max_nodes)]), python_env())


def made_up(count: int) -> list[bytes]:
    data = {"isMaster": False, "isMasterEligible": True, "weight": -1.0, "address": "127.0.0.1"}
    return [orjson.dumps({"event": "hello", "pid": str(uuid.uuid4()), "iid": str(uuid.uuid4()), "hostName": "fake",
                          "data": data}) for _ in range(count)]


def measure(instances: int = INSTANCES, rate: float = RATE, max_nodes: int | None = None) -> dict[str, Any]:
    """One flood; ``max_nodes`` for node ``A`` (default: the library's)."""
    a_port, b_port, c_port = free_udp_ports(3)
    a = node(a_port, f"127.0.0.1:{b_port}", max_nodes)
    b = node(b_port, f"127.0.0.1:{a_port}")
    c: LineChild | None = None
    try:
        a_id, b_id = a.first["id"], b.first["id"]
        a.ask(f"watch {b_id}")
        deadline = time.monotonic() + 10
        while b_id not in a.ask(f"mark {b_id}")["present"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the real peer never appeared in the node's table")
            time.sleep(0.02)
        flood = made_up(instances)
        before = a.ask("mark")
        peak = before["rss"]
        sent = 0
        start = time.perf_counter()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            next_sample = start + 0.5
            while sent < instances and time.perf_counter() - start < instances / rate * 3 + 5:  # bounded
                due = min(instances, int((time.perf_counter() - start) * rate) + 1)
                while sent < due:
                    out.sendto(flood[sent], ("127.0.0.1", a_port))
                    sent += 1
                if time.perf_counter() >= next_sample:
                    peak = max(peak, a.ask("mark")["rss"])
                    next_sample += 0.5
                time.sleep(PACE)
        seconds = time.perf_counter() - start
        after = a.ask("mark")
        peak = max(peak, after["rss"])
        c = node(c_port, f"127.0.0.1:{a_port}")
        started = time.monotonic()
        c_id, seen = c.first["id"], None
        while time.monotonic() - started < 10:
            if c_id in a.ask(f"mark {c_id}")["present"]:
                seen = time.monotonic() - started
                break
            time.sleep(0.005)
        end = a.ask(f"mark {b_id}")
        return {
            "instances": instances, "rate": rate, "sent": sent, "seconds": seconds,
            "read_share": (after["packets_in"] - before["packets_in"]) / sent if sent else 0.0,
            "rss_growth_mb": (peak - before["rss"]) / 1e6,
            "cpu_s": after["cpu"] - before["cpu"],
            "cpu_share_percent": (after["cpu"] - before["cpu"]) / seconds * 100,
            "table_after": after["nodes"], "table_full": after["table_full"],
            "real_peer_removed": b_id in end["removed"], "real_peer_present": b_id in end["present"],
            "newcomer_seen_s": seen, "node": a_id,
        }
    finally:
        for child in (a, b, c):
            if child is not None:
                child.close()


def run(quick: bool) -> list[Figure]:
    r = measure(INSTANCES // 4 if quick else INSTANCES)
    where = f"{r['instances']:,} made-up instances at {r['rate']:,.0f}/s"
    kept = not r["real_peer_removed"] and r["real_peer_present"]

    def fig(name: str, unit: str, value: Any, **kw: Any) -> Figure:
        return Figure(NAME, f"{name} ({where})", unit, value, None, detail=r, **kw)

    seen = r["newcomer_seen_s"]
    return [
        fig("resident memory growth", "MB", r["rss_growth_mb"], goal=f"<= {RSS_GOAL_MB:g} MB",
            met=r["rss_growth_mb"] <= RSS_GOAL_MB),
        fig("CPU while flooded", "% of a core", r["cpu_share_percent"]),
        fig("share of the flood read", "%", r["read_share"] * 100, better="higher"),
        fig("real peer removed", "times", 0 if kept else 1, goal="0", met=kept),
        fig("new real peer seen after the flood", "ms", None if seen is None else seen * 1000,
            goal=f"<= {NEWCOMER_GOAL_S * 1000:g} ms", met=seen is not None and seen <= NEWCOMER_GOAL_S),
    ]


if __name__ == "__main__":
    cli(run, __doc__)
