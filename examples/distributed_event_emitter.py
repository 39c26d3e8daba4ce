"""A distributed event emitter: every node emits named events, and every node hears them.

    python examples/distributed_event_emitter.py                 # 3 nodes in this process, 4 s
    python examples/distributed_event_emitter.py --nodes 1 --name alice --expect 2 &
    python examples/distributed_event_emitter.py --nodes 1 --name bob --expect 2    # one node per process

The Python shape of node-discover's distributed event emitter example.
:class:`DistributedEmitter` wraps one channel: ``emit(name, *args)`` sends
``{"event": name, "args": [...]}`` to the cluster (and to this node's own handlers, as
an ``EventEmitter`` would), and ``on(name, fn)`` registers ``fn(*args)`` for events of
that name, whichever node emitted them.

Each node waits until it sees the ``--expect`` nodes of the cluster, emits ``greet``
once, then ``tick`` every ``--interval`` seconds, and prints every event it hears.
After ``--duration`` seconds it stops (saying goodbye) and prints who it heard from.
Exit status 0 when every node heard a ``greet`` from every other node it expected, 1
when one did not, 2 for bad options.

Loopback only: broadcast to ``127.255.255.255`` (another address in 127.0.0.0/8 with
``--broadcast``), or multicast on interface ``127.0.0.1`` with ``--multicast``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pydiscover import Discovery, Packet

log = logging.getLogger("distributed_event_emitter")
Listener = Callable[..., Any]


class DistributedEmitter:
    """Named events across a cluster, over one channel of a :class:`Discovery`.

    Events are datagrams: fire-and-forget, at most once, in no guaranteed order across
    senders.  Arguments must be JSON values, and one event must fit in one datagram
    (``emit`` raises ``PacketTooLarge`` otherwise).
    """

    def __init__(self, discovery: Discovery, channel: str = "events") -> None:
        self.discovery = discovery
        self.channel = channel
        self._listeners: dict[str, list[Listener]] = {}
        self._lock = threading.Lock()
        if not discovery.join(channel, self._received):
            raise ValueError(f"cannot join channel {channel!r} (reserved, or already joined)")

    def on(self, name: str, fn: Listener) -> Listener:
        """Call ``fn(*args)`` for every ``name`` event, local or remote; returns ``fn``."""
        with self._lock:
            self._listeners.setdefault(name, []).append(fn)
        return fn

    def off(self, name: str, fn: Listener) -> None:
        """Stop calling ``fn`` for ``name``."""
        with self._lock:
            listeners = self._listeners.get(name, [])
            if fn in listeners:
                listeners.remove(fn)

    def emit(self, name: str, *args: Any) -> bool:
        """Send ``name(*args)`` to every node, then run this node's own listeners.

        Returns whether it was sent (``False`` once the discovery is stopped).
        """
        sent = self.discovery.send(self.channel, {"event": name, "args": list(args)})
        self._dispatch(name, list(args))
        return sent

    def _received(self, data: Any, packet: Packet) -> None:
        # Anything may arrive on a channel: ignore what is not one of our events.
        if not isinstance(data, dict) or not isinstance(data.get("event"), str):
            log.debug("ignoring a malformed event from %s: %r", packet.hostname, data)
            return
        args = data.get("args", [])
        self._dispatch(data["event"], args if isinstance(args, list) else [args])

    def _dispatch(self, name: str, args: list[Any]) -> None:
        with self._lock:
            listeners = list(self._listeners.get(name, ()))
        for fn in listeners:
            try:
                fn(*args)
            except Exception:  # one bad listener must not silence the others
                log.exception("listener for %r raised", name)


class Printer:
    """One flushed line per call, timestamped from the start; safe from any thread."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            print(f"[{(time.monotonic() - self._t0) * 1000:8.1f} ms] {text}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Loopback only: nothing is sent off this machine.",
    )
    p.add_argument("--nodes", type=int, default=3, help="nodes to run in this process, 1-20 (default 3)")
    p.add_argument("--expect", type=int, help="nodes in the whole cluster, to wait for (default --nodes)")
    p.add_argument("--name", default="node", help="node names are NAME-1, NAME-2, ... (default 'node')")
    p.add_argument("--port", type=int, default=41236,
                   help="UDP port shared by the cluster (default 41236, this example's own: no other uses it)")
    p.add_argument("--broadcast", default="127.255.255.255", metavar="ADDR",
                   help="loopback broadcast address (default 127.255.255.255)")
    p.add_argument("--multicast", metavar="GROUP", help="use this multicast group on interface 127.0.0.1 instead")
    p.add_argument("--duration", type=float, default=4.0, help="seconds to run before stopping (default 4)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between 'tick' events (default 1)")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 20:
        p.error("--nodes must be between 1 and 20")
    if args.expect is None:
        args.expect = args.nodes
    if args.expect < args.nodes:
        p.error("--expect counts the whole cluster: it cannot be less than --nodes")
    if not 0 < args.duration <= 600:
        p.error("--duration must be > 0 and at most 600 seconds")
    if args.interval <= 0:
        p.error("--interval must be > 0")
    if not 1 <= args.port <= 65535:
        p.error("--port must be between 1 and 65535")
    try:
        loopback = ipaddress.ip_address(args.broadcast).is_loopback
    except ValueError:
        loopback = False
    if not args.multicast and not loopback:
        p.error(f"--broadcast {args.broadcast!r}: this example only sends on loopback (127.0.0.0/8)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    say = Printer()
    where = (
        {"multicast": args.multicast, "interface": "127.0.0.1"} if args.multicast else {"broadcast": args.broadcast}
    )
    deadline = time.monotonic() + args.duration
    names = [f"{args.name}-{i}" for i in range(1, args.nodes + 1)]
    heard: dict[str, set[str]] = {name: set() for name in names}  # greeters each node heard
    nodes: list[tuple[str, Discovery, DistributedEmitter]] = []
    say(f"starting {', '.join(names)} on {'multicast ' + args.multicast if args.multicast else args.broadcast} "
        f"port {args.port}; waiting for {args.expect} node(s) in all")
    try:
        for name in names:
            d = Discovery(
                port=args.port, hostname=name, hello_interval=0.5, node_timeout=1.75, check_interval=1.0,
                ignore_process=False,  # several nodes may live in this one process
                start=False, **where,
            )  # fmt: skip
            emitter = DistributedEmitter(d)  # joined before start: nothing is missed

            def greet(sender: str, me: str = name) -> None:
                heard[me].add(sender)
                say(f"{me} heard greet from {sender}")

            def tick(sender: str, count: int, me: str = name) -> None:
                say(f"{me} heard tick {count} from {sender}")

            emitter.on("greet", greet)
            emitter.on("tick", tick)
            d.start()
            nodes.append((name, d, emitter))

        greeted: set[str] = set()
        next_tick: dict[str, float] = {}  # per node: when its next tick is due
        ticks: dict[str, int] = {}
        while time.monotonic() < deadline:
            for name, d, emitter in nodes:
                now = time.monotonic()
                if name not in greeted and len(d.nodes) >= args.expect - 1:
                    greeted.add(name)
                    peers = sorted(n.hostname for n in d.nodes.values())
                    say(f"{name} sees {', '.join(peers) or 'nobody'}; emitting greet")
                    emitter.emit("greet", name)
                    next_tick[name] = now + args.interval
                elif name in greeted and now >= next_tick[name]:
                    ticks[name] = ticks.get(name, 0) + 1
                    next_tick[name] = now + args.interval
                    emitter.emit("tick", name, ticks[name])
            time.sleep(max(0.0, min(0.01, deadline - time.monotonic())))
    except (TypeError, ValueError) as exc:  # a bad option (e.g. not a multicast group): the message names it
        say(f"error: {exc}")
        return 2
    except OSError as exc:  # BindError names the port
        say(f"error: {exc}")
        return 1
    finally:
        for _name, d, _emitter in nodes:
            d.stop()
    ok = True
    for name in names:
        others = sorted(heard[name] - {name})
        complete = len(others) >= args.expect - 1
        ok = ok and complete
        say(f"{name} heard greet from {len(others)} other node(s): {', '.join(others) or 'none'}"
            + ("" if complete else f" (expected {args.expect - 1})"))
    say("done" if ok else "some greetings were not heard")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
