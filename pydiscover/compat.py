"""node-discover 1.2.1's API in Python, so an application ports by changing syntax only.

``Discover(options, callback)`` takes node-discover's options as written (camelCase,
milliseconds, ``key`` with node-discover's cipher) and emits its events with its
arguments (plain dicts shaped like its node objects), on top of the native engine
(:class:`pydiscover.Discovery`): there is no second implementation.  Where Python
forbids node-discover's spelling the nearest Python one is used (``demote(True)``,
``d.broadcast.destination.append(...)``); see docs/interop.rst for the migration guide.

Timing of the start: node-discover binds in the constructor, but nothing can arrive
before the code that follows the constructor has run (one event loop).  Python has no
such turn, so the engine is created in the constructor and started on a helper thread
:data:`START_DELAY` seconds later: handlers and channels registered right after
``Discover()`` returns miss nothing.  ``start: False`` then ``start(cb)`` gives the
same guarantee without any delay.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, ValuesView
from types import MappingProxyType
from typing import Any, SupportsIndex

from .discovery import Discovery
from .node import Node, Packet
from .options import default_weight

log = logging.getLogger("pydiscover.compat")

#: Seconds between ``Discover()`` returning and the engine starting (``start`` left true):
#: the stand-in for node-discover's "after the current event loop turn".
START_DELAY = 0.05

#: node-discover's options (its constructor reads these and nothing else).
OPTIONS = frozenset({
    "helloInterval", "checkInterval", "nodeTimeout", "masterTimeout", "address", "port", "broadcast",
    "multicast", "multicastTTL", "unicast", "key", "mastersRequired", "leadershipElector", "weight",
    "client", "server", "reuseAddr", "exclusive", "ignoreProcess", "ignoreInstance", "ignore",
    "advertisement", "hostname", "hostName", "start",
})
#: Names node-discover refuses in ``join`` and ``send``.
RESERVED_EVENTS = ("promotion", "demotion", "added", "removed", "master", "hello")
_MS_OPTIONS = ("helloInterval", "checkInterval", "nodeTimeout", "masterTimeout")

Callback = Callable[[Any, bool], Any]
Handler = Callable[..., Any]
NodeObject = dict[str, Any]


def _truthy(value: Any) -> bool:
    """JavaScript's truthiness for option values: node-discover reads most of them with ``||``."""
    if isinstance(value, (list, tuple, dict)):
        return True  # [] and {} are truthy in JavaScript (``unicast: []`` is unicast mode)
    return bool(value)


def _or(options: Mapping[str, Any], name: str, default: Any) -> Any:
    value = options.get(name)
    return value if _truthy(value) else default


def _unknown_option(name: object) -> None:
    """An option node-discover does not read: ignored with a warning, as node-discover ignores it
    (basic-argv.js hands it ``argv`` whole); but a near miss of one of its options is a
    ``TypeError``, since ignoring a misspelt ``key`` would run the node unencrypted."""
    if isinstance(name, str):
        camel = "".join(part.capitalize() if i else part for i, part in enumerate(name.split("_")))
        guess = camel if camel in OPTIONS else None
        if guess is None:  # the same letters in another order or case ("kye", "Key"), then difflib's
            same = [option for option in sorted(OPTIONS) if sorted(option.lower()) == sorted(name.lower())]
            close = same or difflib.get_close_matches(name, sorted(OPTIONS), n=1, cutoff=0.7)
            guess = close[0] if close else None
        if guess is not None:
            unit = " (in milliseconds, as in node-discover)" if guess in _MS_OPTIONS else ""
            raise TypeError(f"Discover(): unknown option {name!r}; did you mean {guess!r}{unit}?")
    log.warning("Discover(): unknown option %r ignored, as node-discover ignores it; its options are: %s",
                name, ", ".join(sorted(OPTIONS)))


