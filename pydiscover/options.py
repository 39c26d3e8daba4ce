"""The discovery options as users give them: meanings, validation and hints, each written once.

node-discover accepts anything and fails later (or never); here a typo is a
``TypeError``/``ValueError`` before any socket is opened, and a name or unit carried
over from node-discover (``helloInterval``, milliseconds) says what to write instead.
Defaults live on :class:`~pydiscover.config.Options` (the validated record the core
reads), meanings in :data:`OPTION_HELP`; the discovery
classes spell the parameters out (so type checkers see them) and take both from here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .config import (
    DEFAULT_BROADCAST,
    DEFAULT_NAMESPACE,
    DEFAULT_PORT,
    Encryption,
    Endpoint,
    Options,
    check_namespace,
)
from .security import Secret, make_codec
from .wire import DEFAULT_MAX_DATAGRAM, DEFAULT_MAX_DATAGRAM_V6, check_json

# Re-exported: these lived here before the validated record moved to pydiscover.config.
__all__ = [
    "DEFAULT_BROADCAST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_PORT",
    "OPTION_HELP",
    "Encryption",
    "Endpoint",
    "Options",
    "build_options",
    "check_namespace",
    "default_weight",
    "document_options",
    "engine_options",
    "explains_unknown_options",
    "parse_destination",
    "parse_endpoint",
    "parse_unicast",
]


#: Interval and timeout options at or above this many seconds are refused unless
#: ``allow_long_intervals=True``: such values are nearly always node-discover milliseconds.
LONG_INTERVAL = 60.0
_TIME_OPTIONS = ("hello_interval", "check_interval", "node_timeout", "master_timeout")


def default_weight(now_ms: int | None = None) -> float:
    """node-discover's default: ``-(now_ms / 10**digits)``, so the older process wins."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return -(ms / float(10 ** len(str(ms))))


