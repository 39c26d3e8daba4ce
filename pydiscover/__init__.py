"""Zero-configuration discovery, master election and messaging on a LAN.

A Python port of node-discover that speaks its wire format.  Start with
:class:`Discovery` (threads) or :class:`AsyncDiscovery` (asyncio).
"""

from __future__ import annotations

import logging

from .balancer import TaskBalancer, TaskError
from .discovery import AsyncDiscovery, Discovery
from .errors import BindError, DiscoveryError, PacketTooLarge, TransportError, TransportUnavailable
from .node import Node, Packet
from .services import AsyncServiceDiscovery, ServiceDiscovery

__version__ = "0.2.0"

# A library logs; the application decides where that goes.  Without this, Python's
# last-resort handler would print our warnings to stderr of programs that never asked.
logging.getLogger("pydiscover").addHandler(logging.NullHandler())

__all__ = [
    "AsyncDiscovery",
    "AsyncServiceDiscovery",
    "BindError",
    "Discovery",
    "DiscoveryError",
    "Node",
    "Packet",
    "PacketTooLarge",
    "ServiceDiscovery",
    "TaskBalancer",
    "TaskError",
    "TransportError",
    "TransportUnavailable",
    "__version__",
]
