"""The validated settings the core runs on, and the constants they default to.

Pure data, importable by the protocol layer: validating what users give (names to
resolve, hints for mistakes) is :mod:`pydiscover.options`' job, one layer up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .security import Codec, PlainCodec
from .wire import DEFAULT_MAX_DATAGRAM

DEFAULT_PORT = 12345
DEFAULT_BROADCAST = "255.255.255.255"
#: The cluster name on a broker transport when neither the option nor the URL names one.
DEFAULT_NAMESPACE = "default"
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")

Endpoint = tuple[str, int]
Encryption = Literal["aead", "node-discover"]


def check_namespace(value: Any, where: str = "namespace") -> str:
    """A cluster name for a broker transport: 1-128 of ``A-Z a-z 0-9 . _ : / -``."""
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__}")
    if not _NAMESPACE_RE.fullmatch(value):
        raise ValueError(f"{where} must be 1-128 characters from A-Z, a-z, 0-9 and . _ : / -, got {value!r}")
    return value


@dataclass(frozen=True)
class Options:
    """Validated settings.  Times are seconds (node-discover uses milliseconds)."""

    hello_interval: float = 0.5
    check_interval: float = 2.0
    node_timeout: float = 3.25
    master_timeout: float = 3.25
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    broadcast: str | None = None
    multicast: str | None = None
    multicast_ttl: int = 1
    interface: str | None = None
    unicast: tuple[Endpoint, ...] = ()
    #: Send to every peer heard from, not only to ``unicast`` (resolved: on in unicast mode
    #: unless set; see :class:`~pydiscover.discovery.AsyncDiscovery`).
    learn_peers: bool = False
    masters_required: int = 1
    weight: float = 0.0
    client: bool = False
    reuse_addr: bool = True
    ignore_process: bool = True
    ignore_instance: bool = True
    hostname: str = ""
    advertisement: Any = None
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    #: Seals and opens datagrams (plaintext, AEAD or node-discover's cipher) for ``key``:
    #: built once from ``key`` and ``encryption`` and never changed (a codec is immutable).
    #: A core starts with it and then owns the one in use (``DiscoveryCore.set_codec``).
    codec: Codec = field(default_factory=PlainCodec, repr=False, compare=False)
    #: Seconds a sealed packet's timestamp may differ from our clock (0: no time check).
    replay_window: float = 30.0
    #: UDP: while a fast stream of only discovery traffic arrives (hundreds of nodes), read
    #: it in batches this many seconds apart (0: read every datagram at once); see
    #: :class:`~pydiscover.transports.udp.UdpTransport`.
    read_coalesce: float = 0.02
    #: Instances the node table holds at most; hellos from new ones beyond it are dropped
    #: (``table_full``), and every per-instance structure is sized from it.
    max_nodes: int = 4096
    #: The cluster's name on a broker transport (Redis); ``None`` when unset.  After a
    #: Discovery is built on Redis it holds the namespace in effect (option, URL or default).
    namespace: str | None = None
