"""The node table: one record per peer, ordered by last hello so the next expiry is O(1).

Pure bookkeeping for :class:`~pydiscover.core.DiscoveryCore`: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .election import Standing
from .node import Node


class Peer:
    """What we know of one other instance, and what its record was made from.

    ``seen`` is the truth for the last hello's time: a hello that changes nothing moves
    only that, and ``node`` is brought up to date when handed out (:meth:`PeerTable.current`).
    """

    __slots__ = ("body", "data", "data_json", "node", "seen", "seq", "since")

    def __init__(self, node: Node, data: Any, data_json: bytes, seq: int) -> None:
        self.node = node
        self.seen = node.last_seen
        #: When its first hello arrived: ``seen == since`` means heard once (:meth:`PeerTable.heard_once_longest_ago`).
        self.since = node.last_seen
        #: The sequence number of the newest hello taken (older ones are stale); -1: none yet.
        self.seq = seq
        #: The last valid hello ``data`` (the object): the same one again skips all checks.
        self.data = data
        #: ... and its canonical JSON: equal text skips validation.
        self.data_json = data_json
        #: The text of our peers' last hello but its seq (the core's body cache key), if kept.
        self.body: bytes | None = None


class PeerTable:
    """Peers by instance id, plus one last-seen ordering per timeout (master or not).

    The orderings let :meth:`expired` read only their heads, and ``next_expiry`` is a
    lower bound of the earliest expiry (exact after each :meth:`expired`), so callers can
    skip the scan with one comparison.
    """

    __slots__ = ("_by_age", "_on_remove", "_once", "_peers", "_timeouts", "get", "next_expiry", "standing")

    def __init__(self, *, node_timeout: float, master_timeout: float, rank: tuple[float, int, str],
                 on_remove: Callable[[Peer], None] | None = None) -> None:
        self._peers: dict[str, Peer] = {}
        #: Called with each peer leaving the table (by :meth:`remove` or :meth:`expired`, not :meth:`clear`).
        self._on_remove = on_remove
        #: How the peers stand against ``rank`` (this node's) in the election, kept as records change.
        self.standing = Standing(rank)
        self._by_age: dict[bool, OrderedDict[str, Peer]] = {False: OrderedDict(), True: OrderedDict()}
        #: Peers heard only once, in the order they were heard (what a flood of made-up instances leaves).
        self._once: dict[str, Peer] = {}
        self._timeouts = {False: node_timeout, True: master_timeout}
        #: No peer expires before this (read it; the table keeps it).
        self.next_expiry = math.inf
        #: The peer with this id, or ``None`` (the dict's own ``get``: no frame on the hot path).
        self.get = self._peers.get

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, iid: object) -> bool:
        return iid in self._peers

    def current(self, peer: Peer) -> Node:
        """``peer``'s record with its latest ``last_seen``."""
        node = peer.node
        if node.last_seen != peer.seen:
            node = peer.node = node.seen_at(peer.seen)
        return node

    def nodes(self) -> dict[str, Node]:
        """Every peer's up-to-date record, by id (a new dict)."""
        current = self.current
        return {iid: current(peer) for iid, peer in self._peers.items()}

    def records(self) -> Iterator[Node]:
        """Every peer's record as stored, ``last_seen`` possibly behind (elections ignore it)."""
        return (peer.node for peer in self._peers.values())

    def seen(self, peer: Peer, now: float) -> None:
        """A hello that changed nothing: only the time moves (expiries only get later)."""
        if peer.seen == peer.since:
            self._once.pop(peer.node.id, None)  # heard twice now
        peer.seen = now
        node = peer.node
        self._by_age[node.is_master].move_to_end(node.id)

    def record(self, node: Node, data: Any, data_json: bytes, seq: int | None) -> Peer:
        """Store ``node``, made from a hello at ``node.last_seen``; ``seq`` ``None`` keeps the last one."""
        iid = node.id
        peer = self._peers.get(iid)
        if peer is None:
            peer = self._peers[iid] = self._once[iid] = Peer(node, data, data_json, -1 if seq is None else seq)
        else:
            self._once.pop(iid, None)
            del self._by_age[peer.node.is_master][iid]
            self.standing.count(peer.node, -1)
            peer.node, peer.seen, peer.data, peer.data_json = node, node.last_seen, data, data_json
            if seq is not None:
                peer.seq = seq
        self._by_age[node.is_master][iid] = peer
        self.standing.count(node, 1)
        # A new (or re-classed) entry may be the first due; refreshes only move expiries later.
        expiry = node.last_seen + self._timeouts[node.is_master]
        if expiry < self.next_expiry:
            self.next_expiry = expiry
        return peer

    def heard_once_longest_ago(self) -> Peer | None:
        """Of the peers heard only once, the one heard longest ago (O(1)); ``None`` if every peer was heard again."""
        once = self._once
        return next(iter(once.values())) if once else None

    def remove(self, iid: str) -> Node:
        """Forget ``iid`` (it must be here); return its up-to-date record."""
        peer = self._peers.pop(iid)
        del self._by_age[peer.node.is_master][iid]
        self._once.pop(iid, None)
        self.standing.count(peer.node, -1)
        if self._on_remove is not None:
            self._on_remove(peer)
        return self.current(peer)

    def expired(self, now: float) -> list[Node]:
        """Remove and return (up to date) every peer silent past its timeout at ``now``."""
        gone: list[Node] = []
        floor = math.inf
        for is_master, ids in self._by_age.items():
            timeout = self._timeouts[is_master]
            while ids:
                peer = next(iter(ids.values()))
                expiry = peer.seen + timeout
                if expiry > now:
                    floor = min(floor, expiry)
                    break
                gone.append(self.remove(peer.node.id))
        self.next_expiry = floor
        return gone

    def give_time_back(self, seconds: float, now: float) -> None:
        """Move every peer's last-seen time ``seconds`` later, never past ``now``.

        Clamping keeps each ordering sorted (the expiry scan reads only its head) and
        ``next_expiry`` a lower bound: expiries only moved later.
        """
        for ids in self._by_age.values():
            for peer in ids.values():
                once = peer.seen == peer.since
                peer.seen = min(peer.seen + seconds, now)
                if once:
                    peer.since = peer.seen  # still heard once, and now that much later

    def clear(self) -> None:
        self.standing.reset()
        self._peers.clear()
        self._once.clear()
        for ids in self._by_age.values():
            ids.clear()
        self.next_expiry = math.inf
