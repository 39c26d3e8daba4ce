"""An in-memory broadcast domain for tests and examples: no sockets, same interface."""

from __future__ import annotations

import asyncio

from .base import Address, Receiver, Transport


class MemoryBus:
    """Every transport on one bus receives every datagram sent on it (itself included, like broadcast)."""

    def __init__(self) -> None:
        self._members: list[MemoryTransport] = []
        self._next_port = 10000

    def attach(self, member: MemoryTransport) -> Address:
        """Put ``member`` on the bus; returns its address (``("memory", port)``)."""
        self._members.append(member)
        self._next_port += 1
        return ("memory", self._next_port)

    def detach(self, member: MemoryTransport) -> None:
        """Take ``member`` off the bus (no error if it is not on it)."""
        if member in self._members:
            self._members.remove(member)

    def deliver(self, datagram: bytes, source: Address) -> None:
        """Hand ``datagram`` from ``source`` to every member, the sender included."""
        for member in list(self._members):
            member.arrive(datagram, source)


class MemoryTransport(Transport):
    """A transport on a :class:`MemoryBus`; delivery is asynchronous (next loop iteration)."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__()
        self._bus = bus
        self._receive: Receiver | None = None
        self._address: Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, receive: Receiver) -> None:
        self._loop = asyncio.get_running_loop()
        self._receive = receive
        self._address = self._bus.attach(self)

    def send(self, datagram: bytes) -> None:
        if self._address is None:
            self._count_error("not_open")
            return
        self._bus.deliver(bytes(datagram), self._address)

    def arrive(self, datagram: bytes, source: Address) -> None:
        """Called by the bus, from any thread: receive ``datagram`` on this transport's loop."""
        if self._loop is not None and self._receive is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver_now, datagram, source)

    def _deliver_now(self, datagram: bytes, source: Address) -> None:
        if self._receive is not None:
            self._receive(datagram, source)

    async def close(self) -> None:
        self._bus.detach(self)
        self._receive = None
        self._address = None

    @property
    def local_address(self) -> Address | None:
        return self._address
