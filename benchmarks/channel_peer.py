"""One end of ``benchmarks/channel.py``: a pydiscover node that sends or receives channel messages.

Spoken to in lines on stdin, one JSON reply line each (see :class:`benchmarks._harness.LineChild`)::

    sender:    latency N RATE   send N messages one at a time, RATE per second
               blast RATE SECS  send RATE*SECS messages evenly over SECS (bursts every ~0.5 ms)
    receiver:  reset            forget everything received so far
               report [lat]     how many messages arrived (and, with ``lat``, every latency)

Every message is ``{"t": <CLOCK_MONOTONIC seconds>, "n": <sequence>}``, stamped just
before ``send``; the receiver subtracts ``t`` from its own ``time.monotonic()`` (the same
system-wide clock Node's ``process.hrtime`` reads), so the delta is the one-way latency
through both libraries and the loopback.  The receiver's handler only counts and appends
the delta: nothing is printed per message.

``--api async`` (default) drives an :class:`AsyncDiscovery` on this process's loop;
``--api sync`` (sender only) calls :class:`Discovery.send` from the main thread, as a
plain program would, which adds the hand-over to the discovery thread.

Loopback only: binds 127.0.0.1 and unicasts to ``--peer-port`` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

from pydiscover import AsyncDiscovery, Discovery

CHANNEL = "bench"
#: Every command is bounded: no blast longer than this, no more messages than this.
MAX_SECONDS = 30.0
MAX_MESSAGES = 2_000_000


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "address": "127.0.0.1",
        "port": args.port,
        "unicast": [f"127.0.0.1:{args.peer_port}"],
        "weight": 1 if args.role == "recv" else 2,
    }


class Receiver:
    """Counts messages and keeps each one's latency (seconds)."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []

    def __call__(self, data: Any, _packet: Any) -> None:
        now = time.monotonic()
        self.count += 1
        self.latencies.append(now - data["t"])

    def command(self, words: list[str]) -> dict[str, Any]:
        if words[0] == "reset":
            self.count = 0
            self.latencies = []
            return {"ok": True}
        if words[0] == "report":
            out: dict[str, Any] = {"received": self.count, "cpu": time.process_time()}
            if words[1:] == ["lat"]:
                out["lat"] = self.latencies
            return out
        return {"error": f"unknown command {words[0]!r}"}


def bounded(words: list[str]) -> tuple[int, float]:
    """(messages, rate) of a ``latency``/``blast`` command, within the limits."""
    if words[0] == "latency":
        count, rate = int(words[1]), float(words[2])
    else:
        rate, seconds = float(words[1]), min(float(words[2]), MAX_SECONDS)
        count = int(rate * seconds)
    if rate <= 0 or count / rate > MAX_SECONDS:
        raise ValueError(f"{words}: at most {MAX_SECONDS:g} s of messages")
    return min(count, MAX_MESSAGES), rate


async def send_async(d: AsyncDiscovery, words: list[str]) -> dict[str, Any]:
    count, rate = bounded(words)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + count / rate * 3 + 5  # bounded even on a starved machine
    sent = 0
    monotonic, send = time.monotonic, d.send
    if words[0] == "latency":  # one at a time, each at its own moment
        while sent < count and loop.time() < deadline:
            delay = start + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            send(CHANNEL, {"t": monotonic(), "n": sent})
            sent += 1
    else:
        while sent < count and loop.time() < deadline:
            due = min(count, int((loop.time() - start) * rate) + 1)
            while sent < due:
                send(CHANNEL, {"t": monotonic(), "n": sent})
                sent += 1
            await asyncio.sleep(0.0005)
    return {"sent": sent, "seconds": loop.time() - start, "cpu": time.process_time()}


def send_sync(d: Discovery, words: list[str]) -> dict[str, Any]:
    count, rate = bounded(words)
    start = time.monotonic()
    deadline = start + count / rate * 3 + 5
    sent = 0
    monotonic, send = time.monotonic, d.send
    if words[0] == "latency":
        while sent < count and monotonic() < deadline:
            delay = start + sent / rate - monotonic()
            if delay > 0:
                time.sleep(delay)
            send(CHANNEL, {"t": monotonic(), "n": sent})
            sent += 1
    else:
        while sent < count and monotonic() < deadline:
            due = min(count, int((monotonic() - start) * rate) + 1)
            while sent < due:
                send(CHANNEL, {"t": monotonic(), "n": sent})
                sent += 1
            time.sleep(0.0005)
    return {"sent": sent, "seconds": monotonic() - start, "cpu": time.process_time()}


async def run_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: stdin is a pipe, and the loop must stay free
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    d = AsyncDiscovery(**options(args))
    receiver = Receiver()
    d.join(CHANNEL, receiver if args.role == "recv" else None)
    await d.start()
    threading.Thread(target=read_stdin, daemon=True).start()
    reply({"ready": True, "pid": d.me.pid})
    try:
        while line := await lines.get():
            words = line.split()
            if not words:
                continue
            if args.role == "recv":
                reply(receiver.command(words))
            else:
                reply(await send_async(d, words))
    finally:
        await d.stop()


def run_sync_sender(args: argparse.Namespace) -> None:
    d = Discovery(**options(args))
    try:
        reply({"ready": True, "pid": d.me.pid})
        for line in sys.stdin:
            words = line.split()
            if words:
                reply(send_sync(d, words))
    finally:
        d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["send", "recv"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer-port", type=int, required=True)
    parser.add_argument("--api", choices=["async", "sync"], default="async")
    args = parser.parse_args()
    if args.role == "send" and args.api == "sync":
        run_sync_sender(args)
    else:
        asyncio.run(run_async(args))


if __name__ == "__main__":
    main()
