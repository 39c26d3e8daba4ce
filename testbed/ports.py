"""Free ports on this host for tests and benchmarks that need their own (UDP and TCP)."""

from __future__ import annotations

import random
import socket


def free_udp_port() -> int:
    """A port nobody on this host has bound (UDP and TCP), for tests that need their own.

    The kernel picks a free port on 127.0.0.1; it is kept only if it can also be bound on
    the wildcard address without ``SO_REUSEADDR``, so no holder on any address shares it.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free UDP port")


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct free ports."""
    ports: list[int] = []
    for _ in range(count * 50):
        port = free_udp_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} distinct free UDP ports")


def free_tcp_port(low: int = 30000, high: int = 39999, attempts: int = 50) -> int:
    """A random loopback TCP port nobody listens on."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port in {low}-{high} after {attempts} tries")
