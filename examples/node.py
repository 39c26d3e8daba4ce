"""Run one discovery node from the command line: watch a cluster form, elect and fail over.

Start a few in separate terminals (loopback only, nothing leaves this host)::

    python examples/node.py --weight 1
    python examples/node.py --weight 2

They share the default port 41231 (no other example uses it; ``--port`` picks another)
and the library's default timings (``--hello-interval``, ``--node-timeout``).  To try
the Redis transport instead (``pip install pydiscover-lan[redis]`` and a redis-server
on this host)::

    python examples/node.py --transport redis://127.0.0.1:6379/0 --namespace demo --weight 1

Loopback only: broadcast must be in 127.0.0.0/8, multicast goes out on interface
127.0.0.1 (``lo`` for an IPv6 group), unicast entries and the Redis server must be on
this host (127.0.0.0/8, ``::1`` or ``localhost``).  Anything else is refused with exit
status 2.

Every line typed on stdin is sent on ``--channel``; the line ``state`` prints this
node's view instead.  ``--json`` prints one JSON object per event (with ``t`` =
``time.time()``), which is what ``tests/test_processes.py`` and
``benchmarks/cluster_timing.py`` read.  SIGTERM/SIGINT stop the node cleanly, so its
peers get a goodbye and elect a successor at once instead of waiting for a timeout.

POSIX only: stdin and the signal pipe are multiplexed with ``select``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from pydiscover import Discovery, Node, Packet
from pydiscover.options import Options

LOOPBACK_BROADCAST = "127.255.255.255"
#: This example's own port: no other example uses it, so they never join each other.
DEFAULT_PORT = 41231


class Printer:
    """Serialises output from the discovery thread and the main thread, one flushed line per event.

    Flushing per line matters: a parent reading through a pipe would otherwise see
    events only when the buffer fills, which ruins any latency it measures.
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        t = time.time()
        if self.as_json:
            line = json.dumps({"event": event, "t": t, **fields}, default=str)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
            line = f"{stamp} {event:<9} " + " ".join(f"{k}={v}" for k, v in fields.items())
        with self._lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # The reader went away: keep running, and let the exit-time flush find a sink.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _node(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "weight": node.weight,
        "is_master": node.is_master,
        "address": node.address,
        "port": node.port,
        "hostname": node.hostname,
        "advertisement": node.advertisement,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="stdin: each line is sent on --channel; the line 'state' prints this node's view.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"UDP port shared by the cluster (default {DEFAULT_PORT}, this example's own)")
    p.add_argument(
        "--broadcast",
        default=LOOPBACK_BROADCAST,
        help=f"broadcast address (default {LOOPBACK_BROADCAST}: loopback, this host only)",
    )
    p.add_argument("--multicast", help="multicast group instead of broadcast, e.g. 239.255.0.1 (sent on loopback)")
    p.add_argument("--interface",
                   help="with --multicast: a loopback IPv4 address (default 127.0.0.1), or 'lo' for an IPv6 group")
    p.add_argument("--unicast", help="comma-separated host[:port] list instead of broadcast (hosts on loopback)")
    p.add_argument(
        "--transport",
        help="a redis:// or rediss:// URL of a server on this host: run over Redis pub/sub instead of UDP "
        "(needs the redis extra)",
    )
    p.add_argument("--namespace", help="with --transport: the cluster's name on that Redis (default 'default')")
    p.add_argument("--weight", type=float, help="election weight; highest wins (default: older process wins)")
    p.add_argument("--hello-interval", type=float, default=Options.hello_interval,
                   help=f"seconds between hellos (default {Options.hello_interval:g}, the library's)")
    p.add_argument("--node-timeout", type=float, default=Options.node_timeout,
                   help=f"seconds before a silent node is dropped (default {Options.node_timeout:g}, the library's)")
    p.add_argument(
        "--master-timeout",
        type=float,
        default=None,
        help="seconds before a silent master is dropped (default node timeout)",
    )
    p.add_argument("--masters-required", type=int, default=1, help="how many masters the cluster keeps (default 1)")
    p.add_argument("--check-interval", type=float, default=None,
                   help=f"election period in seconds (default {Options.check_interval:g}, the library's)")
    p.add_argument("--key", help="cluster key: packets are sealed (AES-256-GCM unless --encryption says otherwise)")
    p.add_argument(
        "--encryption", choices=["aead", "node-discover"], help="with --key: 'aead' (default) or node-discover's legacy"
    )
    p.add_argument("--advertise", help="a JSON value to advertise with every hello")
    p.add_argument("--channel", default="chat", help="channel to join and send stdin lines on (default 'chat')")
    p.add_argument("--json", action="store_true", help="print one JSON object per event, with t=time.time()")
    p.add_argument(
        "--lifetime", "--duration", type=float, default=None, help="stop (cleanly) after this many seconds"
    )
    p.add_argument(
        "--exit-on-eof", action="store_true", help="stop (cleanly) when stdin closes, e.g. when a driving parent dies"
    )
    return p


def _is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ``::1``); names are not resolved."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _unicast_hosts(text: str) -> list[str]:
    """The hosts of a ``host[:port]`` / ``[v6addr]:port`` / bare IPv6 comma list."""
    hosts = []
    for entry in (e.strip() for e in text.split(",")):
        if entry.startswith("["):
            hosts.append(entry[1:].split("]", 1)[0])
        elif entry.count(":") == 1:
            hosts.append(entry.split(":", 1)[0])
        else:  # a bare name, IPv4 or IPv6 address
            hosts.append(entry)
    return hosts


