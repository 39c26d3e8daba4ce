"""Zero-configuration discovery, master election and messaging on a LAN.

A Python port of node-discover that speaks its wire format.  Start with
:class:`Discovery` (threads) or :class:`AsyncDiscovery` (asyncio).
"""

from __future__ import annotations

from .balancer import TaskBalancer, TaskError
from .discovery import AsyncDiscovery, Discovery
from .errors import BindError, PacketTooLarge, TransportUnavailable
from .node import Node, Packet
from .services import AsyncServiceDiscovery, ServiceDiscovery

__version__ = "0.1.0"

__all__ = [
    "AsyncDiscovery",
    "AsyncServiceDiscovery",
    "BindError",
    "Discovery",
    "Node",
    "Packet",
    "PacketTooLarge",
    "ServiceDiscovery",
    "TaskBalancer",
    "TaskError",
    "TransportUnavailable",
    "__version__",
]