def _numeric(value: Any) -> Any:
    """A number written as a string (``process.argv``, environment variables) as the number.

    JavaScript turns ``"42603"`` into a number where one is needed (``bind``,
    ``setInterval``), so node-discover code passes such strings; anything else stays as
    given for the checks to name.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return value
            if number != number or abs(number) == float("inf"):
                return value
            return int(number) if number.is_integer() else number  # "1e3" is 1000, as Number("1e3")
    return value


def _milliseconds(name: str, value: Any) -> Any:
    """``value`` as given (``settings`` shows it as node-discover would), once checked to be a number."""
    if callable(value):
        raise TypeError(f"{name}: a function is not supported here, give a number of milliseconds")
    value = _numeric(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of milliseconds, got {type(value).__name__}")
    return value


def _arity(handler: Handler) -> int | None:
    """How many positional arguments ``handler`` takes (``None``: any number).

    JavaScript drops extra arguments silently, so node-discover code registers
    ``function (node)`` for ``added(node, obj, rinfo)``; the facade passes a handler
    only as many as it takes, so ``lambda node: ...`` ports as written.
    """
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): give it everything
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def translate_options(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """node-discover's options -> (its ``settings`` as it would show them, the native keyword arguments).

    Applies node-discover's defaults and checks (with its messages).  Like node-discover
    it ignores options it does not read (code that passes ``argv`` whole keeps working),
    with a warning, but a near miss of one of its options (``kye``, ``hello_interval``) is
    a ``TypeError`` naming it; numbers written as strings are taken as numbers, as
    JavaScript takes them.  The engine then validates the rest.
    """
    options = dict(options or {})
    for name in [name for name in options if name not in OPTIONS]:
        _unknown_option(name)
        del options[name]
    for name in ("port", "multicastTTL", "mastersRequired", "weight"):
        if name in options:
            options[name] = _numeric(options[name])
    if options.get("leadershipElector") is not None:
        raise ValueError("leadershipElector is not supported: pydiscover always runs node-discover's "
                         "basic election (weight decides); use the native API to change roles by hand")
    node_timeout = _milliseconds("nodeTimeout", _or(options, "nodeTimeout", 2000))
    client_opt, server_opt = bool(options.get("client")), bool(options.get("server"))
    settings: dict[str, Any] = {
        "helloInterval": _milliseconds("helloInterval", _or(options, "helloInterval", 1000)),
        "checkInterval": _milliseconds("checkInterval", _or(options, "checkInterval", 2000)),
        "nodeTimeout": node_timeout,
        "masterTimeout": _milliseconds("masterTimeout", _or(options, "masterTimeout", node_timeout)),
        "address": _or(options, "address", "0.0.0.0"),
        "port": _or(options, "port", 12345),
        "broadcast": _or(options, "broadcast", None),
        "multicast": _or(options, "multicast", None),
        "multicastTTL": _or(options, "multicastTTL", None),
        "unicast": _or(options, "unicast", None),
        "key": _or(options, "key", None),
        "mastersRequired": _or(options, "mastersRequired", 1),
        "leadershipElector": None,
        "weight": _or(options, "weight", None) if _truthy(options.get("weight")) else Discover.weight(),
        "client": client_opt or (not client_opt and not server_opt),
        "server": server_opt or (not client_opt and not server_opt),
        "reuseAddr": options.get("reuseAddr"),
        "exclusive": _or(options, "exclusive", False),
        "ignoreProcess": options.get("ignoreProcess") is not False,
        "ignoreInstance": options.get("ignoreInstance") is not False,
        "start": options.get("start") is not False,
        "hostname": _or(options, "hostname", None) or _or(options, "hostName", None),
    }
    if options.get("ignore") is False:  # node-discover 0.1's spelling, still read by 1.2.1
        settings["ignoreProcess"] = settings["ignoreInstance"] = False
    if not settings["nodeTimeout"] >= settings["checkInterval"]:
        raise ValueError("nodeTimeout must be greater than or equal to checkInterval.")
    if not settings["masterTimeout"] >= settings["nodeTimeout"]:
        raise ValueError("masterTimeout must be greater than or equal to nodeTimeout.")
    if not settings["nodeTimeout"] > settings["helloInterval"]:  # ours: else live nodes expire between hellos
        raise ValueError("nodeTimeout must be greater than helloInterval.")
    unicast = settings["unicast"]
    if isinstance(unicast, tuple):
        unicast = list(unicast)
    native: dict[str, Any] = {
        "hello_interval": settings["helloInterval"] / 1000,
        "check_interval": settings["checkInterval"] / 1000,
        "node_timeout": settings["nodeTimeout"] / 1000,
        "master_timeout": settings["masterTimeout"] / 1000,
        "allow_long_intervals": True,  # milliseconds were given: a long interval is meant
        "address": settings["address"],
        "port": settings["port"],
        "broadcast": settings["broadcast"] if not (settings["multicast"] or unicast is not None) else None,
        "multicast": settings["multicast"] if unicast is None else None,
        "multicast_ttl": settings["multicastTTL"] or 1,
        "unicast": unicast,
        # node-discover sends only to its own list: a port of unicast.js adds peers by hand.
        "learn_peers": False,
        "key": settings["key"],
        "encryption": "node-discover" if settings["key"] is not None else None,
        "masters_required": settings["mastersRequired"],
        "weight": settings["weight"],
        # node-discover's server sends hellos and may be master; a client only listens.
        "client": not settings["server"],
        "reuse_addr": settings["reuseAddr"] is not False,
        "ignore_process": settings["ignoreProcess"],
        "ignore_instance": settings["ignoreInstance"],
        "hostname": settings["hostname"],
        "advertisement": options.get("advertisement"),
    }
    return settings, native


def _ms_epoch(monotonic_seen: float) -> int:
    """A runtime time (``time.monotonic()``, asyncio's clock) as node-discover's ``lastSeen``: ms since the epoch."""
    return int((time.time() - (time.monotonic() - monotonic_seen)) * 1000)


def _rinfo(address: str, port: int) -> dict[str, Any]:
    """node-discover's ``rinfo`` (dgram's remote info), without ``size`` (not kept by the engine)."""
    family = "IPv6" if ":" in address else "IPv4"
    return {"address": address, "family": family, "port": port}


def _me_object(me: Node) -> NodeObject:
    """node-discover's ``me``: what its hellos carry (its ``address`` is always the literal it sends)."""
    return {
        "isMaster": me.is_master,
        "isMasterEligible": me.is_master_eligible,
        "weight": me.weight,
        "address": "127.0.0.1",
        "advertisement": me.advertisement,
    }


