"""The runtime's public seam: what services, the balancer and tools build on (no private access)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import async_eventually

from pydiscover import AsyncDiscovery, Discovery, Node, PacketTooLarge
from pydiscover.transports.memory import MemoryBus, MemoryTransport

QUICK = {"hello_interval": 0.05, "check_interval": 0.1, "node_timeout": 0.5, "ignore_process": False}
ROOT = Path(__file__).resolve().parent.parent


def test_no_module_reaches_into_another_objects_privates() -> None:
    """``ruff check --select SLF001 pydiscover`` is clean (ruff ships with the dev tools)."""
    ruff = Path(sys.executable).parent / "ruff"
    package = ROOT / "pydiscover"
    if not ruff.exists() or not package.is_dir():
        pytest.skip("ruff or the source tree is not here (the installed-wheel run)")
    result = subprocess.run([str(ruff), "check", "--select", "SLF001", "--no-cache", str(package)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("key", [None, "secret"])
async def test_max_payload_is_exact_and_message_bytes_raises_like_send(key: str | None) -> None:
    async with AsyncDiscovery(transport=MemoryTransport(MemoryBus()), key=key, **QUICK) as d:
        room = d.max_payload("jobs")
        assert 1000 < room < d.options.max_datagram
        fits = "x" * (room - 2)  # a JSON string of exactly room bytes
        raw = d.message_bytes("jobs", fits)
        assert fits in raw.decode()
        assert d.send("jobs", fits)
        with pytest.raises(PacketTooLarge, match="task 7"):
            d.message_bytes("jobs", fits + "x", what="task 7")
        with pytest.raises(PacketTooLarge):
            # send() checks with the current sequence number, at most 15 digits shorter
            d.send("jobs", fits + "x" * 16)
        with pytest.raises(TypeError):
            d.message_bytes("jobs", {1, 2})


async def test_node_updated_fires_only_when_a_nodes_data_changes() -> None:
    bus = MemoryBus()
    updates: list[tuple[Node, Node]] = []
    hellos: list[Node] = []
    async with AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), advertisement={"v": 1}, **QUICK) as b:
        a.on("nodeUpdated", lambda node, previous: updates.append((node, previous)))
        a.on("helloReceived", lambda node, is_new: hellos.append(node))
        await async_eventually(lambda: a.is_master != b.is_master, 3, "one master")
        await async_eventually(lambda: a.has_node(b.id) and a.nodes[b.id].is_master == b.is_master, 3, "settled")
        updates.clear()  # becoming master is an update; from here on nothing changes
        count = len(hellos)
        await async_eventually(lambda: len(hellos) >= count + 5, 3, "several hellos from b")
        assert updates == []  # hellos that change nothing are not updates
        b.advertise({"v": 2})
        await async_eventually(lambda: len(updates) == 1, 3, "the update")
        node, previous = updates[0]
        assert (node.id, node.advertisement, previous.advertisement) == (b.id, {"v": 2}, {"v": 1})
        count = len(hellos)
        await async_eventually(lambda: len(hellos) >= count + 5, 3, "more hellos")
        assert len(updates) == 1
        assert not a.has_node("nobody")


async def test_stop_hooks_run_before_the_goodbye_and_layers_emit_their_own_events() -> None:
    bus = MemoryBus()
    order: list[str] = []
    async with AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as watcher:
        leaver = AsyncDiscovery(transport=MemoryTransport(bus), **QUICK)
        watcher.on("removed", lambda node: order.append("peer heard the goodbye"))

        async def hook() -> None:
            await asyncio.sleep(0.05)
            order.append("hook done")

        async def removed_hook() -> None:
            order.append("removed hook ran")

        leaver.add_stop_hook(hook)
        leaver.add_stop_hook(removed_hook)
        leaver.remove_stop_hook(removed_hook)
        leaver.remove_stop_hook(removed_hook)  # twice: no error
        seen: list[Any] = []
        leaver.on("resourceStarted", lambda *args: seen.append(args))
        assert leaver.emit("resourceStarted", {"id": "r"}, "handle") and seen == [({"id": "r"}, "handle")]
        assert not leaver.emit("nobodyListens")
        await leaver.start()
        assert leaver.engine is leaver and leaver.loop is asyncio.get_running_loop()
        assert leaver.call(lambda x: x + 1, 1) == 2
        await async_eventually(lambda: watcher.has_node(leaver.id), 3, "watcher sees leaver")
        await leaver.stop()
        await async_eventually(lambda: "peer heard the goodbye" in order, 3, "goodbye")
    assert order == ["hook done", "peer heard the goodbye"]


def test_the_sync_facade_exposes_its_engine_and_runs_calls_on_its_thread() -> None:
    import threading

    with Discovery(transport=MemoryTransport(MemoryBus()), **QUICK) as d:
        assert d.engine.id == d.id == d.me.id
        thread = d.call(threading.current_thread)
        assert thread is not threading.current_thread() and thread.name == "pydiscover"
        assert d.call(d.engine.max_payload, "jobs") == d.engine.max_payload("jobs")


def test_options_show_the_settings_in_effect_after_a_key_change() -> None:
    with Discovery(transport=MemoryTransport(MemoryBus()), key="one", **QUICK) as d:
        before = d.options
        assert d.options.codec.name == "aead" and d.engine.encryption == "aead"
        d.set_key(["two", "one"], encryption="node-discover")
        assert d.engine.encryption == "node-discover" and d.options.codec.name == "node-discover"
        assert before.codec.name == "aead"  # a snapshot is never edited
        assert d.options.hello_interval == before.hello_interval
