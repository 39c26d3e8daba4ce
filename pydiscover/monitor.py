"""``python -m pydiscover.monitor``: watch a cluster without taking part in it.

The monitor is a passive listener (a ``client=True`` node): it sends nothing, never
joins the election, and shows every node it hears: a live table (with ``rich`` if it
is installed, plain text otherwise), ``--watch`` event lines for logs, or
``--once --json`` for scripts, or ``--http [HOST:]PORT``: a web page, a JSON API and
Prometheus metrics (:mod:`pydiscover.web`, the ``web`` extra).

It joins no channel, so every channel message it hears (the cluster's ordinary
traffic) reaches the core as a message for a channel not joined, which the core counts
as the drop reason ``unknown_event``; the monitor reports that count as
``channel_messages`` instead, not as a drop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .discovery import AsyncDiscovery, Discovery
from .node import Node
from .options import Options

#: The core's drop reason for a message on a channel this node has not joined: for the
#: monitor, which joins none, that is every channel message it hears.
_NOT_JOINED = "unknown_event"

_COLUMNS = ("id", "hostname", "address", "master", "weight", "advertisement", "seen")
#: Where ``--http PORT`` listens when no host is given: this host only.
HTTP_DEFAULT_HOST = "127.0.0.1"
#: ``--http-token``'s default, read from the environment (a token on the command line shows in ``ps``).
TOKEN_VARIABLE = "PYDISCOVER_MONITOR_TOKEN"


class Watched(Protocol):
    """What the monitor reads of a node: a :class:`Discovery` or an :class:`AsyncDiscovery`."""

    @property
    def nodes(self) -> Any: ...
    @property
    def stats(self) -> dict[str, Any]: ...


def http_address(value: str) -> tuple[str, int]:
    """``--http``'s ``[HOST:]PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host = HTTP_DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or (sep and not host) or " " in host:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, e.g. 8080 or 127.0.0.1:8080, got {value!r}")
    return host, int(port_text)