class LiveView(Mapping[str, Any]):
    """A read-only mapping that reads its source at every access (node-discover's objects are live).

    Iterating takes the keys first, so a change on the discovery thread meanwhile never
    breaks the loop.
    """

    __slots__ = ("_source",)

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def __getitem__(self, key: str) -> Any:
        return self._source()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._source()))

    def __len__(self) -> int:
        return len(self._source())

    # Taken in one go (the mixins would look each key up again, and a peer may be gone by then).
    def items(self) -> ItemsView[str, Any]:
        return dict(self._source()).items()

    def values(self) -> ValuesView[Any]:
        return dict(self._source()).values()

    def copy(self) -> dict[str, Any]:
        """A plain dict of what it holds now (``json.dumps(d.nodes.copy())``, as ``JSON.stringify(d.nodes)``)."""
        return dict(self._source())

    def __repr__(self) -> str:
        return repr(dict(self._source()))


class EventEmitter:
    """The part of Node's EventEmitter node-discover users call: handlers run on the emitting thread.

    A handler that raises is logged and re-emitted as ``error`` (Node would crash the
    process; the discovery thread must go on).
    """

    def __init__(self) -> None:
        #: event -> [(handler, once, how many arguments it takes)]
        self._handlers: dict[str, list[tuple[Handler, bool, int | None]]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def on(self, event: str, handler: Handler) -> EventEmitter:
        """Call ``handler(*args)`` at every ``event``; returns this emitter (chainable, as in Node)."""
        with self._lock:
            self._handlers.setdefault(event, []).append((handler, False, _arity(handler)))
        return self

    add_listener = addListener = on

    def once(self, event: str, handler: Handler) -> EventEmitter:
        """Call ``handler`` at the next ``event`` only."""
        with self._lock:
            self._handlers.setdefault(event, []).append((handler, True, _arity(handler)))
        return self

    def remove_listener(self, event: str, handler: Handler) -> EventEmitter:
        """Unregister ``handler`` (its last registration) from ``event``."""
        with self._lock:
            entries = self._handlers.get(event, [])
            for i in range(len(entries) - 1, -1, -1):
                if entries[i][0] == handler:
                    del entries[i]
                    break
        return self

    removeListener = off = remove_listener

    def remove_all_listeners(self, event: str | None = None) -> EventEmitter:
        """Unregister every handler of ``event`` (of every event without one)."""
        with self._lock:
            if event is None:
                self._handlers.clear()
            else:
                self._handlers.pop(event, None)
        return self

    removeAllListeners = remove_all_listeners

    def listeners(self, event: str) -> list[Handler]:
        """The handlers of ``event``, in order."""
        with self._lock:
            return [entry[0] for entry in self._handlers.get(event, [])]

    def listener_count(self, event: str) -> int:
        return len(self.listeners(event))

    listenerCount = listener_count

    def emit(self, event: str, *args: Any) -> bool:
        """Call ``event``'s handlers with ``args``; ``True`` if there were any."""
        with self._lock:
            entries = list(self._handlers.get(event, []))
            once = [entry for entry in entries if entry[1]]
            if once:
                self._handlers[event] = [entry for entry in self._handlers[event] if entry not in once]
        if not entries:
            if event == "error":
                error = args[0] if args else None
                log.error("unhandled error event: %r", error,
                          exc_info=error if isinstance(error, BaseException) else None)
            return False
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            self._call_all(event, entries, args)
        finally:
            self._local.depth = depth
        return True

    def in_handler(self) -> bool:
        """Whether the calling thread is running one of this emitter's handlers."""
        return bool(getattr(self._local, "depth", 0))

    def _call_all(self, event: str, entries: list[tuple[Handler, bool, int | None]], args: tuple[Any, ...]) -> None:
        for handler, _, arity in entries:
            try:
                handler(*(args if arity is None else args[:arity]))
            except Exception as exc:
                if event == "error" or not self.listeners("error"):
                    log.exception("handler %r for event %r raised", handler, event)
                else:
                    log.debug("handler %r for event %r raised", handler, event, exc_info=True)
                    self.emit("error", exc)


class DestinationList(list[NodeObject]):
    """``d.broadcast.destination``: node-discover's list of ``{"address", "port"}``, used at every send.

    A real list; every change goes to the engine before it is made here (so a refused
    destination changes nothing).  Entries are dicts (or ``"host[:port]"`` strings, as in
    node-discover's ``unicast`` option), stored as ``{"address": str, "port": int}``.
    Editing a dict inside the list in place is not seen: replace the entry instead.
    """

    def __init__(self, apply: Callable[[list[NodeObject]], None], default_port: int,
                 entries: Iterable[Any] = (), run: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self._apply = apply
        self._default_port = default_port
        #: Runs an edit on the discovery thread (``Discovery.call``), so that edits from
        #: handlers and from other threads take turns there and never wait for each other.
        self._run: Callable[[Callable[[], Any]], Any] = run if run is not None else (lambda edit: edit())
        self._lock = threading.Lock()
        self._version = 0  # edits so far: an edit made on a list that changed meanwhile is made again
        super().__init__(self._normalize(entry) for entry in entries)

    def _normalize(self, entry: Any) -> NodeObject:
        if isinstance(entry, str):
            host, port_text = entry.strip(), ""
            if host.startswith("["):
                host, _, rest = host[1:].partition("]")
                port_text = rest.removeprefix(":")
            elif host.count(":") == 1:
                host, port_text = host.split(":")
            entry = {"address": host, "port": port_text or None}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("address"), str):
            raise TypeError(f"a destination is {{'address': str, 'port': int}} or 'host:port', got {entry!r}")
        port = entry.get("port") or self._default_port
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # node-discover keeps "host:port"'s port as a string
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"destination port must be an int, got {port!r}")
        return {"address": entry["address"].strip(), "port": port}

    def _change(self, edit: Callable[[list[Any]], Any]) -> Any:
        def change() -> Any:
            # No lock is held while the engine takes the list (that may wait for the discovery
            # thread, whose handlers may edit too): if another edit lands meanwhile, this one
            # is made again on top of it, so the list and the engine end up agreeing.
            for _ in range(1000):  # each retry means another edit succeeded: progress either way
                with self._lock:
                    base, version = list(self), self._version
                result = edit(base)
                normalized = [self._normalize(entry) for entry in base]
                self._apply(normalized)
                with self._lock:
                    if self._version == version:
                        list.__setitem__(self, slice(None), normalized)
                        self._version += 1
                        return result
            raise RuntimeError("broadcast.destination: 1000 concurrent edits in a row overtook this one")

        return self._run(change)

    def replace(self, entries: Iterable[Any]) -> None:
        """Replace every entry (what ``d.broadcast.destination = [...]`` does)."""
        items = list(entries)
        self._change(lambda lst: lst.__setitem__(slice(None), items))

    def append(self, entry: Any) -> None:
        self._change(lambda lst: lst.append(entry))

    push = append  # node-discover's spelling

    def extend(self, entries: Iterable[Any]) -> None:
        items = list(entries)
        self._change(lambda lst: lst.extend(items))

    def insert(self, index: SupportsIndex, entry: Any) -> None:
        self._change(lambda lst: lst.insert(index, entry))

    def remove(self, entry: Any) -> None:
        self._change(lambda lst: lst.remove(self._normalize(entry)))

    def pop(self, index: SupportsIndex = -1) -> NodeObject:
        result: NodeObject = self._change(lambda lst: lst.pop(index))
        return result

    def clear(self) -> None:
        self._change(lambda lst: lst.clear())

    def __setitem__(self, index: Any, value: Any) -> None:
        self._change(lambda lst: lst.__setitem__(index, value))

    def __delitem__(self, index: Any) -> None:
        self._change(lambda lst: lst.__delitem__(index))

    def __iadd__(self, entries: Iterable[Any]) -> DestinationList:  # type: ignore[override,misc]
        self.extend(entries)
        return self

    def __imul__(self, count: SupportsIndex) -> DestinationList:
        self._change(lambda lst: lst.__imul__(count))
        return self


