"""The monitor: passive, accurate, scriptable."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from conftest import LOOPBACK_BROADCAST, eventually

from pydiscover import Discovery
from pydiscover.options import Options


def monitor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pydiscover.monitor", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_once_json_lists_every_node_and_only_the_master_flagged(port: int) -> None:
    nodes = [Discovery(port=port, broadcast=LOOPBACK_BROADCAST, weight=w, advertisement={"role": f"r{w}"},
                       hello_interval=0.5, ignore_process=False) for w in (1, 2, 3)]
    try:
        eventually(lambda: nodes[2].is_master, 5, "an elected master")
        before = [d.stats["packets_in"] for d in nodes]
        result = monitor("--once", "--json", "--port", str(port), "--broadcast", LOOPBACK_BROADCAST,
                         "--timeout", "2")
        assert result.returncode == 0, result.stderr
        snap: dict[str, Any] = json.loads(result.stdout)
        listed = {n["weight"]: n for n in snap["nodes"]}
        assert sorted(listed) == [1, 2, 3]
        assert [w for w, n in listed.items() if n["is_master"]] == [3]
        assert {w: n["advertisement"] for w, n in listed.items()} == {1: {"role": "r1"}, 2: {"role": "r2"},
                                                                       3: {"role": "r3"}}
        assert set(listed[3]) >= {"id", "hostname", "address", "port", "is_master", "is_master_eligible", "weight",
                                  "advertisement", "last_seen"}
        assert snap["totals"] == {"nodes": 3, "masters": 1, "channel_messages": 0}
        # passive: the cluster never saw it (no hello, no goodbye, no reply), and nobody's view changed
        assert all(len(d.nodes) == 2 for d in nodes)
        assert [d.stats["packets_in"] for d in nodes] != before  # (they kept hearing each other)
    finally:
        for d in nodes:
            d.stop()


def test_watch_prints_membership_events(port: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pydiscover.monitor", "--watch", "--json", "--port", str(port),
                             "--broadcast", LOOPBACK_BROADCAST, "--timeout", "20"],
                            stdout=subprocess.PIPE, text=True)
    node = None
    try:
        import time

        time.sleep(0.5)  # the monitor binds; nothing to assert on yet
        node = Discovery(port=port, broadcast=LOOPBACK_BROADCAST, hello_interval=0.2, check_interval=0.3,
                         node_timeout=0.6, weight=7, ignore_process=False)
        assert proc.stdout is not None
        events = []
        for _ in range(10):
            events.append(json.loads(proc.stdout.readline()))
            if [e["event"] for e in events][-2:] == ["added", "master"] or events[-1]["event"] == "master":
                break
        assert events[0]["event"] == "added" and events[0]["node"]["weight"] == 7
        node.stop()
        removed = json.loads(proc.stdout.readline())
        assert removed["event"] == "removed" and removed["node"]["id"] == events[0]["node"]["id"]
    finally:
        if node is not None:
            node.stop()
        proc.kill()
        proc.wait()


def test_plain_output_and_bad_options(port: int) -> None:
    result = monitor("--once", "--port", str(port), "--broadcast", LOOPBACK_BROADCAST, "--timeout", "0.3")
    assert result.returncode == 0 and "0 node(s), 0 master(s)" in result.stdout
    bad = monitor("--port", "99999", "--broadcast", LOOPBACK_BROADCAST, "--once")
    assert bad.returncode == 2 and "port" in bad.stderr
    assert monitor("--help").returncode == 0


def test_channel_traffic_is_counted_as_channel_messages_not_as_drops(port: int) -> None:
    """Regression: the passive monitor joins no channel, yet ordinary channel traffic is no drop.

    The core counts a message on a channel it has not joined as the drop reason
    ``unknown_event``; the monitor used to print the cluster's chat as ``dropped:
    unknown_event=N``.  It now reports it as channel messages, in the table and the JSON.
    """
    talker = Discovery(port=port, broadcast=LOOPBACK_BROADCAST, ignore_process=False)
    done = threading.Event()
    sent: list[int] = []

    def chat() -> None:  # bounded: at most 400 messages, 20 s, and only while a monitor listens
        for i in range(400):
            if done.wait(0.05):
                return
            if talker.send("chat", {"n": i}):
                sent.append(i)

    sender = threading.Thread(target=chat, daemon=True)
    sender.start()
    try:
        result = monitor("--once", "--json", "--port", str(port), "--broadcast", LOOPBACK_BROADCAST,
                         "--timeout", "1.5")
        plain = monitor("--once", "--plain", "--port", str(port), "--broadcast", LOOPBACK_BROADCAST,
                        "--timeout", "1")
    finally:
        done.set()
        sender.join(5)
        talker.stop()
    assert result.returncode == 0, result.stderr
    snap: dict[str, Any] = json.loads(result.stdout)
    assert sent, "the talker sent nothing"
    assert snap["stats"]["channel_messages"] >= 5, snap["stats"]  # ~30 sent while it listened
    assert snap["totals"]["channel_messages"] == snap["stats"]["channel_messages"]
    assert "unknown_event" not in snap["stats"]["dropped"], snap["stats"]
    assert snap["stats"]["dropped"] == {}, snap["stats"]
    assert [n["id"] for n in snap["nodes"]] == [talker.me.id]
    assert plain.returncode == 0, plain.stderr
    summary = plain.stdout.splitlines()[-1]
    assert "channel messages " in summary and "dropped: none" in summary, summary
    assert "unknown_event" not in plain.stdout


def test_defaults_are_the_librarys_timings() -> None:
    """Not node-discover's 1 s / 2 s: a monitor with defaults must not flicker nodes of a default cluster."""
    text = " ".join(monitor("--help").stdout.split())
    assert f"(default {Options.hello_interval:g}, the library's)" in text
    assert f"(default {Options.node_timeout:g}, the library's)" in text
