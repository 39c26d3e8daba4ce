"""UDP transport: broadcast, IPv4/IPv6 multicast, or a unicast list, on one socket.

Destination precedence is node-discover's: unicast, else multicast, else broadcast.
Unicast destinations can be changed at run time and added next to a broadcast or
multicast group (:meth:`UdpTransport.set_destinations`): peers behind a router.
The socket is bound with ``SO_REUSEADDR`` (like node-discover) so several processes on
one host share the port and all receive broadcast and multicast datagrams.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import struct
import sys
from collections import deque
from collections.abc import Sequence

from ..config import Endpoint, Options
from ..errors import BindError
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


#: Datagrams read per wake-up: amortizes the poll under load, then lets timers and other callbacks run.
READ_BATCH = 64
#: Read coalescing only follows wake-ups that found at most this many datagrams: a sparse
#: stream, where the wake-up costs more than the datagrams.  A dense one is read at once,
#: or the socket buffer would overflow during the pause.
COALESCE_BELOW = 32
#: ... and that came this soon after the previous wake-up that found only discovery
#: traffic: more than ~500 wake-ups a second (e.g. 1,000 peers at 1 Hz).  Smaller
#: clusters never coalesce, so their channel messages never wait.
STREAM_GAP = 0.002
#: ... for this many wake-ups in a row ...
STREAM_WAKES = 8
#: ... and for this long, with no silence over :data:`STREAM_BREAK`: a newcomer's burst of
#: replies (spread over 3 ms plus 0.5 ms per member, at most a quarter hello interval: 13 ms
#: for 20 nodes, 125 ms by default at most) is read at once, or a pause in the middle of it
#: would delay the newcomer's full view by ``read_coalesce``.  The count above restarts at
#: every gap over :data:`STREAM_GAP` (hellos of many peers arrive at random: one gap in
#: seven is over 2 ms at 1,000 a second) and at every channel message; the span does not.
STREAM_SPAN = 0.25
#: A silence this long ends a stream (and its span).
STREAM_BREAK = 10 * STREAM_GAP
#: Receive buffer asked of the kernel (it caps this at net.core.rmem_max): room for bursts.
RCVBUF = 4 << 20
#: What one small datagram takes of the receive buffer, for the coalescing pause's bound: its
#: payload and the kernel's bookkeeping (about 1.3 KB for a 250-byte hello on Linux), rounded up.
QUEUED_COST = 2048
#: A pause shorter than this saves no wake-up worth having: read at once instead.
MIN_PAUSE = 0.001
#: Datagrams held while the kernel's send buffer is full; past this, sends are dropped and counted.
SEND_BACKLOG = 1024
#: Receive buffer: one byte over the largest UDP/IPv4 payload, so nothing is silently truncated.
_RECV_SIZE = 65508


class UdpTransport(Transport):
    """One UDP socket; ``send`` goes to every destination.

    Reading: up to :data:`READ_BATCH` datagrams per wake-up.  With ``read_coalesce`` > 0,
    when a wake-up found only discovery traffic, at most :data:`COALESCE_BELOW` datagrams,
    and came less than :data:`STREAM_GAP` after the previous such one, :data:`STREAM_WAKES`
    times in a row and for :data:`STREAM_SPAN` seconds (a sparse but steady stream: a
    cluster of many hundreds of nodes, not the burst of replies a newcomer gets), reading
    pauses for ``read_coalesce`` seconds (less when at the stream's rate half the receive
    buffer the kernel granted would fill sooner: a stock Linux caps it at 208 KiB, about
    320 hellos) so the next wake-up finds many datagrams; while the
    stream lasts, it is read by timer, with the socket out of the selector.  On a VM a wake-up can cost ten
    times the handling of a hello, so this cuts a big cluster's CPU by about half or
    more.  A batch holding a channel message never pauses and starts the count again
    (a request/response exchange is no stream), and smaller clusters never reach the
    stream rate; a message that arrives during a pause waits at most
    ``read_coalesce``.
    """

    supports_destinations = True

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
        read_coalesce: float = Options.read_coalesce,
    ) -> None:
        super().__init__()
        #: See the class docstring; 0 reads every datagram as soon as it arrives.
        self.read_coalesce = read_coalesce
        self.stream_gap = STREAM_GAP
        self.stream_span = STREAM_SPAN
        self.stream_break = STREAM_BREAK
        self._last_bulk_read = -math.inf
        self._stream_wakes = 0
        self._stream_since = math.inf  # no stream yet
        # Datagrams of the stream read since _counted_since: its rate bounds the pause.
        self._counted = 0
        self._counted_since = math.inf
        #: Datagrams the receive buffer holds with room to spare (half of what the kernel granted; set on open).
        self._room = math.inf
        self._pause = self.read_coalesce
        self._resume: asyncio.TimerHandle | None = None
        self.address = address
        self.port = port
        self.broadcast = broadcast
        self.multicast = multicast
        self.multicast_ttl = multicast_ttl
        self.interface = interface
        self.reuse_addr = reuse_addr
        self._receive: Receiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._backlog: deque[tuple[bytes, Address]] = deque()
        #: Unicast mode: a list was given, or neither broadcast nor multicast (a node that
        #: knows nobody yet and is told its destinations later, or learns them).
        self.unicast_mode = bool(unicast) or (broadcast is None and multicast is None)
        self._family = socket.AF_INET6 if self._needs_v6(unicast) else socket.AF_INET
        if self._family == socket.AF_INET6 and not _is_v6(address):
            if address != "0.0.0.0":
                raise ValueError(f"address {address!r} is IPv4 but a destination is IPv6")
            self.address = "::"  # dual-stack: v4 peers appear as ::ffff:a.b.c.d
        self._scope = _v6_scope(interface) if self._family == socket.AF_INET6 else 0
        #: The broadcast or multicast destination (none in unicast mode), then the unicast ones.
        self._group: list[Address] = []
        self._group_endpoints: tuple[Endpoint, ...] = ()
        self._unicast: tuple[Endpoint, ...] = ()
        self._destinations: list[Address] = []
        #: The socket address of each unicast destination now: a change parses only new endpoints.
        self._parsed: dict[Endpoint, Address] = {}
        if not self.unicast_mode:
            self._set_group_destination()
        self.set_destinations(unicast)

    def _needs_v6(self, unicast: Sequence[Endpoint]) -> bool:
        if self.unicast_mode:
            return _is_v6(self.address) or any(_is_v6(host) for host, _ in unicast)
        return _is_v6(self.multicast) if self.multicast else _is_v6(self.address)

    def _set_group_destination(self) -> None:
        target = self.multicast or self.broadcast
        assert target is not None
        self._group = [self._address_of(target, self.port, self._scope)]
        self._group_endpoints = ((target, self.port),)

    def _address_of(self, host: str, port: int, scope: int | None = None) -> Address:
        """``(host, port)`` as this socket's family sends to it; ``ValueError`` if it cannot."""
        if self._family == socket.AF_INET6:
            if not _is_v6(host):
                host = f"::ffff:{host}"
            base, _, zone = host.partition("%")
            return (base, port, 0, scope if scope is not None else (_v6_scope(zone) if zone else 0))
        if _is_v6(host):
            raise ValueError(
                f"destination {host!r} is IPv6 but the socket is IPv4; include an IPv6 entry "
                "at construction or bind an IPv6 address (address='::')"
            )
        return (host, port)

    @property
    def destinations(self) -> tuple[Endpoint, ...]:
        """Every ``(host, port)`` a send goes to now: the broadcast or multicast group, then the unicast ones."""
        return self._group_endpoints + self._unicast

    def set_destinations(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the unicast destinations (next to the group, if any), from the next send on.

        Duplicates (the same socket address written twice, or the group itself) are sent
        to once.  All are checked before any is used: on ``ValueError`` nothing changes.
        Endpoints already destinations are not parsed again (a learning node changes its
        list one peer at a time).
        """
        cached = self._parsed
        parsed: dict[Endpoint, Address] = {}
        seen = {address: None for address in self._group}
        kept: list[Endpoint] = []
        for host, port in endpoints:
            endpoint = (host, port)
            address = cached.get(endpoint)
            if address is None:
                address = parsed.get(endpoint) or self._address_of(*endpoint)
            parsed[endpoint] = address
            if address not in seen:
                seen[address] = None
                kept.append(endpoint)
        self._parsed = parsed
        self._destinations = list(seen)
        self._unicast = tuple(kept)

    def set_unicast(self, endpoints: Sequence[Endpoint]) -> None:
        """The old name of :meth:`set_destinations`."""
        self.set_destinations(endpoints)

    def send_to(self, datagram: bytes, endpoint: Endpoint) -> None:
        """Send ``datagram`` to ``endpoint`` only (a reply to one peer); counts errors like :meth:`send`."""
        sock = self._sock
        if sock is None:
            self._count_error("not_open")
            return
        self._send_one(sock, datagram, self._parsed.get(endpoint) or self._address_of(*endpoint))

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
                raise BindError(exc.errno, self.address, self.port, exc.strerror or str(exc)) from exc
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            except OSError:
                log.debug("could not enlarge the receive buffer; keeping the system default")
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
        self._loop = loop
        self._sock = sock
        # The kernel caps the buffer at net.core.rmem_max (208 KiB on a stock Linux, then
        # doubled for its bookkeeping): a pause must end before what gathers can overflow it.
        self._room = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 // QUEUED_COST
        # Our own reader rather than asyncio's datagram transport: that one reads one
        # datagram per poll, which costs more than handling the datagram itself.
        loop.add_reader(sock.fileno(), self._read_ready)
        log.debug("bound %s, sending to %s", sock.getsockname(), self._destinations)

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is not None and self._read_batch(sock):
            self._pause_reading(sock)

    def _read_batch(self, sock: socket.socket) -> bool:
        """Read up to :data:`READ_BATCH` datagrams; ``True``: a stream of hellos, pause reading."""
        receive = self._receive
        if receive is None:
            return False
        v4 = self._family == socket.AF_INET
        handled = 0
        bulk_only = True
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # Linux reports an ICMP error for an earlier send (port unreachable) here.
                self._report_error("send_error", f"UDP error reported for an earlier send: {exc}")
                log.debug("UDP error: %s", exc)
                continue
            handled += 1
            if not receive(data, addr if v4 else _peer_address(addr)):
                bulk_only = False
            if self._sock is None:  # closed by a handler
                return False
        else:
            # A full batch: more is waiting, read again at once.  Draining what gathered
            # during a pause takes a few of these; it is the stream going on, not a gap
            # that would start the count (and STREAM_SPAN) again.
            if bulk_only and self._loop is not None:
                self._stream_goes_on(self._loop.time())
                self._counted += handled
            else:
                self._stream_wakes = 0
            return False
        if not bulk_only:
            self._stream_wakes = 0  # channel traffic: no pure stream of hellos, whose wake-ups a pause would save
        elif 0 < handled <= COALESCE_BELOW and self.read_coalesce and self._loop is not None:
            now = self._loop.time()
            if self._stream_goes_on(now):
                self._stream_wakes += 1
                self._counted += handled
                if self._stream_wakes >= STREAM_WAKES and now - self._stream_since >= self.stream_span:
                    return self._pause_for(now) > 0
            else:
                self._stream_wakes = 0
        return False

    def _stream_goes_on(self, now: float) -> bool:
        """A read of discovery traffic only at ``now``: ``True`` if it came within ``stream_gap``
        of the previous one; a silence over ``stream_break`` starts the stream's span again."""
        gap = now - self._last_bulk_read
        self._last_bulk_read = now
        if gap > self.stream_break:
            self._stream_since = self._counted_since = now
            self._counted = 0
        return gap < self.stream_gap

    def _pause_for(self, now: float) -> float:
        """How long to let the stream gather: ``read_coalesce``, or less if at the stream's
        rate since the last decision the receive buffer would be half full sooner (a stock
        kernel's buffer holds about 320 hellos: 16 ms at 20,000 a second); 0: do not pause."""
        elapsed, counted = now - self._counted_since, self._counted
        if elapsed > 0 and counted:  # else no new measure: the last decision stands
            pause = min(self.read_coalesce, self._room * elapsed / counted)  # room / rate
            self._pause = pause if pause >= MIN_PAUSE else 0.0
            self._counted, self._counted_since = 0, now
        return self._pause

    def _pause_reading(self, sock: socket.socket) -> None:
        """A stream of hellos: let them gather for ``_pause`` (:meth:`_pause_for`) and read them in one wake-up."""
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        self._resume = self._loop.call_later(self._pause, self._resume_reading)

    def _resume_reading(self) -> None:
        """Read what gathered; while it is still the same stream, the next read is by timer again.

        The socket stays out of the selector for the whole stream: re-adding it for every
        batch cost two ``epoll_ctl`` calls and the selector's bookkeeping each time.
        """
        self._resume = None
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        # Still the same stream: if this batch is again only a few hellos, pause again
        # rather than waking for the very next one.
        self._last_bulk_read = loop.time()
        if self._read_batch(sock):
            self._resume = loop.call_later(self._pause, self._resume_reading)
        elif self._sock is sock:  # not closed by a handler
            loop.add_reader(sock.fileno(), self._read_ready)

    def send(self, datagram: bytes) -> None:
        sock = self._sock
        if sock is None:
            self._count_error("not_open")
            return
        for dest in self._destinations:
            self._send_one(sock, datagram, dest)

    def _send_one(self, sock: socket.socket, datagram: bytes, dest: Address) -> None:
        """Write now, or queue behind a backlog (order kept) or a full kernel buffer."""
        if self._backlog:
            self._hold(datagram, dest)
            return
        try:
            sock.sendto(datagram, dest)
        except (BlockingIOError, InterruptedError):
            self._hold(datagram, dest)
        except OSError as exc:
            self._send_failed(dest, exc)

    def _send_failed(self, dest: Address, exc: OSError) -> None:
        self._count_and_log("send_error", f"send to {dest[0]}:{dest[1]} failed: {exc}")

    def _hold(self, datagram: bytes, dest: Address) -> None:
        """Queue a send the kernel refused for now; written when the socket is writable again."""
        if len(self._backlog) >= SEND_BACKLOG:
            self._count_and_log("send_backlog_full",
                                f"send buffer full and {SEND_BACKLOG} datagrams queued: dropped one to {dest}")
            return
        self._backlog.append((datagram, dest))
        if len(self._backlog) == 1 and self._loop is not None and self._sock is not None:
            self._loop.add_writer(self._sock.fileno(), self._write_ready)

    def _write_ready(self) -> None:
        sock = self._sock
        while sock is not None and self._backlog:
            datagram, dest = self._backlog[0]
            try:
                sock.sendto(datagram, dest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._send_failed(dest, exc)
            self._backlog.popleft()
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())

    async def close(self) -> None:
        self._receive = None
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
        if self._backlog:
            self.errors["unsent_at_close"] = self.errors.get("unsent_at_close", 0) + len(self._backlog)
            self._backlog.clear()
        sock.close()

    @property
    def local_address(self) -> Address | None:
        return self._sock.getsockname() if self._sock is not None else None
