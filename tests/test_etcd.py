"""The etcd registry against a real etcd on loopback (issue 16).

Each test that stops or kills etcd has its own server (own ports, own data folder); the
others share one per module and use their own key prefix.  Nodes bind 127.0.0.1 and send
only there.  Without Debian's ``etcd-server`` (``./scripts/test`` installs it when run as
root) the tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import async_eventually, free_udp_port, running

from pydiscover import AsyncDiscovery, Discovery, TransportUnavailable
from pydiscover.etcd import MIN_LEASE_TTL, EtcdRegistry, lease_ttl, parse_etcd_url
from testbed.etcd_server import EtcdServer, etcd_server_missing
from testbed.ports import free_tcp_port

aetcd = pytest.importorskip("aetcd", reason="the aetcd package is missing: pip install -e '.[test]'")

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]

#: The defaults but for ignore_process (several nodes in this process).
SAME_PROCESS: dict[str, Any] = {"ignore_process": False}


def need_etcd() -> None:
    reason = etcd_server_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    need_etcd()
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as srv:
        yield srv


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EtcdServer]:
    need_etcd()
    with EtcdServer(tmp_path / "etcd") as srv:
        yield srv


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def node(url: str, **options: Any) -> AsyncDiscovery:
    return AsyncDiscovery(port=free_udp_port(), address="127.0.0.1", registry=url, **{**SAME_PROCESS, **options})


def ports_seen(d: AsyncDiscovery) -> set[int]:
    return {n.port for n in d.nodes.values()}


async def read_prefix(srv: EtcdServer, key_prefix: str) -> dict[str, dict[str, Any]]:
    """Every key under ``key_prefix`` and its JSON value, read with a client of our own."""
    async with aetcd.Client(host="127.0.0.1", port=srv.client_port, timeout=2) as client:
        response = await client.get_prefix(key_prefix.encode())
        return {kv.key.decode(): orjson.loads(kv.value) for kv in response}


async def read_revisions(srv: EtcdServer, key_prefix: str) -> dict[str, int]:
    """Every key under ``key_prefix`` and the revision it was last written at."""
    async with aetcd.Client(host="127.0.0.1", port=srv.client_port, timeout=2) as client:
        return {kv.key.decode(): kv.mod_revision for kv in await client.get_prefix(key_prefix.encode())}


async def full_view(nodes: list[AsyncDiscovery], timeout: float, what: str) -> None:
    everyone = {d.options.port for d in nodes}
    await async_eventually(lambda: all(ports_seen(d) == everyone - {d.options.port} for d in nodes), timeout, what)


# ------------------------------------------------------------------ URLs
def test_urls() -> None:
    c = parse_etcd_url("etcd://127.0.0.1:2379,[::1]:2380,etcd.example/my/app/")
    assert c.endpoints == (("127.0.0.1", 2379), ("::1", 2380), ("etcd.example", 2379))
    assert c.prefix == "my/app" and c.nodes_prefix == b"my/app/nodes/" and not c.tls
    assert parse_etcd_url("etcd://h").prefix == "pydiscover"
    s = parse_etcd_url("etcds://alice:s%40cret@h:1/p?ca=/ca.pem&cert=/c.pem&key=/k.pem&address=10.0.0.5")
    assert (s.tls, s.username, s.password, s.ca, s.cert, s.key, s.address) == (
        True, "alice", "s@cret", "/ca.pem", "/c.pem", "/k.pem", "10.0.0.5")
    assert "s@cret" not in s.display and "s%40cret" not in repr(s) and s.display == "etcds://alice:***@h:1/p"
    for bad, message in [
        ("redis://h:1/p", "etcd://"), ("etcd:///p", "no host"), ("etcd://h:0/p", "bad port"),
        ("etcd://::1/p", "brackets"), ("etcd://h/p?ca=/x", "etcds"), ("etcds://h/p?cert=/x", "both cert and key"),
        ("etcd://u@h/p", "both a user name and a password"), ("etcd://h/p?nope=1", "unknown parameter"),
        ("etcd://h/a b", "prefix"), ("etcd://h/p?address=host", "IP address"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_etcd_url(bad)
    with pytest.raises(ValueError) as info:
        parse_etcd_url("etcd://bob:hunter2@h:1/p?nope=1")
    assert "hunter2" not in str(info.value)


def test_lease_ttl_follows_node_timeout_never_below_etcds_minimum() -> None:
    assert lease_ttl(0.5) == MIN_LEASE_TTL == 2
    assert lease_ttl(3.25) == 4 and lease_ttl(10) == 10


def test_registry_options_in_the_constructor() -> None:
    r = EtcdRegistry("etcds://h/p", ca="/ca.pem", username="u", password="p")
    assert (r.config.ca, r.config.username, r.config.password) == ("/ca.pem", "u", "p")
    with pytest.raises(ValueError, match="etcds"):
        EtcdRegistry("etcd://h/p", ca="/ca.pem")
    with pytest.raises(ValueError, match="both"):
        EtcdRegistry("etcd://h/p", username="u")
    assert EtcdRegistry("etcd://h/p?address=10.1.2.3").advertised_address("0.0.0.0") == "10.1.2.3"


# ------------------------------------------------------------------ a cluster on etcd
async def test_five_nodes_on_the_registry_alone_then_a_sixth(server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{server.url}/{key_prefix}"
    nodes = [node(url) for _ in range(5)]
    assert all(d.options.unicast == () and d.options.broadcast is None for d in nodes)  # registry alone
    loop = asyncio.get_running_loop()
    async with running(*nodes):
        last_start = loop.time()
        await full_view(nodes, 1.0, "a full mutual view within 1 s of the last start")
        print(f"full view {loop.time() - last_start:.3f} s after the last start")
        keys = await read_prefix(server, key_prefix)
        assert set(keys) == {f"{key_prefix}/nodes/{d.id}" for d in nodes}
        for d in nodes:
            assert keys[f"{key_prefix}/nodes/{d.id}"] == {
                "address": "127.0.0.1", "port": d.options.port, "hostname": d.options.hostname,
                "weight": d.options.weight, "pid": d.me.pid}
        await async_eventually(lambda: all(d.registry is not None and d.registry.connected
                                           and len(d.registry.members) == 4 for d in nodes), 2.0, "registry views")
        print(f"registry views complete {loop.time() - last_start:.3f} s after the last start")

        sixth = node(url)
        started_at: list[float] = []
        sixth.on("started", lambda _: started_at.append(loop.time()))
        async with running(sixth):
            await async_eventually(lambda: all(sixth.options.port in ports_seen(d) for d in nodes), 0.2,
                                   "the sixth seen by all within 200 ms of its start")
            print(f"sixth seen by all {loop.time() - started_at[0]:.3f} s after started")
            await full_view([*nodes, sixth], 2.0, "six nodes")


#: A node in its own process, so that it can be SIGKILLed (no goodbye, no revoke).
KILLED = """
import sys, time
from pydiscover import Discovery
d = Discovery(port=int(sys.argv[1]), address="127.0.0.1", registry=sys.argv[2], node_timeout=float(sys.argv[3]))
print("ready", d.id, flush=True)
time.sleep(60)
"""


async def test_a_killed_node_is_removed_by_all_and_its_key_expires(server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{server.url}/{key_prefix}"
    timeout = 2.0
    nodes = [node(url, node_timeout=timeout) for _ in range(3)]
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", KILLED, str(port), url, str(timeout),
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with running(*nodes):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
            assert line[0] == "ready", line
            victim = line[1]
            await async_eventually(lambda: all(port in ports_seen(d) for d in nodes), 3.0, "all see the process")
            loop = asyncio.get_running_loop()
            removed_at: dict[str, float] = {}
            for d in nodes:
                d.on("removed", lambda n, d=d: removed_at.setdefault(d.id, loop.time()) if n.id == victim else None)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = loop.time()
            await async_eventually(lambda: len(removed_at) == 3, timeout + 0.5, "removed by all within node_timeout")
            print(f"removed by all after {max(removed_at.values()) - killed_at:.3f} s")
            ttl = lease_ttl(timeout)
            key = f"{key_prefix}/nodes/{victim}"
            deadline = loop.time() + ttl + 3.0  # etcd checks expiry about every 500 ms
            while key in await read_prefix(server, key_prefix):
                assert loop.time() < deadline, "the killed node's key outlived its lease"
                await asyncio.sleep(0.1)
            print(f"key gone {loop.time() - killed_at:.3f} s after the kill (lease {ttl} s)")
            # The watches report the deletion a moment later (one hop to each node's loop).
            await async_eventually(lambda: all(victim not in d.registry.members for d in nodes
                                               if d.registry is not None), 2.0, "the registries drop it")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_graceful_stop_revokes_the_lease(server: EtcdServer) -> None:
    key_prefix = prefix()
    a, b = node(f"{server.url}/{key_prefix}"), node(f"{server.url}/{key_prefix}")
    async with running(a, b):
        assert len(await read_prefix(server, key_prefix)) == 2
        await b.stop()
        assert set(await read_prefix(server, key_prefix)) == {f"{key_prefix}/nodes/{a.id}"}  # at once
        await async_eventually(lambda: a.registry is not None and a.registry.members == {}, 1.0, "a sees b leave")


def deaf_to_cancellation(supervise: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """``supervise`` run so that a cancel never reaches it (as when a library call swallows it)."""
    async def stubborn(self: Any) -> None:
        inner = asyncio.ensure_future(supervise(self))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(inner)  # the cancel reaches this task, never the supervisor
        await inner

    return stubborn


async def test_a_stop_holds_even_if_the_supervisor_ignores_its_cancellation(
        server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library call that swallows the cancellation (aetcd's watch shutdown can) must not let the
    supervisor write the key again after the revoke: the close tells it to stop before cancelling.
    (Seen in CI: the key put back by the watch's own DELETE event, then a new lease taken.)"""
    monkeypatch.setattr(EtcdRegistry, "_supervise", deaf_to_cancellation(EtcdRegistry._supervise))
    key_prefix = prefix()
    a = node(f"{server.url}/{key_prefix}")
    async with running(a):
        assert len(await read_prefix(server, key_prefix)) == 1
        registry = a.registry
        assert isinstance(registry, EtcdRegistry)
        await a.stop()
    loop = asyncio.get_running_loop()
    watched_until = loop.time() + registry.ttl  # past the supervisor's next keep-alive (every TTL / 3)
    while loop.time() < watched_until:
        assert await read_prefix(server, key_prefix) == {}, "the key came back after the stop"
        await asyncio.sleep(0.2)


