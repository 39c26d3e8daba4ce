"""A cluster that finds itself through etcd: no broadcast, no address list, on this host only.

    etcd --data-dir /tmp/etcd-demo --listen-client-urls http://127.0.0.1:2379 \\
         --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
    python examples/etcd_cluster.py --registry etcd://127.0.0.1:2379/demo

It starts ``--nodes`` nodes in this process, each bound to its own free port on
127.0.0.1 and configured with ``registry=`` only; prints the keys they registered,
the moment each sees all the others, and the master they agree on; then stops them
(each stop revokes its lease, so the keys go at once).  Run it twice at the same time
with the same URL and the two groups form one cluster.

Exit status: 0 when every node saw every other and a master was elected within
``--wait`` seconds, 1 when not,
2 when the registry cannot be reached or the etcd extra is missing
(``pip install pydiscover-lan[etcd]``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from pydiscover import Discovery, TransportUnavailable
from pydiscover.etcd import parse_etcd_url


def free_port() -> int:
    """A UDP port nobody uses on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default="etcd://127.0.0.1:2379/demo",
                        help="etcd URL with a key prefix (default etcd://127.0.0.1:2379/demo); loopback only")
    parser.add_argument("--nodes", type=int, default=3, help="nodes to start in this process (default 3)")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a full view (default 5)")
    args = parser.parse_args(argv)
    try:
        endpoints = parse_etcd_url(args.registry).endpoints
    except ValueError as exc:
        parser.error(str(exc))
    if any(host not in ("127.0.0.1", "localhost", "::1") for host, _ in endpoints):
        parser.error("this example runs on loopback only: give an etcd on 127.0.0.1")
    if not 1 <= args.nodes <= 20:
        parser.error("--nodes must be 1-20")

    nodes: list[Discovery] = []
    try:
        for _ in range(args.nodes):
            # Several nodes in one process: ignore_process=False lets them hear each other.
            nodes.append(Discovery(registry=args.registry, address="127.0.0.1", port=free_port(),
                                   hello_interval=0.5, ignore_process=False))
    except (TransportUnavailable, ImportError) as exc:
        print(f"etcd_cluster: {exc}", file=sys.stderr)
        for d in nodes:
            d.stop()
        return 2
    try:
        for d in nodes:
            print(f"registered {getattr(d.registry, 'key', '?')}")
        started = time.monotonic()
        deadline = started + args.wait
        seen_all: dict[str, float] = {}
        ids = {d.id for d in nodes}
        while len(seen_all) < len(nodes) and time.monotonic() < deadline:
            for d in nodes:
                if d.id not in seen_all and ids - {d.id} <= set(d.nodes):
                    seen_all[d.id] = time.monotonic() - started
                    print(f"node {d.id[:8]} (port {d.options.port}) sees the other {len(nodes) - 1} "
                          f"after {seen_all[d.id]:.3f} s")
            time.sleep(0.02)
        while not any(d.is_master for d in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)  # the election runs at the check interval (2 s by default)
        masters = [d.id[:8] for d in nodes if d.is_master]
        print(f"master: {', '.join(masters) or 'none yet'}")
        return 0 if len(seen_all) == len(nodes) and masters else 1
    finally:
        for d in nodes:
            d.stop()


if __name__ == "__main__":
    sys.exit(main())
