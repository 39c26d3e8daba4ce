"""What the web view shows, kept up to date from a passive node's events.

The monitor's node hears the cluster; :class:`ClusterView` turns its events into a
timeline (joins, leaves, promotions, demotions), per-node hello rates, and snapshots
for the page, ``/api/nodes`` and ``/metrics``.  It knows nothing of HTTP.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..monitor import Watched as Readable
from ..monitor import snapshot
from ..node import Node

#: How far back the timeline reaches, in seconds (the page draws this span).
TIMELINE_SECONDS = 15 * 60
#: At most this many timeline entries are kept, whatever the churn (a flood of joins
#: must not grow the monitor without bound).
TIMELINE_MAX = 10_000
#: The window of a node's hello rate, in seconds.
RATE_WINDOW = 10.0
#: A snapshot carries at most the newest this many timeline entries (a flood of made-up
#: instances must not make every snapshot megabytes long); ``timeline_omitted`` counts the rest.
SNAPSHOT_TIMELINE = 1000
#: Hostnames come from the network: the timeline keeps this many characters of each.
HOSTNAME_CHARS = 64


class Watched(Readable, Protocol):
    """What the monitor reads of a discovery, and its events (``AsyncDiscovery`` or ``Discovery``)."""

    def on(self, event: str, handler: Callable[..., Any]) -> Any: ...


class ClusterView:
    """Timeline, hello rates and snapshots of the cluster ``discovery`` hears.

    Timeline kinds: ``join``, ``leave``, ``promotion`` (a known node became master),
    ``demotion``, and ``master`` (a node first heard already master: when the monitor
    starts, or when a partition heals).

    Call only from the discovery's thread (its handlers run there): the web server and
    the discovery share one event loop.  ``listener`` is called with each timeline
    entry as it happens (the server streams them and pushes a fresh snapshot).
    """

    def __init__(self, discovery: Watched, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._d = discovery
        self._clock = clock
        self._wall = wall_clock
        self.timeline: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE_MAX)
        self._hellos: dict[str, collections.deque[float]] = {}
        self._first_hello: dict[str, float] = {}
        self.hellos_total = 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._joining: str | None = None  # the node whose "added" this dispatch is (master follows it)
        discovery.on("added", self._added)
        discovery.on("removed", self._removed)
        discovery.on("master", self._master)
        discovery.on("nodeUpdated", self._updated)
        discovery.on("helloReceived", self._hello)

    # ------------------------------------------------------------- events
    def _record(self, kind: str, node: Node) -> None:
        entry = {"t": round(self._wall(), 3), "kind": kind, "id": node.id,
                 "hostname": node.hostname[:HOSTNAME_CHARS], "nodes": len(self._d.nodes)}
        self.timeline.append(entry)
        for listener in list(self.listeners):
            listener(entry)

    def _added(self, node: Node) -> None:
        self._joining = node.id
        self._record("join", node)

    def _removed(self, node: Node) -> None:
        self._hellos.pop(node.id, None)
        self._first_hello.pop(node.id, None)
        self._record("leave", node)

    def _master(self, node: Node) -> None:
        self._record("master" if node.id == self._joining else "promotion", node)

    def _updated(self, node: Node, previous: Node) -> None:
        if previous.is_master and not node.is_master:
            self._record("demotion", node)

    def _hello(self, node: Node, is_new: bool) -> None:
        self._joining = None  # (the core reports a hello last, after added and master)
        self.hellos_total += 1
        now = self._clock()
        times = self._hellos.get(node.id)
        if times is None:
            times = self._hellos[node.id] = collections.deque(maxlen=4096)
            self._first_hello[node.id] = now
        times.append(now)
        while times and times[0] < now - RATE_WINDOW:
            times.popleft()

    # ------------------------------------------------------------ queries
    def hello_rate(self, node_id: str) -> float:
        """Hellos per second heard from ``node_id`` over the last ``RATE_WINDOW`` seconds."""
        times = self._hellos.get(node_id)
        if not times:
            return 0.0
        now = self._clock()
        horizon = now - RATE_WINDOW
        # Over the time heard so far, if shorter than the window (at least a second).
        span = max(1.0, min(RATE_WINDOW, now - self._first_hello.get(node_id, horizon)))
        return sum(1 for t in times if t >= horizon) / span

    def recent(self) -> list[dict[str, Any]]:
        """The timeline entries of the last ``TIMELINE_SECONDS``, oldest first."""
        horizon = self._wall() - TIMELINE_SECONDS
        while self.timeline and self.timeline[0]["t"] < horizon:
            self.timeline.popleft()
        return list(self.timeline)

    def nodes_snapshot(self) -> dict[str, Any]:
        """``/api/nodes``: exactly what ``--once --json`` prints."""
        return snapshot(self._d)

    def page_snapshot(self) -> dict[str, Any]:
        """What the page draws: the nodes (with hello rates), the masters, the timeline."""
        snap = self.nodes_snapshot()
        for record in snap["nodes"]:
            record["hello_rate"] = round(self.hello_rate(record["id"]), 2)
        snap["masters"] = [r["id"] for r in snap["nodes"] if r["is_master"]]
        recent = self.recent()
        snap["timeline"] = recent[-SNAPSHOT_TIMELINE:]
        snap["timeline_omitted"] = max(0, len(recent) - SNAPSHOT_TIMELINE)
        snap["timeline_seconds"] = TIMELINE_SECONDS
        snap["now"] = round(self._wall(), 3)
        return snap