async def test_a_closed_port_names_the_url_and_starts_nothing() -> None:
    url = f"etcd://127.0.0.1:{free_tcp_port()}/{prefix()}"
    port = free_udp_port()
    d = AsyncDiscovery(port=port, address="127.0.0.1", registry=url)
    with pytest.raises(TransportUnavailable, match=url.replace(".", r"\.")):
        await d.start()
    assert not d.running
    again = AsyncDiscovery(port=port, address="127.0.0.1", unicast=[])  # the UDP port was released
    async with running(again):
        assert again.running


def test_the_sync_facade_takes_a_registry(server: EtcdServer) -> None:
    url = f"{server.url}/{prefix()}"
    with Discovery(port=free_udp_port(), address="127.0.0.1", registry=url, ignore_process=False) as a, \
            Discovery(port=free_udp_port(), address="127.0.0.1", registry=url, ignore_process=False) as b:
        from conftest import eventually

        eventually(lambda: b.id in a.nodes and a.id in b.nodes, 2.0, "two sync nodes meet through etcd")


async def test_the_monitor_sees_a_cluster_through_the_registry(server: EtcdServer) -> None:
    url = f"{server.url}/{prefix()}"
    a, b = node(url), node(url)
    async with running(a, b):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pydiscover.monitor", "--once", "--json", "--timeout", "1.5",
            "--registry", url, "--address", "127.0.0.1", "--port", str(free_udp_port()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        snapshot = orjson.loads(out)
        assert {n["id"] for n in snapshot["nodes"]} == {a.id, b.id}
        assert snapshot["stats"]["registry"]["connected"] is True


def test_the_example_runs(server: EtcdServer) -> None:
    import subprocess

    from testbed import ROOT

    url = f"{server.url}/{prefix()}"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "etcd_cluster.py"), "--registry", url,
                             "--nodes", "3"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("registered ") == 3 and result.stdout.count("sees the other 2") == 3
    assert "master: " in result.stdout and "none yet" not in result.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "examples" / "etcd_cluster.py"), "--registry",
                              "etcd://10.9.9.9:2379/x"], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "loopback only" in refused.stderr