def _number(name: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _check_not_milliseconds(name: str, seconds: float, allowed: bool) -> None:
    if seconds >= LONG_INTERVAL and not allowed:
        raise ValueError(
            f"{name}={seconds:g}: options are in seconds, not milliseconds as in node-discover "
            f"({name}={seconds / 1000:g} for {seconds:g} ms); for intervals of {LONG_INTERVAL:g} s or more "
            "pass allow_long_intervals=True"
        )


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _ip(name: str, value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an IP address string, got {type(value).__name__}")
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{name} must be an IP address, got {value!r}") from None


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """``"host"``, ``"host:port"``, ``"v6addr"`` or ``"[v6addr]:port"`` -> ``(ip, port)``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"unicast entries must be non-empty strings, got {text!r}")
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unicast entry {text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unicast entry {text!r}: expected ':port' after ']'")
            port = _port_text(text, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port_text(text, port_text)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        return (host if ip.version == 6 else str(ip), port)
    except ValueError:
        pass
    return (_resolve(host, port, f"unicast entry {text!r}"), port)


def _resolve(host: str, port: int, where: str) -> str:
    """A name resolved once, now, so a typo fails when it is given rather than never."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ValueError(f"{where}: cannot resolve {host!r}: {exc}") from None
    # Prefer IPv4, like node-discover's udp4 socket, so "localhost" means 127.0.0.1.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def parse_destination(host: Any, port: Any) -> Endpoint:
    """``add_destination``'s arguments -> ``(ip, port)``: an IP address (v6 with an optional
    ``%zone``) or a host name (resolved now), and a port 1-65535."""
    if not isinstance(host, str):
        raise TypeError(f"destination host must be a string, got {type(host).__name__}")
    port = _int("destination port", port, 1, 65535)
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("destination host must be a non-empty string")
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        return (text if ip.version == 6 else str(ip), port)
    except ValueError:
        pass
    if ":" in text or any(c.isspace() for c in text):
        raise ValueError(f"destination host {host!r} is neither an IP address nor a host name (give the port apart)")
    return (_resolve(text, port, f"destination {host!r}"), port)


def _port_text(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"unicast entry {entry!r}: bad port {text!r}")
    return int(text)


def parse_unicast(value: Any, default_port: int) -> tuple[Endpoint, ...]:
    """A list of entries or one comma-separated string (node-discover's two forms).

    An empty list is unicast mode with no destination yet (a first node that knows
    nobody: the others name it, and it learns them, or is told with ``add_destination``).
    """
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
        if not items:
            raise ValueError("unicast must name at least one host (for none yet, pass an empty list: unicast=[])")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(f"unicast must be a string or a list of strings, got {type(value).__name__}")
    return tuple(parse_endpoint(item, default_port) for item in items)


def build_options(
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
    namespace: str | None = None,
    allow_long_intervals: bool = False,
) -> Options:
    """Validate user options; raises ``TypeError``/``ValueError`` naming the bad option.

    The parameters are those of the discovery classes (see :data:`OPTION_HELP`).
    """
    _bool("allow_long_intervals", allow_long_intervals)
    for name, value in (("hello_interval", hello_interval), ("check_interval", check_interval),
                        ("node_timeout", node_timeout), ("master_timeout", master_timeout)):
        if value is not None:
            _check_not_milliseconds(name, _number(name, value), allow_long_intervals)
    hello = _number("hello_interval", hello_interval)
    if hello < 0.01:
        raise ValueError(f"hello_interval must be at least 0.01 s (100 hellos a second per node), got {hello}")
    check = _number("check_interval", check_interval)
    node_t = _number("node_timeout", node_timeout)
    master_t = node_t if master_timeout is None else _number("master_timeout", master_timeout)
    if node_t <= hello:
        raise ValueError(
            f"node_timeout ({node_t}s) must be greater than hello_interval ({hello}s), "
            "or live nodes are removed between two hellos"
        )
    if master_t < node_t:
        raise ValueError(f"master_timeout ({master_t}s) must be >= node_timeout ({node_t}s)")
    if check > node_t:
        raise ValueError(f"check_interval ({check}s) must be <= node_timeout ({node_t}s)")

    bind = _ip("address", address)
    port = _int("port", port, 1, 65535)
    if sum(x is not None for x in (broadcast, multicast, unicast)) > 1:
        raise ValueError("broadcast, multicast and unicast are exclusive: set at most one")
    if broadcast is not None and _ip("broadcast", broadcast).version != 4:
        raise ValueError(f"broadcast must be an IPv4 address (IPv6 has no broadcast; use multicast), got {broadcast!r}")
    if multicast is not None and not _ip("multicast", multicast).is_multicast:
        raise ValueError(f"multicast must be a multicast group address, got {multicast!r}")
    wildcard = str(bind) in ("0.0.0.0", "::")
    if multicast is not None and _ip("multicast", multicast).version != bind.version and not wildcard:
        raise ValueError(f"multicast {multicast!r} and address {address!r} are different IP versions")
    if interface is not None:
        if not isinstance(interface, str) or not interface:
            raise TypeError("interface must be an IPv4 address or an interface name (IPv6)")
        if multicast is None:
            raise ValueError("interface only applies with multicast")
        if _ip("multicast", multicast).version == 4:
            if _ip("interface", interface).version != 4:
                raise ValueError(f"interface for IPv4 multicast must be an IPv4 address, got {interface!r}")
        elif not interface.isdigit():
            try:
                socket.if_nametoindex(interface)
            except OSError:
                raise ValueError(f"interface {interface!r}: no such network interface") from None
    ttl = _int("multicast_ttl", multicast_ttl, 0, 255)
    endpoints = parse_unicast(unicast, port) if unicast is not None else ()
    if learn_peers is not None:
        _bool("learn_peers", learn_peers)
    if unicast is None:
        # Linux delivers broadcast and multicast only to sockets bound to the wildcard
        # (or to the group itself); a unicast bind would silently hear nothing.
        group = multicast or broadcast or DEFAULT_BROADCAST
        group_version = _ip("multicast" if multicast else "broadcast", group).version
        if not wildcard and str(bind) != group:
            raise ValueError(
                f"address {address!r} would receive no {'multicast' if multicast else 'broadcast'} datagrams: "
                "bind the wildcard (0.0.0.0 or ::) and choose the multicast interface with interface="
            )
        if bind.version == 6 and group_version == 4:
            raise ValueError(
                f"address {address!r} is IPv6 but {'multicast' if multicast else 'broadcast'} {group!r} is IPv4 "
                "(IPv6 has no broadcast: use an IPv6 multicast group or unicast)"
            )
    if isinstance(replay_window, bool) or not isinstance(replay_window, (int, float)):
        raise TypeError(f"replay_window must be a number of seconds, got {type(replay_window).__name__}")
    if not math.isfinite(replay_window) or replay_window < 0:
        raise ValueError(f"replay_window must be >= 0 seconds (0 disables the time check), got {replay_window!r}")
    coalesce = _number("read_coalesce", read_coalesce, positive=False)
    if not 0 <= coalesce <= 0.1:
        raise ValueError(f"read_coalesce must be between 0 and 0.1 s (0 disables it), got {read_coalesce!r}")
    try:
        codec = make_codec(key, encryption)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"key/encryption: {exc}") from None
    required = _int("masters_required", masters_required, 1, 1_000_000)
    if weight is None:
        weight = default_weight()
    elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise TypeError(f"weight must be a finite number, got {weight!r}")
    if hostname is None:
        hostname = os.environ.get("DISCOVERY_HOSTNAME") or socket.gethostname()
    if not isinstance(hostname, str) or not hostname:
        raise TypeError("hostname must be a non-empty string")
    check_json(advertisement, "advertisement")
    if max_datagram is None:
        # IPv6's header is 20 bytes longer: 1500 - 40 - 8 on Ethernet.
        uses_v6 = (
            bind.version == 6
            or (multicast is not None and _ip("multicast", multicast).version == 6)
            or any(":" in host for host, _ in endpoints)
        )
        max_datagram = DEFAULT_MAX_DATAGRAM_V6 if uses_v6 else DEFAULT_MAX_DATAGRAM
    max_dgram = _int("max_datagram", max_datagram, 256, 65507)
    return Options(
        hello_interval=hello,
        check_interval=check,
        node_timeout=node_t,
        master_timeout=master_t,
        address=str(bind) if "%" not in address else address,
        port=port,
        broadcast=broadcast if (broadcast or multicast or unicast is not None) else DEFAULT_BROADCAST,
        multicast=multicast,
        multicast_ttl=ttl,
        interface=interface,
        unicast=endpoints,
        learn_peers=(unicast is not None) if learn_peers is None else learn_peers,
        masters_required=required,
        weight=weight,
        client=_bool("client", client),
        reuse_addr=_bool("reuse_addr", reuse_addr),
        ignore_process=_bool("ignore_process", ignore_process),
        ignore_instance=_bool("ignore_instance", ignore_instance),
        hostname=hostname,
        advertisement=advertisement,
        max_datagram=max_dgram,
        codec=codec,
        replay_window=float(replay_window),
        read_coalesce=coalesce,
        max_nodes=_int("max_nodes", max_nodes, 1, 1_000_000),
        namespace=None if namespace is None else check_namespace(namespace),
    )


# ------------------------------------------------------------------ documentation
#: What each option of the discovery classes means; defaults come from the signatures.
#: Rendered into the classes' docstrings (so ``help(Discovery)`` and the API page list
#: them) and checked against the signatures by the tests.
OPTION_HELP: dict[str, str] = {
    "hello_interval": "Seconds between two hellos of this node (at least 0.01).  Choose it with "
    "``node_timeout``: see the concepts page (node-discover: 1).",
    "check_interval": "Seconds between elections; the first waits ``max(check_interval, hello_interval)`` "
    "after start.  At most ``node_timeout``.",
    "node_timeout": "A node unheard this long is removed, at that instant.  Must exceed ``hello_interval``; "
    "the default survives six lost hellos in a row (node-discover: 2).",
    "master_timeout": "The same for a master; ``None``: ``node_timeout``.  At least ``node_timeout``.",
    "address": "Address to bind.  With broadcast or multicast only the wildcard (or the group itself) "
    "receives anything, so another address is refused.",
    "port": "UDP port, the same on every node (unicast entries may name others).",
    "broadcast": "Broadcast address; ``None``: ``255.255.255.255`` unless ``multicast`` or ``unicast`` is set. "
    "Use ``127.255.255.255`` to stay on this host.",
    "multicast": "Multicast group (IPv4 or IPv6) to send hellos to instead of broadcasting.",
    "multicast_ttl": "Hops a multicast hello may take.",
    "interface": "Multicast interface: an IPv4 address, or an IPv6 interface name or index.",
    "unicast": "Destinations instead of broadcast: ``\"host[:port]\"`` or ``\"[v6addr]:port\"``, a list or "
    "a comma-separated string; ``[]``: unicast mode with none yet.  Changeable at run time in every mode "
    "(``add_destination``, ``remove_destination``, ``d.unicast = [...]``).",
    "learn_peers": "Send to every peer heard from, not only to the ``unicast`` list, so one seed address is "
    "enough to join (a peer leaves the list with its node; at most 1024 are learned; with a key only "
    "authenticated peers).  ``None``: on in unicast mode, off with broadcast and multicast.",
    "key": "A secret (str or bytes) or a list of them (the first seals, all open): packets are sealed; "
    "see the security page.",
    "encryption": "With a key: ``\"aead\"`` (AES-256-GCM, the default) or ``\"node-discover\"`` (its legacy, "
    "unauthenticated cipher, to share a cluster with node-discover peers).",
    "replay_window": "Seconds a sealed packet's clock may differ from ours; 0 disables the time check.",
    "max_nodes": "Instances the node table holds at most.  Beyond it, hellos from new instances are dropped and "
                 "counted (``stats['dropped']['table_full']``, a WARNING once per burst) and members already "
                 "known are never evicted (a refused instance that says hello again takes the place of one heard "
                 "only once, ``stats['evicted']``): a LAN neighbour inventing instances cannot exhaust memory.  The "
                 "default, 4096, is four times the largest cluster this full-mesh protocol suits (1,000 nodes "
                 "at 1 Hz is a million datagrams a second across the cluster) and bounds a node's tables at "
                 "about 10 MB.",
    "read_coalesce": "UDP: while hellos stream in at hundreds of wake-ups a second for a quarter second or more (a "
    "newcomer's burst of replies is read at once), read them in batches this "
    "many seconds apart (about half the CPU; a channel message waits at most this long); 0 reads every "
    "datagram at once.",
    "masters_required": "How many masters the cluster keeps.",
    "weight": "Higher weight is preferred as master; ``None``: node-discover's ``-(now_ms / 10**digits)``, "
    "so the older process wins.",
    "client": "Listen only: send no hellos, never become master.",
    "reuse_addr": "Share the port with other processes on this host (SO_REUSEADDR).",
    "ignore_process": "Drop packets from other instances in this process, as node-discover does; several "
    "nodes in one process (a test, a simulation) need ``False`` to see each other.",
    "ignore_instance": "Drop this instance's own channel messages.",
    "hostname": "Name sent in packets; ``None``: ``$DISCOVERY_HOSTNAME`` or the host's name.",
    "advertisement": "Initial advertisement (any JSON value), sent with every hello.",
    "max_datagram": "Size budget of one datagram; ``None``: 1472 over IPv4, 1452 over IPv6 (Ethernet). "
    "Larger incoming datagrams are dropped (``oversized``); raise it on every node together.",
    "transport": "``None``: UDP.  ``\"redis://host:port/db\"`` or ``\"rediss://...\"`` (TLS) runs over Redis "
    "pub/sub (see the Redis page); or a ``Transport`` object (``MemoryTransport``, ``RedisTransport``).",
    "namespace": "Redis only: the cluster's name on that server (also ``?namespace=`` in the URL); ``None``: "
    "``\"default\"``.  Other namespaces are other clusters.",
    "registry": "``\"etcd://host:port[,host:port...]/prefix\"`` (``etcds://`` for TLS): register this node "
    "there and send to every node registered, where broadcast does not reach (see the etcd page); or a "
    "``Registry`` object.  Alone it is a complete configuration (unicast mode).  Hellos, the election and "
    "channels stay on UDP.",
    "coordinator": "``\"etcd://host:port[,host:port...]/prefix\"``: hold mastership with a leader key under "
    "this node's etcd lease, so at most ``masters_required`` nodes are master even across partitions and "
    "pauses; ``fencing_token`` is the key's revision (see the etcd page).  Or an ``EtcdCoordinator``.",
    "allow_long_intervals": f"Accept intervals and timeouts of {LONG_INTERVAL:g} s or more (refused by default: "
    "they are nearly always node-discover milliseconds).",
    "start": "``Discovery`` only: start in the constructor (``False``: register handlers, then ``start()``).",
    "stop_on_sigterm": "``Discovery`` only: if the program has no SIGTERM handler, a SIGTERM stops every "
    "running ``Discovery`` (peers get the goodbye) and the process then dies of the signal as before.",
}


def document_options(cls: type) -> None:
    """Append the options of ``cls``'s constructor, with meanings and defaults, to its docstring.

    The defaults are read from the signature, so the rendered text cannot drift from it.
    """
    import inspect

    if cls.__doc__ is None:  # python -OO
        return
    lines = [inspect.cleandoc(cls.__doc__), "", "Options (keyword-only; times are seconds):", ""]
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in OPTION_HELP:
            lines.append(f":param {name}: {OPTION_HELP[name]}  Default: ``{parameter.default!r}``.")
    cls.__doc__ = "\n".join(lines) + "\n"


# -------------------------------------------------------------- unknown options
def _snake(name: str) -> str:
    """``helloInterval`` -> ``hello_interval``, ``multicastTTL`` -> ``multicast_ttl``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def unknown_option_message(owner: str, name: str, valid: Iterable[str]) -> str:
    """``TypeError`` text for an option ``owner`` does not take, naming the nearest valid one."""
    import difflib  # only on this error path

    valid = sorted(valid)
    guess = _snake(name) if _snake(name) in valid else None
    if guess is None:
        close = difflib.get_close_matches(_snake(name), valid, n=1, cutoff=0.75)
        guess = close[0] if close else None
    text = f"{owner}() got an unexpected keyword argument {name!r}"
    if guess is None:
        return f"{text}; the options are: {', '.join(valid)}"
    unit = " (in seconds)" if guess in _TIME_OPTIONS else ""
    return f"{text}; did you mean {guess}{unit}?"


F = TypeVar("F", bound=Callable[..., None])


def explains_unknown_options(init: F) -> F:
    """Decorate an ``__init__`` so an unknown keyword names the class and the nearest valid option.

    Python's own message names ``__init__`` and offers no hint; a node-discover user's
    ``helloInterval`` deserves ``did you mean hello_interval (in seconds)?``.  The
    signature (for ``inspect`` and type checkers) stays the decorated function's.
    """
    import functools
    import inspect

    valid = frozenset(inspect.signature(init).parameters) - {"self"}

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in valid:
                raise TypeError(unknown_option_message(type(self).__name__, name, valid))
        init(self, *args, **kwargs)

    return checked  # type: ignore[return-value]


#: Options of the thread-backed facade itself, not of the engine it runs.
FACADE_OPTIONS = ("start", "stop_on_sigterm")


def engine_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's options among a constructor's ``locals()`` (what a facade hands on)."""
    return {name: value for name, value in arguments.items() if name in OPTION_HELP and name not in FACADE_OPTIONS}