def loopback_problem(args: argparse.Namespace) -> str | None:
    """Why these flags would send off this host, or ``None``; fills in the multicast interface.

    Like the other examples, this one only ever sends on loopback, whatever the mode.
    """
    if args.transport:
        host = urlsplit(args.transport).hostname or ""
        if not _is_loopback_host(host):
            return f"--transport {args.transport!r}: this example only talks to a Redis server on this host"
    elif args.unicast:
        for host in _unicast_hosts(args.unicast):
            if not _is_loopback_host(host):
                return f"--unicast host {host!r}: this example only sends on loopback (127.0.0.0/8, ::1, localhost)"
    elif args.multicast:
        try:
            v6 = ipaddress.ip_address(args.multicast).version == 6
        except ValueError:
            return None  # not an address: the library's own check names the problem
        if args.interface is None:
            args.interface = "lo" if v6 else "127.0.0.1"
        if not (args.interface == "lo" if v6 else _is_loopback_host(args.interface)):
            want = "'lo'" if v6 else "a 127.x address"
            return f"--interface {args.interface!r}: this example only multicasts on loopback ({want})"
    elif not _is_loopback_host(args.broadcast) or args.broadcast.lower() == "localhost":
        return f"--broadcast {args.broadcast!r}: this example only sends on loopback (127.0.0.0/8)"
    return None


def discovery_options(args: argparse.Namespace) -> dict[str, Any]:
    """Map CLI flags to Discovery options; a transport URL, multicast or unicast replace the default broadcast."""
    opts: dict[str, Any] = {
        "port": args.port,
        "hello_interval": args.hello_interval,
        "node_timeout": args.node_timeout,
        "masters_required": args.masters_required,
    }
    if args.master_timeout is not None:
        opts["master_timeout"] = args.master_timeout
    if args.check_interval is not None:
        opts["check_interval"] = args.check_interval
    if args.key:
        opts["key"] = args.key
        if args.encryption:
            opts["encryption"] = args.encryption
    if args.advertise:
        opts["advertisement"] = json.loads(args.advertise)
    if args.weight is not None:
        opts["weight"] = args.weight
    if args.transport:
        opts["transport"] = args.transport
        if args.namespace:
            opts["namespace"] = args.namespace
    elif args.namespace:
        opts["namespace"] = args.namespace  # rejected with a clear message: UDP has no namespace
    elif args.unicast:
        opts["unicast"] = args.unicast
    elif args.multicast:
        opts["multicast"] = args.multicast
        if args.interface:
            opts["interface"] = args.interface
    else:
        opts["broadcast"] = args.broadcast
    return opts


