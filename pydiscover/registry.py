"""The one interface every registry implements: register this node, tell who else is registered.

A registry (etcd now) is where nodes find each other's UDP endpoints when broadcast and
multicast do not reach.  It carries registrations only: hellos, the election and
channels stay on UDP, so a registry outage changes no membership.  The runtime
(:class:`~pydiscover.discovery.AsyncDiscovery`) opens it before its first hello, and
keeps its UDP destinations equal to the registered members (next to the destinations
given and the peers learned).

:class:`Registration` is what one node writes (JSON), :func:`decode_registration` reads
one back strictly, :class:`MemoryRegistry` is an in-process registry for tests and
simulations.
"""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import orjson

from .config import Endpoint
from .peerbook import endpoint_from_wire

#: Called with every registered node but this one (instance id -> registration) after each change.
MembersListener = Callable[[Mapping[str, "Registration"]], None]


@dataclass(frozen=True)
class Registration:
    """What a node writes about itself: where its UDP packets are received, and who it is."""

    iid: str
    address: str
    port: int
    hostname: str
    weight: float
    pid: str

    @property
    def endpoint(self) -> Endpoint:
        return (self.address, self.port)

    def to_json(self) -> bytes:
        """The value stored: everything but the instance id, which the key holds."""
        fields = asdict(self)
        del fields["iid"]
        return orjson.dumps(fields)


def decode_registration(iid: str, value: bytes | str) -> Registration | None:
    """A registration read from the registry, or ``None`` if it is not one (written by someone else).

    The address must be a plain unicast IP literal (the rules of endpoints learned from
    the wire: never a name to resolve, a zone, multicast, broadcast or unspecified).
    """
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not iid:
        return None
    endpoint = endpoint_from_wire([data.get("address"), data.get("port")])
    hostname, weight, pid = data.get("hostname", ""), data.get("weight", 0.0), data.get("pid", "")
    if (
        endpoint is None
        or not isinstance(hostname, str)
        or isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not isinstance(pid, (str, int))
    ):
        return None
    return Registration(iid, endpoint[0], endpoint[1], hostname, float(weight), str(pid))


class Registry(abc.ABC):
    """Registers one node and reports the others; one instance per node, opened once at a time."""

    #: The registry's address for messages and logs (any password hidden).
    display_url: str

    def __init__(self) -> None:
        #: Counts of failures and the like (``reconnects``, ``invalid_registrations``...),
        #: merged into ``Discovery.stats["registry"]``.
        self.errors: dict[str, int] = {}
        self._error_listener: Callable[[str, str], None] | None = None

    def set_error_listener(self, listener: Callable[[str, str], None] | None) -> None:
        """Called with ``(reason, detail)`` for each failure counted (the runtime rate-limits them)."""
        self._error_listener = listener

    def _count(self, reason: str, detail: str = "") -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        if self._error_listener is not None:
            self._error_listener(reason, detail)

    @abc.abstractmethod
    async def open(self, me: Registration, listener: MembersListener) -> Mapping[str, Registration]:
        """Register ``me``, and return the other members registered now; from then on call
        ``listener`` with all of them after each change.

        Raises :class:`~pydiscover.errors.TransportUnavailable` naming the registry if it
        cannot be reached; then nothing is left running or registered.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Withdraw the registration at once and stop watching; idempotent, never raises."""

    @property
    @abc.abstractmethod
    def members(self) -> Mapping[str, Registration]:
        """The other members as last known (kept through an outage)."""

    @property
    def connected(self) -> bool:
        """Whether the registry is reachable now (as far as this node knows)."""
        return True

    def adopt_timing(self, node_timeout: float, hello_interval: float) -> None:  # noqa: B027 - optional
        """The node's timing, given when the node is built (a lease's TTL follows ``node_timeout``)."""

    def route_address(self) -> str | None:
        """This host's address on the route to the registry (sending nothing), or ``None``."""
        return None

    def advertised_address(self, bound: str) -> str:
        """The address others send to: the one bound, or on a wildcard bind the one on the route to the registry."""
        ip = ipaddress.ip_address(bound.split("%", 1)[0])
        if not ip.is_unspecified:
            return bound
        routed = self.route_address()
        if routed is None:
            raise ValueError(
                f"registry {self.display_url}: bound to {bound}, and no route to the registry to tell "
                "which address peers reach this node at; bind a specific address (option address)"
            )
        return routed


class MemoryRegistry(Registry):
    """An in-process registry: every instance made from one :class:`MemoryRegistry.Store` sees the others.

    For tests and simulations; :meth:`Store.outage` makes it unreachable (nothing
    changes for the members), :meth:`Store.restore` brings it back.
    """

    class Store:
        """The shared table: instance id -> registration, and who watches it."""

        def __init__(self) -> None:
            self.entries: dict[str, Registration] = {}
            self.watchers: list[MemoryRegistry] = []
            self.reachable = True

        def registry(self) -> MemoryRegistry:
            return MemoryRegistry(self)

        def outage(self) -> None:
            self.reachable = False

        def restore(self) -> None:
            self.reachable = True
            for watcher in list(self.watchers):
                watcher.refresh()

        def changed(self) -> None:
            """Tell every watcher (unless unreachable: then they keep what they knew)."""
            if self.reachable:
                for watcher in list(self.watchers):
                    watcher.refresh()

    def __init__(self, store: MemoryRegistry.Store | None = None) -> None:
        super().__init__()
        self.store = store if store is not None else MemoryRegistry.Store()
        self.display_url = "memory://"
        self._me: Registration | None = None
        self._listener: MembersListener | None = None
        self._members: dict[str, Registration] = {}

    async def open(self, me: Registration, listener: MembersListener) -> Mapping[str, Registration]:
        from .errors import TransportUnavailable

        if not self.store.reachable:
            raise TransportUnavailable(f"registry {self.display_url} unreachable")
        self._me, self._listener = me, listener
        self.store.entries[me.iid] = me
        self.store.watchers.append(self)
        self._members = self._others()
        self.store.changed()
        return dict(self._members)

    async def close(self) -> None:
        if self._me is None:
            return
        if self in self.store.watchers:
            self.store.watchers.remove(self)
        if self.store.reachable:
            self.store.entries.pop(self._me.iid, None)
            self.store.changed()
        self._me = self._listener = None

    @property
    def members(self) -> Mapping[str, Registration]:
        return dict(self._members)

    @property
    def connected(self) -> bool:
        return self.store.reachable

    def route_address(self) -> str:
        return "127.0.0.1"  # one process: every node is on this host

    def _others(self) -> dict[str, Registration]:
        me = self._me.iid if self._me is not None else None
        return {iid: r for iid, r in self.store.entries.items() if iid != me}

    def refresh(self) -> None:
        """Read the store again; tell the listener if the others changed."""
        others = self._others()
        if others != self._members and self._listener is not None:
            self._members = others
            self._listener(dict(others))


__all__ = ["MembersListener", "MemoryRegistry", "Registration", "Registry", "decode_registration"]
