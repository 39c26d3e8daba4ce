"""Keyed clusters over real loopback sockets: rings, strangers, tampering, replays, junk."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest import LOOPBACK_BROADCAST, eventually

from pydiscover import Discovery

QUICK: dict[str, Any] = {"hello_interval": 0.2, "check_interval": 0.3, "node_timeout": 0.8, "ignore_process": False}


def keyed(port: int, key: Any, **extra: Any) -> Discovery:
    return Discovery(port=port, broadcast=LOOPBACK_BROADCAST, key=key, **{**QUICK, **extra})


@contextmanager
def eavesdropper(port: int) -> Iterator[tuple[list[bytes], socket.socket]]:
    """A socket sharing the port: it hears every broadcast, as an attacker on the LAN would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.05)
    captured: list[bytes] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                captured.append(sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield captured, sock
    finally:
        done.set()
        thread.join(2)
        sock.close()


def test_rings_see_each_other_stranger_invisible_no_plaintext(port: int) -> None:
    with eavesdropper(port) as (captured, _):
        a = keyed(port, ["k1", "k2"], weight=1)
        b = keyed(port, ["k2", "k1"], weight=2)
        stranger = keyed(port, "k3", weight=3)
        try:
            eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 3, "a and b")
            eventually(lambda: stranger.stats["dropped"].get("bad_key", 0) >= 2, 3, "stranger drops")
            assert stranger.nodes == {} and b.me.id not in stranger.nodes
            assert stranger.me.id not in a.nodes and stranger.me.id not in b.nodes
        finally:
            for d in (a, b, stranger):
                d.stop()
    assert len(captured) > 5
    for datagram in captured:  # keyed traffic never contains plaintext JSON
        assert b'"event"' not in datagram and not datagram.startswith(b"{")


def test_bit_flips_replays_and_junk_change_nothing(port: int) -> None:
    with eavesdropper(port) as (captured, attacker):
        watcher = keyed(port, "k", weight=1, node_timeout=0.8)
        leaver = keyed(port, "k", weight=2)
        changes: list[str] = []
        try:
            eventually(lambda: len(watcher.nodes) == 1, 3, "mutual view")
            eventually(lambda: leaver.is_master, 3, "leaver elected")
            eventually(lambda: len(captured) >= 10, 3, "captures")
            for event in ("added", "removed", "master", "promotion", "demotion", "error"):
                watcher.on(event, lambda *args, event=event: changes.append(event))
            rng = random.Random(7)
            sample = list(captured)
            # 2,000 bit-flipped copies of captured packets
            for i in range(2000):
                flipped = bytearray(sample[i % len(sample)])
                bit = rng.randrange(len(flipped) * 8)
                flipped[bit // 8] ^= 1 << (bit % 8)
                attacker.sendto(bytes(flipped), (LOOPBACK_BROADCAST, port))
                if i % 200 == 0:
                    time.sleep(0.005)  # let the receive buffer drain; counting, not flooding
            eventually(lambda: sum(watcher.stats["dropped"].get(r, 0) for r in ("tampered", "bad_key", "malformed"))
                       >= 1500, 5, "flipped packets counted")
            assert changes == []
            # graceful stop, then 3 s of replayed captures
            leaver_id = leaver.me.id
            replay = sample  # the genuine packets captured before the attack began
            leaver.stop()
            eventually(lambda: changes[:2] == ["removed", "promotion"], 2, "goodbye")
            end = time.monotonic() + 3
            while time.monotonic() < end:
                for datagram in replay:
                    attacker.sendto(datagram, (LOOPBACK_BROADCAST, port))
                time.sleep(0.05)
            assert leaver_id not in watcher.nodes and watcher.is_master
            assert changes == ["removed", "promotion"]
            assert watcher.stats["dropped"].get("replayed", 0) >= 10
            # a 20,000-datagram junk blast, then a newcomer is still discovered
            for i in range(20_000):
                attacker.sendto(os.urandom(rng.randrange(1, 300)), (LOOPBACK_BROADCAST, port))
                if i % 1000 == 0:
                    time.sleep(0.005)
            newcomer = keyed(port, "k", weight=0)
            try:
                eventually(lambda: newcomer.me.id in watcher.nodes, 3, "newcomer after the blast")
            finally:
                newcomer.stop()
        finally:
            watcher.stop()
            leaver.stop()
