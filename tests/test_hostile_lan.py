"""A hostile LAN: a flood of made-up instances against a bounded node table, on real sockets.

Loopback only: unicast to 127.0.0.1.  The flood is bounded in count and time.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import orjson
from conftest import eventually

from pydiscover import Discovery
from testbed.ports import free_udp_ports

QUICK: dict[str, Any] = {"hello_interval": 0.2, "check_interval": 0.2, "node_timeout": 0.8, "ignore_process": False}


def made_up_hello(n: int) -> bytes:
    """A node-discover-format hello from an instance nobody runs."""
    data = {"isMaster": False, "isMasterEligible": True, "weight": -1.0 - n, "address": "127.0.0.1"}
    return orjson.dumps({"event": "hello", "pid": str(uuid.uuid4()), "iid": str(uuid.uuid4()), "hostName": "fake",
                         "data": data})


def test_a_flood_of_made_up_instances_fills_the_table_no_further_and_a_real_newcomer_joins_after() -> None:
    a_port, b_port, c_port = free_udp_ports(3)
    removed: list[str] = []
    with (
        Discovery(address="127.0.0.1", port=a_port, unicast=[f"127.0.0.1:{b_port}"], max_nodes=50, **QUICK) as a,
        Discovery(address="127.0.0.1", port=b_port, unicast=[f"127.0.0.1:{a_port}"], **QUICK) as b,
    ):
        a.on("removed", lambda node: removed.append(node.id))
        eventually(lambda: b.me.id in a.nodes, 3, "the real peer in a's table")
        flood = [made_up_hello(n) for n in range(3_000)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for n, datagram in enumerate(flood):
                out.sendto(datagram, ("127.0.0.1", a_port))
                if n % 100 == 99:
                    time.sleep(0.002)  # pacing the sender (~30,000/s), so the kernel's buffer drops none
        eventually(lambda: sum(a.stats["dropped"].values()) + len(a.nodes) >= 2_500, 5, "the flood read")
        assert len(a.nodes) <= 50
        assert a.stats["dropped"]["table_full"] >= 2_500 - 50
        assert b.me.id in a.nodes and b.me.id not in removed  # the member was never evicted
        # Once the made-up instances time out, a real newcomer finds room.
        with Discovery(address="127.0.0.1", port=c_port, unicast=[f"127.0.0.1:{a_port}"], **QUICK) as c:
            eventually(lambda: c.me.id in a.nodes, 1 + QUICK["node_timeout"], "the newcomer in a's table")
        assert b.me.id not in removed
