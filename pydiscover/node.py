"""The public record of one node, as every process sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Node:
    """A snapshot of one discovered instance (or of this one, as ``Discovery.me``).

    Frozen so a snapshot handed to another thread can never change under it; the
    core replaces the record when a newer hello arrives.  (No ``__slots__``: a hello
    that changes nothing but ``last_seen`` copies the instance dict, see :meth:`seen_at`.)
    """

    #: Instance id (node-discover's ``iid``): unique per Discovery object.
    id: str
    #: Process id (node-discover's ``pid``): shared by instances in one process.
    pid: str
    hostname: str
    #: Source address and port of the last hello (what to reply to).
    address: str
    port: int
    is_master: bool
    is_master_eligible: bool
    weight: float
    advertisement: Any = None
    #: When the last hello arrived, in the runtime clock's seconds (``time.monotonic()``).
    last_seen: float = 0.0
    #: A node-discover (Node.js) peer: no sequence numbers, no goodbye, strict-``>`` elections.
    legacy: bool = False
    #: With a coordinator (etcd): while master, the revision of its leader key, which only
    #: grows from one mastership to the next; hand it to the systems the master writes to.
    fencing_token: int | None = None

    @property
    def rank(self) -> tuple[float, int, str]:
        """Election order: weight, then node-discover peers above ours, then id.

        The id makes the order total, so two pydiscover nodes never tie.  node-discover
        compares weights with a strict ``>`` and would not yield to us on a tie, so we
        yield to it: a mixed cluster with equal weights still ends with one master.
        """
        return (self.weight, int(self.legacy), self.id)

    def seen_at(self, now: float) -> Node:
        """This record with ``last_seen = now``: the hot path of a hello that changed nothing.

        Copies the instance dict instead of running the frozen ``__init__`` (five times cheaper);
        the result equals ``dataclasses.replace(self, last_seen=now)``.
        """
        state = self.__dict__.copy()
        state["last_seen"] = now
        node = _new(Node)
        _set(node, "__dict__", state)
        return node


_new = object.__new__
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Packet:
    """A received channel message's envelope, passed to ``join`` handlers with its data."""

    event: str
    pid: str
    iid: str
    hostname: str
    data: Any
    address: str
    port: int
    #: The sender's sequence number (``None`` from node-discover peers).
    seq: int | None = None


_PACKET_SETTERS = tuple(Packet.__dict__[name].__set__ for name in Packet.__slots__)


def received_packet(
    event: str, pid: str, iid: str, hostname: str, data: Any, address: str, port: int, seq: int | None
) -> Packet:
    """``Packet(...)`` for the receive path: the frozen ``__init__`` sets each of the eight fields
    through ``object.__setattr__``; the slots' own setters take half the time (one per message)."""
    packet = _new(Packet)
    set_event, set_pid, set_iid, set_hostname, set_data, set_address, set_port, set_seq = _PACKET_SETTERS
    set_event(packet, event)
    set_pid(packet, pid)
    set_iid(packet, iid)
    set_hostname(packet, hostname)
    set_data(packet, data)
    set_address(packet, address)
    set_port(packet, port)
    set_seq(packet, seq)
    return packet
