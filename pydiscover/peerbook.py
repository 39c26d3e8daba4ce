"""Where hellos go: the destinations given, the peers learned, the endpoints being tried.

A pure state machine of the core's shape: every input is a method taking ``now`` (the
runtime's monotonic clock, never read here) and returning a list of actions,
:class:`SendTo` (a message on :data:`PEERS_CHANNEL` for one endpoint) and
:class:`DestinationsChanged` (the full list the transport sends to from now on); it next
wants :meth:`PeerBook.tick` at :meth:`PeerBook.next_deadline`.  The runtime
(:class:`~pydiscover.discovery.AsyncDiscovery`) feeds it the core's ``added``,
``removed`` and ``nodeUpdated`` events and the messages on :data:`PEERS_CHANNEL`, and
carries the actions out.

Learning (``learn_peers``): every node added is a destination until it is removed, so a
node that names one seed reaches whoever answers it.  That alone connects each node with
its seeds only; to join the others, a node asks each configured destination it hears
from for its members' endpoints (one message on :data:`PEERS_CHANNEL`) and says hello to
each for one ``node_timeout`` (*pending*).  They add it, learn it and answer; then it
learns them.  The question is asked again (:data:`ASK_TRIES` in all, one hello interval
apart) until an answer comes, so a lost datagram, or a seed that had not heard our hello
yet when the question came, costs one interval, not the cluster.  A seed whose packets
come from another address than the one configured (a host with several addresses, NAT,
a name that resolves elsewhere) is not recognised by its endpoint: while a configured
destination has no member at it and no answer has come, a node asks every node that
finds it by itself (one it was not sending to).  Every node answers (learning or not),
also with an empty list, but only a member, only at the endpoint its hellos come from,
and at most once per :data:`ANSWER_INTERVAL` (once per ``node_timeout`` unless the
question was authenticated).  With AES-GCM the answer cannot be aimed at a third party;
without it a member may be a forged address, hence the slower rate.  Nothing is added
to the wire format: node-discover peers keep working (they send only to their own
list, and ignore the channel).

With a key, the core adds a node (emits ``added``) only for a packet that opened with
the key ring, and delivers a channel message only then: with ``encryption="aead"`` that
proves a key holder sent it (AES-GCM authenticates), so spoofed plaintext hellos are
never learned.  node-discover's cipher is unauthenticated: a packet must still decrypt
to a JSON object under the key, which a stranger cannot produce at will.

Not to be confused with :mod:`pydiscover.peers`, the core's table of live nodes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .config import Endpoint

log = logging.getLogger("pydiscover.peerbook")

#: Peers learned from their hellos (``learn_peers``) at most; more are counted
#: (``stats["not_learned"]``) and logged once, so spoofed hellos cannot grow the list.
MAX_LEARNED = 1024
#: Endpoints a seed named that have not answered yet, at most (each is tried for one ``node_timeout``).
MAX_PENDING = 256
#: The runtime's own channel: a node asks the peers it was configured with for the
#: endpoints of their members, and says hello to each.  node-discover peers ignore it
#: (a channel they did not join); users cannot join, leave or send on it.
PEERS_CHANNEL = "pydiscover.peers"

#: How often a node asks a destination that has not answered yet (every hello interval, at
#: least :data:`ASK_INTERVAL_MIN` seconds apart).
ASK_TRIES = 3
ASK_INTERVAL_MIN = 0.4
#: A member's question is answered at most once per this many seconds (under the askers' interval).
ANSWER_INTERVAL = 0.2

#: The question, and the JSON around an answer's list (for the datagram budget).
ASK: dict[str, Any] = {"ask": "peers"}
_ANSWER_OVERHEAD = len('{"peers":[]}')


class SendTo(NamedTuple):
    """Send ``data`` on :data:`PEERS_CHANNEL` to ``endpoint`` only."""

    endpoint: Endpoint
    data: dict[str, Any]


class DestinationsChanged(NamedTuple):
    """From the next send on, unicast packets go to these endpoints (next to any broadcast or group)."""

    endpoints: tuple[Endpoint, ...]


PeerAction = SendTo | DestinationsChanged


def endpoint_from_wire(item: Any) -> Endpoint | None:
    """A ``[ip, port]`` pair from a peer, or ``None``.

    Only plain unicast IP literals: never a name to resolve, never a zone (``%eth0`` names
    an interface of the sender's, not ours), never a multicast, unspecified, reserved
    (IPv4: 240.0.0.0/4), limited-broadcast or IPv6 link-local address (unusable without
    a zone).  The host is returned in its canonical form (a v4-mapped IPv6 address as
    its IPv4 one).  ``x.x.x.255`` is kept: it is a unicast address in subnets wider than
    /24 (in unicast mode the socket has no ``SO_BROADCAST``, so the kernel refuses a
    directed broadcast on a local subnet).
    """
    if not isinstance(item, list) or len(item) != 2:
        return None
    host, port = item
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None else ip
    if (
        plain.is_multicast
        or plain.is_unspecified
        or (plain.is_reserved if isinstance(plain, ipaddress.IPv4Address) else plain.is_link_local)
        or plain == _LIMITED_BROADCAST  # reserved too (240.0.0.0/4), named for the reader
    ):
        return None
    return (str(plain), port)  # a v4-mapped address as the IPv4 one, as the transport reports peers


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class PeerBook:
    """The destinations of one node: given (``manual``), learned (per node id), pending (named by a seed).

    Times are seconds of one clock that never goes back: pending endpoints are kept in
    the order they were added, which is then the order they expire in (so the next
    deadline is found in O(1)).
    """

    def __init__(
        self,
        manual: Sequence[Endpoint],
        learn: bool,
        *,
        node_timeout: float,
        ask_interval: float = ASK_INTERVAL_MIN,
        max_learned: int = MAX_LEARNED,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.learn = learn
        self.node_timeout = node_timeout
        #: Seconds between two questions to a destination that has not answered.
        self.ask_interval = max(ask_interval, ASK_INTERVAL_MIN)
        self.max_learned = max_learned
        self.max_pending = max_pending
        self._manual: tuple[Endpoint, ...] = tuple(dict.fromkeys(manual))
        #: The other members a registry lists (etcd), replaced whole at each change.
        self._registered: tuple[Endpoint, ...] = ()
        #: Node id -> the endpoint its packets come from; ``_refs`` counts nodes per endpoint.
        self._learned: dict[str, Endpoint] = {}
        self._refs: dict[Endpoint, int] = {}
        #: Endpoints a seed named -> when they are forgotten unless learned by then (in that order).
        self._pending: dict[Endpoint, float] = {}
        #: Members asked for their members -> until when their answers count.
        self._asked: dict[Endpoint, float] = {}
        #: Members asked that have not answered yet -> (when to ask again, questions left).
        self._unanswered: dict[Endpoint, tuple[float, int]] = {}
        #: Whether any answer came since start (until then, nodes that find us are asked too).
        self._answer_heard = False
        #: Members answered -> until when they are not answered again (:data:`ANSWER_INTERVAL`).
        self._answered: dict[Endpoint, float] = {}
        #: Messages on the peers channel not acted on, by reason (merged into ``stats["dropped"]``):
        #: ``peers_malformed``, ``peers_stranger`` (a question from no member, or not from where
        #: it says hello), ``peers_rate_limited``, ``peers_unasked`` (an answer not asked for).
        self.ignored: Counter[str] = Counter()
        #: Peers refused over the bounds since creation (a restart keeps the count).
        self.not_learned = 0
        self._warned_full = False
        self._running = False
        #: Our own ``(host, port)`` once started, and whether the socket is IPv4 only.
        self._local: tuple[Any, ...] | None = None
        self._ipv4_only = False

    # ------------------------------------------------------------ queries
    @property
    def manual(self) -> tuple[Endpoint, ...]:
        """The destinations given (option ``unicast``, ``add_destination``), in order."""
        return self._manual

    @property
    def learned(self) -> int:
        """How many peers are learned now."""
        return len(self._learned)

    @property
    def pending(self) -> tuple[Endpoint, ...]:
        """The endpoints a seed named that are being tried (in the order they expire)."""
        return tuple(self._pending)

    @property
    def registered(self) -> tuple[Endpoint, ...]:
        """The other members' endpoints a registry lists now."""
        return self._registered

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every unicast destination now: given, registered, learned, pending (each once, in that order)."""
        return tuple(dict.fromkeys([*self._manual, *self._registered, *self._refs, *self._pending]))

    def known(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is a destination now."""
        return (endpoint in self._refs or endpoint in self._pending or endpoint in self._manual
                or endpoint in self._registered)

    @property
    def unanswered(self) -> tuple[Endpoint, ...]:
        """The members asked for their members that have not answered yet."""
        return tuple(self._unanswered)

    def next_deadline(self) -> float | None:
        """When a pending endpoint is forgotten or a question asked again (call :meth:`tick` then), or ``None``."""
        deadline = next(iter(self._pending.values()), None)
        for again, _ in self._unanswered.values():  # a few: the seeds, until they answer
            if deadline is None or again < deadline:
                deadline = again
        return deadline

    # ------------------------------------------------------------ inputs
    def set_manual(self, endpoints: Sequence[Endpoint]) -> list[PeerAction]:
        """Replace the destinations given (duplicates dropped).

        The runtime hands the resulting list to the transport, which may refuse it: then
        it calls this again with the previous :attr:`manual`.
        """
        self._manual = tuple(dict.fromkeys(endpoints))
        return [DestinationsChanged(self.endpoints())]

    def set_registered(self, endpoints: Sequence[Endpoint]) -> list[PeerAction]:
        """Replace the endpoints a registry lists (this node's own left out by the caller).

        A registered endpoint is a destination while it is listed, whether or not its
        node is a member yet: its hellos answer ours.  Kept through a registry outage
        (the caller simply does not call this), so an outage removes nobody.
        """
        registered = tuple(dict.fromkeys(endpoints))
        if registered == self._registered:
            return []
        self._registered = registered
        for endpoint in registered:
            self._pending.pop(endpoint, None)  # listed now: no longer a trial
        return [DestinationsChanged(self.endpoints())]

    def start(self, local_address: tuple[Any, ...] | None) -> None:
        """The node runs, receiving at ``local_address`` (``(host, port, ...)`` as the socket says, or ``None``)."""
        self._running = True
        self._local = tuple(local_address[:2]) if local_address is not None else None
        self._ipv4_only = local_address is not None and len(local_address) == 2  # an IPv6 peer is not for us

    def clear(self) -> list[PeerAction]:
        """A stopped node knows nobody: forget what was learned, tried and asked while running."""
        self._running = False
        self._registered = ()
        self._pending.clear()
        self._learned.clear()
        self._refs.clear()
        self._asked.clear()
        self._unanswered.clear()
        self._answer_heard = False
        self._answered.clear()
        return [DestinationsChanged(self.endpoints())]

    def node_added(self, now: float, iid: str, endpoint: Endpoint) -> list[PeerAction]:
        """Node ``iid`` was added; its packets come from ``endpoint``."""
        if not self.learn:
            return []
        found_us = not self.known(endpoint)  # it sends to us, we did not send to it
        out: list[PeerAction] = []
        if iid in self._learned:  # added twice without a removal: it may have moved
            out += self.node_moved(now, iid, endpoint)
        elif self._learn(iid, endpoint):
            out.append(DestinationsChanged(self.endpoints()))
        if self._running and (endpoint in self._manual or (found_us and self._seed_unrecognised())):
            # A destination given answered (or may have, from another address): ask it for
            # its members, so we reach them too.
            out += self._ask(now, endpoint, ASK_TRIES)
        return out

    def node_removed(self, now: float, iid: str) -> list[PeerAction]:
        """Node ``iid`` was removed (timed out or said goodbye): its learned destination leaves with it."""
        if not self.learn or not self._forget(iid):
            return []
        # Gone from the destinations: so is any question to it (a member's endpoint is in _refs).
        self._unanswered = {e: v for e, v in self._unanswered.items() if self.known(e)}
        return [DestinationsChanged(self.endpoints())]

    def node_moved(self, now: float, iid: str, endpoint: Endpoint) -> list[PeerAction]:
        """Node ``iid`` was updated; if its packets now come from another ``endpoint``, follow it.

        A member not learned (refused over :attr:`max_learned`) is learned now if there is
        room again (not counted again in :attr:`not_learned` if there is not).
        """
        if not self.learn:
            return []
        if iid not in self._learned:
            if len(self._learned) < self.max_learned and self._learn(iid, endpoint):
                return [DestinationsChanged(self.endpoints())]
            return []
        if self._learned[iid] == endpoint:
            return []
        changed = self._forget(iid)
        if self._learn(iid, endpoint) or changed:
            return [DestinationsChanged(self.endpoints())]
        return []

    def message(
        self,
        now: float,
        data: Any,
        sender: Endpoint,
        member: Endpoint | None,
        *,
        members: Callable[[], Iterable[Endpoint]] = tuple,
        budget: int = 0,
        authenticated: bool = False,
    ) -> list[PeerAction]:
        """A message on :data:`PEERS_CHANNEL` from ``sender`` (not from this node).

        ``member`` is the endpoint the core recorded for the node the packet claims to
        come from (its ``iid``), or ``None`` if that is no member.  A question is answered
        only if it comes from there (``sender == member``: a stranger who names a
        member's id cannot aim the answer elsewhere), with or without :attr:`learn` (a
        seed that does not learn still introduces its members).  An asker is answered
        at most once per :data:`ANSWER_INTERVAL` if the packet was ``authenticated``
        (AES-GCM: a key holder sent it from there), else once per ``node_timeout``: an
        unauthenticated member may be a forged source address, and each answer is larger
        than the question.  The answer lists ``members()`` (this node's members'
        endpoints; called only then), split so that each answer's JSON fits ``budget``
        bytes (``core.max_payload(PEERS_CHANNEL)``); with none to list it is an empty
        list, so the asker stops asking.  An answer counts only if :attr:`learn`, from a
        member we asked, within one ``node_timeout`` of asking.
        """
        if not isinstance(data, dict):
            self.ignored["peers_malformed"] += 1
            return []
        if data.get("ask") == "peers":
            # Only members are answered (with a key: key holders), at the endpoint they say hello from.
            if member is None or sender != member:
                self.ignored["peers_stranger"] += 1
                return []
            if now < self._answered.get(sender, -1.0):
                self.ignored["peers_rate_limited"] += 1
                return []
            self._answered[sender] = now + (ANSWER_INTERVAL if authenticated else self.node_timeout)
            return self._answer(sender, members(), budget)
        peers = data.get("peers")
        if not isinstance(peers, list):
            self.ignored["peers_malformed"] += 1
            return []
        if self.learn and now <= self._asked.get(sender, -1.0):  # an answer we asked for
            self._unanswered.pop(sender, None)
            self._answer_heard = True
            return self._try_endpoints(now, peers[: self.max_pending])
        self.ignored["peers_unasked"] += 1
        return []

    def tick(self, now: float) -> list[PeerAction]:
        """Ask again the members that have not answered; forget the pending endpoints nobody
        answered from within their ``node_timeout``."""
        out: list[PeerAction] = []
        for endpoint, (again, left) in list(self._unanswered.items()):
            if again <= now:
                del self._unanswered[endpoint]
                if left > 0:
                    out += self._ask(now, endpoint, left)
                else:
                    log.debug("learn_peers: %s:%d never answered %d questions", *endpoint, ASK_TRIES)
        expired = False
        while self._pending:
            endpoint, deadline = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[endpoint]
            expired = True
        for endpoint in [e for e, until in self._asked.items() if until < now]:
            del self._asked[endpoint]
        for endpoint in [e for e, until in self._answered.items() if until <= now]:
            del self._answered[endpoint]
        if expired:
            out.append(DestinationsChanged(self.endpoints()))
        return out

    # ------------------------------------------------------------ rules
    def _ask(self, now: float, endpoint: Endpoint, tries: int) -> list[PeerAction]:
        """Ask ``endpoint`` for its members now, and again later (``tries`` questions in all) until it answers."""
        if endpoint not in self._unanswered and len(self._unanswered) >= self.max_pending:
            return []
        self._asked[endpoint] = now + self.node_timeout
        self._unanswered[endpoint] = (now + self.ask_interval, tries - 1)
        return [SendTo(endpoint, dict(ASK))]

    def _seed_unrecognised(self) -> bool:
        """No answer yet, and a destination given has no member at it (its packets may come from elsewhere)."""
        return not self._answer_heard and any(e not in self._refs for e in self._manual)

    def _learn(self, iid: str, endpoint: Endpoint) -> bool:
        """Learn ``iid`` at ``endpoint``; ``True`` if the destination list changed."""
        if len(self._learned) >= self.max_learned:
            self.not_learned += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning("learn_peers: %d peers learned already; not learning more (stats['not_learned'])",
                            self.max_learned)
            return False
        was_known = self.known(endpoint)
        self._learned[iid] = endpoint
        self._refs[endpoint] = self._refs.get(endpoint, 0) + 1
        self._pending.pop(endpoint, None)  # it answered: a destination while it is a member
        return not was_known

    def _forget(self, iid: str) -> bool:
        """Forget ``iid``; ``True`` if the destination list changed."""
        endpoint = self._learned.pop(iid, None)
        if endpoint is None:
            return False
        left = self._refs[endpoint] - 1
        if left:
            self._refs[endpoint] = left
            return False
        del self._refs[endpoint]
        return not self.known(endpoint)

    def _answer(self, asker: Endpoint, members: Iterable[Endpoint], budget: int) -> list[PeerAction]:
        """The members' endpoints but the asker's, in as many messages as they need (each within
        ``budget``); one empty list if there are none, so the asker knows it was heard."""
        endpoints = [e for e in dict.fromkeys(members) if e != asker][: self.max_pending]
        room = budget - _ANSWER_OVERHEAD
        out: list[PeerAction] = []
        chunk: list[list[Any]] = []
        size = 0
        for host, port in endpoints:
            item_size = len(host) + len(str(port)) + 10  # ["host", port], with room to spare
            if chunk and size + item_size > room:
                out.append(SendTo(asker, {"peers": chunk}))
                chunk, size = [], 0
            chunk.append([host, port])
            size += item_size
        if chunk or not out:
            out.append(SendTo(asker, {"peers": chunk}))
        return out

    def _try_endpoints(self, now: float, items: list[Any]) -> list[PeerAction]:
        """Say hello to the endpoints a seed named, for one ``node_timeout``: whoever is there answers."""
        added = False
        for item in items:
            endpoint = endpoint_from_wire(item)
            if (
                endpoint is None
                or self.known(endpoint)
                or self._local == endpoint
                or (self._ipv4_only and ":" in endpoint[0])
            ):
                continue
            if len(self._pending) >= self.max_pending:
                self.not_learned += 1
                continue
            self._pending[endpoint] = now + self.node_timeout
            added = True
        return [DestinationsChanged(self.endpoints())] if added else []
