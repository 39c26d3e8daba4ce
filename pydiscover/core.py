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
from collections import Counter
from typing import Any, NamedTuple

from . import wire
from .config import Options
from .election import Decision, desired_standing
from .errors import PacketTooLarge
from .master_role import MasterRole
from .node import Node, received_packet
from .peers import Peer, PeerTable
from .repeats import REPEAT_CACHE_BYTES as REPEAT_CACHE_BYTES  # re-exported: their old home
from .repeats import REPEAT_CACHE_SIZE as REPEAT_CACHE_SIZE
from .repeats import RepeatCache
from .security import Codec, OpenError, ReplayGuard
from .timers import Timers

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
        "coordinatorLost",
        "coordinatorReady",
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


class MastershipWanted(NamedTuple):
    """With a coordinator: this node should (``True``) or should no longer (``False``) hold a
    leader key.  The runtime asks the coordinator, then calls
    :meth:`DiscoveryCore.grant_mastership` once the key is held.  ``seq`` numbers the
    requests: a grant answers one, and counts only if it answers the latest (the
    election may change its mind while a grant is on its way)."""

    wanted: bool
    seq: int = 0


Action = Transmit | Emit | MastershipWanted

#: ``tuple.__new__(Emit, (...))``: a NamedTuple's own ``__new__`` is a Python function; the
#: hot paths (a message, a hello's report, a send) build theirs without it.
_new_tuple = tuple.__new__

#: New instances refused for a full table that the core remembers, so that one saying hello
#: again can be let in (:meth:`DiscoveryCore._make_room`).
REFUSED_MEMORY = 64


