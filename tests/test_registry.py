"""The registry seam (issue 16) with the in-process MemoryRegistry: what the runtime does with
registrations, whatever the registry.  The etcd registry's own tests are in test_etcd.py.

Loopback only: every node binds its own port on 127.0.0.1 and sends to 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from conftest import async_eventually, free_udp_port, running
from hypothesis import given
from hypothesis import strategies as st

from pydiscover import AsyncDiscovery, Node
from pydiscover.errors import TransportUnavailable
from pydiscover.registry import MemoryRegistry, Registration, decode_registration
from pydiscover.transports.memory import MemoryBus, MemoryTransport

HELLO = 0.2
TIMING: dict[str, Any] = {"hello_interval": HELLO, "check_interval": 0.5, "node_timeout": 1.5, "ignore_process": False}


def node(store: MemoryRegistry.Store, port: int | None = None, **options: Any) -> AsyncDiscovery:
    return AsyncDiscovery(port=port or free_udp_port(), address="127.0.0.1", registry=store.registry(),
                          **{**TIMING, **options})


def ports_seen(d: AsyncDiscovery) -> set[int]:
    return {n.port for n in d.nodes.values()}


async def test_registry_alone_is_a_complete_configuration() -> None:
    store = MemoryRegistry.Store()
    nodes = [node(store) for _ in range(4)]
    assert all(d.options.broadcast is None and d.options.unicast == () for d in nodes)  # unicast mode
    async with running(*nodes):
        everyone = {d.options.port for d in nodes}
        await async_eventually(lambda: all(ports_seen(d) == everyone - {d.options.port} for d in nodes),
                               5 * HELLO, "a full view")
        for d in nodes:
            assert d.registry is not None
            assert {r.port for r in d.registry.members.values()} == everyone - {d.options.port}
            assert set(d.destinations) >= {("127.0.0.1", p) for p in everyone - {d.options.port}}
        me = store.entries[nodes[0].id]
        assert (me.address, me.port, me.hostname, me.pid) == (
            "127.0.0.1", nodes[0].options.port, nodes[0].options.hostname, nodes[0].me.pid)
        assert me.weight == nodes[0].options.weight


async def test_a_node_registered_is_said_hello_to_from_the_first_hello() -> None:
    """No learning, nobody configured: the registry alone makes the first hello reach the others."""
    store = MemoryRegistry.Store()
    a = node(store, learn_peers=False)
    b = node(store, learn_peers=False, hello_interval=5.0, node_timeout=30.0)  # one hello only, at start
    async with running(a):
        added: list[Node] = []
        a.on("added", added.append)
        async with running(b):
            await async_eventually(lambda: len(added) == 1, 2.0, "a hears b's first hello")
            assert added[0].id == b.id


async def test_an_outage_removes_nobody_and_stop_withdraws_the_registration() -> None:
    store = MemoryRegistry.Store()
    a, b = node(store), node(store)
    removed: list[Node] = []
    a.on("removed", removed.append)
    async with running(a, b):
        await async_eventually(lambda: ports_seen(a) == {b.options.port}, 5 * HELLO, "a sees b")
        store.outage()
        assert a.registry is not None and not a.registry.connected
        await b.stop()  # unreachable registry: b's entry stays, but its goodbye removes it from a
        await async_eventually(lambda: len(removed) == 1, 5 * HELLO, "b's goodbye")
        assert b.id in store.entries and ("127.0.0.1", b.options.port) in a.destinations  # kept: no change seen
        store.restore()
        store.entries.pop(b.id)  # (as a lease expiry would)
        store.changed()
        assert ("127.0.0.1", b.options.port) not in a.destinations
        await b.start()
        await async_eventually(lambda: ports_seen(a) == {b.options.port}, 5 * HELLO, "b is back")
    assert store.entries == {}  # both withdrew at stop


async def test_an_unreachable_registry_at_start_starts_nothing() -> None:
    store = MemoryRegistry.Store()
    store.outage()
    port = free_udp_port()
    d = node(store, port)
    with pytest.raises(TransportUnavailable, match="memory://"):
        await d.start()
    assert not d.running and store.entries == {}
    store.restore()
    async with running(d):  # the port was released: the same node starts once the registry is back
        assert d.running and d.id in store.entries


def test_a_registry_needs_udp() -> None:
    with pytest.raises(ValueError, match="registry"):
        AsyncDiscovery(transport=MemoryTransport(MemoryBus()), registry=MemoryRegistry())
    with pytest.raises(TypeError, match="registry"):
        AsyncDiscovery(address="127.0.0.1", registry=42)  # type: ignore[arg-type]


def test_registration_round_trip_and_strict_decoding() -> None:
    r = Registration("iid-1", "10.0.0.5", 12345, "host-a", 1.5, "pid-1")
    value = r.to_json()
    assert orjson.loads(value) == {"address": "10.0.0.5", "port": 12345, "hostname": "host-a", "weight": 1.5,
                                   "pid": "pid-1"}
    assert decode_registration("iid-1", value) == r
    for bad in (b"", b"[]", b"{}", b'{"address": "example.com", "port": 1}', b'{"address": "10.0.0.5", "port": 0}',
                b'{"address": "224.0.0.1", "port": 1}', b'{"address": "10.0.0.5", "port": 1, "weight": true}',
                b'{"address": "10.0.0.5", "port": 1, "hostname": 3}'):
        assert decode_registration("iid-1", bad) is None, bad
    assert decode_registration("", value) is None


JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20)
FIELDS = st.sampled_from(["address", "port", "hostname", "weight", "pid"])


@given(st.binary(max_size=200) | st.dictionaries(FIELDS, JSON_SCALARS).map(orjson.dumps))
def test_decoding_never_raises(value: bytes) -> None:
    result = decode_registration("iid", value)
    assert result is None or (isinstance(result.port, int) and 0 < result.port < 65536)
