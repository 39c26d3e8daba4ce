"""The one interface every transport implements: open, send to all destinations, close.

Transports move bytes and know nothing of packets; the runtime hands each received
datagram to the core unparsed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

#: ``(host, port, ...)`` as the socket reports it.
Address = tuple[Any, ...]
#: Called with each datagram; returns True when it was only discovery traffic (a hello,
#: a goodbye, a dropped datagram), which a transport may batch, and False for a channel
#: message, which it should keep delivering at once.
Receiver = Callable[[bytes, Address], bool]


class Transport(abc.ABC):
    """Carries datagrams between discovery instances."""

    #: Counts of send failures and the like, merged into ``Discovery.stats``.
    errors: dict[str, int]

    def __init__(self) -> None:
        self.errors = {}
        self._link_listener: Callable[[bool], None] | None = None
        self._error_listener: Callable[[str, str], None] | None = None

    def set_link_listener(self, listener: Callable[[bool], None] | None) -> None:
        """Called with ``False`` when the transport loses the cluster and ``True`` when it is back.

        Only broker transports (Redis) have such a notion; for UDP the link is always up.
        """
        self._link_listener = listener

    def set_error_listener(self, listener: Callable[[str, str], None] | None) -> None:
        """Called with ``(reason, detail)`` for each network error counted (the runtime rate-limits them)."""
        self._error_listener = listener

    def _link_changed(self, up: bool) -> None:
        if self._link_listener is not None:
            self._link_listener(up)

    @abc.abstractmethod
    async def open(self, receive: Receiver) -> None:
        """Start receiving; call ``receive(datagram, address)`` for each datagram.  Raise if it cannot."""

    @abc.abstractmethod
    def send(self, datagram: bytes) -> None:
        """Send to every destination; never blocks, never raises for network errors (counts them)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving and release resources; idempotent."""

    @property
    def local_address(self) -> Address | None:
        """Where this transport receives, once open (``None`` if it has no such notion)."""
        return None

    def _count_error(self, reason: str, count: int = 1) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + count

    def _report_error(self, reason: str, detail: str, count: int = 1) -> None:
        """Count a network error and pass it on (node-discover emits socket errors as ``error``)."""
        self._count_error(reason, count)
        if self._error_listener is not None:
            self._error_listener(reason, detail)