class DiscoveryCore:
    """One discovery instance's state.  Not thread-safe: one driver owns it.

    Composed of small units, each with one job: the peer table
    (:class:`~pydiscover.peers.PeerTable`), the repeat-hello memory
    (:class:`~pydiscover.repeats.RepeatCache`), the schedule (:class:`~pydiscover.timers.Timers`)
    and our master role (:class:`~pydiscover.master_role.MasterRole`).  This class
    routes packets and user calls between them.

    ``options.codec`` is only the first codec: the core owns the one in use
    (:meth:`set_codec`, :attr:`codec`).
    """

    def __init__(
        self,
        options: Options,
        *,
        pid: str,
        iid: str,
        rng: random.Random | None = None,
        report_unchanged_hellos: bool = True,
    ) -> None:
        self.options = options
        self.pid = pid
        self.iid = iid
        self._peers = PeerTable(node_timeout=options.node_timeout, master_timeout=options.master_timeout,
                                rank=(options.weight, 0, iid))
        # Every per-instance structure is bounded by max_nodes (a flood of made-up instances
        # is dropped at the table, see _table_full): the caches hold a hello per member.
        cache_entries = max(REPEAT_CACHE_SIZE, options.max_nodes)
        cache_bytes = max(REPEAT_CACHE_BYTES, options.max_nodes * 256)
        self._repeats = RepeatCache(cache_entries, cache_bytes)
        self._table_full_last = -math.inf  # the last hello dropped because the table was full
        self._refused: dict[str, None] = {}  # new instances refused for a full table, the latest REFUSED_MEMORY
        self._timers = Timers(
            hello_interval=options.hello_interval, check_interval=options.check_interval, rng=rng or random.Random()
        )
        self._role = MasterRole(
            rank=(options.weight, 0, iid),
            eligible=not options.client,
            masters_required=options.masters_required,
            master_timeout=options.master_timeout,
        )
        # Each (instance, seq) counts once, and is remembered past the instance's removal,
        # so a capture replayed after a leave or a timeout changes nothing.
        # (Members, instances removed within the retention, and message senders that say no hello.)
        self._replay = ReplayGuard(retention=self._replay_retention(options.codec),
                                   capacity=max(1024, 4 * options.max_nodes))
        self._report_unchanged = report_unchanged_hellos
        self._last_was_message = False
        self._last_emits_only = False
        self._codec = options.codec
        self._budgets: dict[str, int] = {}  # max_payload per packet name, for this codec
        self._wall_offset = 0.0
        # While our own link to the cluster is down (a broker transport lost its server),
        # peers' silence is not evidence they died: no removals, no elections.
        self._link_down_since: float | None = None
        self._channels: set[str] = set()
        # Peers obey the same budget; an IPv6 node still takes an IPv4-sized datagram.
        self._receive_limit = self._receive_limit_for(options.codec)
        self._seq = 0
        self._running = False
        # With a coordinator (set_fenced): mastership is held only with a leader key, the
        # election says who should hold one, and the node is a candidate only while its
        # coordinator lease is good.
        self._fenced = False
        self._fence_ready = False
        self._wants_master = False
        self._want_seq = 0
        self._token: int | None = None
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._advertisement = self._check_size(options.advertisement)

    # ------------------------------------------------------------------ views
    @property
    def running(self) -> bool:
        return self._running

    @property
    def is_master(self) -> bool:
        return self._role.is_master

    @property
    def nodes(self) -> dict[str, Node]:
        """A copy of the live node table (other instances only), keyed by instance id."""
        return self._peers.nodes()

    def has_node(self, iid: str) -> bool:
        """Whether ``iid`` is in the live node table."""
        return iid in self._peers

    def node(self, iid: str) -> Node | None:
        """The live record of ``iid`` (O(1), no copy of the table), or ``None``."""
        peer = self._peers.get(iid)
        return self._peers.current(peer) if peer is not None else None

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
            is_master=self._role.is_master,
            is_master_eligible=self._eligible,
            weight=self.options.weight,
            advertisement=self._advertisement,
            last_seen=now,
            fencing_token=self._token,
        )

    @property
    def _eligible(self) -> bool:
        """A candidate: the role's say, and with a coordinator only while its lease is good."""
        return self._role.eligible and (self._fence_ready or not self._fenced)

    @property
    def fenced(self) -> bool:
        """Whether mastership needs a leader key (:meth:`set_fenced`)."""
        return self._fenced

    @property
    def fencing_token(self) -> int | None:
        """While master with a coordinator: the revision of the leader key held, else ``None``."""
        return self._token

    def set_fenced(self, fenced: bool) -> None:
        """Hold mastership only with a coordinator's leader key (before :meth:`start`).

        The election then names the ``masters_required`` highest-ranked eligible nodes
        (:func:`~pydiscover.election.desired_master`); such a node asks for a key
        (:class:`MastershipWanted`) and is master from :meth:`grant_mastership` until
        :meth:`revoke_mastership` or until it should no longer be.
        """
        if self._running:
            raise RuntimeError("set_fenced() must be called before start()")
        self._fenced = fenced

    def set_fence_ready(self, now: float, ready: bool) -> list[Action]:
        """The coordinator's lease is good (``True``) or lost or doubtful (``False``).

        Without it this node is no candidate (its hellos say so, so others take over)
        and no master: call this before the lease can expire.
        """
        if ready == self._fence_ready:
            return []
        self._fence_ready = ready
        out: list[Action] = []
        if not ready:
            out += self.revoke_mastership(now)
        if self._running and not self.options.client:
            self._hello(now, out)
            self._elect(now, out)
        return out

    def grant_mastership(self, now: float, token: int, seq: int) -> list[Action]:
        """The coordinator holds a leader key whose revision is ``token``, for request ``seq``: be master.

        Only if ``seq`` is the latest request and it wanted the key, and the lease is
        good; otherwise nothing happens here (a later request, already on its way,
        tells the coordinator what to do with the key), except that a key granted to a
        node that cannot take it is handed back.
        """
        if seq != self._want_seq:
            return []  # answers an older request: the coordinator follows the latest one
        if not (self._running and self._fenced and self._wants_master and self._eligible):
            return [self._want(False)]
        out: list[Action] = []
        self._token = token
        if self._role.promote():
            log.info("promoting %s to master (fencing token %d)", self.iid, token)
            out.append(Emit("promotion", (self.me(now),)))
        self._hello(now, out)
        return out

    def revoke_mastership(self, now: float) -> list[Action]:
        """The leader key is gone or doubtful (lease lost, not refreshed in time): not master now."""
        out: list[Action] = []
        self._token = None
        if self._role.resign():
            log.warning("%s is no longer master: its coordinator lease is not held", self.iid)
            out.append(Emit("demotion", (self.me(now),)))
            if self._running and not self.options.client:
                self._hello(now, out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has work to do, or ``None`` when stopped."""
        if not self._running:
            return None
        # The expiry bound may be early: tick() then finds nothing due and re-arms.
        expiry = self._peers.next_expiry if self._link_down_since is None else None
        return self._timers.next_deadline(self._role.stepping_down_until, expiry)

    # ------------------------------------------------------ runtime's wishes
    def set_listening(self, *, hello_received: bool) -> None:
        """Tell the core whether anyone listens for ``helloReceived``.

        Without a listener, a hello that changed nothing returns no action at all: the
        event would be the costliest part of it, and the runtime then skips re-arming.
        """
        self._report_unchanged = hello_received

    @property
    def report_unchanged_hellos(self) -> bool:
        """Whether a hello that changed nothing emits ``helloReceived`` (see :meth:`set_listening`)."""
        return self._report_unchanged

    @report_unchanged_hellos.setter
    def report_unchanged_hellos(self, value: bool) -> None:
        self.set_listening(hello_received=value)

    @staticmethod
    def delivers_message(actions: list[Action]) -> bool:
        """Whether ``actions`` (from :meth:`datagram_received`) deliver a channel message.

        A runtime reads such datagrams at once (latency matters to them) rather than
        letting a stream of hellos gather.  Every other event the core emits is reserved.
        """
        return any(type(action) is Emit and action.event not in RESERVED_NAMES for action in actions)

    @property
    def last_was_message(self) -> bool:
        """Whether the last datagram was a channel message for us (see :meth:`delivers_message`)."""
        return self._last_was_message

    @property
    def last_emits_only(self) -> bool:
        """Whether the last datagram's actions are one event to emit and nothing else: a hello
        that changed nothing (its ``helloReceived`` report) or a channel message.

        No deadline moved earlier then: a runtime may emit it and skip everything else (the hot
        paths of a cluster with a ``helloReceived`` listener, and of messages).
        """
        return self._last_emits_only

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
        # Hold the first election until every peer's regular hello must have arrived
        # (the prompt replies usually bring them in milliseconds, but may be lost).
        settle_at = self._role.settle_at = now + max(self.options.check_interval, self.options.hello_interval)
        out: list[Action] = []
        if not self.options.client:
            self._hello(now, out)
        self._timers.start(now, first_check=settle_at, hellos=not self.options.client)
        return out

    def stop(self, now: float) -> list[Action]:
        """Stop; a server says goodbye so peers drop it and elect a successor at once.

        A master also emits ``demotion``: it is not master any more.
        """
        if not self._running:
            return []
        out: list[Action] = []
        if not self.options.client:
            out.append(self._transmit(now, wire.GOODBYE, {"isMaster": self._role.is_master}))
        self._running = False
        self._timers.stop()
        # A stopped node knows nothing: a restart must not report stale peers as live.
        self._peers.clear()
        self._refused.clear()
        self._repeats.clear()
        self._token = None
        self._wants_master = False  # the coordinator lets go of everything on stop
        if self._role.resign():
            # Symmetric with "promotion": whatever master-only work a handler started, stop it.
            out.append(Emit("demotion", (self.me(now),)))
        return out

    # ------------------------------------------------------------- user calls
    def promote(self, now: float) -> list[Action]:
        """Become master now (and eligible again, even after ``demote(permanent=True)``)."""
        if self.options.client:
            raise RuntimeError("a client=True node sends no hellos and can never be master")
        out: list[Action] = []
        if self._fenced:
            # With a coordinator mastership comes with a leader key only: be a candidate
            # again, and master once the election names this node and the key is held.
            self._role.make_eligible()
            if self._running:
                self._hello(now, out)
                self._elect(now, out)
            return out
        if self._role.promote():
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
        if self._role.demote(now, permanent=permanent):
            self._token = None
            out.append(Emit("demotion", (self.me(now),)))
        if self._running and not self.options.client:
            self._hello(now, out)
            if self._fenced:
                self._elect(now, out)  # hands the leader key back
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
        self._timers.last_run = now
        return []

    def link_restored(self, now: float) -> list[Action]:
        """Back: every peer gets back the time it had left before the outage, and we say hello."""
        if self._link_down_since is None or not self._running:
            self._link_down_since = None
            return []
        outage = now - self._link_down_since
        self._link_down_since = None
        self._timers.last_run = now  # the outage is given back below, not again as a pause
        self._peers.give_time_back(outage, now)
        # And to the replay memory: a peer's messages held through the outage (Redis) come
        # now, and the seqs it sent before must still count as taken.
        self._replay.postpone(outage)
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
        # What the old keys opened, the new ones may not.  (Peers' bodies stay: they are
        # compared after opening, with whatever key opened them.)
        self._repeats.clear()
        self._budgets.clear()

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
        timers = self._timers
        if now > timers.paused_if_after:
            self._resume_after_pause(now)
        timers.last_run = now
        elect = self._expire(now, out)
        if self._role.step_down_over(now):
            elect = True
            if not self.options.client:
                self._hello(now, out)
        if timers.hello_due(now):
            self._hello(now, out)
        if timers.reply_due(now):
            self._hello(now, out)
        if timers.check_due(now):
            elect = True
            out.append(Emit("check"))
            if self._link_down_since is None:  # an outage is no sign that anyone left (see link_restored)
                self._replay.forget_expired(now)
        if elect:
            self._elect(now, out)
        timers.watch()
        return out

    def _resume_after_pause(self, now: float) -> None:
        """Called late: were we not run at all for a while (SIGSTOP, a suspended VM, a clock jump)?

        If nothing ran for over a hello interval, nothing was read either, so the silence
        proves nothing: every peer gets that time back, as after a transport outage
        (:meth:`link_restored`).  Removing them all at once would make us promote ourselves
        over the live master and flap.  A loop that is merely slow still reads, so its
        peers' silence counts and nothing is given back.
        """
        paused = self._timers.pause_before(now)
        if not paused or self._link_down_since is not None:
            return  # running, only late; or an outage, which link_restored accounts for
        # A blocked event loop does this too; say it loudly only when peers would have gone.
        level = logging.WARNING if paused >= self.options.node_timeout / 2 else logging.DEBUG
        log.log(level, "not run for %.3f s (paused, blocked or a clock jump): peers keep their timeouts", paused)
        self.counters["pauses"] += 1
        self._peers.give_time_back(paused, now)

    def datagram_received(self, now: float, data: bytes, addr: Address) -> list[Action]:
        """Handle one datagram from ``addr`` (``(host, port, ...)``).  Never raises for any input.

        Returns no actions only when :meth:`next_deadline` moved no earlier, so a driver
        may skip re-arming its timer then (the hot path: a hello that changed nothing).
        """
        out: list[Action] = []
        self._last_was_message = self._last_emits_only = False
        if not self._running:
            return out
        timers = self._timers
        if now > timers.paused_if_after:
            self._resume_after_pause(now)
        timers.last_run = now
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
        peers = self._peers
        # Expire first: an election below must not count a node whose deadline has passed.
        if now >= peers.next_expiry and self._expire(now, out):
            self._elect(now, out)
        cached = self._repeats.get(data)
        if cached is not None:
            env, plaintext = cached
            peer = peers.get(env.iid)
            if peer is not None and peer.data is env.data:
                # The peer's record was made from these very bytes: if they come from the
                # same place again, only the time changes (checks passed the first time).
                node = peer.node
                if node.port == port and node.address == host:
                    self._unchanged_hello(peer, now, out)
                    return out
            # Anything else builds a record: from fresh objects, never ones handlers could
            # have been given (and mutated) before.  Only the opening is skipped.
            env, sent_at, key = wire.decode(plaintext), None, None
        else:
            try:
                plaintext, sent_at = self._codec.open(data)
            except OpenError as exc:
                self._drop(exc.reason, addr, exc)
                return out
            key = wire.hello_key(plaintext) if plaintext.startswith(wire.HELLO_START) else None
            if key is not None:
                # Our peers' hellos: the same text but the seq as the one that made the
                # record moves only its time, as a node-discover repeat does.
                peer = peers.get(key[0])
                if peer is not None and peer.body == key[1] \
                        and self._seq_only_hello(now, peer, key[2], sent_at, host, port, out):
                    return out
            try:
                env = wire.decode(plaintext)
            except wire.DecodeError as exc:
                self._drop(exc.reason, addr, exc)
                return out
        if env.iid == self.iid:
            if env.event in (wire.HELLO, wire.GOODBYE) or self.options.ignore_instance:
                self.dropped["own_instance"] += 1
                return out
        elif env.pid == self.pid and self.options.ignore_process:
            self.dropped["own_process"] += 1
            return out
        if env.event == wire.HELLO and len(peers) >= self.options.max_nodes and peers.get(env.iid) is None \
                and not self._make_room(now, env.iid, out):
            self._table_full(now, addr)  # before _fresh: a flood leaves no replay state either
            return out
        if not self._fresh(now, env.iid, env.seq, sent_at, addr):
            return out
        if env.event == wire.HELLO:
            self._on_hello(now, env, host, port, out)
            peer = peers.get(env.iid)
            if peer is not None and peer.data is env.data:  # it made (or refreshed) the record
                if env.seq is None and sent_at is None:
                    self._repeats.remember(data, env, plaintext)
                # The text that stands for the record now (or none): see Peer.body.
                peer.body = key[1] if key is not None and key[0] == env.iid else None
        elif env.event == wire.GOODBYE:
            self._on_goodbye(now, env, out)
        elif env.event in self._channels:
            self._last_was_message = True
            self._last_emits_only = not out  # nothing expired on the way here
            packet = received_packet(env.event, env.pid, env.iid, env.hostname, env.data, host, port, env.seq)
            out.append(_new_tuple(Emit, (env.event, (env.data, packet))))
        elif env.event in RESERVED_NAMES:
            self.dropped["reserved_event"] += 1
        else:
            self.dropped["unknown_event"] += 1
        return out

    # -------------------------------------------------------------- internals
    def _seq_only_hello(self, now: float, peer: Peer, seq: int, sent_at: float | None, host: str, port: int,
                        out: list[Action]) -> bool:
        """A hello equal but for its seq to the one that made ``peer``'s record: the checks
        that depend on the seq and the time, then only the time moves.  ``False`` (parse
        it) if it came from elsewhere."""
        node = peer.node
        if node.port != port or node.address != host:
            return False
        if not self._fresh(now, node.id, seq, sent_at, (host, port)):
            return True  # dropped and counted
        if seq < peer.seq:
            self.dropped["stale"] += 1  # reordered: an older state than the one we hold
            return True
        peer.seq = seq
        self._unchanged_hello(peer, now, out)
        return True

    def _fresh(self, now: float, iid: str, seq: int | None, sent_at: float | None, addr: Address) -> bool:
        """The checks on a packet's time and seq: sent within the replay window (sealed packets
        carry their sender's clock), and a seq never taken before; a failure is dropped."""
        if sent_at is not None:
            window = self.options.replay_window
            if window and abs(now + self._wall_offset - sent_at) > window:
                self._drop("outside_window", addr, f"sent at {sent_at}, clock differs by more than {window}s")
                return False
        if seq is not None and not self._replay.accept(iid, seq, now):
            self._drop("replayed", addr, f"{iid} seq {seq}")
            return False
        return True

    def _unchanged_hello(self, peer: Peer, now: float, out: list[Action]) -> None:
        """The steady state of every cluster, a known node repeating itself: only the time moves."""
        self._peers.seen(peer, now)
        self._last_emits_only = not out  # nothing expired on the way here
        if self._report_unchanged:
            out.append(_new_tuple(Emit, ("helloReceived", (self._peers.current(peer), False))))

    def _drop(self, reason: str, addr: Address, detail: object) -> None:
        self.dropped[reason] += 1
        log.debug("dropped datagram from %s: %s", addr, detail)
        if reason in _MISMATCH_ADVICE and self.dropped[reason] == 1:
            # Counting alone would leave a split cluster silent: say once what to change.
            log.warning("dropping packets from %s: %s", addr, _MISMATCH_ADVICE[reason])

    def _make_room(self, now: float, iid: str, out: list[Action]) -> bool:
        """A full table and a hello from new instance ``iid``: admit it if it was refused before
        (it keeps saying hello: a live node), in place of the instance heard only once and
        longest ago (it never said hello again: what a flood of made-up instances leaves).

        Members heard more than once are never evicted.  During a flood the memory of
        refused instances (:data:`REFUSED_MEMORY`) turns over within milliseconds, so
        nobody gets in by persistence while it lasts; once it ends, a real newcomer is in
        at its second hello, instead of waiting up to a ``node_timeout`` for the made-up
        instances to time out.
        """
        refused = self._refused
        if iid not in refused:
            if len(refused) >= REFUSED_MEMORY:
                del refused[next(iter(refused))]
            refused[iid] = None
            return False
        peer = self._peers.heard_once_longest_ago()
        if peer is None:
            return False  # every member was heard again: it waits, as before
        del refused[iid]
        node = self._peers.remove(peer.node.id)
        self._replay.close(node.id, None, now)  # as on a timeout: its old packets must not bring it back
        self.counters["evicted"] += 1  # stats["evicted"]
        out.append(Emit("removed", (node,)))
        self._elect(now, out)
        return True

    def _table_full(self, now: float, addr: Address) -> None:
        """A hello from a new instance with ``max_nodes`` known: dropped; members are never evicted for it
        (an instance heard only once is no member: :meth:`_make_room`).

        Warns once per burst (drops less than a ``node_timeout`` apart), as a flood would
        otherwise log thousands of lines a second.
        """
        self.dropped["table_full"] += 1
        if now - self._table_full_last > self.options.node_timeout:
            log.warning(
                "node table full (max_nodes=%d): hellos from new instances are dropped (first from %s) and "
                "counted in stats['dropped']['table_full']; members already known stay", self.options.max_nodes,
                addr,
            )
        self._table_full_last = now

    def _valid_channel(self, channel: object) -> bool:
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, got {type(channel).__name__}")
        if not channel:
            raise ValueError("channel must be a non-empty string")
        return channel not in RESERVED_NAMES

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
        """The largest JSON text (bytes) of ``data`` that a packet named ``event`` can carry.

        Asked for every message a layer checks before promising it, so remembered per
        name until the codec changes (the only other input that can change).
        """
        budget = self._budgets.get(event)
        if budget is None:
            budget = self._budgets[event] = self._compute_max_payload(event)
        return budget

    def _compute_max_payload(self, event: str) -> int:
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
        counters = self.counters
        counters["packets_out"] += 1
        counters["bytes_out"] += len(sealed)
        return _new_tuple(Transmit, (sealed,))

    def _fit(self, raw: bytes, what: str) -> None:
        """Raise :class:`PacketTooLarge` if ``raw``, once sealed, could exceed the budget."""
        size = self._codec.max_sealed_size(len(raw))
        if size > self.options.max_datagram:
            raise PacketTooLarge(what, size, self.options.max_datagram)

    def _hello_data(self, advertisement: Any) -> dict[str, Any]:
        return wire.Hello(
            is_master=self._role.is_master,
            is_master_eligible=self._eligible,
            weight=self.options.weight,
            advertisement=advertisement,
            token=self._token if self._role.is_master else None,
        ).to_json()

    def _check_size(self, advertisement: Any) -> Any:
        """Return a JSON snapshot of ``advertisement``; raise if a hello carrying it cannot be sent."""
        self.message_bytes(wire.HELLO, self._hello_data(advertisement), what="hello with this advertisement")
        return wire.snapshot(advertisement)

    def hello(self, now: float) -> list[Action]:
        """Say hello now (node-discover's ``hello()``); the beat goes on from here.  Nothing
        when stopped or a client (a client never says hello)."""
        out: list[Action] = []
        if self._running and not self.options.client:
            self._hello(now, out)
        return out

    def _hello(self, now: float, out: list[Action]) -> None:
        self._timers.hello_sent(now)
        out.append(self._transmit(now, wire.HELLO, self._hello_data(self._advertisement)))
        out.append(Emit("helloEmitted"))

    def _on_hello(self, now: float, env: wire.Envelope, host: str, port: int, out: list[Action]) -> None:
        iid, seq, data = env.iid, env.seq, env.data
        peer = self._peers.get(iid)
        # Equal JSON data from the same place needs no validation and no new record but
        # the time.  Compared as JSON text: Python's == would take true for 1 and 1 for 1.0.
        try:
            data_json = wire.canonical(data)
        except TypeError:
            # Nested deeper than orjson writes (it reads 1,024 levels, writes 254): no
            # peer could send it (advertise() refuses it), and no record could keep it.
            self._drop("bad_hello", (host, port), "hello data nested too deeply")
            return
        old: Node | None = None
        unchanged = False
        if peer is not None:
            old = peer.node
            unchanged = (
                data_json == peer.data_json
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
        if seq is not None and peer is not None:
            if seq < peer.seq:
                self.dropped["stale"] += 1  # reordered: an older state than the one we hold
                return
            peer.seq = seq
        if unchanged:
            assert peer is not None
            peer.data = data  # the bytes just seen now stand for this record
            self._unchanged_hello(peer, now, out)
            return
        node = Node(
            id=iid,
            pid=env.pid,
            hostname=env.hostname,
            address=host,
            port=port,
            is_master=hello.is_master,
            is_master_eligible=hello.is_master_eligible,
            weight=hello.weight,
            advertisement=hello.advertisement,
            last_seen=now,
            legacy=seq is None,
            fencing_token=hello.token if hello.is_master else None,
        )
        self._peers.record(node, data, data_json, seq)
        if old is None:
            out.append(Emit("added", (node,)))
            if not self.options.client:
                self._timers.schedule_reply(now, just_started=seq is not None and seq <= 2, peers=len(self._peers))
        if node.is_master and (old is None or not old.is_master):
            out.append(Emit("master", (node,)))
            self._role.successor_seen()  # a hand-over in progress is done
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
        peer = self._peers.get(env.iid)
        if env.seq is not None:
            if peer is not None and env.seq < peer.seq:
                self.dropped["stale"] += 1  # an old goodbye: the instance has said hello since
                return
            # Nothing it sent before the goodbye (a late hello, a replay) may bring it back.
            self._replay.close(env.iid, env.seq, now)
        if peer is not None:
            out.append(Emit("removed", (self._peers.remove(env.iid),)))
            self._elect(now, out)

    def _expire(self, now: float, out: list[Action]) -> bool:
        """Remove every peer past its timeout; ``True`` if any (an election is then due)."""
        if now < self._peers.next_expiry or self._link_down_since is not None:
            return False  # the common case: nobody can be due yet
        gone = self._peers.expired(now)
        for node in gone:
            # Timed out: packets of it we never received must not bring it back either.
            self._replay.close(node.id, None, now)
            out.append(Emit("removed", (node,)))
        return bool(gone)

    def _elect(self, now: float, out: list[Action]) -> None:
        if not self._running or self._link_down_since is not None:
            return
        if self._fenced:
            self._elect_fenced(now, out)
            return
        decision = self._role.elect(now, self._peers.standing)
        if decision is Decision.PROMOTE:
            log.info("promoting %s to master", self.iid)
            out.append(Emit("promotion", (self.me(now),)))
            self._hello(now, out)
        elif decision is Decision.DEMOTE:
            log.info("demoting %s: %d higher-ranked masters", self.iid, self.options.masters_required)
            out.append(Emit("demotion", (self.me(now),)))
            self._hello(now, out)

    def _elect_fenced(self, now: float, out: list[Action]) -> None:
        """Who should hold a leader key: stop being master first, then hand the key back."""
        if now < self._role.settle_at:
            return
        wanted = desired_standing(self._peers.standing, i_am_eligible=self._eligible,
                                  masters_required=self.options.masters_required)
        if not wanted and self._role.resign():
            log.info("demoting %s: %d higher-ranked candidates", self.iid, self.options.masters_required)
            self._token = None
            out.append(Emit("demotion", (self.me(now),)))
            self._hello(now, out)
        if wanted != self._wants_master:
            out.append(self._want(wanted))

    def _want(self, wanted: bool) -> MastershipWanted:
        self._wants_master = wanted
        self._want_seq += 1
        return MastershipWanted(wanted, self._want_seq)


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
