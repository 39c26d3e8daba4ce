"""The monitor's web view: the page (in a real headless Chromium), /api/nodes, /api/events, /metrics.

The browser test drives Debian's Chromium (``/usr/bin/chromium``, installed by
``./scripts/test`` when run as root; ``PYDISCOVER_CHROMIUM`` names another) through
Playwright.  ``PYDISCOVER_WEB_SCREENSHOT=path.png`` saves what that browser shows (the
picture on docs/monitor.rst comes from it).  Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, running

pytest.importorskip("aiohttp", reason="the web extra is missing: pip install -e '.[web]'")
pytest.importorskip("prometheus_client", reason="the web extra is missing: pip install -e '.[web]'")
import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from pydiscover import AsyncDiscovery
from pydiscover.monitor import http_address, snapshot
from pydiscover.transports.memory import MemoryBus, MemoryTransport
from pydiscover.web import ClusterView, WebMonitor
from testbed.ports import free_tcp_port
from testbed.proc_cluster import Cluster

FAST: dict[str, Any] = {"hello_interval": 0.1, "check_interval": 0.2, "node_timeout": 0.6, "master_timeout": 0.6,
                        "ignore_process": False}


def run_monitor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pydiscover.monitor", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(("value", "expected"), [
    ("8080", ("127.0.0.1", 8080)),
    ("0", ("127.0.0.1", 0)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("localhost:80", ("localhost", 80)),
    ("[::1]:8080", ("::1", 8080)),
])
def test_http_takes_a_port_or_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert http_address(value) == expected


@pytest.mark.parametrize("value", ["nonsense", "70000", ":8080", "host:", "-1", "a b:80", "8080x"])
def test_a_bad_http_value_exits_2_naming_the_option(value: str) -> None:
    result = run_monitor("--http", value)
    assert result.returncode == 2
    assert "--http" in result.stderr and "[HOST:]PORT" in result.stderr, result.stderr


def test_a_port_in_use_exits_2_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_monitor("--http", f"127.0.0.1:{port}", "--port", str(free_tcp_port()),
                             "--broadcast", LOOPBACK_BROADCAST, "--timeout", "5")
    assert result.returncode == 2
    assert f"--http 127.0.0.1:{port}: cannot listen there" in result.stderr, result.stderr


def test_a_token_needs_http() -> None:
    result = run_monitor("--once", "--http-token", "t")
    assert result.returncode == 2 and "--http-token needs --http" in result.stderr


# ------------------------------------------------------ in-process server
@contextlib.asynccontextmanager
async def serving(view: ClusterView, token: str | None = None) -> AsyncIterator[str]:
    server = WebMonitor(view, token=token)
    await server.start("127.0.0.1", 0)
    try:
        host, port = server.addresses[0]
        yield f"http://{host}:{port}"
    finally:
        await server.close()


async def read_events(response: aiohttp.ClientResponse, wanted: int, timeout: float) -> list[tuple[str, Any]]:
    """The next ``wanted`` server-sent events as ``(event, data)``."""
    events: list[tuple[str, Any]] = []
    name = "message"

    async def read() -> None:
        nonlocal name
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if len(events) >= wanted:
                    return

    await asyncio.wait_for(read(), timeout)
    return events


async def test_api_metrics_and_the_event_stream_follow_the_cluster() -> None:
    bus = MemoryBus()
    nodes = [AsyncDiscovery(transport=MemoryTransport(bus), weight=w, advertisement={"n": w}, **FAST)
             for w in (1, 2, 3)]
    watcher = AsyncDiscovery(transport=MemoryTransport(bus), client=True, **FAST)
    view = ClusterView(watcher)
    async with running(watcher, *nodes), serving(view) as base, aiohttp.ClientSession() as http:
        await async_eventually(lambda: len(watcher.nodes) == 3 and any(n.is_master for n in watcher.nodes.values()),
                               3, "the monitor hears three nodes and the master")
        async with http.get(f"{base}/api/nodes") as response:
            assert response.status == 200
            listed = await response.json()
        assert listed["totals"]["nodes"] == 3 and listed["totals"]["masters"] == 1
        assert [n["weight"] for n in listed["nodes"] if n["is_master"]] == [3]
        assert listed.keys() == snapshot(watcher).keys()  # the same object as --once --json
        assert set(listed["nodes"][0]) == set(snapshot(watcher)["nodes"][0])

        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        assert families["pydiscover_nodes"].samples[0].value == 3
        assert families["pydiscover_masters"].samples[0].value == 1
        assert families["pydiscover_hellos"].samples[0].value > 0
        per_node = sum(s.value for s in families["pydiscover_hello_rate"].samples)
        assert families["pydiscover_hellos_per_second"].samples[0].value == pytest.approx(per_node)
        assert {s.labels["id"] for s in families["pydiscover_hello_rate"].samples} == {d.id for d in nodes}
        assert sum(s.value for s in families["pydiscover_node_master"].samples) == 1

        async with http.get(f"{base}/api/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            ((kind, first),) = await read_events(stream, 1, 2)
            assert kind == "snapshot" and len(first["nodes"]) == 3 and first["masters"] == [nodes[2].id]
            assert [e["kind"] for e in first["timeline"]].count("join") == 3
            assert all(n["hello_rate"] > 0 for n in first["nodes"])
            await nodes[2].stop()  # a goodbye: the leave, then the next master's promotion
            changes: list[Any] = []
            deadline = asyncio.get_running_loop().time() + 3
            while not any(e.get("kind") == "promotion" and e["id"] == nodes[1].id for e in changes):
                assert asyncio.get_running_loop().time() < deadline, changes
                changes += [data for kind, data in await read_events(stream, 1, 3) if kind == "change"]
            kinds = [(e["kind"], e["id"]) for e in changes]
            assert kinds.index(("leave", nodes[2].id)) < kinds.index(("promotion", nodes[1].id))
            ((kind, latest),) = [e for e in await read_events(stream, 2, 3) if e[0] == "snapshot"][-1:]
            assert latest["masters"] == [nodes[1].id] and len(latest["nodes"]) == 2


async def test_a_demotion_is_on_the_timeline() -> None:
    bus = MemoryBus()
    nodes = [AsyncDiscovery(transport=MemoryTransport(bus), weight=w, **FAST) for w in (1, 2)]
    watcher = AsyncDiscovery(transport=MemoryTransport(bus), client=True, **FAST)
    view = ClusterView(watcher)
    async with running(watcher, *nodes):
        await async_eventually(lambda: any(n.is_master for n in watcher.nodes.values()), 3, "a master")
        nodes[1].demote(permanent=True)
        await async_eventually(lambda: any(e["kind"] == "demotion" for e in view.recent()), 3, "the demotion")
        entry = next(e for e in view.recent() if e["kind"] == "demotion")
        assert entry["id"] == nodes[1].id


async def test_with_a_token_the_data_needs_it_and_the_page_does_not() -> None:
    bus = MemoryBus()
    watcher = AsyncDiscovery(transport=MemoryTransport(bus), client=True, **FAST)
    async with running(watcher), serving(ClusterView(watcher), token="s3cret") as base, \
            aiohttp.ClientSession() as http:
        for path in ("/api/nodes", "/metrics", "/api/events", "/api/nodes?token=wrong"):
            async with http.get(base + path) as response:
                assert response.status == 401, path
        async with http.get(f"{base}/api/nodes", headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 200
        async with http.get(f"{base}/metrics?token=s3cret") as response:
            assert response.status == 200
        for path in ("/", "/static/app.js", "/static/style.css"):
            async with http.get(base + path) as response:
                assert response.status == 200, path
                body = await response.text()
        assert "EventSource" in body or "svg" in body
        async with http.get(f"{base}/static/../monitor.py") as response:
            assert response.status == 404
        async with http.get(f"{base}/static/nothing.js") as response:
            assert response.status == 404


async def test_the_page_ships_its_own_assets_and_reaches_no_other_host() -> None:
    bus = MemoryBus()
    watcher = AsyncDiscovery(transport=MemoryTransport(bus), client=True, **FAST)
    async with running(watcher), serving(ClusterView(watcher)) as base, aiohttp.ClientSession() as http:
        texts = []
        for path in ("/", "/static/app.js", "/static/style.css"):
            async with http.get(base + path) as response:
                texts.append(await response.text())
    for text in texts:
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        assert "//cdn" not in text


# ----------------------------------------------------------- the browser
def chromium_path() -> str | None:
    return os.environ.get("PYDISCOVER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


#: The flags a headless Chromium needs on a machine with no network and no screen.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def monitored_cluster() -> Iterator[tuple[Cluster, str, subprocess.Popen[str]]]:
    """Three node processes on loopback broadcast and ``monitor --http`` watching them."""
    timing = {"hello_interval": 0.25, "node_timeout": 1.0, "master_timeout": 1.0}
    with Cluster(check_interval=0.25, **timing) as cluster:
        http_port = free_tcp_port()
        monitor = subprocess.Popen(
            [sys.executable, "-m", "pydiscover.monitor", "--http", f"127.0.0.1:{http_port}",
             "--port", str(cluster.port), "--broadcast", LOOPBACK_BROADCAST,
             "--hello-interval", "0.25", "--node-timeout", "1", "--master-timeout", "1", "--timeout", "90"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert monitor.stderr is not None
            line = monitor.stderr.readline()  # "monitor: serving http://..." once it listens
            assert "serving http://127.0.0.1:" in line, line + (monitor.stderr.read() if monitor.poll() else "")
            for weight in (1, 2, 3):
                cluster.spawn(weight, advertise={"role": "web", "port": 8000 + weight})
            cluster.await_view()
            yield cluster, f"http://127.0.0.1:{http_port}", monitor
        finally:
            monitor.send_signal(signal.SIGTERM)
            try:
                monitor.wait(10)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait(5)


def api_nodes(base: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/nodes", timeout=2) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_in_chromium_marks_the_new_master_after_the_master_is_killed(
    monitored_cluster: tuple[Cluster, str, subprocess.Popen[str]],
) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[test]'")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium, or set PYDISCOVER_CHROMIUM)")
    cluster, base, monitor = monitored_cluster
    ids = {node["weight"]: node["id"] for node in api_nodes(base)["nodes"]}
    deadline = time.monotonic() + 5
    while len(ids) < 3 and time.monotonic() < deadline:
        ids = {node["weight"]: node["id"] for node in api_nodes(base)["nodes"]}
    assert sorted(ids) == [1, 2, 3], ids
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('tr[data-node-id]').length === 3", timeout=5000)
            page.wait_for_selector(f'tr[data-node-id="{ids[3]}"][data-master="true"]', timeout=5000)
            assert page.eval_on_selector_all('tr[data-master="true"]', "rows => rows.length") == 1
            assert '{"role":"web","port":8003}' in (page.text_content(f'tr[data-node-id="{ids[3]}"]') or "")

            killed_at = time.monotonic()
            cluster.by_weight(3).popen.send_signal(signal.SIGKILL)
            api_at = None
            new_master = f'tr[data-node-id="{ids[2]}"][data-master="true"]'
            while time.monotonic() < killed_at + 3:
                if api_at is None and any(n["is_master"] and n["weight"] == 2 for n in api_nodes(base)["nodes"]):
                    api_at = time.monotonic()
                if page.query_selector(new_master) is not None:
                    break
                page.wait_for_timeout(20)  # the browser's own loop runs meanwhile; bounded by the 3 s
            page_at = time.monotonic()
            assert page.query_selector(new_master) is not None, "the page did not mark the new master within 3 s"
            print(f"new master on the page {page_at - killed_at:.2f} s after the kill "
                  f"(/api/nodes: {(api_at or page_at) - killed_at:.2f} s)")
            assert page.eval_on_selector_all("tr[data-node-id]", "rows => rows.length") == 2
            assert page.eval_on_selector_all('tr[data-master="true"]', "rows => rows.length") == 1
            if api_at is not None:
                assert page_at - api_at < 1.0
            assert page.text_content("#status") == "live"
            events = page.text_content("#events") or ""
            assert "leave" in events and "promotion" in events
            if os.environ.get("PYDISCOVER_WEB_SCREENSHOT"):  # after the take-over: the timeline shows it
                page.screenshot(path=os.environ["PYDISCOVER_WEB_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    assert monitor.poll() is None, "the monitor died"


def test_the_docs_show_a_screenshot_of_the_page() -> None:
    root = Path(__file__).resolve().parents[1]
    docs = root / "docs"
    if not docs.exists():
        pytest.skip("no docs/ beside the tests")
    text = (docs / "monitor.rst").read_text()
    assert "_static/monitor-web.png" in text
    picture = docs / "_static" / "monitor-web.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------- every option the monitor takes
def _serving_url(monitor: subprocess.Popen[str]) -> str:
    assert monitor.stderr is not None
    line = monitor.stderr.readline()
    assert "monitor: serving http://" in line, line + (monitor.stderr.read() if monitor.poll() is not None else "")
    return line.split("serving ", 1)[1].split(",")[0].strip().rstrip("/")


@pytest.mark.parametrize("mode", ["key", "multicast", "unicast", "redis", "etcd"])
def test_http_serves_whatever_cluster_the_monitor_options_name(mode: str, tmp_path: Path) -> None:
    from pydiscover import Discovery
    from testbed.ports import free_udp_ports

    quick: dict[str, Any] = {"hello_interval": 0.2, "check_interval": 0.4, "node_timeout": 1.0,
                             "ignore_process": False}
    node_port, other_port, monitor_port = free_udp_ports(3)
    timing = ["--hello-interval", "0.2", "--node-timeout", "1"]
    with contextlib.ExitStack() as stack:
        if mode == "key":
            options: list[dict[str, Any]] = [{"port": node_port, "broadcast": LOOPBACK_BROADCAST, "key": "k"}] * 2
            args = ["--port", str(node_port), "--broadcast", LOOPBACK_BROADCAST, "--key", "k"]
        elif mode == "multicast":
            group = {"port": node_port, "multicast": "239.255.91.8", "interface": "127.0.0.1"}
            options = [group] * 2
            args = ["--port", str(node_port), "--multicast", "239.255.91.8", "--interface", "127.0.0.1"]
        elif mode == "unicast":
            everyone = f"127.0.0.1:{node_port},127.0.0.1:{other_port},127.0.0.1:{monitor_port}"
            options = [{"port": node_port, "unicast": everyone}, {"port": other_port, "unicast": everyone}]
            args = ["--port", str(monitor_port), "--unicast", f"127.0.0.1:{node_port}"]
        elif mode == "etcd":
            from testbed.etcd_server import EtcdServer, etcd_server_missing

            if etcd_server_missing():
                pytest.skip(str(etcd_server_missing()))
            pytest.importorskip("aetcd")
            etcd = stack.enter_context(EtcdServer(tmp_path / "etcd"))
            url = f"{etcd.url}/web-{os.getpid()}"
            options = [{"port": port, "address": "127.0.0.1", "registry": url} for port in (node_port, other_port)]
            args = ["--port", str(monitor_port), "--address", "127.0.0.1", "--registry", url]
        else:
            from testbed.redis_server import RedisServer, redis_server_missing

            if redis_server_missing():
                pytest.skip(str(redis_server_missing()))
            pytest.importorskip("redis")
            server = stack.enter_context(RedisServer(tmp_path / "redis"))
            options = [{"transport": server.url, "namespace": "web"}] * 2
            args = ["--port", str(monitor_port), "--transport", server.url, "--namespace", "web"]
        nodes = [stack.enter_context(Discovery(weight=w, **quick, **o)) for w, o in zip((1, 2), options, strict=True)]
        monitor = subprocess.Popen([sys.executable, "-m", "pydiscover.monitor", "--http", "127.0.0.1:0", *args,
                                    *timing, "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        stack.callback(monitor.wait, 10)
        stack.callback(monitor.send_signal, signal.SIGTERM)
        base = _serving_url(monitor)
        deadline = time.monotonic() + 5
        listed = api_nodes(base)
        while (listed["totals"]["nodes"], listed["totals"]["masters"]) != (2, 1) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the server's answer, bounded by the deadline
            listed = api_nodes(base)
        assert listed["totals"]["nodes"] == 2 and listed["totals"]["masters"] == 1, listed
        assert {n["id"] for n in listed["nodes"]} == {d.id for d in nodes}



# ------------------------------------------------------ the view's bounds
class _FakeNode:
    def __init__(self, i: int, master: bool = False) -> None:
        self.id = f"fake-{i}"
        self.hostname = "h" * 1000
        self.is_master = master


class _Heard:
    """Just enough of a discovery for ClusterView: a node table and event handlers."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}
        self.stats: dict[str, Any] = {"packets_in": 0, "dropped": {}}
        self.handlers: dict[str, Any] = {}

    def on(self, event: str, handler: Any) -> None:
        self.handlers[event] = handler


