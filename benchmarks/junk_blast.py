"""Throw random and mutated datagrams at a live keyed node on loopback, then prove it still works.

    python -m benchmarks.junk_blast --count 1000000

Half the datagrams are random bytes, half are captured genuine packets with bits
flipped, truncated or extended.  The blaster runs in another process so the node's
own loop has a core to itself.  Prints the node's drop counters by reason, how many
datagrams the kernel dropped before the node could read them, and how long a new
peer then takes to be discovered.  Loopback only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import sys
import time
from typing import Any

from pydiscover import Discovery
from testbed.ports import free_udp_port

BROADCAST = "127.255.255.255"


def blast(port: int, count: int, samples: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for i in range(count):
            if i % 2 or not samples:
                datagram = os.urandom(rng.randrange(0, 600))
            else:
                mutated = bytearray(rng.choice(samples))
                for _ in range(rng.randrange(1, 4)):
                    mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
                cut = rng.randrange(len(mutated) + 1)
                datagram = bytes(mutated[:cut]) + os.urandom(rng.randrange(0, 8)) + bytes(mutated[cut:])
            sock.sendto(datagram, ("127.0.0.1", port))
            if i % 2000 == 1999:
                time.sleep(0.001)  # a steady flood the kernel can mostly deliver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams to send (default 1,000,000)")
    parser.add_argument("--key", default="blast-key", help="the cluster key (AEAD)")
    parser.add_argument("--encryption", default="aead", choices=["aead", "node-discover", "none"])
    args = parser.parse_args()
    if not 0 < args.count <= 10_000_000:
        parser.error("--count must be between 1 and 10,000,000")
    port = free_udp_port()
    key = None if args.encryption == "none" else args.key
    encryption = None if args.encryption == "none" else args.encryption
    opts: dict[str, Any] = {"port": port, "broadcast": BROADCAST, "key": key, "encryption": encryption,
            "hello_interval": 0.5, "node_timeout": 1.5, "check_interval": 1.0, "ignore_process": False}
    node = Discovery(weight=1, **opts)
    # Genuine packets to mutate: a second node's hellos, captured like an eavesdropper would.
    capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    capture.bind(("0.0.0.0", port))
    capture.settimeout(1)
    other = Discovery(weight=2, **opts)
    samples = [capture.recv(65535) for _ in range(6)]
    capture.close()
    other.stop()
    before = node.stats
    started = time.monotonic()
    blaster = multiprocessing.get_context("spawn").Process(target=blast, args=(port, args.count, samples, 1))
    blaster.start()
    blaster.join()
    sent_for = time.monotonic() - started
    deadline = time.monotonic() + 30
    last = -1
    while time.monotonic() < deadline:  # wait for the node to drain what the kernel kept
        now = node.stats["packets_in"]
        if now == last:
            break
        last = now
        time.sleep(0.5)
    after = node.stats
    received = after["packets_in"] - before["packets_in"]
    dropped = {k: v - before["dropped"].get(k, 0) for k, v in after["dropped"].items()}
    print(f"sent {args.count:,} datagrams in {sent_for:.1f} s ({args.count / sent_for:,.0f}/s), "
          f"encryption={args.encryption}")
    print(f"the node read {received:,}; the kernel dropped {args.count - received:,} (receive buffer full)")
    for reason, count in sorted(dropped.items(), key=lambda item: -item[1]):
        if count:
            print(f"  dropped {reason:<16} {count:>10,}")
    t0 = time.monotonic()
    newcomer = Discovery(weight=3, **opts)
    try:
        while newcomer.me.id not in node.nodes and time.monotonic() - t0 < 5:
            time.sleep(0.001)
        seen = newcomer.me.id in node.nodes
        print(f"new peer discovered after the blast: {seen} ({(time.monotonic() - t0) * 1000:.1f} ms); "
              f"node still sees {len(node.nodes)} node(s), is_master={node.is_master}")
    finally:
        newcomer.stop()
        node.stop()
    sys.exit(0 if seen else 1)


if __name__ == "__main__":
    main()