class Broadcast:
    """node-discover's ``d.broadcast`` (its network layer): the destinations and the ids."""

    def __init__(self, destination: DestinationList, instance_uuid: str, process_uuid: str,
                 address: str, port: int, hostname: str) -> None:
        self._destination = destination
        self.instanceUuid = instance_uuid
        self.processUuid = process_uuid
        self.address = address
        self.port = port
        self.hostName = hostname

    @property
    def destination(self) -> DestinationList:
        """Where every packet goes: change it in place, or assign a new list (unicast.js does both)."""
        return self._destination

    @destination.setter
    def destination(self, entries: Iterable[Any]) -> None:
        if entries is not self._destination:
            self._destination.replace(entries)


class Discover(EventEmitter):
    """node-discover's ``Discover``: ``Discover(options, callback)``, its events, methods and properties.

    ``callback(error, success)`` is called once the automatic start (``start`` not
    false) is done.  Events: ``added``/``master`` ``(node, obj, rinfo)``, ``removed``
    ``(node)``, ``helloReceived (node, obj, rinfo, isNew, wasMaster)``, ``promotion``/
    ``demotion`` ``(me)``, ``started``/``stopped`` ``(discover)``, ``error (err)``,
    ``check``, ``helloEmitted``; a joined channel ``(data, obj, rinfo)``.  Handlers
    run on the discovery thread.
    """

    #: node-discover's default weight (``-(now_ms / 10**digits)``): replace it to change every
    #: new instance's default, as with ``Discover.weight = function () {...}``.
    weight: Callable[[], float] = staticmethod(default_weight)

    def __init__(self, options: Mapping[str, Any] | Callback | None = None,
                 callback: Callback | None = None) -> None:
        super().__init__()
        if callable(options):
            options, callback = None, options
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"Discover(options): options must be a dict, got {type(options).__name__}")
        settings, native = translate_options(options)
        self._d = Discovery(start=False, **native)
        self._node_objects: dict[str, NodeObject] = {}
        self._nodes_view = LiveView(lambda: self._node_objects)
        self._me_view = LiveView(lambda: _me_object(self._d.me))
        self._channel_list: list[str] = []
        self._pending_start: threading.Timer | None = None
        #: Guards the automatic start's bookkeeping: a stop() during it is carried out after it.
        self._state_lock = threading.Lock()
        self._auto_starting = False
        self._stop_after_start = False
        engine_options = self._d.options
        settings["weight"] = engine_options.weight
        #: node-discover's settings (camelCase, milliseconds), read-only: changing a setting
        #: of a running node silently did nothing, so now it raises (build a new Discover).
        self.settings: Mapping[str, Any] = MappingProxyType(settings)
        self._stopping = False
        if native["unicast"] is not None:
            group: NodeObject | None = None
            initial = list(self._d.unicast)  # the engine's own "host:port" texts
        else:
            address = engine_options.multicast or engine_options.broadcast or ""
            group = {"address": address, "port": engine_options.port}
            initial = [address]
        self._group = group
        me = self._d.me
        self.broadcast = Broadcast(
            DestinationList(self._apply_destinations, engine_options.port, initial, run=self._d.call),
            instance_uuid=self._d.id, process_uuid=me.pid, address=engine_options.address,
            port=engine_options.port, hostname=engine_options.hostname,
        )
        on = self._d.on
        on("helloReceived", self._hello_received)
        on("removed", self._removed)
        on("promotion", lambda me: self.emit("promotion", _me_object(me)))
        # node-discover's stop() emits only "stopped": the engine's demotion on stop is not relayed.
        on("demotion", lambda me: None if self._stopping else self.emit("demotion", _me_object(me)))
        on("started", lambda _: self.emit("started", self))
        on("stopped", self._stopped)
        on("error", lambda error: self.emit("error", error))
        on("check", lambda: self.emit("check"))
        on("helloEmitted", lambda: self.emit("helloEmitted"))
        if self.settings["start"]:
            timer = threading.Timer(START_DELAY, self._auto_start, args=(callback,))
            timer.daemon = True
            self._pending_start = timer
            timer.start()

    # ----------------------------------------------------------- lifecycle
    def _auto_start(self, callback: Callback | None) -> None:
        with self._state_lock:
            if self._pending_start is None:  # stop() came first
                return
            self._pending_start = None
            self._auto_starting = True
        try:
            self.start(callback)
        finally:
            with self._state_lock:
                self._auto_starting = False
                stop_now, self._stop_after_start = self._stop_after_start, False
            if stop_now:
                self._d.stop()

    def start(self, callback: Callback | None = None) -> bool:
        """Bind and say hello; ``callback(error, success)``.  ``False`` (and ``callback(None, False)``)
        if already running, as in node-discover.  From a handler it starts on another thread."""
        if self.in_handler():
            threading.Thread(target=self.start, args=(callback,), name="pydiscover-compat-start",
                             daemon=True).start()
            return True
        try:
            started = self._d.start()
        except Exception as exc:
            self.emit("error", exc)
            if callback is not None:
                callback(exc, False)
            return False
        if callback is not None:
            callback(None, started)
        return started

    def stop(self, callback: Callback | None = None) -> bool:
        """Say goodbye and close the socket; ``False`` if not running.  ``callback(error, success)``.

        Before the automatic start it cancels it (``True``); during it, the node stops as
        soon as it has started (``True``).
        """
        with self._state_lock:
            timer, self._pending_start = self._pending_start, None
            if timer is not None:
                timer.cancel()
            deferred = self._auto_starting and not self._d.running
            if deferred:
                self._stop_after_start = True
        if timer is not None or deferred:
            stopped = True  # it was going to start: now it will not run
        else:
            self._stopping = True
            try:
                stopped = self._d.stop()
            finally:
                self._stopping = False
        if callback is not None:
            callback(None, stopped)
        return stopped

    def __enter__(self) -> Discover:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Between a successful start and stop (node-discover keeps this private)."""
        return self._d.running

    @property
    def native(self) -> Discovery:
        """The :class:`pydiscover.Discovery` underneath: the step from this facade to the native API."""
        return self._d

    # ---------------------------------------------------------------- roles
    def promote(self) -> None:
        """Become master now; ``promotion`` follows (also on a master, as in node-discover), then a hello."""
        self._d.call(self._role_change, self._d.promote, "promotion", True)

    def demote(self, permanent: bool = False) -> None:
        """Stop being master; ``demotion`` follows (also on a non-master, as in node-discover).

        ``permanent`` keeps this node out of elections until :meth:`promote`.  Otherwise
        it hands over: the next-ranked node takes over (node-discover's demoted node
        re-promotes itself at its next check if it is still the heaviest).
        """
        self._d.call(self._role_change, lambda: self._d.demote(permanent), "demotion", False)

    def _role_change(self, change: Callable[[], None], event: str, was_already: bool) -> None:
        """On the discovery thread: change the role; emit ``event`` if the engine did not (no change)."""
        unchanged = self._d.is_master == was_already
        change()
        if unchanged:
            self.emit(event, _me_object(self._d.me))

    def master(self, node: NodeObject) -> None:
        """Emit ``master`` for ``node``, as node-discover's ``master(node)`` does."""
        self.emit("master", node)

    def hello(self) -> None:
        """Send a hello now (the beat goes on from here)."""
        self._d.hello()

    def advertise(self, advertisement: Any) -> None:
        """Publish ``advertisement`` with every hello from the next one on."""
        self._d.advertise(advertisement)

    # ------------------------------------------------------------- messages
    def join(self, channel: str, fn: Handler | None = None) -> bool:
        """Receive ``channel``: ``fn(data, obj, rinfo)`` per message (also ``d.on(channel, fn)``).

        ``False`` for node-discover's reserved names, a channel already joined, or a name
        the engine reserves (``error``, ``check``...).
        """
        if channel in RESERVED_EVENTS or channel in self._channel_list:
            return False

        def relay(data: Any, packet: Packet) -> None:
            obj = {"event": packet.event, "pid": packet.pid, "iid": packet.iid,
                   "hostName": packet.hostname, "data": data}
            self.emit(channel, data, obj, _rinfo(packet.address, packet.port))

        if not self._d.join(channel, relay):
            return False
        if fn is not None:
            self.on(channel, fn)
        self._channel_list.append(channel)
        return True

    def leave(self, channel: str) -> bool:
        """Stop receiving ``channel`` (handlers added with ``on`` stay, as in node-discover)."""
        self._d.leave(channel)
        if channel in self._channel_list:
            self._channel_list.remove(channel)
        return True

    def send(self, channel: str, obj: Any = None) -> bool:
        """Send ``obj`` on ``channel``; ``False`` for a reserved name (or, here, when not running).

        node-discover throws when it is not running yet; the facade returns ``False`` and
        logs a warning, so a message sent before the start is never lost without a word.
        """
        if channel in RESERVED_EVENTS:
            return False
        if not self._d.running:
            log.warning("send(%r) before the node started (or after it stopped): nothing sent; send from "
                        "the 'started' handler or the start callback", channel)
            return False
        return self._d.send(channel, obj)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels joined (a tuple: change them with :meth:`join` and :meth:`leave`)."""
        return tuple(self._channel_list)

    # ---------------------------------------------------------------- views
    @property
    def nodes(self) -> Mapping[str, NodeObject]:
        """The peers by id, live as node-discover's ``d.nodes``: node objects (the same dicts the
        events carry, kept up to date).  Read-only; safe to iterate while nodes come and go."""
        return self._nodes_view

    @property
    def me(self) -> Mapping[str, Any]:
        """What this node's hellos say, live and read-only (change it with promote, demote, advertise)."""
        return self._me_view

    def eachNode(self, fn: Callable[[NodeObject], Any]) -> None:
        """Call ``fn(node)`` for every peer."""
        for node in list(self._node_objects.values()):
            fn(node)

    each_node = eachNode

    # ------------------------------------------------------------- plumbing
    def _hello_received(self, node: Node, _is_new: bool) -> None:
        """node-discover's ``evaluateHello``, on the engine's parsed hellos: same objects, same order."""
        current = self._node_objects.get(node.id)
        is_new = current is None
        was_master = None if current is None else bool(current["isMaster"])
        if current is None:
            current = self._node_objects[node.id] = {}
        current.update({
            "isMaster": node.is_master,
            "isMasterEligible": node.is_master_eligible,
            "weight": node.weight,
            "address": node.address,
            "advertisement": node.advertisement,
            "lastSeen": _ms_epoch(node.last_seen),
            "hostName": node.hostname,
            "port": node.port,
            "id": node.id,
        })
        data = dict(current)  # node-discover adds lastSeen, address, hostName, port and id to the hello's data
        obj = {"event": "hello", "pid": node.pid, "iid": node.id, "hostName": node.hostname, "data": data}
        rinfo = _rinfo(node.address, node.port)
        if is_new:
            self.emit("added", current, obj, rinfo)
        if current["isMaster"] and (is_new or not was_master):
            self.emit("master", current, obj, rinfo)
        self.emit("helloReceived", current, obj, rinfo, is_new, was_master)

    def _removed(self, node: Node) -> None:
        current = self._node_objects.pop(node.id, None)
        if current is not None:
            self.emit("removed", current)

    def _stopped(self, _: object) -> None:
        # The engine forgets its peers on stop (a restart must not report stale ones): so do we.
        self._node_objects.clear()
        self.emit("stopped", self)

    def _apply_destinations(self, entries: list[NodeObject]) -> None:
        """Hand a new destination list to the engine: the group stays, the rest are its destinations."""
        group = self._group
        if group is not None and group not in entries:
            raise ValueError(
                f"the {'multicast' if self.settings['multicast'] else 'broadcast'} destination "
                f"{group['address']} cannot be removed at run time (the engine keeps sending to it)"
            )
        texts: list[str] = []
        for entry in entries:
            if entry == group:
                continue
            host, port = entry["address"], entry["port"]
            try:
                bracketed = ipaddress.ip_address(host.split("%", 1)[0]).version == 6
            except ValueError:
                bracketed = False
            text = f"[{host}]:{port}" if bracketed else f"{host}:{port}"
            if text not in texts:
                texts.append(text)
        self._d.unicast = texts


__all__ = ["OPTIONS", "RESERVED_EVENTS", "START_DELAY", "Broadcast", "DestinationList", "Discover",
           "EventEmitter", "LiveView", "translate_options"]