def test_a_flood_of_joins_and_leaves_keeps_each_snapshot_bounded() -> None:
    from pydiscover.web.view import HOSTNAME_CHARS, SNAPSHOT_TIMELINE

    heard = _Heard()
    view = ClusterView(heard)  # type: ignore[arg-type]
    for i in range(3000):  # made-up instances saying hello and goodbye
        node = _FakeNode(i)
        heard.handlers["added"](node)
        heard.handlers["helloReceived"](node, True)
        heard.handlers["removed"](node)
    assert len(view.timeline) == 6000
    snap = view.page_snapshot()
    assert len(snap["timeline"]) == SNAPSHOT_TIMELINE and snap["timeline_omitted"] == 6000 - SNAPSHOT_TIMELINE
    assert snap["timeline"][-1]["kind"] == "leave" and snap["timeline"][-1]["id"] == "fake-2999"
    assert all(len(entry["hostname"]) == HOSTNAME_CHARS for entry in snap["timeline"])


def test_a_node_first_heard_as_master_is_not_a_promotion() -> None:
    heard = _Heard()
    view = ClusterView(heard)  # type: ignore[arg-type]
    master, other = _FakeNode(1, master=True), _FakeNode(2)
    heard.handlers["added"](master)
    heard.handlers["master"](master)  # the core reports a node heard as master right after added
    heard.handlers["helloReceived"](master, True)
    heard.handlers["added"](other)
    heard.handlers["helloReceived"](other, True)
    promoted = _FakeNode(2, master=True)
    heard.handlers["master"](promoted)  # later, a known node becomes master
    heard.handlers["nodeUpdated"](promoted, other)
    heard.handlers["helloReceived"](promoted, False)
    assert [(e["kind"], e["id"]) for e in view.recent()] == [
        ("join", "fake-1"), ("master", "fake-1"), ("join", "fake-2"), ("promotion", "fake-2")]


async def test_the_monitor_restarts_on_its_port_though_a_client_kept_a_connection_open() -> None:
    import http.client

    bus = MemoryBus()
    watcher = AsyncDiscovery(transport=MemoryTransport(bus), client=True, **FAST)
    view = ClusterView(watcher)
    async with running(watcher):
        first = WebMonitor(view)
        await first.start("127.0.0.1", 0)
        port = first.addresses[0][1]
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        await asyncio.get_running_loop().run_in_executor(None, keep_alive.request, "GET", "/api/nodes")
        response = await asyncio.get_running_loop().run_in_executor(None, keep_alive.getresponse)
        response.read()
        await first.close()  # the server closes the idle connection: TIME_WAIT on its side
        second = WebMonitor(view)
        try:
            await second.start("127.0.0.1", port)
        finally:
            await second.close()
            keep_alive.close()
