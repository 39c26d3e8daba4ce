"""Exceptions raised at the public API.

Remote input never raises: a bad datagram is dropped and counted.  These are for
local mistakes a caller can fix: an oversized payload, a port that cannot be bound.
"""

from __future__ import annotations


class PacketTooLarge(ValueError):
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


class BindError(OSError):
    """The UDP socket could not be bound; names the address and port that failed."""


class TransportUnavailable(ConnectionError):
    """A broker transport (Redis) could not be reached at ``start()``; names the server.

    Only at start: once running, a lost connection is retried with backoff, logged and
    counted, never raised into user code.
    """
