"""Exceptions of the library, all under :class:`DiscoveryError`.

Remote input never raises: a bad datagram is dropped and counted.  These are for
local mistakes a caller can fix (an oversized payload, a port that cannot be bound)
and for network trouble reported through the ``error`` event.  Each also keeps the
builtin base it had, so ``except ValueError`` / ``except OSError`` still catch it.
"""

from __future__ import annotations

import errno


class DiscoveryError(Exception):
    """Base class of every exception pydiscover raises or reports on its own account."""


class PacketTooLarge(DiscoveryError, ValueError):
    """A channel message or advertisement would not fit in one datagram.

    UDP fragments above the path MTU and a lost fragment loses the whole packet, so
    node-discover's "send and hope" turns into silent loss.  We refuse at the call.
    """

    def __init__(self, what: str, size: int, budget: int) -> None:
        self.size = size
        self.budget = budget
        super().__init__(
            f"{what} encodes to {size} bytes, over the {budget}-byte datagram budget "
            f"(raise max_datagram if every link on the path carries it)"
        )


_BIND_HINTS = {
    errno.EADDRINUSE: "is another program using the port without SO_REUSEADDR? "
    "pydiscover and node-discover share a port only when every process sets it (reuse_addr=True)",
    errno.EADDRNOTAVAIL: "that address is not on this host: bind 0.0.0.0 (or ::) or one of its own addresses",
    errno.EACCES: "ports below 1024 need privileges: choose port >= 1024",
}


class BindError(DiscoveryError, OSError):
    """The UDP socket could not be bound; names the address and port, and what usually fixes it."""

    def __init__(self, code: int | None, address: str, port: int, reason: str) -> None:
        hint = _BIND_HINTS.get(code or 0)
        text = f"cannot bind UDP {address}:{port}: {reason}" + (f" ({hint})" if hint else "")
        super().__init__(code, text)
        self.address, self.port = address, port


class TransportUnavailable(DiscoveryError, ConnectionError):
    """A broker transport (Redis) could not be reached at ``start()``; names the server.

    Only at start: once running, a lost connection is retried with backoff, logged and
    counted, never raised into user code (it is reported through the ``error`` event).
    """


class TransportError(DiscoveryError, OSError):
    """Network trouble while running (a refused send, a lost broker connection).

    Never raised: handed to ``error`` event handlers, at most once per ``reason`` every
    few seconds (``suppressed`` says how many more happened meanwhile); every occurrence
    is also counted in ``stats["dropped"]`` under ``reason``.
    """

    def __init__(self, reason: str, detail: str, *, suppressed: int = 0) -> None:
        self.reason = reason
        self.suppressed = suppressed
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        super().__init__(f"{reason}: {detail}{more}")
