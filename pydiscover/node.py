"""The public record of one node, as every process sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Node:
    """A snapshot of one discovered instance (or of this one, as ``Discovery.me``).

    Frozen so a snapshot handed to another thread can never change under it; the
    core replaces the record when a newer hello arrives.
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

    @property
    def rank(self) -> tuple[float, str]:
        """Election order: weight first, the id breaks ties so no two nodes ever compare equal."""
        return (self.weight, self.id)


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
