"""One node of ``benchmarks/soak.py``: a ``ServiceDiscovery`` with a ``ResourceManager`` on loopback broadcast.

Every node is an ordinary application of the library, the sync facade as most programs
use it: a ``ServiceDiscovery`` advertising a service, needing the other role's service
with a setup hook, a ``ResourceManager`` sharing
:data:`RESOURCES` resources with every other node (hooks on its thread pool, health checks
every :data:`HEALTH_INTERVAL`), and a channel.

* ``--role sink`` (the long-lived node): advertises ``soak-sink``, sets up every
  ``soak-worker`` (a coroutine hook, so each is an asyncio task), joins the ``soak``
  channel and counts what arrives.  Prints one JSON line per ``added`` / ``removed`` /
  ``promotion`` / ``demotion`` event (``{"event": ..., "id": ..., "t": ...}``) and,
  every ``--sample`` seconds, a sample of itself: resident memory, open file
  descriptors, threads, asyncio tasks on the discovery's loop, peers in its table,
  messages and setup hooks so far, resources owned.
* ``--role worker`` (the 19 restarted ones): advertises ``soak-worker``, needs
  ``soak-sink``, sends one message a second on ``soak``.

Both print ``{"id": ..., "pid": ...}`` once started.  ``t`` is ``time.monotonic()``,
which on Linux is one clock for every process of the machine, so the parent can put
events and its own restarts on one time line.  A worker is stopped like any service,
by SIGTERM (the facade says goodbye, then the process dies of the signal) or SIGKILL;
every node also stops when its stdin closes (the parent is gone) or after ``--lifetime``
seconds, so none outlives a benchmark that died without cleaning up.  Loopback only:
``--broadcast`` must be in 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import threading
import time
from typing import Any

from benchmarks._harness import rss
from pydiscover import Node, ServiceDiscovery
from pydiscover.balancer import ResourceManager

#: Resources shared by all the nodes' managers (about two per node among 20).
RESOURCES = 40
HEALTH_INTERVAL = 2.0
CHANNEL = "soak"
SINK, WORKER = "soak-sink", "soak-worker"


class Printer:
    """One whole JSON line at a time (handlers run on the discovery thread, hooks on others)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, **fields: Any) -> None:
        line = json.dumps(fields) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("sink", "worker"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--broadcast", default="127.255.255.255")
    parser.add_argument("--hello-interval", type=float, required=True)
    parser.add_argument("--node-timeout", type=float, required=True)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (sink)")
    parser.add_argument("--lifetime", type=float, required=True, help="stop after this many seconds at most")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.broadcast).is_loopback:
        parser.error(f"--broadcast {args.broadcast!r}: the soak sends on loopback (127.0.0.0/8) only")
    sink = args.role == "sink"
    say = Printer()
    d = ServiceDiscovery(
        start=False, port=args.port, broadcast=args.broadcast, hello_interval=args.hello_interval,
        node_timeout=args.node_timeout, master_timeout=args.node_timeout,
        advertisement={"name": SINK if sink else WORKER})
    counts = {"messages": 0, "setups": 0, "started": 0, "stopped": 0, "health": 0}
    lock = threading.Lock()

    def count(key: str) -> None:
        with lock:
            counts[key] += 1

    def setup(node: Node) -> None:  # a plain setup hook: runs on the service layer's hook threads
        count("setups")

    async def setup_async(node: Node) -> None:  # a coroutine hook: a task on the discovery's loop
        await asyncio.sleep(0)
        count("setups")

    def start_resource(resource: dict[str, Any]) -> str:
        count("started")
        return str(resource["id"])

    def stop_resource(handle: str) -> None:
        count("stopped")

    def healthcheck(handle: str) -> None:
        count("health")

    if sink:  # the long-lived node's hooks: setups as tasks, resources and health checks on threads
        d.setup(WORKER, setup_async)
    else:
        d.setup(SINK, setup)
    manager = ResourceManager(d, resources=[{"id": f"r{i:02d}"} for i in range(RESOURCES)], start=start_resource,
                              stop=stop_resource, healthcheck=healthcheck, health_interval=HEALTH_INTERVAL)
    if sink:
        d.join(CHANNEL, lambda data, packet: count("messages"))
        for event in ("added", "removed"):
            d.on(event, lambda node, event=event: say(event=event, id=node.id, t=time.monotonic()))
        for event in ("promotion", "demotion"):
            d.on(event, lambda *_, event=event: say(event=event, t=time.monotonic()))
    d.start()
    say(id=d.me.id, pid=os.getpid(), t=time.monotonic())

    done = threading.Event()

    def watch_stdin() -> None:  # the parent gone (or done with us): stop
        for _ in sys.stdin:
            pass
        done.set()

    threading.Thread(target=watch_stdin, name="soak-stdin", daemon=True).start()
    started = time.monotonic()
    period = args.sample if sink else 1.0
    sent = 0
    while not done.wait(period) and time.monotonic() - started < args.lifetime:
        if sink:
            with lock:
                snapshot = dict(counts)
            say(sample=True, t=time.monotonic(), rss=rss(), fds=open_fds(), threads=threading.active_count(),
                tasks=d.call(lambda: len(asyncio.all_tasks())), nodes=len(d.nodes), owned=len(manager.owned),
                master=d.is_master, **snapshot)
        else:
            d.send(CHANNEL, {"n": sent})
            sent += 1
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
