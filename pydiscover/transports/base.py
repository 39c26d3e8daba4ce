"""The one interface every transport implements: open, send to all destinations, close.

Transports move bytes and know nothing of packets; the runtime hands each received
datagram to the core unparsed.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import Endpoint

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
        #: Seconds a channel message may wait for the link before peers would refuse it (``None``: no limit).
        self.message_lifetime: float | None = None
        self._warn_from: dict[str, int] = {}  # reason -> the count at which the next WARNING is due

    def set_link_listener(self, listener: Callable[[bool], None] | None) -> None:
        """Called with ``False`` when the transport loses the cluster and ``True`` when it is back.

        Only broker transports (Redis) have such a notion; for UDP the link is always up.
        """
        self._link_listener = listener

    def set_error_listener(self, listener: Callable[[str, str], None] | None) -> None:
        """Called with ``(reason, detail)`` for each network error counted (the runtime rate-limits them)."""
        self._error_listener = listener

    def set_message_lifetime(self, seconds: float | None) -> None:
        """How long a channel message may wait for the link: sealed peers refuse a packet older
        than their replay window, so a transport that holds messages through an outage (Redis)
        drops, and counts as ``unsent``, one that waited longer.  The runtime sets it."""
        self.message_lifetime = seconds

    def _link_changed(self, up: bool) -> None:
        if self._link_listener is not None:
            self._link_listener(up)

    @abc.abstractmethod
    async def open(self, receive: Receiver) -> None:
        """Start receiving; call ``receive(datagram, address)`` for each datagram.  Raise if it cannot."""

    @abc.abstractmethod
    def send(self, datagram: bytes) -> None:
        """Send to every destination; never blocks, never raises for network errors (counts them)."""

    def send_message(self, datagram: bytes) -> bool:
        """Send a channel message (not a hello); ``False`` when it is known not to go out.

        The runtime returns this from ``send()``.  A transport that can lose its link
        (Redis) holds messages through an outage, in order and as they are (peers drop a
        second copy by its seq), or refuses them here, counting each one never sent as
        ``unsent``; the default sends like :meth:`send` and says ``True``.
        """
        self.send(datagram)
        return True

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving and release resources; idempotent."""

    @property
    def local_address(self) -> Address | None:
        """Where this transport receives, once open (``None`` if it has no such notion)."""
        return None

    # -------------------------------------------------- optional: destinations
    #: Whether :meth:`set_destinations` and :meth:`send_to` work.  Only a transport that
    #: addresses its peers (UDP) has destinations; a bus or a broker (memory, Redis)
    #: reaches every member by itself, so it keeps these defaults: the runtime then
    #: refuses ``add_destination`` with a clear error and learns no peers.
    supports_destinations: bool = False

    @property
    def destinations(self) -> tuple[Endpoint, ...]:
        """Every ``(host, port)`` that :meth:`send` writes to now (empty: the transport reaches all by itself)."""
        return ()

    def set_destinations(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the ``(host, port)`` unicast destinations :meth:`send` writes to, from the next send on.

        A broadcast or multicast destination stays: these go next to it.  Raise
        ``ValueError`` for an endpoint the transport cannot reach (e.g. IPv6 on an IPv4
        socket) and change nothing then.  Optional: the default raises ``NotImplementedError``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no destinations to change: it reaches every member of its cluster by itself"
        )

    def send_to(self, datagram: bytes, endpoint: Endpoint) -> None:
        """Send ``datagram`` to ``endpoint`` only; never raises for network errors.

        Optional, like :meth:`set_destinations` (the runtime answers one peer with it).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot send to one endpoint")

    def _count_error(self, reason: str, count: int = 1) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + count

    def _report_error(self, reason: str, detail: str, count: int = 1) -> None:
        """Count a network error and pass it on (node-discover emits socket errors as ``error``)."""
        self._count_error(reason, count)
        if self._error_listener is not None:
            self._error_listener(reason, detail)

    def _count_and_log(self, reason: str, message: str) -> None:
        """:meth:`_report_error`, and a WARNING at the 1st, 10th, 100th, ... of ``reason`` (DEBUG
        otherwise): an error that repeats with every hello (a firewall refusing our sends) must
        be said, and must not fill the log."""
        self._report_error(reason, message)
        count = self.errors[reason]
        warn = count >= self._warn_from.get(reason, 1)  # (>=: counted elsewhere too, a power may be skipped)
        if warn:
            self._warn_from[reason] = 10 ** len(str(count))
        log = logging.getLogger(type(self).__module__)  # the transport's own logger (pydiscover.transports.udp)
        log.log(logging.WARNING if warn else logging.DEBUG, "%s (%s: %d so far)", message, reason, count)
