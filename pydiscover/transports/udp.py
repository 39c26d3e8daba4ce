"""UDP transport: broadcast, IPv4/IPv6 multicast, or a unicast list, on one socket.

Destination precedence is node-discover's: unicast, else multicast, else broadcast.
The socket is bound with ``SO_REUSEADDR`` (like node-discover) so several processes on
one host share the port and all receive broadcast and multicast datagrams.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Sequence

from ..errors import BindError
from ..options import Endpoint
from .base import Address, Receiver, Transport

log = logging.getLogger("pydiscover.transports.udp")


def _is_v6(host: str) -> bool:
    return ipaddress.ip_address(host.split("%", 1)[0]).version == 6


def _v6_scope(interface: str | None) -> int:
    if interface is None:
        return 0
    if interface.isdigit():
        return int(interface)
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise ValueError(f"interface {interface!r}: no such network interface") from None


def _peer_address(addr: Address) -> Address:
    """``(host, port)`` as a user would write it: v4-mapped v6 back to v4, link-local with its zone."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        return (host[7:], port)
    if len(addr) >= 4 and addr[3] and "%" not in host:
        try:
            host = f"{host}%{socket.if_indextoname(addr[3])}"
        except OSError:
            host = f"{host}%{addr[3]}"
    return (host, port)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._owner._receive is not None:
            self._owner._receive(data, _peer_address(addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors and failed sends land here; the socket stays usable.
        self._owner._count_error("send_error")
        log.warning("UDP error: %s", exc)


class UdpTransport(Transport):
    """One UDP socket; ``send`` goes to every destination."""

    def __init__(
        self,
        *,
        address: str = "0.0.0.0",
        port: int,
        broadcast: str | None = None,
        multicast: str | None = None,
        multicast_ttl: int = 1,
        interface: str | None = None,
        unicast: Sequence[Endpoint] = (),
        reuse_addr: bool = True,
    ) -> None:
        super().__init__()
        self.address = address
        self.port = port
        self.broadcast = broadcast
        self.multicast = multicast
        self.multicast_ttl = multicast_ttl
        self.interface = interface
        self.reuse_addr = reuse_addr
        self._receive: Receiver | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol
        self._sock: socket.socket | None = None
        self._family = socket.AF_INET6 if self._needs_v6(unicast) else socket.AF_INET
        if self._family == socket.AF_INET6 and not _is_v6(address):
            if address != "0.0.0.0":
                raise ValueError(f"address {address!r} is IPv4 but a destination is IPv6")
            self.address = "::"  # dual-stack: v4 peers appear as ::ffff:a.b.c.d
        self._scope = _v6_scope(interface) if self._family == socket.AF_INET6 else 0
        self._destinations: list[Address] = []
        self.set_unicast(unicast) if unicast else self._set_group_destination()

    def _needs_v6(self, unicast: Sequence[Endpoint]) -> bool:
        if unicast:
            return _is_v6(self.address) or any(_is_v6(host) for host, _ in unicast)
        return _is_v6(self.multicast) if self.multicast else _is_v6(self.address)

    def _set_group_destination(self) -> None:
        target = self.multicast or self.broadcast
        if target is None:
            raise ValueError("one of broadcast, multicast or unicast is required")
        if self._family == socket.AF_INET6:
            self._destinations = [(target, self.port, 0, self._scope)]
        else:
            self._destinations = [(target, self.port)]

    @property
    def destinations(self) -> list[Address]:
        return list(self._destinations)

    def set_unicast(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the unicast destination list (takes effect for the next send)."""
        dests: list[Address] = []
        for host, port in endpoints:
            if self._family == socket.AF_INET6:
                if not _is_v6(host):
                    host = f"::ffff:{host}"
                base, _, zone = host.partition("%")
                scope = _v6_scope(zone) if zone else 0
                dests.append((base, port, 0, scope))
            else:
                if _is_v6(host):
                    raise ValueError(
                        f"unicast {host!r} is IPv6 but the socket is IPv4; include an IPv6 entry "
                        "at construction or bind an IPv6 address"
                    )
                dests.append((host, port))
        self._destinations = dests

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if self.reuse_addr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if sys.platform != "linux" and hasattr(socket, "SO_REUSEPORT"):
                    # BSD and macOS share a UDP port only with SO_REUSEPORT; Linux needs
                    # just SO_REUSEADDR, which is all node-discover sets (mixing works).
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self._family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((self.address, self.port))
            except OSError as exc:
                raise BindError(
                    exc.errno, f"cannot bind UDP {self.address}:{self.port}: {exc.strerror or exc}"
                ) from exc
            if self.multicast:
                self._join_group(sock)
            elif self.broadcast and self._family == socket.AF_INET:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _join_group(self, sock: socket.socket) -> None:
        group = self.multicast
        assert group is not None
        try:
            if self._family == socket.AF_INET6:
                mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", self._scope)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.multicast_ttl)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
                if self._scope:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._scope)
            else:
                local = socket.inet_aton(self.interface or "0.0.0.0")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + local)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.multicast_ttl)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                if self.interface:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot join multicast group {group} (interface {self.interface}): {exc.strerror}"
            ) from exc

    async def open(self, receive: Receiver) -> None:
        loop = asyncio.get_running_loop()
        sock = self._make_socket()
        self._receive = receive
        transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._protocol = protocol
        self._sock = sock
        log.debug("bound %s, sending to %s", sock.getsockname(), self._destinations)

    def send(self, datagram: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self._count_error("not_open")
            return
        for dest in self._destinations:
            try:
                self._transport.sendto(datagram, dest)
            except OSError as exc:
                self._count_error("send_error")
                log.warning("send to %s failed: %s", dest, exc)

    async def close(self) -> None:
        self._receive = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            # asyncio closes the socket a loop iteration later; wait, so a restart can re-bind.
            await asyncio.wait_for(asyncio.shield(self._protocol.closed), 5)
        self._sock = None

    @property
    def local_address(self) -> Address | None:
        return self._sock.getsockname() if self._sock is not None else None