def _parse(argv: Sequence[str] | None, prog: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog or ("pydiscover-monitor" if Path(sys.argv[0]).name == "pydiscover-monitor"
                      else "python -m pydiscover.monitor"),
        description="Show the live nodes of a pydiscover or node-discover cluster. Sends nothing.",
    )
    p.add_argument("--port", type=int, default=12345, help="the cluster's UDP port (default 12345)")
    p.add_argument("--address", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--broadcast", help="broadcast address the cluster uses (default 255.255.255.255)")
    p.add_argument("--multicast", help="multicast group the cluster uses")
    p.add_argument("--interface", help="with --multicast: local IPv4 address, or IPv6 interface name")
    p.add_argument("--unicast", help="comma-separated host[:port] list (only nodes sending to us are seen)")
    p.add_argument("--key", action="append", help="cluster key; repeat for a key ring")
    p.add_argument("--encryption", choices=["aead", "node-discover"], help="with --key (default aead)")
    p.add_argument("--transport", help="a transport URL, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--namespace", help="with --transport redis://: the cluster's namespace")
    p.add_argument("--registry", help="an etcd registry URL, e.g. etcd://127.0.0.1:2379/myapp (the monitor "
                   "registers, so the nodes send to it; needs the etcd extra)")
    p.add_argument("--hello-interval", type=float, default=Options.hello_interval,
                   help=f"the cluster's hello interval in seconds (default {Options.hello_interval:g}, the library's)")
    p.add_argument("--node-timeout", type=float, default=Options.node_timeout,
                   help=f"drop a node unheard this long, in seconds (default {Options.node_timeout:g}, the library's)")
    p.add_argument("--master-timeout", type=float, help="drop a master unheard this long (s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="listen --timeout seconds, print once, exit")
    mode.add_argument("--watch", action="store_true", help="print added/removed/master events as lines")
    mode.add_argument("--http", metavar="[HOST:]PORT", type=http_address,
                      help=f"serve a live web page, /api/nodes, /api/events and /metrics (needs the web extra); "
                           f"without HOST on {HTTP_DEFAULT_HOST} only")
    p.add_argument("--http-token", metavar="TOKEN",
                   help=f"with --http: /api/* and /metrics need ?token=TOKEN or 'Authorization: Bearer TOKEN' "
                        f"(default: ${TOKEN_VARIABLE})")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (--once: default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON; one object per line)")
    p.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    args = p.parse_args(argv)
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be > 0")
    if args.once and args.timeout is None:
        args.timeout = 3.0
    if args.http_token is not None and args.http is None:
        p.error("--http-token needs --http")
    return args


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "client": True,  # passive: no hellos, no replies, never a candidate
        "port": args.port,
        "address": args.address,
        "hello_interval": args.hello_interval,
        "node_timeout": args.node_timeout,
        "check_interval": min(args.node_timeout, Options.check_interval),
        "ignore_process": False,
        "stop_on_sigterm": True,
        "start": False,
    }
    for name in ("broadcast", "multicast", "interface", "unicast", "encryption", "transport", "namespace",
                 "registry"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.master_timeout is not None:
        opts["master_timeout"] = args.master_timeout
    if args.key:
        opts["key"] = args.key if len(args.key) > 1 else args.key[0]
    return opts


def node_record(node: Node, now: float, wall_now: float) -> dict[str, Any]:
    """A node as JSON: ``last_seen`` in epoch seconds, ``last_seen_ago`` in seconds."""
    ago = max(0.0, now - node.last_seen)
    return {
        "id": node.id,
        "hostname": node.hostname,
        "address": node.address,
        "port": node.port,
        "is_master": node.is_master,
        "is_master_eligible": node.is_master_eligible,
        "weight": node.weight,
        "advertisement": node.advertisement,
        "last_seen": round(wall_now - ago, 3),
        "last_seen_ago": round(ago, 3),
        "node_discover": node.legacy,
    }


def monitor_stats(d: Watched) -> dict[str, Any]:
    """``d.stats`` with the cluster's channel traffic as ``channel_messages``, not as a drop.

    The monitor joins no channel, so the core counts every channel message it hears
    under the drop reason ``unknown_event`` (a channel not joined); here that count
    moves out of ``dropped``, which then holds only real problems (a wrong key,
    malformed or oversized datagrams, ...).
    """
    stats = dict(d.stats)
    dropped = dict(stats["dropped"])
    stats["channel_messages"] = dropped.pop(_NOT_JOINED, 0)
    stats["dropped"] = dropped
    return stats


def snapshot(d: Watched) -> dict[str, Any]:
    """Everything the monitor shows, as one JSON-ready object."""
    now, wall_now = time.monotonic(), time.time()
    nodes = sorted(d.nodes.values(), key=lambda n: (not n.is_master, -n.weight, n.id))
    stats = monitor_stats(d)
    return {
        "nodes": [node_record(n, now, wall_now) for n in nodes],
        "totals": {
            "nodes": len(nodes),
            "masters": sum(n.is_master for n in nodes),
            "channel_messages": stats["channel_messages"],
        },
        "stats": stats,
    }


def _row(record: dict[str, Any]) -> list[str]:
    advert = json.dumps(record["advertisement"], separators=(",", ":")) if record["advertisement"] is not None else ""
    return [
        record["id"][:8],
        record["hostname"],
        f"{record['address']}:{record['port']}",
        "MASTER" if record["is_master"] else ("" if record["is_master_eligible"] else "-"),
        f"{record['weight']:g}",
        advert if len(advert) <= 40 else advert[:39] + "…",
        f"{record['last_seen_ago']:.1f}s",
    ]


def render_plain(snap: dict[str, Any]) -> str:
    rows = [list(_COLUMNS)] + [_row(r) for r in snap["nodes"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(snap["stats"]["dropped"].items())) or "none"
    lines.append(
        f"{snap['totals']['nodes']} node(s), {snap['totals']['masters']} master(s); "
        f"packets in {snap['stats']['packets_in']}; channel messages {snap['stats']['channel_messages']}; "
        f"dropped: {dropped}"
    )
    return "\n".join(lines)


def _render_rich(snap: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="pydiscover cluster", caption=render_plain(snap).splitlines()[-1])
    for column in _COLUMNS:
        table.add_column(column)
    for record in snap["nodes"]:
        table.add_row(*_row(record), style="bold" if record["is_master"] else None)
    return table


def _watch(d: Discovery, as_json: bool, until: float | None) -> None:
    lock = threading.Lock()

    def line(event: str, node: Node) -> None:
        rec = node_record(node, time.monotonic(), time.time())
        with lock:
            if as_json:
                print(json.dumps({"event": event, "t": round(time.time(), 3), "node": rec}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {event:<8} {rec['id'][:8]} {rec['hostname']} "
                      f"{rec['address']}:{rec['port']} weight={rec['weight']:g}", flush=True)

    for event in ("added", "removed", "master"):
        d.on(event, lambda node, event=event: line(event, node))
    _sleep_until(until)


def _sleep_until(until: float | None) -> None:
    while until is None or time.monotonic() < until:
        time.sleep(0.1 if until is None else min(0.1, max(0.0, until - time.monotonic())))


def _live(d: Discovery, plain: bool, until: float | None) -> None:
    try:
        if plain:
            raise ImportError
        from rich.live import Live
    except ImportError:
        while until is None or time.monotonic() < until:
            print(render_plain(snapshot(d)) + "\n", flush=True)
            _sleep_until(min(until, time.monotonic() + 2) if until is not None else time.monotonic() + 2)
        return
    with Live(_render_rich(snapshot(d)), refresh_per_second=4) as live:
        while until is None or time.monotonic() < until:
            time.sleep(0.25)
            live.update(_render_rich(snapshot(d)))


def _serve_http(args: argparse.Namespace) -> int:
    """``--http``: the node and the web server on one event loop, until Ctrl-C, SIGTERM or ``--timeout``."""
    try:
        from .web import ClusterView, WebMonitor
    except ImportError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    host, port = args.http
    token = args.http_token or os.environ.get(TOKEN_VARIABLE) or None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and token is None:
        logging.getLogger("pydiscover.web").warning(
            "serving on %s without --http-token: anyone who reaches it can read the cluster", host)

    async def run() -> int:
        options = _options(args)
        for sync_only in ("stop_on_sigterm", "start"):  # (this loop handles the signals itself)
            del options[sync_only]
        try:
            d = AsyncDiscovery(**options)
        except (TypeError, ValueError, NotImplementedError, ImportError) as exc:
            print(f"monitor: {exc}", file=sys.stderr)
            return 2
        view = ClusterView(d)
        server = WebMonitor(view, token=token)
        try:
            await d.start()
        except OSError as exc:
            print(f"monitor: {exc}", file=sys.stderr)
            return 2
        try:
            try:
                await server.start(host, port)
            except OSError as exc:
                print(f"monitor: --http {host}:{port}: cannot listen there: {exc.strerror or exc}", file=sys.stderr)
                return 2
            shown = ", ".join(f"http://[{h}]:{p}/" if ":" in h else f"http://{h}:{p}/" for h, p in server.addresses)
            print(f"monitor: serving {shown}", file=sys.stderr, flush=True)
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), args.timeout)
            return 0
        finally:
            await server.close()
            await d.stop()

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the monitor; ``prog`` is the command name shown in usage (the caller's)."""
    args = _parse(argv, prog)
    # The library installs only a NullHandler: a program shows its warnings (lost link, refused sends).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.http is not None:
        return _serve_http(args)
    try:
        d = Discovery(**_options(args))
    except (TypeError, ValueError, NotImplementedError, ImportError) as exc:  # ImportError: an extra missing
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    try:
        d.start()
    except OSError as exc:  # BindError says what usually fixes it
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    until = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        if args.once:
            _sleep_until(until)
            snap = snapshot(d)
            print(json.dumps(snap) if args.json else render_plain(snap), flush=True)
        elif args.watch or args.json:
            _watch(d, args.json, until)
        else:
            _live(d, args.plain, until)
    except KeyboardInterrupt:
        pass
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