# ------------------------------------------------------------------ etcd failures
@contextlib.contextmanager
def frozen(srv: EtcdServer) -> Iterator[None]:
    """``srv`` SIGSTOPped: connections are accepted by the kernel, calls wait until their timeout."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        srv.proc.send_signal(signal.SIGCONT)


async def test_a_start_cancelled_midway_leaves_nothing_registered(server: EtcdServer, own_server: EtcdServer) -> None:
    """The first endpoint is a frozen etcd (each call waits call_timeout); a start given less
    than that is cancelled there, and nothing it began stays behind."""
    key_prefix = prefix()
    url = f"etcd://127.0.0.1:{own_server.client_port},127.0.0.1:{server.client_port}/{key_prefix}"
    d = AsyncDiscovery(port=free_udp_port(), address="127.0.0.1", registry=EtcdRegistry(url, call_timeout=1.0),
                       **SAME_PROCESS)
    with frozen(own_server):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(d.start(), 0.5)
        assert not d.running
        await asyncio.sleep(2.0)  # the attempt would have reached the second endpoint by now
        assert await read_prefix(server, key_prefix) == {}
        async with running(d):  # the same node starts afterwards (through the second endpoint)
            assert list(await read_prefix(server, key_prefix)) == [f"{key_prefix}/nodes/{d.id}"]
    assert await read_prefix(server, key_prefix) == {}


def test_a_sync_start_that_times_out_leaves_nothing_registered(server: EtcdServer, own_server: EtcdServer,
                                                               monkeypatch: Any) -> None:
    """The sync facade's start gives up after its limit, then stops its loop: the attempt's
    clean-up must still run (the UDP socket closed, and the etcd side undone on its own loop)."""
    import time

    import pydiscover.discovery as runtime

    key_prefix = prefix()
    original = runtime.Discovery._run

    def short(self: Any, coro: Any, timeout: float | None = 10.0) -> Any:
        return original(self, coro, 0.5 if timeout == 10.0 else timeout)

    monkeypatch.setattr(runtime.Discovery, "_run", short)
    url = f"etcd://127.0.0.1:{own_server.client_port},127.0.0.1:{server.client_port}/{key_prefix}"
    port = free_udp_port()
    with frozen(own_server):
        with pytest.raises(TimeoutError):
            Discovery(port=port, address="127.0.0.1", registry=EtcdRegistry(url, call_timeout=1.0))
        time.sleep(2.0)
        assert asyncio.run(read_prefix(server, key_prefix)) == {}
    monkeypatch.undo()
    with Discovery(port=port, address="127.0.0.1", unicast=[]) as again:  # the UDP port was closed too
        assert again.running


async def test_stop_is_bounded_while_etcd_is_frozen(own_server: EtcdServer) -> None:
    d = node(f"{own_server.url}/{prefix()}")
    await d.start()
    with frozen(own_server):
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert await d.stop()
        assert loop.time() - t < 8.0  # revoke and close each give up after call_timeout (2 s)


#: A child forked while its parent has an etcd registry open must not use gRPC.
FORKED = """
import os, sys
from pydiscover import Discovery
parent = Discovery(port=int(sys.argv[1]), address="127.0.0.1", registry=sys.argv[2], ignore_process=False)
pid = os.fork()
if pid == 0:
    try:
        Discovery(port=int(sys.argv[3]), address="127.0.0.1", registry=sys.argv[2], ignore_process=False)
    except RuntimeError as exc:
        print("child refused:", "forked" in str(exc), flush=True)
        os._exit(0)
    os._exit(3)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), "parent connected", parent.registry.connected, flush=True)