def wire_events(d: Discovery, out: Printer, channel: str) -> None:
    """Print every membership and election event (handlers run on the discovery thread)."""
    d.on("added", lambda node: out("added", **_node(node)))
    d.on("removed", lambda node: out("removed", **_node(node)))
    d.on("master", lambda node: out("master", **_node(node)))
    d.on("promotion", lambda me: out("promotion", **_node(me)))
    d.on("demotion", lambda me: out("demotion", **_node(me)))
    d.on("error", lambda exc: out("error", error=repr(exc)))

    def message(data: Any, packet: Packet) -> None:
        out("message", channel=channel, data=data, **{"from": packet.iid})

    d.join(channel, message)


def handle_line(d: Discovery, out: Printer, channel: str, line: str) -> None:
    """One stdin line: ``state`` reports the view, anything else is sent on the channel."""
    if line == "state":
        out("state", id=d.me.id, nodes=sorted(d.nodes), is_master=d.is_master)
    elif line:
        try:
            ok = d.send(channel, line)
        except (ValueError, TypeError) as exc:  # PacketTooLarge is a ValueError
            out("error", error=repr(exc))
        else:
            out("sent", channel=channel, data=line, ok=ok)


def install_stop_signals() -> tuple[int, list[str]]:
    """SIGTERM/SIGINT request a clean stop; returns (fd that becomes readable, reasons).

    The handler only writes to a pipe: calling ``stop()`` inside it could deadlock on
    the output lock if the signal lands mid-print, so the main loop sees the pipe
    become readable and stops from ordinary code, at once (no polling).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    reasons: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        reasons.append(signal.Signals(signum).name)
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"\0")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return wake_r, reasons


def serve(
    d: Discovery,
    out: Printer,
    channel: str,
    lifetime: float | None,
    exit_on_eof: bool,
    wake_r: int,
    reasons: list[str],
) -> str:
    """Handle stdin lines until a stop signal, ``lifetime`` or (``exit_on_eof``) EOF; returns why it ended."""
    stdin_fd: int | None = sys.stdin.fileno() if sys.stdin is not None else None
    pending = b""
    deadline = None if lifetime is None else time.monotonic() + lifetime
    while not reasons:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if timeout == 0.0:
            return "lifetime"
        readable, _, _ = select.select([wake_r] + ([stdin_fd] if stdin_fd is not None else []), [], [], timeout)
        if stdin_fd is not None and stdin_fd in readable:
            chunk = os.read(stdin_fd, 65536)  # raw read: no buffered-stdin lock held at exit
            if not chunk:  # EOF: by default keep running (stdin may be /dev/null), just stop reading
                if exit_on_eof:
                    reasons.append("eof")
                stdin_fd = None
                chunk = b"\n"  # flush a last unterminated line
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                handle_line(d, out, channel, raw.decode(errors="replace").strip())
    return reasons[0]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # pydiscover installs only a NullHandler: an application shows its warnings (a lost link) itself.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = loopback_problem(args)
    if problem:
        parser.error(problem)  # exit status 2, like every bad option
    out = Printer(args.json)
    wake_r, reasons = install_stop_signals()  # before start: a node must never die without a goodbye
    try:
        d = Discovery(start=False, **discovery_options(args))
    except (TypeError, ValueError) as exc:  # option errors name the option: show them as usage errors
        parser.error(str(exc))
    except ImportError as exc:  # --transport redis:// without the redis package
        parser.error(str(exc))
    # Registered before start() so even the fastest replies are printed.
    d.on("started", lambda _d: out("started", pid=os.getpid(), **_node(d.me)))
    wire_events(d, out, args.channel)
    try:
        d.start()
    except OSError as exc:  # BindError, or TransportUnavailable (Redis unreachable): both name what failed
        out("error", error=str(exc))
        return 1
    reason = serve(d, out, args.channel, args.lifetime, args.exit_on_eof, wake_r, reasons)
    d.stop()  # goodbye: peers drop this node and re-elect without waiting for a timeout
    out("stopped", reason=reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
