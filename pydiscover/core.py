"""The sans-IO protocol engine: node table, timeouts, election, goodbye, channel dispatch.

Feed it ``datagram_received(now, data, addr)``, ``tick(now)`` and the user's calls;
it returns a list of actions (:class:`Transmit`, :class:`Emit`) and tells the runtime
when it next needs a ``tick`` (:meth:`DiscoveryCore.next_deadline`).  It never reads a
clock, opens a socket or starts a thread, so every rule here runs deterministically
under a fake clock (see ``testbed/sim.py``).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, OrderedDict
from typing import Any, NamedTuple

from . import wire
from .config import Options
from .election import Decision, decide
from .errors import PacketTooLarge
from .node import Node, Packet
from .security import Codec, OpenError, ReplayGuard

log = logging.getLogger("pydiscover.core")

#: Names that can never be joined or sent on: local events and protocol packets.
#: A remote packet named "error" must not reach pyee's "error" (it would raise).
RESERVED_NAMES = frozenset(
    {
        wire.HELLO,
        wire.GOODBYE,
        "promotion",
        "demotion",
        "added",
        "removed",
        "master",
        "helloReceived",
        "helloEmitted",
        "nodeUpdated",
        "check",
        "started",
        "stopped",
        "error",
        "message",
        "new_listener",
    }
)

Address = tuple[Any, ...]


class Transmit(NamedTuple):
    """Send this datagram to every destination (broadcast, group or unicast list)."""

    datagram: bytes


class Emit(NamedTuple):
    """Fire a local event with these arguments."""

    event: str
    args: tuple[Any, ...] = ()


Action = Transmit | Emit


#: Distinct node-discover hellos remembered so a byte-identical repeat is not parsed again.
REPEAT_CACHE_SIZE = 4096
#: ... and their total size in datagram bytes.
REPEAT_CACHE_BYTES = 1 << 20


class DiscoveryCore:
    """One discovery instance's state.  Not thread-safe: one driver owns it."""

    def __init__(self, options: Options, *, pid: str, iid: str, rng: random.Random | None = None) -> None:
        self.options = options
        self.pid = pid
        self.iid = iid
        self._rng = rng or random.Random()
        self._nodes: dict[str, Node] = {}
        # Node id -> last seen, in that order, one table per timeout, so the next expiry is
        # O(1).  The time lives here; a hello that changes nothing updates only this, and the
        # Node records in _nodes are brought up to date when handed out (_current).
        self._by_age: dict[bool, OrderedDict[str, float]] = {False: OrderedDict(), True: OrderedDict()}
        # Each (instance, seq) counts once, and is remembered past the instance's removal,
        # so a capture replayed after a leave or a timeout changes nothing.
        self._replay = ReplayGuard(retention=self._replay_retention(options.codec))
        # Sequence number of the hello each node's record came from (older ones are stale).
        self._hello_seq: dict[str, int] = {}
        #: Each node's last valid hello ``data``: an equal one skips validation (the hot path).
        self._hello_data_of: dict[str, Any] = {}
        self._hello_json_of: dict[str, bytes] = {}
        #: Datagram -> (envelope, plaintext) of accepted seq-less hellos (see _remember).
        self._repeats: dict[bytes, tuple[wire.Envelope, bytes]] = {}
        self._repeats_bytes = 0
        #: Emit ``helloReceived`` for hellos that changed nothing; a runtime with no
        #: listener for it turns this off (the event is then the costliest part of a hello).
        self.report_unchanged_hellos = True
        #: Whether the last datagram was a channel message for us (latency matters to it).
        self.last_was_message = False
        #: Past this, we were not run when we should have been (see _resume_after_pause).
        self._paused_if_after = math.inf
        #: When tick or datagram_received last ran.
        self._last_run = 0.0
        #: No node expires before this (a lower bound, exact after each _expire).
        self._expiry_floor = math.inf
        self._codec = options.codec
        self._wall_offset = 0.0
        # While our own link to the cluster is down (a broker transport lost its server),
        # peers' silence is not evidence they died: no removals, no elections.
        self._link_down_since: float | None = None
        self._channels: set[str] = set()
        # Peers obey the same budget; an IPv6 node still takes an IPv4-sized datagram.
        self._receive_limit = self._receive_limit_for(options.codec)
        self._seq = 0
        self._running = False
        self._is_master = False
        self._eligible = not options.client
        self._stepping_down_until: float | None = None
        self._advertisement = options.advertisement
        self._settle_at = 0.0
        self._next_hello: float | None = None
        self._next_check: float | None = None
        self._reply_at: float | None = None
        self._last_reply = float("-inf")
        self._last_hello_at = float("-inf")
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._advertisement = self._check_size(self._advertisement)

    # ------------------------------------------------------------------ views
    @property
    def running(self) -> bool:
        return self._running

    @property
    def is_master(self) -> bool:
        return self._is_master

    @property
    def nodes(self) -> dict[str, Node]:
        """A copy of the live node table (other instances only), keyed by instance id."""
        return {iid: self._current(iid) for iid in self._nodes}

    def has_node(self, iid: str) -> bool:
        """Whether ``iid`` is in the live node table."""
        return iid in self._nodes

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    @property
    def advertisement(self) -> Any:
        return self._advertisement

    def me(self, now: float) -> Node:
        """This instance as peers see it."""
        return Node(
            id=self.iid,
            pid=self.pid,
            hostname=self.options.hostname,
            address=self.options.address,
            port=self.options.port,
            is_master=self._is_master,
            is_master_eligible=self._advertised_eligible(),
            weight=self.options.weight,
            advertisement=self._advertisement,
            last_seen=now,
        )

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has work to do, or ``None`` when stopped."""
        if not self._running:
            return None
        best = math.inf
        for t in (self._next_hello, self._next_check, self._reply_at, self._stepping_down_until):
            if t is not None and t < best:
                best = t
        if self._link_down_since is None and self._expiry_floor < best:
            best = self._expiry_floor  # may be early: tick() then finds nothing due and re-arms
        return best if best != math.inf else None

    # ------------------------------------------------------------ lifecycle
    def start(self, now: float, wall_time: float | None = None) -> list[Action]:
        """Begin: say hello at once; hold elections for ``check_interval`` while the cluster answers.

        ``wall_time`` is the epoch time matching ``now``: sealed packets carry it, and
        are refused when it differs from ours by more than ``replay_window``.
        """
        if self._running:
            return []
        self._wall_offset = 0.0 if wall_time is None else wall_time - now
        self._running = True
        self._link_down_since = None  # a restart reconnects; an old outage must not freeze removals
        self._last_run = now
        # Hold the first election until every peer's regular hello must have arrived
        # (the prompt replies usually bring them in milliseconds, but may be lost).
        self._settle_at = now + max(self.options.check_interval, self.options.hello_interval)
        self._next_check = self._settle_at
        out: list[Action] = []
        if not self.options.client:
            self._hello(now, out)
            # A random phase, so nodes started together do not hello in lockstep forever.
            self._next_hello = now + self.options.hello_interval * self._rng.uniform(0.5, 1.0)
        self._watch_for_pauses()
        return out

    def stop(self, now: float) -> list[Action]:
        """Stop; a server says goodbye so peers drop it and elect a successor at once.

        A master also emits ``demotion``: it is not master any more.
        """
        if not self._running:
            return []
        out: list[Action] = []
        if not self.options.client:
            out.append(self._transmit(now, wire.GOODBYE, {"isMaster": self._is_master}))
        self._running = False
        self._next_hello = self._next_check = self._reply_at = None
        # A stopped node knows nothing: a restart must not report stale peers as live.
        self._nodes.clear()
        for ids in self._by_age.values():
            ids.clear()
        self._hello_seq.clear()
        self._hello_data_of.clear()
        self._hello_json_of.clear()
        self._repeats.clear()
        self._repeats_bytes = 0
        self._expiry_floor = math.inf
        if self._is_master:
            # Symmetric with "promotion": whatever master-only work a handler started, stop it.
            self._is_master = False
            out.append(Emit("demotion", (self.me(now),)))
        return out

    # ------------------------------------------------------------- user calls
    def promote(self, now: float) -> list[Action]:
        """Become master now (and eligible again, even after ``demote(permanent=True)``)."""
        if self.options.client:
            raise RuntimeError("a client=True node sends no hellos and can never be master")
        out: list[Action] = []
        self._eligible = True
        self._stepping_down_until = None
        if not self._is_master:
            self._is_master = True
            out.append(Emit("promotion", (self.me(now),)))
        if self._running:
            self._hello(now, out)
        return out

    def demote(self, now: float, permanent: bool = False) -> list[Action]:
        """Step down.  ``permanent`` makes this node ineligible until :meth:`promote`.

        A temporary demotion advertises "not eligible" for up to ``master_timeout`` so
        the next-ranked node takes over (in node-discover the demoted node simply
        re-promotes at its next check); once a successor is seen, or the time is up
        with none, this node is a normal candidate again.
        """
        out: list[Action] = []
        if permanent:
            self._eligible = False
            self._stepping_down_until = None
        else:
            self._stepping_down_until = now + self.options.master_timeout
        if self._is_master:
            self._is_master = False
            out.append(Emit("demotion", (self.me(now),)))
        if self._running and not self.options.client:
            self._hello(now, out)
        return out

    def join(self, channel: str) -> bool:
        """Start delivering ``channel``; ``False`` if reserved or already joined."""
        if not self._valid_channel(channel) or channel in self._channels:
            return False
        self._channels.add(channel)
        return True

    def leave(self, channel: str) -> bool:
        if channel not in self._channels:
            return False
        self._channels.discard(channel)
        return True

    def send(self, now: float, channel: str, data: Any) -> list[Action] | None:
        """Build a channel message; ``None`` for a reserved name or when stopped.  Raises if over budget."""
        if not self._valid_channel(channel) or not self._running:
            return None
        return [self._transmit(now, channel, data, what=f"message on channel {channel!r}")]

    @property
    def codec(self) -> Codec:
        return self._codec

    def _replay_retention(self, codec: Codec) -> float:
        """How long an instance's sequence state outlives it.

        With authentication: past the time window even for a sender whose clock runs up
        to ``replay_window`` ahead, so a capture is refused by memory until the clock
        check takes over.  Without, a forged packet could otherwise silence a genuine
        node for that long, so only long enough to sort out late and reordered packets.
        """
        if codec.authenticates:
            return 2 * self.options.replay_window + 2 * self.options.master_timeout
        return 2 * self.options.master_timeout

    def _receive_limit_for(self, codec: Codec) -> int:
        # Peers keep our budget; node-discover has none, and its cipher doubles some bytes.
        return max(self.options.max_datagram, codec.max_sealed_size(wire.DEFAULT_MAX_DATAGRAM))

    def link_lost(self, now: float) -> list[Action]:
        """Our transport lost the cluster (not the cluster us): freeze removals and elections."""
        if self._link_down_since is None:
            self._link_down_since = now
        self._last_run = now
        return []

    def link_restored(self, now: float) -> list[Action]:
        """Back: every peer gets back the time it had left before the outage, and we say hello."""
        if self._link_down_since is None or not self._running:
            self._link_down_since = None
            return []
        outage = now - self._link_down_since
        self._link_down_since = None
        self._last_run = now  # the outage is given back below, not again as a pause
        self._give_time_back(outage, now)
        out: list[Action] = []
        if not self.options.client:
            self._hello(now, out)
        return out

    def sync_wall_clock(self, now: float, wall_time: float) -> None:
        """Re-read the epoch clock (NTP steps, suspend/resume): sealed packets carry it."""
        self._wall_offset = wall_time - now

    def set_codec(self, codec: Codec) -> None:
        """Switch keys (rotation) from the next packet on; checks the advertisement still fits."""
        previous, self._codec = self._codec, codec
        try:
            self._check_size(self._advertisement)
        except ValueError:
            self._codec = previous
            raise
        self._receive_limit = self._receive_limit_for(codec)
        self._replay.retention = self._replay_retention(codec)
        self._repeats.clear()  # what the old keys opened, the new ones may not
        self._repeats_bytes = 0

    def advertise(self, advertisement: Any) -> None:
        """Set what goes out with every hello (the next one included); checked for size now.

        A snapshot is kept: changing the object afterwards changes nothing until the
        next ``advertise`` (and so can never make a later hello unsendable).
        """
        self._advertisement = self._check_size(advertisement)

    # ---------------------------------------------------------------- inputs
    def tick(self, now: float) -> list[Action]:
        """Do everything due at ``now``: expire nodes, say hello, reply, elect."""
        out: list[Action] = []
        if not self._running:
            return out
        if now > self._paused_if_after:
            self._resume_after_pause(now)
        self._last_run = now
        elect = self._expire(now, out)
        if self._stepping_down_until is not None and now >= self._stepping_down_until:
            self._stepping_down_until = None
            elect = True
            if not self.options.client:
                self._hello(now, out)
        if self._next_hello is not None and now >= self._next_hello:
            # Skip missed beats rather than bursting after a stall.
            self._next_hello += self.options.hello_interval * (
                int((now - self._next_hello) // self.options.hello_interval) + 1
            )
            self._reply_at = None  # this hello is the reply
            self._hello(now, out)
        if self._reply_at is not None and now >= self._reply_at:
            self._reply_at = None
            self._last_reply = now
            self._hello(now, out)
        if self._next_check is not None and now >= self._next_check:
            self._next_check = now + self.options.check_interval
            elect = True
            out.append(Emit("check"))
            self._replay.forget_expired(now)
        if elect:
            self._elect(now, out)
        self._watch_for_pauses()
        return out

    def _watch_for_pauses(self) -> None:
        """A driver ticks by the next hello and check; a full hello interval later means we were not run."""
        due = min(t for t in (self._next_hello, self._next_check, math.inf) if t is not None)
        self._paused_if_after = due + self.options.hello_interval

    def _resume_after_pause(self, now: float) -> None:
        """Called late: were we not run at all for a while (SIGSTOP, a suspended VM, a clock jump)?

        If nothing ran for over a hello interval, nothing was read either, so the silence
        proves nothing: every peer gets that time back, as after a transport outage
        (:meth:`link_restored`).  Removing them all at once would make us promote ourselves
        over the live master and flap.  A loop that is merely slow still reads, so its
        peers' silence counts and nothing is given back.
        """
        self._paused_if_after = now + self.options.hello_interval  # the tick due now re-arms it
        paused = now - self._last_run
        if paused <= self.options.hello_interval or self._link_down_since is not None:
            return  # running, only late; or an outage, which link_restored accounts for
        # A blocked event loop does this too; say it loudly only when peers would have gone.
        level = logging.WARNING if paused >= self.options.node_timeout / 2 else logging.DEBUG
        log.log(level, "not run for %.3f s (paused, blocked or a clock jump): peers keep their timeouts", paused)
        self.counters["pauses"] += 1
        self._give_time_back(paused, now)

    def _give_time_back(self, seconds: float, now: float) -> None:
        """Move every peer's last-seen time ``seconds`` later, never past ``now``.

        Clamping keeps each table in last-seen order (the expiry scan reads only its head)
        and keeps the expiry floor a lower bound: a hello can then only move an expiry later.
        """
        for ids in self._by_age.values():
            for iid in ids:
                ids[iid] = min(ids[iid] + seconds, now)
        # Expiries only moved later: the floor stays a valid lower bound.

    def datagram_received(self, now: float, data: bytes, addr: Address) -> list[Action]:
        """Handle one datagram from ``addr`` (``(host, port, ...)``).  Never raises for any input.

        Returns no actions only when :meth:`next_deadline` moved no earlier, so a driver
        may skip re-arming its timer then (the hot path: a hello that changed nothing).
        """
        out: list[Action] = []
        self.last_was_message = False
        if not self._running:
            return out
        if now > self._paused_if_after:
            self._resume_after_pause(now)
        self._last_run = now
        if type(data) is not bytes:  # a custom transport's bytearray or memoryview
            try:
                data = bytes(data)
            except TypeError:
                self._drop("malformed", addr, f"not bytes: {type(data).__name__}")
                return out
        host, port = addr if len(addr) == 2 and type(addr[1]) is int else _host_port(addr)
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += len(data)
        if len(data) > self._receive_limit:
            self._drop("oversized", addr, f"{len(data)} bytes")
            return out
        # Expire first: an election below must not count a node whose deadline has passed.
        if self._expire(now, out):
            self._elect(now, out)
        cached = self._repeats.get(data)
        if cached is not None:
            env, plaintext = cached
            iid = env.iid
            if self._hello_data_of.get(iid) is env.data:
                # The node's record was made from these very bytes: if they come from the
                # same place again, only the time changes (checks passed the first time).
                node = self._nodes[iid]
                if node.port == port and node.address == host:
                    ids = self._by_age[node.is_master]
                    del ids[iid]
                    ids[iid] = now
                    if self.report_unchanged_hellos:
                        out.append(Emit("helloReceived", (self._current(iid), False)))
                    return out
            # Anything else builds a record: from fresh objects, never ones handlers could
            # have been given (and mutated) before.  Only the opening is skipped.
            env, sent_at = wire.decode(plaintext), None
        else:
            try:
                plaintext, sent_at = self._codec.open(data)
                env = wire.decode(plaintext)
            except (OpenError, wire.DecodeError) as exc:
                self._drop(exc.reason, addr, exc)
                return out
        if env.iid == self.iid:
            if env.event in (wire.HELLO, wire.GOODBYE) or self.options.ignore_instance:
                self.dropped["own_instance"] += 1
                return out
        elif env.pid == self.pid and self.options.ignore_process:
            self.dropped["own_process"] += 1
            return out
        if sent_at is not None:
            window = self.options.replay_window
            if window and abs(now + self._wall_offset - sent_at) > window:
                self._drop("outside_window", addr, f"sent at {sent_at}, clock differs by more than {window}s")
                return out
        if env.seq is not None and not self._replay.accept(env.iid, env.seq, now):
            self._drop("replayed", addr, f"{env.iid} seq {env.seq}")
            return out
        if env.event == wire.HELLO:
            self._on_hello(now, env, host, port, out)
            if env.seq is None and sent_at is None and self._hello_data_of.get(env.iid) is env.data:
                self._remember(data, env, plaintext)
        elif env.event == wire.GOODBYE:
            self._on_goodbye(now, env, out)
        elif env.event in self._channels:
            self.last_was_message = True
            packet = Packet(env.event, env.pid, env.iid, env.hostname, env.data, host, port, env.seq)
            out.append(Emit(env.event, (env.data, packet)))
        elif env.event in RESERVED_NAMES:
            self.dropped["reserved_event"] += 1
        else:
            self.dropped["unknown_event"] += 1
        return out

    # -------------------------------------------------------------- internals
    def _remember(self, data: bytes, env: wire.Envelope, plaintext: bytes) -> None:
        """Keep an accepted node-discover hello so a byte-identical repeat skips all the work.

        node-discover peers send the same bytes every time (no seq, deterministic JSON and
        cipher), and opening and parsing are pure functions of the bytes.  Only hellos that
        made a node's record are kept, in at most REPEAT_CACHE_SIZE entries and
        REPEAT_CACHE_BYTES of datagrams; ours carry a seq and are never kept.
        """
        if len(self._repeats) >= REPEAT_CACHE_SIZE or self._repeats_bytes + len(data) > REPEAT_CACHE_BYTES:
            self._repeats.clear()
            self._repeats_bytes = 0
        if data not in self._repeats:
            self._repeats_bytes += len(data)
        self._repeats[data] = (env, plaintext)

    def _drop(self, reason: str, addr: Address, detail: object) -> None:
        self.dropped[reason] += 1
        log.debug("dropped datagram from %s: %s", addr, detail)
        if reason in _MISMATCH_ADVICE and self.dropped[reason] == 1:
            # Counting alone would leave a split cluster silent: say once what to change.
            log.warning("dropping packets from %s: %s", addr, _MISMATCH_ADVICE[reason])

    def _valid_channel(self, channel: object) -> bool:
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, got {type(channel).__name__}")
        if not channel:
            raise ValueError("channel must be a non-empty string")
        return channel not in RESERVED_NAMES

    def _current(self, iid: str) -> Node:
        """The record of ``iid`` with its latest ``last_seen``."""
        node = self._nodes[iid]
        seen = self._by_age[node.is_master][iid]
        if node.last_seen != seen:
            node = self._nodes[iid] = node.seen_at(seen)
        return node

    def _advertised_eligible(self) -> bool:
        return self._eligible and self._stepping_down_until is None

    def message_bytes(self, event: str, data: Any, *, what: str = "packet") -> bytes:
        """``data`` as a packet named ``event`` would carry it, in JSON; raises as a send would.

        The one "does it fit in a datagram" rule: encoded with the largest sequence number
        a packet can carry, so it still fits when sent later; :class:`PacketTooLarge` if
        its sealed form could exceed ``max_datagram``, ``TypeError`` if not JSON.
        """
        env = wire.Envelope(event, self.pid, self.iid, self.options.hostname, data, wire.MAX_SEQ)
        raw = wire.encode(env, what=what)
        self._fit(raw, what)
        return raw

    def max_payload(self, event: str) -> int:
        """The largest JSON text (bytes) of ``data`` that a packet named ``event`` can carry."""
        limit = self.options.max_datagram
        low, high = 0, limit  # the largest plaintext whose sealed form fits (codecs grow monotonically)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self._codec.max_sealed_size(mid) <= limit else (low, mid - 1)
        # The envelope around a one-byte ``data`` (``0``: None would be left out of the packet).
        smallest = wire.encode(wire.Envelope(event, self.pid, self.iid, self.options.hostname, 0, wire.MAX_SEQ))
        return max(0, low - (len(smallest) - 1))

    def _transmit(self, now: float, event: str, data: Any, *, what: str = "packet") -> Transmit:
        env = wire.Envelope(event, self.pid, self.iid, self.options.hostname, data, self._seq + 1)
        raw = wire.encode(env, what=what)
        self._fit(raw, what)
        self._seq += 1  # only once it will really be sent: no gaps from refused sends
        sealed = self._codec.seal(raw, now + self._wall_offset)
        self.counters["packets_out"] += 1
        self.counters["bytes_out"] += len(sealed)
        return Transmit(sealed)

    def _fit(self, raw: bytes, what: str) -> None:
        """Raise :class:`PacketTooLarge` if ``raw``, once sealed, could exceed the budget."""
        size = self._codec.max_sealed_size(len(raw))
        if size > self.options.max_datagram:
            raise PacketTooLarge(what, size, self.options.max_datagram)

    def _hello_data(self, advertisement: Any) -> dict[str, Any]:
        return wire.Hello(
            is_master=self._is_master,
            is_master_eligible=self._advertised_eligible(),
            weight=self.options.weight,
            advertisement=advertisement,
        ).to_json()

    def _check_size(self, advertisement: Any) -> Any:
        """Return a JSON snapshot of ``advertisement``; raise if a hello carrying it cannot be sent."""
        self.message_bytes(wire.HELLO, self._hello_data(advertisement), what="hello with this advertisement")
        return wire.snapshot(advertisement)

    def _hello(self, now: float, out: list[Action]) -> None:
        self._last_hello_at = now
        out.append(self._transmit(now, wire.HELLO, self._hello_data(self._advertisement)))
        out.append(Emit("helloEmitted"))

    def _on_hello(self, now: float, env: wire.Envelope, host: str, port: int, out: list[Action]) -> None:
        iid, seq, data = env.iid, env.seq, env.data
        old = self._nodes.get(iid)
        # The steady state of every cluster: a known node repeating itself.  Equal JSON
        # data from the same place needs no validation and no new record but the time.
        # Compared as JSON text: Python's == would take true for 1 and 1 for 1.0.
        data_json = wire.canonical(data)
        unchanged = (
            old is not None
            and data_json == self._hello_json_of.get(iid)
            and old.address == host
            and old.port == port
            and old.pid == env.pid
            and old.hostname == env.hostname
            and old.legacy is (seq is None)
        )
        if not unchanged:
            try:
                hello = wire.decode_hello(data)
            except wire.DecodeError as exc:
                self._drop(exc.reason, (host, port), exc)
                return
        if seq is not None:
            if seq < self._hello_seq.get(iid, -1):
                self.dropped["stale"] += 1  # reordered: an older state than the one we hold
                return
            self._hello_seq[iid] = seq
        if unchanged:
            assert old is not None
            self._hello_data_of[iid] = data  # the bytes just seen now stand for this record
            ids = self._by_age[old.is_master]
            del ids[iid]
            ids[iid] = now
            if self.report_unchanged_hellos:
                out.append(Emit("helloReceived", (self._current(iid), False)))
            return
        self._hello_data_of[iid] = data
        self._hello_json_of[iid] = data_json
        node = Node(
            id=env.iid,
            pid=env.pid,
            hostname=env.hostname,
            address=host,
            port=port,
            is_master=hello.is_master,
            is_master_eligible=hello.is_master_eligible,
            weight=hello.weight,
            advertisement=hello.advertisement,
            last_seen=now,
            legacy=env.seq is None,
        )
        self._nodes[env.iid] = node
        if old is not None:
            del self._by_age[old.is_master][env.iid]
        self._by_age[node.is_master][env.iid] = now
        # Refreshes only move expiries later; a new (or re-classed) entry may be the first due.
        timeout = self.options.master_timeout if node.is_master else self.options.node_timeout
        self._expiry_floor = min(self._expiry_floor, now + timeout)
        if old is None:
            out.append(Emit("added", (node,)))
            self._schedule_reply(now, just_started=env.seq is not None and env.seq <= 2)
        if node.is_master and (old is None or not old.is_master):
            out.append(Emit("master", (node,)))
            if self._stepping_down_until is not None:
                # A successor exists: the hand-over is done, be a normal candidate again.
                self._stepping_down_until = None
        if old is not None:
            # Reached only when something but the time changed (see ``unchanged`` above).
            out.append(Emit("nodeUpdated", (node, old)))
        out.append(Emit("helloReceived", (node, old is None)))
        if (
            old is None
            or old.is_master != node.is_master
            or old.is_master_eligible != node.is_master_eligible
            or old.weight != node.weight
        ):
            self._elect(now, out)

    def _on_goodbye(self, now: float, env: wire.Envelope, out: list[Action]) -> None:
        if env.seq is not None:
            if env.seq < self._hello_seq.get(env.iid, -1):
                self.dropped["stale"] += 1  # an old goodbye: the instance has said hello since
                return
            # Nothing it sent before the goodbye (a late hello, a replay) may bring it back.
            self._replay.close(env.iid, env.seq, now)
        if env.iid in self._nodes:
            self._remove(self._current(env.iid), out)
            self._elect(now, out)

    def _remove(self, node: Node, out: list[Action]) -> None:
        del self._nodes[node.id]
        del self._by_age[node.is_master][node.id]
        self._hello_seq.pop(node.id, None)
        self._hello_data_of.pop(node.id, None)
        self._hello_json_of.pop(node.id, None)
        out.append(Emit("removed", (node,)))

    def _expire(self, now: float, out: list[Action]) -> bool:
        if now < self._expiry_floor or self._link_down_since is not None:
            return False  # the common case, checked on every datagram: nobody can be due yet
        removed = False
        floor = math.inf
        for is_master, ids in self._by_age.items():
            timeout = self.options.master_timeout if is_master else self.options.node_timeout
            while ids:
                iid, seen = next(iter(ids.items()))
                expiry = seen + timeout
                if expiry > now:
                    floor = min(floor, expiry)
                    break
                node = self._current(iid)
                # Timed out: packets of it we never received must not bring it back either.
                self._replay.close(node.id, None, now)
                self._remove(node, out)
                removed = True
        self._expiry_floor = floor
        return removed

    def _schedule_reply(self, now: float, *, just_started: bool) -> None:
        """Answer a newcomer soon so it learns the cluster in milliseconds, not a hello interval.

        Replies are coalesced (one pending at a time), spread over a window that grows
        with the cluster (1 ms per known node, at most a quarter hello interval), and
        at most one per window, so 200 nodes answering one newcomer cannot storm.  A
        peer that is not itself new (its ``seq`` is past its first packets) heard a
        hello from us within the window needs no answer: that is the newcomer's own
        view filling up, and replying would only echo.
        """
        if self.options.client or self._reply_at is not None:
            return
        window = min(self.options.hello_interval / 4, 0.005 + 0.001 * len(self._nodes))
        if not just_started and now - self._last_hello_at < window:
            return
        at = max(now + self._rng.uniform(0, window), self._last_reply + window)
        if self._next_hello is not None and at >= self._next_hello:
            return  # the regular hello comes first
        self._reply_at = at

    def _elect(self, now: float, out: list[Action]) -> None:
        if not self._running or now < self._settle_at or self._link_down_since is not None:
            return
        decision = decide(
            my_rank=(self.options.weight, 0, self.iid),
            i_am_master=self._is_master,
            i_am_eligible=self._advertised_eligible(),
            others=self._nodes.values(),
            masters_required=self.options.masters_required,
        )
        if decision is Decision.PROMOTE:
            log.info("promoting %s to master", self.iid)
            self._is_master = True
            out.append(Emit("promotion", (self.me(now),)))
            self._hello(now, out)
        elif decision is Decision.DEMOTE:
            log.info("demoting %s: %d higher-ranked masters", self.iid, self.options.masters_required)
            self._is_master = False
            out.append(Emit("demotion", (self.me(now),)))
            self._hello(now, out)


#: Drops that mean a peer is configured differently, and what to change (logged once).
_MISMATCH_ADVICE = {
    "node_discover_cipher": "they look sealed with node-discover's cipher, but this node uses AES-GCM; "
    'to share a cluster with node-discover peers, set encryption="node-discover" (and the same key)',
    "plaintext": "they are unencrypted, but this node has a key; give every node the same key and encryption",
    "encrypted": "they are encrypted, but this node has no key; give every node the same key and encryption",
    "aead": 'they are sealed with AES-GCM (encryption="aead"), but this node uses node-discover\'s cipher; '
    "give every node the same encryption",
    "bad_key": "they are sealed with a key this node does not hold; give every node the same key "
    "(to rotate keys, list both: see the security page)",
}


def _host_port(addr: Address) -> tuple[str, int]:
    host = str(addr[0]) if addr else ""
    port = addr[1] if len(addr) > 1 and isinstance(addr[1], int) else 0
    return host, port