parent.stop()
"""


def test_a_child_forked_with_a_registry_open_refuses_etcd(server: EtcdServer) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-c", FORKED, str(free_udp_port()), f"{server.url}/{prefix()}",
                             str(free_udp_port())], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # The child refuses etcd; on some Pythons gRPC's own fork handler aborts it first
    # (SIGABRT, seen on 3.13).  Either way it never uses the parent's connection, and the
    # parent's registration carries on.
    refused = "child refused: True" in result.stdout and "child exit 0 " in result.stdout
    aborted = "child exit -" in result.stdout  # killed by a signal in gRPC's fork handling (SIGABRT, SIGSEGV)
    assert refused or aborted, result.stdout + result.stderr
    assert "parent connected True" in result.stdout
async def test_etcd_killed_and_restarted_changes_nothing_and_everything_resumes(own_server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{own_server.url}/{key_prefix}"
    nodes = [node(url, masters_required=1) for _ in range(3)]
    events: list[tuple[str, str]] = []
    for d in nodes:
        d.on("removed", lambda n: events.append(("removed", n.id)))
        d.on("promotion", lambda me: events.append(("promotion", me.id)))
        d.on("demotion", lambda me: events.append(("demotion", me.id)))
    loop = asyncio.get_running_loop()
    async with running(*nodes):
        await full_view(nodes, 2.0, "three nodes")
        await async_eventually(lambda: sum(d.is_master for d in nodes) == 1, 5.0, "one master")
        master = next(d.id for d in nodes if d.is_master)
        events.clear()

        before = await read_revisions(own_server, key_prefix)
        own_server.kill()
        await async_eventually(lambda: all(d.registry is not None and not d.registry.connected for d in nodes),
                               5.0, "every node notices the outage")
        assert all(len(d.registry.members) == 2 for d in nodes if d.registry is not None)  # kept
        await asyncio.sleep(1.0)  # hellos go on over UDP meanwhile
        own_server.start()
        restarted = loop.time()

        async def all_registered() -> bool:
            # etcd keeps keys and leases across its restart: "back" is each node writing its key again.
            after = await read_revisions(own_server, key_prefix)
            return len(after) == 3 and all(after[k] > before[k] for k in before)

        while not (await all_registered() and all(d.registry is not None and d.registry.connected for d in nodes)):
            assert loop.time() - restarted < 5.0, "registrations not back within 5 s of the restart"
            await asyncio.sleep(0.1)
        print(f"registrations back {loop.time() - restarted:.3f} s after the restart")
        # Keep-alive resumed: the keys outlive their lease's TTL after the restart.
        await asyncio.sleep(lease_ttl(nodes[0].options.node_timeout) + 2.0)
        assert len(await read_prefix(own_server, key_prefix)) == 3
        # Watches resumed: a node started after the restart is in every registry view and heard by all.
        late = node(url)
        async with running(late):
            await async_eventually(
                lambda: all(d.registry is not None and late.id in d.registry.members for d in nodes), 2.0,
                "the watches report a node registered after the restart")
            await full_view([*nodes, late], 2.0, "the late node and the others")
        assert [e for e in events if e[0] != "removed" or e[1] != late.id] == []  # no removal, no master change
        assert next(d.id for d in nodes if d.is_master) == master


async def test_a_lease_lost_is_granted_again_and_a_deleted_key_written_again(server: EtcdServer) -> None:
    key_prefix = prefix()
    d = node(f"{server.url}/{key_prefix}", node_timeout=1.5, check_interval=0.5)
    key = f"{key_prefix}/nodes/{d.id}"
    async with running(d):
        async with aetcd.Client(host="127.0.0.1", port=server.client_port, timeout=2) as client:
            await client.delete(key.encode())  # someone deletes our key: written again at once
            await async_eventually_async(lambda: key_present(client, key), 2.0, "the key written again")
            kv = await client.get(key.encode())
            await client.revoke_lease(kv.lease)  # the lease goes (and the key with it)
            await async_eventually_async(lambda: key_present(client, key), 5.0, "a new lease, the key back")
            assert (await client.get(key.encode())).lease != kv.lease
        assert d.registry is not None and d.registry.connected


async def key_present(client: Any, key: str) -> bool:
    return await client.get(key.encode()) is not None


async def async_eventually_async(condition: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_compacted_revision_is_listed_again(own_server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{own_server.url}/{key_prefix}"
    a = node(url)
    async with running(a):
        registry = a.registry
        assert isinstance(registry, EtcdRegistry)
        own_server.kill()
        await async_eventually(lambda: not registry.connected, 5.0, "a notices the outage")
        # While a cannot reach it (the same data on another client port): a node registers and
        # leaves, another registers, and the history is compacted past a's revision.
        side = EtcdServer(own_server.workdir, client_port=free_tcp_port(), peer_port=own_server.peer_port)
        with side:
            await changes_then_compaction(side, key_prefix)
        own_server.start()
        await async_eventually(lambda: registry.connected and set(registry.members) == {"other"}, 8.0,
                               "a lists again and sees the registration made meanwhile")
        assert registry.errors.get("relisted", 0) >= 1


async def changes_then_compaction(srv: EtcdServer, key_prefix: str) -> None:
    async with aetcd.Client(host="127.0.0.1", port=srv.client_port, timeout=2) as client:
        ghost = f"{key_prefix}/nodes/ghost"
        value = orjson.dumps({"address": "127.0.0.1", "port": 9, "hostname": "g", "weight": 0, "pid": "1"})
        await client.put(ghost.encode(), value)
        await client.delete(ghost.encode())
        await client.put(f"{key_prefix}/nodes/other".encode(), value)
        put = await client.put(b"unrelated", b"x")
        await client.compact(put.header.revision)


# ------------------------------------------------------------------ coordinator (issue 17, leadership)
async def leader_keys(srv: EtcdServer, key_prefix: str) -> dict[str, tuple[str, int]]:
    """Every leader key: its holder's id and its revision (the fencing token)."""
    async with aetcd.Client(host="127.0.0.1", port=srv.client_port, timeout=2) as client:
        response = await client.get_prefix(f"{key_prefix}/leaders/".encode())
        return {kv.key.decode(): (kv.value.decode(), kv.mod_revision) for kv in response}


