"""The node table: one record per peer, and a heap of expiry bounds so the next expiry is O(1).

Pure bookkeeping for :class:`~pydiscover.core.DiscoveryCore`: no clock, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Any

from .election import Standing
from .node import Node


class Peer:
    """What we know of one other instance, and what its record was made from.

    ``seen`` is the truth for the last hello's time: a hello that changes nothing moves
    only that, and ``node`` is brought up to date when handed out (:meth:`PeerTable.current`).
    """

    __slots__ = ("body", "data", "data_json", "due", "node", "seen", "seq", "since")

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
        #: The opened text, all but its seq (``wire.hello_key``), of the hello that made or last
        #: refreshed ``data``, or ``None``: a hello with this text and a new seq changes nothing.
        self.body: bytes | None = None
        #: The number of this peer's one valid entry in :class:`PeerTable`'s expiry heap.
        self.due = -1


class PeerTable:
    """Peers by instance id, plus a heap of lower bounds of their expiries.

    A hello that changes nothing only moves its peer's ``seen`` (:meth:`seen`): no
    ordering is touched on the hot path, which every hello of every peer takes.  The heap
    holds one valid entry per peer, ``(bound, number, peer)``, whose bound is at most the
    peer's expiry (``seen`` only moves later); :meth:`expired` pops the entries that are
    due and pushes a peer heard since back with its real expiry, so each peer costs one
    heap step per timeout rather than one per hello.  ``next_expiry`` is the heap's least
    bound: a lower bound of the earliest expiry, exact after each :meth:`expired`, so
    callers can skip the scan with one comparison.
    """

    __slots__ = ("_due", "_numbers", "_once", "_peers", "_timeouts", "get", "next_expiry", "standing")

    def __init__(self, *, node_timeout: float, master_timeout: float, rank: tuple[float, int, str]) -> None:
        self._peers: dict[str, Peer] = {}
        #: How the peers stand against ``rank`` (this node's) in the election, kept as records change.
        self.standing = Standing(rank)
        #: ``(bound, number, peer)``: the entry numbered ``peer.due`` is the peer's valid one;
        #: others (the peer left, or changed class) are dropped when they come up.
        self._due: list[tuple[float, int, Peer]] = []
        self._numbers = itertools.count()
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
        """A hello that changed nothing: only the time moves (expiries only get later, so the
        peer's entry in the heap stays a lower bound)."""
        if peer.seen == peer.since:
            self._once.pop(peer.node.id, None)  # heard twice now
        peer.seen = now

    def record(self, node: Node, data: Any, data_json: bytes, seq: int | None) -> Peer:
        """Store ``node``, made from a hello at ``node.last_seen``; ``seq`` ``None`` keeps the last one."""
        iid = node.id
        peer = self._peers.get(iid)
        if peer is None:
            peer = self._peers[iid] = self._once[iid] = Peer(node, data, data_json, -1 if seq is None else seq)
            self._push(peer, node.last_seen + self._timeouts[node.is_master])
        else:
            self._once.pop(iid, None)
            self.standing.count(peer.node, -1)
            reclassed = peer.node.is_master is not node.is_master
            peer.node, peer.seen, peer.data, peer.data_json = node, node.last_seen, data, data_json
            if seq is not None:
                peer.seq = seq
            if reclassed:  # its timeout changed, perhaps to a shorter one: a new bound
                self._push(peer, node.last_seen + self._timeouts[node.is_master])
        self.standing.count(node, 1)
        return peer

    def _push(self, peer: Peer, bound: float) -> None:
        """Make ``(bound, ...)`` the peer's valid heap entry (an earlier one is left stale)."""
        number = peer.due = next(self._numbers)
        heapq.heappush(self._due, (bound, number, peer))
        if bound < self.next_expiry:
            self.next_expiry = bound

    def heard_once_longest_ago(self) -> Peer | None:
        """Of the peers heard only once, the one heard longest ago (O(1)); ``None`` if every peer was heard again."""
        once = self._once
        return next(iter(once.values())) if once else None

    def remove(self, iid: str) -> Node:
        """Forget ``iid`` (it must be here); return its up-to-date record."""
        peer = self._peers.pop(iid)
        peer.due = -1  # its heap entry is stale now
        self._once.pop(iid, None)
        self.standing.count(peer.node, -1)
        due = self._due
        if len(due) > 2 * len(self._peers) + 64:
            # Peers that left keep an entry until its bound: churn (hello, goodbye, a new id)
            # must not grow the heap past a constant times the table.
            due[:] = [entry for entry in due if entry[2].due == entry[1]]
            heapq.heapify(due)
        return self.current(peer)

    def expired(self, now: float) -> list[Node]:
        """Remove and return (up to date) every peer silent past its timeout at ``now``, in
        the order they expired; afterwards ``next_expiry`` is exact."""
        gone: list[Node] = []
        due, timeouts = self._due, self._timeouts
        while due:
            bound, number, peer = due[0]
            if peer.due != number:
                heapq.heappop(due)  # the peer left or changed class: a stale entry
                continue
            expiry = peer.seen + timeouts[peer.node.is_master]
            if expiry <= now:
                heapq.heappop(due)
                gone.append(self.remove(peer.node.id))
            elif expiry == bound:
                break  # the least bound is a real expiry: nobody is due before it
            else:  # heard since the entry was made: its real expiry, once per timeout
                peer.due = number = next(self._numbers)
                heapq.heapreplace(due, (expiry, number, peer))
        self.next_expiry = due[0][0] if due else math.inf
        return gone

    def give_time_back(self, seconds: float, now: float) -> None:
        """Move every peer's last-seen time ``seconds`` later, never past ``now``.

        Expiries only move later, so the heap's bounds and ``next_expiry`` stay lower bounds.
        """
        for peer in self._peers.values():
            once = peer.seen == peer.since
            peer.seen = min(peer.seen + seconds, now)
            if once:
                peer.since = peer.seen  # still heard once, and now that much later

    def clear(self) -> None:
        self.standing.reset()
        for peer in self._peers.values():
            peer.due = -1
        self._peers.clear()
        self._once.clear()
        self._due.clear()
        self.next_expiry = math.inf
