"""The runtime: drive the sans-IO core from a transport and a clock.

:class:`AsyncDiscovery` runs on the caller's asyncio loop; :class:`Discovery` runs the
same class on a private loop in a daemon thread (python-zeroconf's shape), so both
share every protocol rule.  Neither contains protocol logic: they feed the core and
carry out what it returns.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._threads import run_coro_with_timeout
from .core import Action, DiscoveryCore, Emit, Transmit
from .errors import TransportError
from .events import SafeEmitter
from .node import Node, Packet
from .options import (
    Encryption,
    Endpoint,
    Options,
    build_options,
    document_options,
    engine_options,
    explains_unknown_options,
    parse_destination,
    parse_unicast,
)
from .peerbook import MAX_LEARNED as MAX_LEARNED  # re-exported: read at each node's creation
from .peerbook import MAX_PENDING as MAX_PENDING
from .peerbook import PEERS_CHANNEL as PEERS_CHANNEL
from .peerbook import DestinationsChanged, PeerAction, PeerBook
from .registry import Registration, Registry
from .security import Codec, Secret, make_codec
from .transports.base import Address, Transport
from .transports.udp import UdpTransport

if TYPE_CHECKING:
    from .etcd.coordinator import EtcdCoordinator

log = logging.getLogger("pydiscover.discovery")

T = TypeVar("T")
Handler = Callable[..., Any]
H = TypeVar("H", bound=Callable[..., Any])

_process_id = str(uuid.uuid4())


def _after_fork_in_child() -> None:
    """A forked child is a new process: a new pid for peers, and none of the parent's nodes.

    The parent's ``Discovery`` threads do not exist in the child, so it must neither
    stop them at exit nor on SIGTERM (that would wait on a loop that never runs).
    """
    global _process_id
    _process_id = str(uuid.uuid4())
    _running_sync.clear()
    if signal.getsignal(signal.SIGTERM) is _stop_all_then_die:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):  # POSIX only; elsewhere there is no fork to survive
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: How long ``Discovery.stop()`` waits for the engine to stop (cleanup before the goodbye included).
STOP_TIMEOUT = 60.0

#: At most one ``error`` event per transport error reason in this many seconds.
ERROR_REPORT_INTERVAL = 5.0

_PEER_EVENTS = frozenset({"added", "removed", "nodeUpdated", PEERS_CHANNEL})


def _endpoint_text(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ErrorReports:
    """Rate-limits transport errors into ``error`` events: one per reason per interval, with a count."""

    def __init__(self, interval: float = ERROR_REPORT_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def due(self, reason: str, now: float) -> int | None:
        """``None``: stay quiet; else report now, with how many were suppressed since the last report."""
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return self._suppressed.pop(reason, 0)


async def wait_with_timeout(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` raising the builtin ``TimeoutError`` (3.10's is ``asyncio.TimeoutError``)."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s") from None


def _broker_timing(options: Options) -> float:
    """How fast a broker transport notices an outage and comes back, from the cluster's timing.

    Every peer entry has at least ``node_timeout - hello_interval`` left when our link
    fails.  A silent failure must be noticed within that (``ping_timeout`` plus one
    ``ping_interval``), or peers would be removed first; and after the outage nodes come
    back up to one backoff step apart, which must fit in it too.  Half of it for each,
    within 0.25-2 s: the result is both the backoff cap and the ping timeout.
    """
    return min(2.0, max(0.25, (options.node_timeout - options.hello_interval) / 2))


def _make_transport(options: Options, transport: Any) -> tuple[Transport, Options]:
    """The transport for ``transport`` (``None``: UDP; a URL; an object), and the options in effect."""
    if transport is None:
        if options.namespace is not None:
            raise ValueError("namespace applies only to a Redis transport (transport='redis://host:port/0')")
        udp = UdpTransport(
            address=options.address,
            port=options.port,
            broadcast=options.broadcast,
            multicast=options.multicast,
            multicast_ttl=options.multicast_ttl,
            interface=options.interface,
            unicast=options.unicast,
            reuse_addr=options.reuse_addr,
            read_coalesce=options.read_coalesce,
        )
        return udp, options
    if isinstance(transport, Transport):
        if options.namespace is not None and getattr(transport, "namespace", None) != options.namespace:
            raise ValueError(
                "namespace does not apply to a transport object: give it to the transport itself, "
                "e.g. RedisTransport(url, namespace=...)"
            )
        return transport, options
    if isinstance(transport, str):
        scheme = transport.partition(":")[0].lower()
        if scheme in ("redis", "rediss"):
            from .transports.redis import RedisTransport  # imports the redis package: only when used

            budget = _broker_timing(options)
            redis = RedisTransport(
                transport,
                namespace=options.namespace,
                max_backoff=budget,
                ping_timeout=budget,
                ping_interval=budget / 4,
            )
            return redis, replace(options, namespace=redis.namespace)
        from .transports.redis import redact

        raise ValueError(
            f"transport URL {redact(transport)!r}: unsupported scheme {scheme!r}; "
            "use redis://host:port/db or rediss://host:port/db (or a Transport object)"
        )
    raise TypeError(f"transport must be a Transport instance or a redis:// URL, got {type(transport).__name__}")


def _make_coordinator(coordinator: Any, options: Options) -> EtcdCoordinator | None:
    """The coordinator for ``coordinator`` (``None``; an ``etcd://`` URL; an ``EtcdCoordinator``)."""
    if coordinator is None:
        return None
    if options.client:
        raise ValueError("coordinator: a client=True node is never master; leave coordinator unset")
    from .etcd.coordinator import EtcdCoordinator  # imports the etcd client: only when used

    if isinstance(coordinator, str):
        coordinator = EtcdCoordinator(coordinator)
    if not isinstance(coordinator, EtcdCoordinator):
        raise TypeError(f"coordinator must be an etcd:// URL or an EtcdCoordinator, got {type(coordinator).__name__}")
    coordinator.adopt_timing(options.node_timeout, options.masters_required)
    return coordinator


def _make_registry(registry: Any, options: Options, transport: Transport) -> Registry | None:
    """The registry for ``registry`` (``None``; an ``etcd://`` URL; a :class:`Registry` object)."""
    if registry is None:
        return None
    if not transport.supports_destinations:
        raise ValueError(
            f"registry: {type(transport).__name__} reaches every member by itself; a registry "
            "lists UDP endpoints (leave transport unset)"
        )
    if isinstance(registry, str):
        from .etcd import EtcdRegistry  # imports the etcd client: only when used

        registry = EtcdRegistry(registry)
    if isinstance(registry, Registry):
        registry.adopt_timing(options.node_timeout, options.hello_interval)
        return registry
    raise TypeError(f"registry must be an etcd:// URL or a Registry object, got {type(registry).__name__}")


def codec_for(current: str, key: Secret | list[Secret], encryption: str | None) -> Codec:
    """Build (and derive keys for: scrypt takes tens of ms) the codec for a new key ring.

    ``encryption`` defaults to the ``current`` mode; a keyed node never goes back to plaintext.
    """
    if key is None:
        raise ValueError("set_key: a keyed node never falls back to plaintext; restart without a key")
    return make_codec(key, encryption or (current if current != "plaintext" else None))


class AsyncDiscovery:
    """Discovery on the running asyncio loop.  Use ``async with`` or ``await start()``.

    Options are those of :class:`Discovery` (see the README); handlers may be plain
    functions or coroutines and run on this loop.
    """

    @explains_unknown_options
    def __init__(
        self,
        *,
        hello_interval: float = Options.hello_interval,
        check_interval: float = Options.check_interval,
        node_timeout: float = Options.node_timeout,
        master_timeout: float | None = None,
        address: str = Options.address,
        port: int = Options.port,
        broadcast: str | None = None,
        multicast: str | None = None,
        multicast_ttl: int = Options.multicast_ttl,
        interface: str | None = None,
        unicast: str | Sequence[str] | None = None,
        learn_peers: bool | None = None,
        key: Secret | Sequence[Secret] | None = None,
        encryption: Encryption | None = None,
        replay_window: float = Options.replay_window,
        read_coalesce: float = Options.read_coalesce,
        masters_required: int = Options.masters_required,
        weight: float | None = None,
        client: bool = Options.client,
        reuse_addr: bool = Options.reuse_addr,
        ignore_process: bool = Options.ignore_process,
        ignore_instance: bool = Options.ignore_instance,
        hostname: str | None = None,
        advertisement: Any = None,
        max_datagram: int | None = None,
        max_nodes: int = Options.max_nodes,
        transport: str | Transport | None = None,
        namespace: str | None = None,
        registry: str | Registry | None = None,
        coordinator: str | EtcdCoordinator | None = None,
        allow_long_intervals: bool = False,
    ) -> None:
        settings = engine_options(locals())
        transport = settings.pop("transport")
        registry = settings.pop("registry")
        coordinator = settings.pop("coordinator")
        if registry is not None and broadcast is None and multicast is None and unicast is None:
            settings["unicast"] = []  # registry= alone is a complete configuration: unicast mode
        self._check_advertisement(advertisement)
        #: The settings in effect: the validated options, with the namespace a Redis URL chose
        #: and the codec the last ``set_key`` installed (a new snapshot each time, never edited).
        self.options: Options
        self._transport, self.options = _make_transport(build_options(**settings), transport)
        self._registry = _make_registry(registry, self.options, self._transport)
        self._coordinator = _make_coordinator(coordinator, self.options)
        self._core = DiscoveryCore(self.options, pid=_process_id, iid=str(uuid.uuid4()))
        self._fence_timer: asyncio.TimerHandle | None = None
        #: Until when (``time.monotonic()``) the coordinator's lease may be acted on; ``None``: not now.
        self._fence_deadline: float | None = None
        self._fence_announced = False  # "coordinatorReady" emitted, "coordinatorLost" not since
        if self._coordinator is not None:
            self._core.set_fenced(True)
        self._emitter = SafeEmitter()
        # Without a helloReceived handler a hello that changed nothing returns no action at all.
        self._emitter.watch("helloReceived", lambda listened: self._core.set_listening(hello_received=listened))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: What ``started``/``stopped`` handlers receive: the object the user holds.
        self._facade: AsyncDiscovery | Discovery = self
        #: Awaited at the start of stop(), before the goodbye (layers such as the balancer).
        self._before_stop: list[Callable[[], Awaitable[None]]] = []
        self._transport_errors = _ErrorReports()
        #: Destinations and learned peers; ``None`` on a transport that reaches every member by itself.
        self._book: PeerBook | None = None
        self._book_error_logged = False
        if self._transport.supports_destinations:
            self._book = PeerBook(
                self.options.unicast, self.options.learn_peers, node_timeout=self.options.node_timeout,
                ask_interval=self.options.hello_interval, max_pending=MAX_PENDING,
                max_learned=min(MAX_LEARNED, self.options.max_nodes),
            )
            # Joined even when not learning: a learning peer's question is then answered
            # or ignored here, not counted as a message on an unknown channel.
            self._core.join(PEERS_CHANNEL)
        elif self.options.learn_peers:
            log.debug("learn_peers: %s reaches every member by itself, nothing to learn",
                      type(self._transport).__name__)
        self._init_layer()

    def _init_layer(self) -> None:
        """Subclasses (services) set up their own state here, once the engine exists.

        A hook rather than an ``__init__`` override, so the options stay declared in
        one signature (this class's) for every subclass.
        """

    def _check_advertisement(self, advertisement: Any) -> None:
        """Subclasses narrow what may be advertised (a service needs a name); checked at every change."""

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> bool:
        """Bind (or connect) and say hello.  ``False`` if already running.

        Raises :class:`BindError` when the UDP port cannot be bound, and
        :class:`TransportUnavailable` when a Redis server cannot be reached.
        """
        if self._core.running:
            return False
        loop = asyncio.get_running_loop()
        self._emitter.set_loop(loop)
        self._transport.set_link_listener(self._link_changed)
        self._transport.set_error_listener(self._transport_error)
        # Peers refuse a sealed packet older than the replay window: a held message must not outlive it.
        self._transport.set_message_lifetime(self.options.replay_window or None)
        await self._transport.open(self._datagram_received)
        if self._registry is not None:
            try:
                await self._open_registry(self._registry)
            except BaseException:
                await self._transport.close()  # nothing is left started
                raise
        if self._coordinator is not None:
            self._loop = loop  # the coordinator's first report may come before start() returns
            try:
                await self._coordinator.open(self.id, self)
            except BaseException:
                self._loop = None
                if self._registry is not None:
                    await self._registry.close()
                await self._transport.close()
                raise
        self._loop = loop
        if self._book is not None:
            self._book.start(self._transport.local_address)
            if self._registry is not None:  # the first hello goes to every member registered
                self._carry_out(self._book.set_registered(self._registered_endpoints(self._registry.members)))
        self._apply(self._core.start(loop.time(), time.time()))
        if self._fence_deadline is not None:  # the coordinator's first report came during start()
            self.lease_good_until(self._fence_deadline)
        self._emitter.emit("started", self._facade)
        return True

    async def stop(self) -> bool:
        """Say goodbye (peers drop this node at once), close the socket.  ``False`` if not running."""
        if not self._core.running or self._loop is None:
            return False
        # e.g. release resources *before* peers hear the goodbye; all at once, so several
        # layers' slow hooks add up to the slowest, not to the sum.
        results = await asyncio.gather(*(cleanup() for cleanup in list(self._before_stop)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):  # a cancelled hook too: the stop goes on, said aloud
                log.error("cleanup before stop failed", exc_info=result)
        self._apply(self._core.stop(self._loop.time()))
        self._cancel_timer()
        if self._coordinator is not None:
            self._cancel_fence_timer()
            self._fence_deadline = None
            self._fence_announced = False
            await self._coordinator.close()  # the leader key goes with the lease, at once
        if self._registry is not None:
            await self._registry.close()  # the registration goes at once (etcd: the lease is revoked)
        await self._transport.close()
        if self._book is not None:
            self._carry_out(self._book.clear())
        self._emitter.emit("stopped", self._facade)
        await self._drain_handlers()
        for _ in range(3):
            # Let waiters woken by "stopped" (wait_for, ready) finish and hand their result
            # to other threads before the sync facade stops this loop.
            await asyncio.sleep(0)
        return True

    async def _drain_handlers(self, grace: float = 5.0) -> None:
        """Let coroutine handlers (``demotion``, ``stopped``, ...) finish; cancel what outlives ``grace``."""
        pending = {f for f in self._emitter.running_handlers() if f is not asyncio.current_task()}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=grace)
        for future in late:
            log.warning("cancelling an event handler still running %.0fs after stop()", grace)
            future.cancel()
        if late:
            await asyncio.wait(late, timeout=1)

    async def __aenter__(self) -> AsyncDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -------------------------------------------------------------- events
    @overload
    def on(self, event: str, handler: H) -> H: ...
    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``event`` and return it (without ``handler``: a decorator)."""
        if handler is None:
            return lambda f: self.on(event, f)
        self._emitter.on(event, handler)
        return handler

    @overload
    def once(self, event: str, handler: H) -> H: ...
    @overload
    def once(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    def once(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for the next ``event`` only and return it (without ``handler``: a decorator)."""
        if handler is None:
            return lambda f: self.once(event, f)
        self._emitter.once(event, handler)
        return handler

    def remove_listener(self, event: str, handler: Handler) -> None:
        """Unregister ``handler`` from ``event``."""
        self._emitter.remove_listener(event, handler)

    async def wait_for(
        self, event: str, predicate: Callable[..., bool] | None = None, timeout: float = 10.0
    ) -> tuple[Any, ...]:
        """Wait until ``event`` fires (with arguments that satisfy ``predicate``, if given); for tests and scripts.

        Raises the builtin ``TimeoutError`` after ``timeout`` seconds (on every Python).
        """
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def handler(*args: Any) -> None:
            if not future.done() and (predicate is None or predicate(*args)):
                future.set_result(args)

        self._emitter.on(event, handler)
        try:
            return await wait_with_timeout(future, timeout)
        finally:
            self._emitter.remove_listener(event, handler)

    # ------------------------------------------------------------ messages
    def join(self, channel: str, handler: Handler | None = None) -> bool:
        """Receive ``channel``; ``handler(data, packet)`` is called per message.

        ``False`` (nothing registered) for a reserved name or a channel already joined.
        """
        if not self._core.join(channel):
            return False
        if handler is not None:
            self._emitter.on(channel, handler)
        return True

    def leave(self, channel: str) -> bool:
        """Stop receiving ``channel`` and drop its handlers."""
        if channel == PEERS_CHANNEL or not self._core.leave(channel):
            return False
        self._emitter.remove_all_listeners(channel)
        return True

    def send(self, channel: str, data: Any = None) -> bool:
        """Send ``data`` on ``channel``; ``False`` for a reserved name, when stopped, or when
        the transport cannot send it (Redis: its link is down and its outage buffer full).

        Every message refused by the transport, or accepted and never published, is
        counted as ``unsent`` in ``stats["dropped"]``.  Raises :class:`PacketTooLarge`
        over the datagram budget and ``TypeError`` for data that is not
        JSON-serializable.  node-discover peers ignore falsy data (``None``, ``0``,
        ``""``, ``False``): send an object to reach them.
        """
        if channel == PEERS_CHANNEL:
            return False
        actions = self._core.send(self._now(), channel, data)
        if actions is None or not self._core.running:
            return False
        if self._fence_deadline is not None:
            self._check_fence()
        sent = True
        for action in actions:  # one Transmit: the message; it moves no deadline, so no re-arming
            assert type(action) is Transmit, action
            sent = self._transport.send_message(action.datagram) and sent
        return sent

    def advertise(self, advertisement: Any) -> None:
        """Publish ``advertisement`` with every hello from the next one on; checked for size now."""
        self._check_advertisement(advertisement)
        self._core.advertise(advertisement)

    def set_key(self, key: Secret | list[Secret], encryption: str | None = None) -> None:
        """Replace the key ring at run time (rotation): the first key seals, every key opens.

        Roll a cluster from A to B with no node ever going unseen: ``[A, B]`` everywhere,
        then ``[B, A]``, then ``[B]``.  ``encryption`` defaults to the current mode.
        """
        self.set_codec(codec_for(self.encryption, key, encryption))

    def set_codec(self, codec: Codec) -> None:
        """Install a codec already built (what :meth:`set_key` does once the keys are derived)."""
        self._core.set_codec(codec)
        self.options = replace(self.options, codec=codec)  # the settings in effect, never stale

    @property
    def encryption(self) -> str:
        """``"plaintext"``, ``"aead"`` or ``"node-discover"``: how packets are sealed now."""
        return self._core.codec.name

    def promote(self) -> None:
        """Become master now (peers of lower rank demote)."""
        self._apply(self._core.promote(self._now()))

    def hello(self) -> None:
        """Say hello now rather than at the next beat (nothing when stopped or a ``client``)."""
        self._apply(self._core.hello(self._now()))

    def demote(self, permanent: bool = False) -> None:
        """Stop being master; ``permanent`` keeps this node out of elections until :meth:`promote`."""
        self._apply(self._core.demote(self._now(), permanent))

    # ------------------------------------------------- for layers built on top
    # Services, the balancer and tools use only these (and the rest of the public API):
    # what runs where, hooking stop, emitting their own events, and the datagram budget.
    @property
    def engine(self) -> AsyncDiscovery:
        """The asyncio engine: this object (a :class:`Discovery` returns the one it runs)."""
        return self

    @property
    def id(self) -> str:
        """This instance's id (``me.id``, without building a record)."""
        return self._core.iid

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this runs on, from the first ``start()`` (``None`` before)."""
        return self._loop

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` now (we are on the loop's thread); :meth:`Discovery.call` crosses threads."""
        return fn(*args)

    def add_stop_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` at the start of every ``stop()``, before the goodbye (all hooks together).

        A layer releases what it holds there, so peers never take over work this node
        still does.  A hook that raises is logged; the stop goes on.
        """
        self._before_stop.append(hook)

    def remove_stop_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Undo :meth:`add_stop_hook` (no error if it is not there)."""
        if hook in self._before_stop:
            self._before_stop.remove(hook)

    def emit(self, event: str, *args: Any) -> bool:
        """Emit a layer's own event (``resourceStarted``, ``ready``...) to this node's handlers.

        Local only: nothing is sent.  Handlers run as for the core's events (a failing one
        is logged and reported as ``error``).  ``True`` if any handler was registered.
        """
        return self._emitter.emit(event, *args)

    def has_node(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live peer (cheaper than ``node_id in nodes``)."""
        return self._core.has_node(node_id)

    def message_bytes(self, channel: str, data: Any, *, what: str = "message") -> bytes:
        """``data`` encoded as a message on ``channel`` would carry it (JSON, before sealing).

        Raises :class:`PacketTooLarge` (naming ``what``) or ``TypeError`` exactly as
        :meth:`send` would, at any later time: a layer checks a message before promising it.
        """
        return self._core.message_bytes(channel, data, what=what)

    def max_payload(self, channel: str) -> int:
        """The largest JSON text, in bytes, of ``data`` that one message on ``channel`` can carry."""
        return self._core.max_payload(channel)

    def attach_facade(self, facade: Discovery) -> None:
        """``started``/``stopped`` handlers receive ``facade``: the object the user holds."""
        self._facade = facade

    # --------------------------------------------------------------- views
    @property
    def nodes(self) -> dict[str, Node]:
        """Live peers by instance id (a snapshot; this instance is not included)."""
        return self._core.nodes

    @property
    def me(self) -> Node:
        """This node as its peers see it."""
        return self._core.me(self._now())

    @property
    def is_master(self) -> bool:
        """Whether this node is master now (with a coordinator: and its lease's deadline has not passed)."""
        if self._coordinator is not None and not self._fence_valid():
            return False
        return self._core.is_master

    @property
    def running(self) -> bool:
        """Between a successful ``start()`` and ``stop()``."""
        return self._core.running

    @property
    def channels(self) -> frozenset[str]:
        """The channels joined."""
        return self._core.channels - {PEERS_CHANNEL}

    @property
    def local_address(self) -> Address | None:
        """The bound socket address (useful with ``port=0``-style setups and in tests)."""
        return self._transport.local_address

    # -------------------------------------------------------- destinations
    @property
    def unicast(self) -> tuple[str, ...]:
        """The destinations given (option ``unicast``, ``add_destination``) as ``"host:port"`` strings.

        A tuple, so that ``d.unicast.append(...)`` fails instead of changing a copy: change
        them with :meth:`add_destination`, :meth:`remove_destination` or by assigning a
        new list (in every mode; not the peers learned, see :attr:`destinations`).
        """
        return tuple(_endpoint_text(e) for e in self._book.manual) if self._book is not None else ()

    @unicast.setter
    def unicast(self, value: str | Sequence[str]) -> None:
        book = self._destinations_book()
        self._set_manual(book, parse_unicast(value, self.options.port))

    def add_destination(self, host: str, port: int) -> bool:
        """Send every packet to ``host:port`` too, from the next one on (in every mode: peers behind a router).

        ``host`` is an IP address or a name (resolved once, now).  Before ``start()`` it is
        remembered and used from the start.  ``False`` if it was a destination already.
        Raises ``ValueError``/``TypeError`` for a bad host or port (or IPv6 on an IPv4
        socket), and ``ValueError`` on a transport that reaches every member by itself (Redis, memory).
        """
        book = self._destinations_book()
        endpoint = parse_destination(host, port)
        if endpoint in book.manual:
            return False
        self._set_manual(book, [*book.manual, endpoint])
        return True

    def remove_destination(self, host: str, port: int) -> bool:
        """Stop sending to ``host:port`` (a destination given); ``False`` if it is not one.

        A learned peer at that address stays a destination while it is a member (turn
        ``learn_peers`` off to send only to the list given).
        """
        book = self._destinations_book()
        endpoint = parse_destination(host, port)
        if endpoint not in book.manual:
            return False
        self._set_manual(book, [e for e in book.manual if e != endpoint])
        return True

    @property
    def destinations(self) -> tuple[Endpoint, ...]:
        """Every ``(host, port)`` packets go to now: the broadcast or multicast group, the destinations
        given, the peers learned (empty on a transport that reaches every member by itself)."""
        return self._transport.destinations

    @property
    def learn_peers(self) -> bool:
        """Whether this node sends to every peer it hears from (see the ``learn_peers`` option)."""
        return self._book is not None and self._book.learn

    def _destinations_book(self) -> PeerBook:
        if self._book is None:
            raise ValueError(
                f"{type(self._transport).__name__} has no destinations to change: "
                "it reaches every member of its cluster by itself"
            )
        return self._book

    def _set_manual(self, book: PeerBook, manual: Sequence[Endpoint]) -> None:
        previous = book.manual
        try:
            self._carry_out(book.set_manual(manual), strict=True)  # the transport checks them all: no change on error
        except BaseException:
            book.set_manual(previous)
            raise

    @property
    def stats(self) -> dict[str, Any]:
        """Packet counters and drops by reason (``bad_envelope``, ``not_json``, ``stale``, ...)."""
        counters = self._core.counters
        dropped = Counter(self._core.dropped)
        dropped.update(self._transport.errors)
        book = self._book
        if book is not None:
            dropped.update(book.ignored)  # messages on the peers channel the book did not act on
        return {
            "packets_in": counters["packets_in"],
            "packets_out": counters["packets_out"],
            "bytes_in": counters["bytes_in"],
            "bytes_out": counters["bytes_out"],
            "dropped": dict(dropped),
            # max_nodes: instances heard only once, removed to make room for a refused newcomer saying hello again.
            "evicted": counters["evicted"],
            # learn_peers: peers learned now, and those refused over the bounds since creation.
            "learned": book.learned if book is not None else 0,
            "not_learned": book.not_learned if book is not None else 0,
            # registry=: whether it is reachable, the other members registered, its failure counts.
            **({"registry": {"connected": self._registry.connected, "members": len(self._registry.members),
                             **self._registry.errors}} if self._registry is not None else {}),
        }

    # ------------------------------------------------------------ registry
    @property
    def registry(self) -> Registry | None:
        """The registry this node registers in (``registry=``), or ``None``.

        Its ``members`` are the other nodes registered as last known (kept through an
        outage), its ``key`` (etcd) where this node's registration is written.
        """
        return self._registry

    async def _open_registry(self, registry: Registry) -> None:
        local = self._transport.local_address
        assert local is not None  # a transport with destinations is bound once open
        me = Registration(
            iid=self.id, address=registry.advertised_address(local[0]), port=int(local[1]),
            hostname=self.options.hostname, weight=self.options.weight, pid=str(_process_id),
        )
        registry.set_error_listener(self._transport_error)
        await registry.open(me, self._registry_changed)

    def _registered_endpoints(self, members: Mapping[str, Registration]) -> list[Endpoint]:
        return [r.endpoint for iid, r in members.items() if iid != self.id]

    def _registry_changed(self, members: Mapping[str, Registration]) -> None:
        """The registry's members changed: send to them from the next packet on (removes nobody)."""
        if self._book is not None and self._core.running:
            self._carry_out(self._book.set_registered(self._registered_endpoints(members)))

    # ------------------------------------------------------------ plumbing
    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _datagram_received(self, data: bytes, addr: Address) -> bool:
        if self._fence_deadline is not None:
            self._check_fence()  # after a pause: demote before answering anything as master
        core = self._core
        try:
            actions = core.datagram_received(self._now(), data, addr)
        except Exception:  # a bug in the core must not take the socket down
            log.exception("internal error handling a datagram from %s", addr)
            core.dropped["internal_error"] += 1
            return True
        if not actions:  # the core moves no deadline earlier without an action (see datagram_received)
            return True
        action = actions[0] if core.last_emits_only and len(actions) == 1 else None
        if type(action) is Emit and (self._book is None or action.event not in _PEER_EVENTS):
            # An unchanged hello's report or a message: nothing to send, no timer to move.
            self._emitter.emit(action.event, *action.args)
        else:
            self._apply(actions)
        return not core.last_was_message  # a message is read at once, hellos may gather

    def _link_changed(self, up: bool) -> None:
        now = self._now()
        log.warning("transport link %s", "restored" if up else "lost; pausing removals and elections")
        self._apply(self._core.link_restored(now) if up else self._core.link_lost(now))

    def _transport_error(self, reason: str, detail: str) -> None:
        """node-discover emits socket errors as ``error``; we do too, at most one per reason every few seconds."""
        if not self._emitter.has_listeners("error"):
            return  # the transport logged it and stats counts it; an unheard error event would log it again
        suppressed = self._transport_errors.due(reason, self._now())
        if suppressed is not None:
            self._emitter.emit("error", TransportError(reason, detail, suppressed=suppressed))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._fence_deadline is not None:
            self._check_fence()
        try:
            now = self._now()
            self._core.sync_wall_clock(now, time.time())
            actions = self._core.tick(now)
            if self._book is not None:
                self._carry_out(self._book.tick(now))
        except Exception:
            log.exception("internal error in tick")
            self._core.dropped["internal_error"] += 1
            # Never re-arm at a deadline already past: that would spin the loop.
            if self._loop is not None and self._core.running:
                self._timer_at = self._now() + 0.1
                self._timer = self._loop.call_at(self._timer_at, self._on_timer)
            return
        self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        if self._fence_deadline is not None:
            self._check_fence()  # a lapsed lease demotes the node before these actions go out
        book = self._book
        for action in actions:
            if isinstance(action, Emit):
                if book is not None and action.event in _PEER_EVENTS and self._feed_book(book, action):
                    continue
                self._emitter.emit(action.event, *action.args)
            elif isinstance(action, Transmit):
                self._transport.send(action.datagram)
            else:
                self._mastership_wanted(action.wanted, action.seq)
        self._reschedule()

    def _mastership_wanted(self, wanted: bool, seq: int) -> None:
        """The election asks for a leader key (or gives it back): only with a coordinator."""
        if self._coordinator is not None:
            self._coordinator.want(wanted, seq)

    # -------------------------------------------------- coordinator reports (CoordinatorListener)
    def lease_good_until(self, deadline: float) -> None:
        """The coordinator's lease may be acted on until ``deadline`` (``time.monotonic()``): a candidate
        until then; at ``deadline``, unless a newer report came, no master and no candidate.

        The deadline is checked before anything else the node does (:meth:`_check_fence`),
        not only by a timer: after a pause the timer may run after other work.
        """
        self._cancel_fence_timer()
        if time.monotonic() >= deadline:
            self._fence_expired()
            return
        self._fence_deadline = deadline
        if self._loop is None or not self._core.running:
            return  # start() applies it once the core runs
        self._fence_timer = self._loop.call_at(self._now() + (deadline - time.monotonic()), self._check_fence)
        if not self._fence_announced:
            self._fence_announced = True
            self._emitter.emit("coordinatorReady")
        self._apply(self._core.set_fence_ready(self._now(), True))

    def lease_lost(self) -> None:
        """The coordinator's lease is gone: nothing held under it counts."""
        self._fence_expired()

    def mastership_granted(self, token: int, seq: int) -> None:
        """A leader key is held for request ``seq`` (``token`` its revision): master, if that is still
        the latest request and the lease is good (checked first)."""
        if self._core.running:
            self._apply(self._core.grant_mastership(self._now(), token, seq))

    def _check_fence(self) -> None:
        """Past the lease's deadline: no master and no candidate, before anything else happens."""
        deadline = self._fence_deadline
        if deadline is not None and time.monotonic() >= deadline:
            self._fence_expired()

    def _fence_valid(self) -> bool:
        deadline = self._fence_deadline
        return deadline is not None and time.monotonic() < deadline

    def _fence_expired(self) -> None:
        self._cancel_fence_timer()
        self._fence_deadline = None
        if self._fence_announced:
            # First, so that layers holding work under the lease (resources) let go at once.
            self._fence_announced = False
            self._emitter.emit("coordinatorLost")
        if self._core.running:
            self._apply(self._core.set_fence_ready(self._now(), False))

    @property
    def coordinator_ready(self) -> bool:
        """With a coordinator: whether its lease may be acted on now (``False`` without one)."""
        return self._coordinator is not None and self._fence_valid()

    def _cancel_fence_timer(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None

    @property
    def fencing_token(self) -> int | None:
        """With a coordinator, while master: the revision of the leader key held (it only grows
        from one mastership to the next): hand it to the systems the master writes to.
        ``None`` once the lease's deadline has passed, even before the node has demoted."""
        if self._coordinator is not None and not self._fence_valid():
            return None
        return self._core.fencing_token

    @property
    def coordinator(self) -> EtcdCoordinator | None:
        """The coordinator (``coordinator=``), or ``None``."""
        return self._coordinator

    def _feed_book(self, book: PeerBook, action: Emit) -> bool:
        """Hand the book a core event and carry out its answer; ``True`` if the event is the book's alone."""
        now = self._now()
        if action.event == PEERS_CHANNEL:
            packet: Packet = action.args[1]
            if packet.iid != self.id:
                core = self._core
                # The endpoint the core recorded for the member the packet claims to be; the
                # table is copied only for an answer (a stranger's or a rate-limited packet costs O(1)).
                member = core.node(packet.iid)
                self._carry_out(book.message(
                    now, action.args[0], (packet.address, packet.port),
                    (member.address, member.port) if member is not None else None,
                    members=lambda: [(n.address, n.port) for n in core.nodes.values()],
                    budget=core.max_payload(PEERS_CHANNEL),
                    authenticated=core.codec.authenticates,
                ))
            return True
        node: Node = action.args[0]
        if action.event == "added":
            self._carry_out(book.node_added(now, node.id, (node.address, node.port)))
        elif action.event == "removed":
            self._carry_out(book.node_removed(now, node.id))
        else:  # nodeUpdated
            self._carry_out(book.node_moved(now, node.id, (node.address, node.port)))
        return False

    def _carry_out(self, actions: list[PeerAction], *, strict: bool = False) -> None:
        """Carry out the book's actions.

        ``strict`` (the user's own change of destinations): an error is raised, and the
        caller restores the list.  Otherwise (the book's answer to a packet or a timer) a
        failing action never raises out of the datagram path: it is logged once, counted
        (``stats["dropped"]["internal_error"]``), the transport keeps its previous
        destinations (it checks a list all or nothing), and the other actions still run.
        """
        for action in actions:
            try:
                if isinstance(action, DestinationsChanged):
                    self._transport.set_destinations(action.endpoints)
                    continue
                for sent in self._core.send(self._now(), PEERS_CHANNEL, action.data) or ():
                    if isinstance(sent, Transmit):
                        self._transport.send_to(sent.datagram, action.endpoint)
            except Exception:
                if strict:
                    raise
                self._core.dropped["internal_error"] += 1
                if not self._book_error_logged:
                    self._book_error_logged = True
                    log.exception("internal error carrying out %r (logged once; stats['dropped']['internal_error'])",
                                  action)

    def _reschedule(self) -> None:
        deadline = self._core.next_deadline()
        book_deadline = self._book.next_deadline() if self._book is not None else None
        if book_deadline is not None and (deadline is None or book_deadline < deadline):
            deadline = book_deadline
        if self._loop is None or deadline == self._timer_at:
            return
        if deadline is not None and self._timer_at is not None and self._timer_at <= deadline:
            # The armed timer fires no later than needed; tick() then re-arms for the real
            # deadline.  Re-arming on every hello (which moves the oldest node's expiry)
            # would cost more than the hello itself.
            return
        self._cancel_timer()
        if deadline is not None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None


_running_sync: weakref.WeakSet[Discovery] = weakref.WeakSet()


@atexit.register
def _say_goodbye_at_exit() -> None:
    """A script that ends without ``stop()`` still says goodbye (its daemon thread would just vanish)."""
    for d in list(_running_sync):
        try:
            d.stop()
        except Exception:  # exiting anyway; never mask the program's own exit status
            log.debug("stop at exit failed", exc_info=True)


def _stop_all_then_die(signum: int, frame: object) -> None:
    """SIGTERM with no handler of the program's own: say goodbye, then die of the signal as before."""
    _say_goodbye_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> None:
    # Only where SIGTERM would kill the process anyway, and only from the main thread
    # (Python's rule); a program with its own handler keeps it.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_all_then_die)


class Discovery:
    """Discovery for plain (non-async) programs: the same engine on a loop in a daemon thread.

    Starts at once unless ``start=False``.  Handlers run on that thread; keep them short
    or hand work off.  Every method may be called from any thread, handlers included,
    except ``start``/``stop`` from a handler.  Instances still running when the
    interpreter exits normally are stopped, so peers get their goodbye; so are they on
    SIGTERM when the program has no SIGTERM handler of its own (``stop_on_sigterm``),
    after which the process still dies of the signal.
    """

    #: The engine this facade runs on its thread (a subclass may swap in a richer one).
    _async_class: type[AsyncDiscovery] = AsyncDiscovery

    @explains_unknown_options
    def __init__(
        self,
        *,
        start: bool = True,
        stop_on_sigterm: bool = True,
        hello_interval: float = Options.hello_interval,
        check_interval: float = Options.check_interval,
        node_timeout: float = Options.node_timeout,
        master_timeout: float | None = None,
        address: str = Options.address,
        port: int = Options.port,
        broadcast: str | None = None,
        multicast: str | None = None,
        multicast_ttl: int = Options.multicast_ttl,
        interface: str | None = None,
        unicast: str | Sequence[str] | None = None,
        learn_peers: bool | None = None,
        key: Secret | Sequence[Secret] | None = None,
        encryption: Encryption | None = None,
        replay_window: float = Options.replay_window,
        read_coalesce: float = Options.read_coalesce,
        masters_required: int = Options.masters_required,
        weight: float | None = None,
        client: bool = Options.client,
        reuse_addr: bool = Options.reuse_addr,
        ignore_process: bool = Options.ignore_process,
        ignore_instance: bool = Options.ignore_instance,
        hostname: str | None = None,
        advertisement: Any = None,
        max_datagram: int | None = None,
        max_nodes: int = Options.max_nodes,
        transport: str | Transport | None = None,
        namespace: str | None = None,
        registry: str | Registry | None = None,
        coordinator: str | EtcdCoordinator | None = None,
        allow_long_intervals: bool = False,
    ) -> None:
        if not isinstance(start, bool):
            raise TypeError("start must be True or False")
        if not isinstance(stop_on_sigterm, bool):
            raise TypeError("stop_on_sigterm must be True or False")
        self._stop_on_sigterm = stop_on_sigterm
        self._async = self._async_class(**engine_options(locals()))
        self._async.attach_facade(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # RLock: the SIGTERM handler may interrupt start()/stop()
        if start:
            self.start()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> bool:
        """Bind (or connect) and start the background thread; raises like :meth:`AsyncDiscovery.start`."""
        if self._in_loop_thread():
            raise RuntimeError("start() cannot be called from an event handler")
        with self._lock:
            if self._async.running:
                return False
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                ready = threading.Event()
                self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="pydiscover", daemon=True)
                self._thread.start()
                ready.wait()
            try:
                started = self._run(self._async.start())
            except BaseException:
                self._shutdown_loop()
                raise
            _running_sync.add(self)
            if self._stop_on_sigterm:
                _install_sigterm_handler()
            return started

    def stop(self) -> bool:
        """Say goodbye, close the socket and end the thread.  ``False`` if not running.

        From a handler (the discovery thread) it cannot wait for itself: it starts the
        stop on another thread and returns ``True`` at once.
        """
        if self._in_loop_thread():
            if not self._async.running:
                return False
            threading.Thread(target=self.stop, name="pydiscover-stop", daemon=True).start()
            return True
        with self._lock:
            if self._loop is None:
                return False
            _running_sync.discard(self)
            try:
                # Layers release their work before the goodbye (a ResourceManager's stop hooks
                # may take up to 30 s): wait for that, not the default 10 s.
                return self._run(self._async.stop(), STOP_TIMEOUT)
            finally:
                self._shutdown_loop()

    def __enter__(self) -> Discovery:
        if not self._async.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        assert self._loop is not None
        if self._in_loop_thread():
            coro.close()
            raise RuntimeError("this call waits on the discovery thread, so it cannot be made from a handler")
        return run_coro_with_timeout(coro, self._loop, timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the discovery thread (the engine is single-threaded) and return its result.

        For layers built on top (see :meth:`AsyncDiscovery.call`); at once when already on
        that thread or not running.
        """
        loop = self._loop
        if loop is None or self._in_loop_thread() or not loop.is_running():
            return fn(*args)
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(timeout=10.0)
        except concurrent.futures.TimeoutError:  # not the builtin before 3.11
            raise TimeoutError("the discovery thread did not answer within 10 s") from None

    @property
    def engine(self) -> AsyncDiscovery:
        """The asyncio engine this runs on its thread (layers built on top drive it)."""
        return self._async

    @property
    def options(self) -> Options:
        """The settings in effect (see :attr:`AsyncDiscovery.options`)."""
        return self._async.options

    @property
    def id(self) -> str:
        """This instance's id."""
        return self._async.id

    # ------------------------------------------------------- events (pyee)
    @overload
    def on(self, event: str, handler: H) -> H: ...
    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """See :meth:`AsyncDiscovery.on`.  Handlers run on the discovery thread."""
        return self._async.on(event, handler)

    @overload
    def once(self, event: str, handler: H) -> H: ...
    @overload
    def once(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    def once(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """See :meth:`AsyncDiscovery.once`."""
        return self._async.once(event, handler)

    def remove_listener(self, event: str, handler: Handler) -> None:
        """Unregister ``handler`` from ``event``."""
        self._async.remove_listener(event, handler)

    def wait_for(
        self, event: str, predicate: Callable[..., bool] | None = None, timeout: float = 10.0
    ) -> tuple[Any, ...]:
        """Block until ``event`` fires (arguments satisfying ``predicate``, if given); ``TimeoutError`` otherwise."""
        if self._loop is None:
            raise RuntimeError("not running")
        return self._run(self._async.wait_for(event, predicate, timeout), timeout + 1)

    # ----------------------------------------------------------- messages
    def join(self, channel: str, handler: Handler | None = None) -> bool:
        """See :meth:`AsyncDiscovery.join`."""
        return self.call(self._async.join, channel, handler)

    def leave(self, channel: str) -> bool:
        """See :meth:`AsyncDiscovery.leave`."""
        return self.call(self._async.leave, channel)

    def send(self, channel: str, data: Any = None) -> bool:
        """See :meth:`AsyncDiscovery.send`."""
        return self.call(self._async.send, channel, data)

    def advertise(self, advertisement: Any) -> None:
        """See :meth:`AsyncDiscovery.advertise`."""
        self.call(self._async.advertise, advertisement)

    def set_key(self, key: Secret | list[Secret], encryption: str | None = None) -> None:
        """See :meth:`AsyncDiscovery.set_key`; the key derivation runs on the calling thread."""
        codec = codec_for(self._async.encryption, key, encryption)
        self.call(self._async.set_codec, codec)

    def promote(self) -> None:
        """See :meth:`AsyncDiscovery.promote`."""
        self.call(self._async.promote)

    def hello(self) -> None:
        """See :meth:`AsyncDiscovery.hello`."""
        self.call(self._async.hello)

    def demote(self, permanent: bool = False) -> None:
        """See :meth:`AsyncDiscovery.demote`."""
        self.call(self._async.demote, permanent)

    # -------------------------------------------------------------- views
    @property
    def nodes(self) -> dict[str, Node]:
        """Live peers by instance id (a snapshot; this instance is not included)."""
        return self.call(lambda: self._async.nodes)

    @property
    def me(self) -> Node:
        """This node as its peers see it."""
        return self.call(lambda: self._async.me)

    @property
    def is_master(self) -> bool:
        """Whether this node is master now."""
        return self._async.is_master

    @property
    def running(self) -> bool:
        """Between a successful ``start()`` and ``stop()``."""
        return self._async.running

    @property
    def channels(self) -> frozenset[str]:
        """The channels joined."""
        return self._async.channels

    @property
    def local_address(self) -> Address | None:
        """See :attr:`AsyncDiscovery.local_address`."""
        return self._async.local_address

    @property
    def unicast(self) -> tuple[str, ...]:
        """See :attr:`AsyncDiscovery.unicast`: a tuple; assign a new list to change it (in every mode)."""
        return self.call(lambda: self._async.unicast)

    @unicast.setter
    def unicast(self, value: str | Sequence[str]) -> None:
        # Names are resolved here, on the caller's thread; the loop gets IP literals only.
        texts = [_endpoint_text(e) for e in parse_unicast(value, self.options.port)]
        self.call(setattr, self._async, "unicast", texts)

    def add_destination(self, host: str, port: int) -> bool:
        """See :meth:`AsyncDiscovery.add_destination` (a name is resolved on the calling thread)."""
        return self.call(self._async.add_destination, *parse_destination(host, port))

    def remove_destination(self, host: str, port: int) -> bool:
        """See :meth:`AsyncDiscovery.remove_destination`."""
        return self.call(self._async.remove_destination, *parse_destination(host, port))

    @property
    def destinations(self) -> tuple[Endpoint, ...]:
        """See :attr:`AsyncDiscovery.destinations`."""
        return self.call(lambda: self._async.destinations)

    @property
    def learn_peers(self) -> bool:
        """See :attr:`AsyncDiscovery.learn_peers`."""
        return self._async.learn_peers

    @property
    def registry(self) -> Registry | None:
        """See :attr:`AsyncDiscovery.registry`."""
        return self._async.registry

    @property
    def fencing_token(self) -> int | None:
        """See :attr:`AsyncDiscovery.fencing_token`."""
        return self._async.fencing_token

    @property
    def stats(self) -> dict[str, Any]:
        """See :attr:`AsyncDiscovery.stats`."""
        return self.call(lambda: self._async.stats)


document_options(AsyncDiscovery)
document_options(Discovery)

__all__ = ["AsyncDiscovery", "Discovery"]