def fenced_node(url: str, weight: float, **options: Any) -> AsyncDiscovery:
    return node(url, coordinator=url, weight=weight, check_interval=1.0, node_timeout=2.0, **options)


async def test_the_master_holds_the_leader_key_and_its_token(server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{server.url}/{key_prefix}"
    nodes = [fenced_node(url, w) for w in (1, 3, 2)]
    async with running(*nodes):
        await async_eventually(lambda: [d.is_master for d in nodes] == [False, True, False], 8.0, "node 1 master")
        master = nodes[1]
        keys = await leader_keys(server, key_prefix)
        assert keys == {f"{key_prefix}/leaders/0": (master.id, master.fencing_token)}
        assert master.me.fencing_token == master.fencing_token
        await async_eventually(lambda: all(d.nodes[master.id].fencing_token == master.fencing_token
                                           for d in (nodes[0], nodes[2])), 3.0, "the token in its hellos")
        first = master.fencing_token
        assert first is not None
        await master.stop()  # the lease is revoked: the key goes at once, the next node takes it
        await async_eventually(lambda: nodes[2].is_master, 5.0, "node 2 takes over")
        assert nodes[2].fencing_token is not None and nodes[2].fencing_token > first
        assert not nodes[0].is_master


async def test_a_master_that_loses_etcd_demotes_before_its_lease_could_end(own_server: EtcdServer) -> None:
    key_prefix = prefix()
    url = f"{own_server.url}/{key_prefix}"
    a, b = fenced_node(url, 2), fenced_node(url, 1)
    demoted: list[float] = []
    a.on("demotion", lambda me: demoted.append(asyncio.get_running_loop().time()))
    async with running(a, b):
        await async_eventually(lambda: a.is_master, 8.0, "a master")
        coordinator = a.coordinator
        assert coordinator is not None
        loop = asyncio.get_running_loop()
        with frozen(own_server):
            frozen_at = loop.time()
            # is_master reads False from the deadline on, a moment before the fence timer runs
            # and emits the demotion: wait for both.
            await async_eventually(lambda: not a.is_master and bool(demoted), coordinator.ttl, "a steps down")
            assert demoted[0] - frozen_at <= coordinator.ttl - coordinator.margin + 0.3
            print(f"demoted {demoted[0] - frozen_at:.3f} s after etcd froze (lease {coordinator.ttl} s)")
            assert not b.is_master  # b cannot take a key either while etcd is frozen
            assert not a.me.is_master_eligible
        await async_eventually(lambda: a.is_master or b.is_master, 10.0, "a master again once etcd is back")


class _Reports:
    """A coordinator's listener that records what it is told."""

    def __init__(self) -> None:
        self.good_until: list[float] = []
        self.lost = 0
        self.grants: list[tuple[int, int]] = []

    def lease_good_until(self, deadline: float) -> None:
        self.good_until.append(deadline)

    def lease_lost(self) -> None:
        self.lost += 1

    def mastership_granted(self, token: int, seq: int) -> None:
        self.grants.append((token, seq))


async def test_a_key_asked_for_then_given_back_at_once_is_never_left_behind(server: EtcdServer) -> None:
    """want(True) then want(False) while the transaction is in flight: the key must not stay held."""
    from pydiscover.etcd.coordinator import EtcdCoordinator

    key_prefix = prefix()
    coordinator = EtcdCoordinator(f"{server.url}/{key_prefix}", node_timeout=2.0)
    reports = _Reports()
    await coordinator.open("node-a", reports)
    try:
        seq = 0
        for k in range(30):
            coordinator.want(True, seq := seq + 1)
            await asyncio.sleep((k % 4) / 1000)
            coordinator.want(False, seq := seq + 1)
        async def released() -> bool:
            return await leader_keys(server, key_prefix) == {} and coordinator.leader_key is None

        await async_eventually_async(released, 3.0, "every key taken is given back")
        coordinator.want(True, seq := seq + 1)  # and a key can still be taken afterwards
        await async_eventually(lambda: bool(reports.grants) and reports.grants[-1][1] == seq, 3.0, "a grant")
        keys = await leader_keys(server, key_prefix)
        assert keys == {f"{key_prefix}/leaders/0": ("node-a", reports.grants[-1][0])}
    finally:
        await coordinator.close()
    assert await leader_keys(server, key_prefix) == {}  # revoked with the lease


async def test_a_key_wanted_again_while_an_unwanted_one_is_given_back_is_taken(
        server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """want(True), want(False) while the key's transaction is in flight, want(True) again while
    that key is being given back: the last request is granted (seen in CI: the acquiring task
    ended after the give-back, and nothing asked for the key again)."""
    from pydiscover.etcd.coordinator import EtcdCoordinator

    take, delete = EtcdCoordinator._take_key, EtcdCoordinator._delete_key

    async def slow_take(self: EtcdCoordinator, key: bytes) -> int | None:
        await asyncio.sleep(0.2)
        return await take(self, key)

    async def slow_delete(self: EtcdCoordinator, key: bytes, token: int | None) -> bool:
        await asyncio.sleep(0.5)
        return await delete(self, key, token)

    monkeypatch.setattr(EtcdCoordinator, "_take_key", slow_take)
    monkeypatch.setattr(EtcdCoordinator, "_delete_key", slow_delete)
    key_prefix = prefix()
    coordinator = EtcdCoordinator(f"{server.url}/{key_prefix}", node_timeout=2.0)
    reports = _Reports()
    await coordinator.open("node-a", reports)
    try:
        coordinator.want(True, 1)
        await asyncio.sleep(0.1)
        coordinator.want(False, 2)  # the take is in flight (0.2 s)
        await asyncio.sleep(0.25)  # the take is done, the give-back in flight (0.5 s)
        coordinator.want(True, 3)
        await async_eventually(lambda: bool(reports.grants) and reports.grants[-1][1] == 3, 3.0, "request 3 granted")
        keys = await leader_keys(server, key_prefix)
        assert keys == {f"{key_prefix}/leaders/0": ("node-a", reports.grants[-1][0])}
    finally:
        await coordinator.close()


async def test_a_coordinator_close_holds_even_if_its_supervisor_ignores_the_cancellation(
        server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """As for the registry: the lease is revoked at once and nothing renews or writes afterwards,
    even when the keep-alive task goes on (a swallowed cancellation)."""
    from pydiscover.etcd.coordinator import EtcdCoordinator

    monkeypatch.setattr(EtcdCoordinator, "_supervise", deaf_to_cancellation(EtcdCoordinator._supervise))
    key_prefix = prefix()
    coordinator = EtcdCoordinator(f"{server.url}/{key_prefix}", node_timeout=2.0)
    reports = _Reports()
    await coordinator.open("node-a", reports)
    coordinator.want(True, 1)
    await async_eventually(lambda: bool(reports.grants), 3.0, "a grant")
    loop = asyncio.get_running_loop()
    closing = loop.time()
    await coordinator.close()
    assert loop.time() - closing < coordinator.call_timeout + 1, "the close waited for the stubborn task"
    watched_until = loop.time() + coordinator.ttl  # past the supervisor's next keep-alive (every TTL / 4)
    while loop.time() < watched_until:
        assert await leader_keys(server, key_prefix) == {}, "the leader key outlived the close"
        await asyncio.sleep(0.2)


async def test_past_its_deadline_a_node_is_no_master_before_any_timer_runs(server: EtcdServer) -> None:
    """The node's loop blocked past the lease's deadline (a pause): is_master and fencing_token
    say no at once, before the demotion timer had a chance to run."""
    import time

    url = f"{server.url}/{prefix()}"
    d = fenced_node(url, 1)
    async with running(d):
        await async_eventually(lambda: d.is_master, 8.0, "master")
        assert d.coordinator is not None and d.fencing_token is not None
        time.sleep(d.coordinator.ttl)  # blocks this loop: no report, no timer runs meanwhile
        assert not d.is_master and d.fencing_token is None
        await async_eventually(lambda: d.is_master, 5.0, "master again (the lease was kept alive meanwhile)")


async def test_a_master_whose_etcd_connection_is_black_holed_steps_down_before_the_next_is_promoted(
        server: EtcdServer) -> None:
    """One node's etcd traffic dropped through a proxy (the connection left open; UDP intact):
    it demotes before its lease could end, and the other is promoted only after that."""
    from testbed.tcp_proxy import TcpProxy

    key_prefix = prefix()
    with TcpProxy(("127.0.0.1", server.client_port)) as proxy:
        a = fenced_node(f"etcd://{proxy.endpoint}/{key_prefix}", 2)
        b = fenced_node(f"{server.url}/{key_prefix}", 1)
        loop = asyncio.get_running_loop()
        times: dict[str, float] = {}
        a.on("demotion", lambda me: times.setdefault("a_demoted", loop.time()))
        b.on("promotion", lambda me: times.setdefault("b_promoted", loop.time()))
        async with running(a, b):
            await async_eventually(lambda: a.is_master and not b.is_master, 8.0, "a master")
            assert a.coordinator is not None
            ttl = a.coordinator.ttl
            token = a.fencing_token
            proxy.cut()
            cut = loop.time()
            await async_eventually(lambda: "b_promoted" in times, ttl + 3.0, "b promoted")
            assert times["a_demoted"] - cut <= ttl, "a stepped down within its lease's TTL of the cut"
            assert times["a_demoted"] < times["b_promoted"], "no overlap: a stepped down first"
            assert b.fencing_token is not None and token is not None and b.fencing_token > token
            print(f"a demoted {times['a_demoted'] - cut:.3f} s after the cut, b promoted "
                  f"{times['b_promoted'] - cut:.3f} s after (lease {ttl} s)")
            proxy.restore()


async def owner_keys(srv: EtcdServer, key_prefix: str) -> dict[str, tuple[str, int]]:
    """Every owner key: resource id -> (owner's id, revision = fencing token)."""
    async with aetcd.Client(host="127.0.0.1", port=srv.client_port, timeout=2) as client:
        response = await client.get_prefix(f"{key_prefix}/owners/".encode())
        return {kv.key.decode().rsplit("/", 1)[1]: (kv.value.decode(), kv.mod_revision) for kv in response}


async def test_resources_start_only_under_owner_keys_and_move_with_higher_tokens(server: EtcdServer) -> None:
    """Three nodes, twelve resources, a coordinator: 4/4/4, each running resource's token is its
    owner key's revision; a node stops: its resources start elsewhere only after they stopped
    there, with higher tokens."""
    from pydiscover.balancer import ResourceManager

    key_prefix = prefix()
    url = f"{server.url}/{key_prefix}"
    loop = asyncio.get_running_loop()
    log: list[tuple[float, str, str, str]] = []  # (time, node, "start"/"stop", resource)
    nodes = [fenced_node(url, w) for w in (3, 2, 1)]
    managers = []
    for d in nodes:
        def start(resource: dict[str, Any], d: AsyncDiscovery = d) -> str:
            log.append((loop.time(), d.id, "start", resource["id"]))
            return resource["id"]

        def stop(handle: str, d: AsyncDiscovery = d) -> None:
            log.append((loop.time(), d.id, "stop", handle))

        managers.append(ResourceManager(d, resources=[{"id": f"r{i:02d}"} for i in range(12)], start=start,
                                        stop=stop))
    async with running(*nodes):
        await async_eventually(lambda: sorted(len(m.owned) for m in managers) == [4, 4, 4], 15.0, "4/4/4")
        owners = await owner_keys(server, key_prefix)
        assert len(owners) == 12
        for d, m in zip(nodes, managers, strict=True):
            for rid in m.owned:
                assert owners[rid] == (d.id, m.token(rid))
        before = {rid: m.token(rid) for m in managers for rid in m.owned}
        moved = set(managers[2].owned)
        await nodes[2].stop()
        await async_eventually(lambda: sorted(len(m.owned) for m in managers[:2]) == [6, 6], 15.0, "6/6")
        for m in managers[:2]:
            for rid in m.owned & moved:
                token = m.token(rid)
                assert token is not None and token > (before[rid] or 0)
        stopped_at = {rid: t for t, node, what, rid in log if what == "stop" and node == nodes[2].id}
        for t, node, what, rid in log:
            if what == "start" and rid in moved and node != nodes[2].id:
                assert t >= stopped_at[rid], f"{rid} started elsewhere before it stopped on the leaving node"
