"""Every program in ``examples/`` runs briefly on loopback and prints what its docstring promises.

Loopback only: broadcast to 127.255.255.255, multicast on interface 127.0.0.1, unicast
to 127.0.0.1.  Every run is bounded (a duration option, and a subprocess timeout).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import eventually, free_udp_port

from pydiscover import Discovery
from pydiscover.transports.memory import MemoryBus, MemoryTransport
from testbed.node_discover import node_discover_problem, node_has_legacy_cipher, node_missing_reason

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
README = EXAMPLES.parent / "README.rst"


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=EXAMPLES.parent)


def load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ README's example


def readme_example() -> str:
    """The first ``code-block:: python`` of README.rst's "Example" section, as a program."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\nExample\n-------\n", 1)[1]
    block = section.split(".. code-block:: python\n", 1)[1]
    lines: list[str] = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("   "):
            break  # the first unindented line ends the block
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


def readme_program(tmp_path: Path, port: int, seconds: float) -> Path:
    """README's example on ``port`` running ``seconds``: the only two substitutions, each checked."""
    code = readme_example()
    for old, new in (("port=41230,", f"port={port},"), ("RUN_SECONDS = 10 ", f"RUN_SECONDS = {seconds} ")):
        assert code.count(old) == 1, f"README's example no longer has {old!r} exactly once"
        code = code.replace(old, new)
    assert 'broadcast="127.255.255.255"' in code  # loopback only, as written
    path = tmp_path / "readme_example.py"
    path.write_text(code, encoding="utf-8")
    return path


def test_readme_example_alone_becomes_master(tmp_path: Path) -> None:
    program = readme_program(tmp_path, free_udp_port(), 3)
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("I am ")
    assert "I am the master now" in lines
    assert lines[-1] == "peers: [] master: me"


def test_readme_example_two_copies_see_each_other_and_agree_on_a_master(tmp_path: Path) -> None:
    program = readme_program(tmp_path, free_udp_port(), 5)
    procs = [subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (out, err), proc in zip(outs, procs, strict=True):
        assert proc.returncode == 0, out + err
    lines = [out.splitlines() for out, _ in outs]
    ids: list[str] = []
    for printed in lines:
        match = next(m for m in (re.match(r"I am ([0-9a-f]{8}) - running", line) for line in printed) if m)
        ids.append(match.group(1))
    for me, other in ((0, 1), (1, 0)):
        mine = lines[me]
        assert any(line.startswith(f"joined: {ids[other]} ") for line in mine), mine
        assert f"{ids[other]} says welcome, {ids[me]}" in mine, mine
    # One master they agree on: it printed its promotion, the other saw it as master.
    agreed = [m for m, o in ((0, 1), (1, 0)) if "I am the master now" in lines[m]
              and f"master is {ids[m]}" in lines[o]]
    assert len(agreed) == 1, lines
    master, other = agreed[0], 1 - agreed[0]
    if "I am the master now" in lines[other]:  # only once the master had left (it said goodbye)
        assert lines[other].index(f"left: {ids[master]}") < lines[other].index("I am the master now"), lines


# ------------------------------------------------------------ distributed_event_emitter.py


def test_event_emitter_nodes_in_one_process_hear_each_other() -> None:
    result = run("distributed_event_emitter.py", "--port", str(free_udp_port()), "--nodes", "3",
                 "--duration", "2.5", "--interval", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for me in ("node-1", "node-2", "node-3"):
        others = sorted({"node-1", "node-2", "node-3"} - {me})
        assert f"{me} heard greet from 2 other node(s): {', '.join(others)}" in out
        for sender in ("node-1", "node-2", "node-3"):  # every node hears every node, itself included
            assert f"{me} heard greet from {sender}" in out
            assert f"{me} heard tick 1 from {sender}" in out
    assert out.rstrip().endswith("done")


def test_event_emitter_nodes_in_separate_processes() -> None:
    port = str(free_udp_port())
    common = ["--port", port, "--nodes", "1", "--expect", "2", "--duration", "3", "--interval", "0.5"]
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def one(name: str) -> None:
        results[name] = run("distributed_event_emitter.py", *common, "--name", name)

    threads = [threading.Thread(target=one, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for me, other in (("alice", "bob"), ("bob", "alice")):
        result = results[me]
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{me}-1 sees {other}-1; emitting greet" in result.stdout
        assert f"{me}-1 heard greet from {other}-1" in result.stdout
        assert f"{me}-1 heard tick 1 from {other}-1" in result.stdout
        assert f"{me}-1 heard greet from 1 other node(s): {other}-1" in result.stdout


def test_event_emitter_over_loopback_multicast() -> None:
    result = run("distributed_event_emitter.py", "--port", str(free_udp_port()), "--nodes", "2",
                 "--multicast", "239.255.81.7", "--duration", "1.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node-1 heard greet from 1 other node(s): node-2" in result.stdout


def test_event_emitter_reports_a_missing_node_and_refuses_other_networks() -> None:
    alone = run("distributed_event_emitter.py", "--port", str(free_udp_port()), "--nodes", "1", "--expect", "2",
                "--duration", "1")
    assert alone.returncode == 1
    assert "node-1 heard greet from 0 other node(s): none (expected 1)" in alone.stdout
    for args in (["--broadcast", "255.255.255.255"], ["--broadcast", "192.168.1.255"], ["--nodes", "0"]):
        refused = run("distributed_event_emitter.py", *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "loopback" in run("distributed_event_emitter.py", "--broadcast", "10.255.255.255").stderr
    assert "--duration" in run("distributed_event_emitter.py", "--help").stdout


def test_distributed_emitter_class() -> None:
    """The wrapper itself: remote and local delivery, malformed events ignored, a raising listener isolated."""
    module = load("distributed_event_emitter.py")
    bus = MemoryBus()
    quick: dict[str, Any] = {"hello_interval": 0.1, "node_timeout": 0.35, "check_interval": 0.3,
                             "ignore_process": False}
    a = Discovery(transport=MemoryTransport(bus), hostname="a", start=False, **quick)
    b = Discovery(transport=MemoryTransport(bus), hostname="b", start=False, **quick)
    ea, eb = module.DistributedEmitter(a), module.DistributedEmitter(b)
    heard: list[tuple[str, tuple[Any, ...]]] = []
    eb.on("boom", lambda *args: 1 / 0)
    eb.on("boom", lambda *args: heard.append(("b", args)))
    ea.on("boom", lambda *args: heard.append(("a", args)))
    gone = eb.on("other", lambda *args: heard.append(("other", args)))
    eb.off("other", gone)
    try:
        a.start()
        b.start()
        eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 5, "a and b see each other")
        a.send("events", "not an event")  # ignored by the wrapper
        a.send("events", {"no": "event"})
        assert ea.emit("boom", 1, {"x": [2]}) is True
        assert ea.emit("other") is True
        eventually(lambda: ("b", (1, {"x": [2]})) in heard, 5, "b hears a's event")
        assert ("a", (1, {"x": [2]})) in heard  # the emitter's own listeners run too
        time.sleep(0.2)  # nothing else arrives: not the malformed sends, not "other" (no listener left)
        assert sorted(heard, key=repr) == [("a", (1, {"x": [2]})), ("b", (1, {"x": [2]}))]
        with pytest.raises(ValueError):
            module.DistributedEmitter(a)  # the channel is taken
    finally:
        a.stop()
        b.stop()
    assert ea.emit("boom") is False  # stopped: not sent


# ------------------------------------------------------------------ service_readiness.py


@pytest.mark.parametrize("where", [[], ["--multicast", "239.255.81.8"]], ids=["broadcast", "multicast"])
def test_service_readiness_example(where: list[str]) -> None:
    result = run("service_readiness.py", "--port", str(free_udp_port()), "--duration", "5", *where)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if marker in line)
             for marker in ("database connection ready", "web ready? False", "READY, needs met", "NOT READY")]
    assert order == sorted(order)
    assert "needs met: ['service.cache', 'service.db']" in result.stdout


def test_service_readiness_refuses_other_networks() -> None:
    refused = run("service_readiness.py", "--broadcast", "255.255.255.255")
    assert refused.returncode == 2 and "loopback" in refused.stderr
    assert "--duration" in run("service_readiness.py", "--help").stdout


# --------------------------------------------------------------------------- node.py


def test_node_example_two_processes_elect_message_and_stop_by_themselves() -> None:
    port = str(free_udp_port())
    procs = [
        subprocess.Popen([sys.executable, str(EXAMPLES / "node.py"), "--json", "--port", port, "--weight", str(w),
                          "--hello-interval", "0.5", "--node-timeout", "1.75", "--check-interval", "1",
                          "--lifetime", "3"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in (1, 2)
    ]
    try:
        time.sleep(1.5)  # both started; the election waits max(check_interval, hello_interval)
        assert procs[0].stdin is not None
        procs[0].stdin.write("hello from one\n")
        procs[0].stdin.flush()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    events = [[json.loads(line) for line in out.splitlines()] for out, _ in outs]
    for (out, err), proc in zip(outs, procs, strict=True):
        assert proc.returncode == 0, out + err
    ids = [next(e["id"] for e in evs if e["event"] == "started") for evs in events]
    for mine, other in ((0, 1), (1, 0)):
        kinds = [e["event"] for e in events[mine]]
        assert kinds[0] == "started" and kinds[-1] == "stopped"
        assert events[mine][-1]["reason"] == "lifetime"
        assert any(e["event"] == "added" and e["id"] == ids[other] for e in events[mine])
    assert [e["id"] for e in events[1] if e["event"] == "promotion"] == [ids[1]]
    # the lighter node is promoted only once the heavier one has stopped (its lifetime may end first)
    kinds0 = [(e["event"], e.get("id")) for e in events[0]]
    if ("promotion", ids[0]) in kinds0:
        assert kinds0.index(("removed", ids[1])) < kinds0.index(("promotion", ids[0]))
    assert any(e["event"] == "master" and e["id"] == ids[1] for e in events[0])
    assert any(e["event"] == "sent" and e["ok"] for e in events[0])
    assert any(e["event"] == "message" and e["data"] == "hello from one" and e["from"] == ids[0] for e in events[1])


def test_node_example_rejects_bad_options() -> None:
    result = run("node.py", "--hello-interval", "2", "--node-timeout", "1", "--lifetime", "1")
    assert result.returncode == 2
    assert "node_timeout" in result.stderr
    assert "--duration" in run("node.py", "--help").stdout


@pytest.mark.parametrize("args", [
    ["--broadcast", "255.255.255.255"],
    ["--broadcast", "192.168.1.255"],
    ["--unicast", "127.0.0.1:41231,10.0.0.7:41231"],
    ["--unicast", "[fe80::1]:41231"],
    ["--multicast", "239.255.0.1", "--interface", "192.168.1.10"],
    ["--multicast", "ff02::1:3", "--interface", "eth0"],
    ["--transport", "redis://10.0.0.5:6379/0"],
], ids=["default-broadcast", "lan-broadcast", "unicast", "unicast-v6", "multicast", "multicast-v6", "redis"])
def test_node_example_refuses_anything_but_loopback(args: list[str]) -> None:
    """It says "loopback only", like every example: other addresses are a usage error (nothing is sent)."""
    result = run("node.py", *args, "--lifetime", "5", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "this example only" in result.stderr and result.stdout == ""


def test_node_example_accepts_loopback_everywhere() -> None:
    port = str(free_udp_port())
    for args in (["--unicast", f"127.0.0.1:{port},localhost,[::1]:{port}"], ["--multicast", "239.255.81.9"]):
        result = run("node.py", "--json", "--port", port, *args, "--lifetime", "0.3", timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["started", "stopped"]


def test_every_example_has_a_default_port_of_its_own() -> None:
    """Examples started with their defaults never join each other (nor README's example, nor the demo)."""
    ports: dict[str, int] = {}
    for script in ("node.py", "distributed_event_emitter.py", "service_readiness.py", "task_balancer.py",
                   "instance_manager.py"):
        help_text = " ".join(run(script, "--help").stdout.split())
        match = re.search(r"--port PORT [^-]*?\(default (\d+)", help_text)
        assert match, f"{script} --help documents no default port: {help_text}"
        ports[script] = int(match.group(1))
    readme_port = re.search(r"port=(\d+)", readme_example())
    assert readme_port
    ports["README.rst"] = int(readme_port.group(1))
    demo = subprocess.run([sys.executable, "-m", "pydiscover.demo", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    demo_port = re.search(r"--port PORT [^-]*?\(default (\d+)", " ".join(demo.stdout.split()))
    assert demo_port
    ports["pydiscover.demo"] = int(demo_port.group(1))
    assert len(set(ports.values())) == len(ports), ports
    assert "free port" in " ".join(run("mixed_cluster.py", "--help").stdout.split())


# ----------------------------------------------------------------- instance_manager.py


def test_instance_manager_two_processes_split_the_pollers() -> None:
    port = str(free_udp_port())
    results: list[subprocess.CompletedProcess[str]] = []

    def one() -> None:
        results.append(run("instance_manager.py", "--port", port, "--resources", "6", "--duration", "5", "--json"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    timelines: list[list[tuple[float, frozenset[str]]]] = []
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert events[0]["event"] == "started"
        timelines.append([(e["t"], frozenset(e["owned"])) for e in events if e["event"] == "owned"])
    assert len(timelines) == 2

    def owned_at(timeline: list[tuple[float, frozenset[str]]], t: float) -> frozenset[str]:
        return next((owned for at, owned in reversed(timeline) if at <= t), frozenset())

    # At some moment the two held an even split of all six pollers, none twice.
    everything = {f"poller-{i:02d}" for i in range(6)}
    assert any(
        [len(owned_at(timeline, t)) for timeline in timelines] == [3, 3]
        and owned_at(timelines[0], t) | owned_at(timelines[1], t) == everything
        for t in sorted(at for timeline in timelines for at, _ in timeline)
    ), timelines


def test_instance_manager_takes_run_time_commands() -> None:
    """Two processes: an add typed on one runs once, a remove typed on the other stops, capacity 0 drains."""
    port = str(free_udp_port())
    lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    procs = [subprocess.Popen([sys.executable, str(EXAMPLES / "instance_manager.py"), "--port", port, "--resources",
                               "4", "--duration", "60", "--json", "--commands"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    owned: list[set[str]] = [set(), set()]

    def read(index: int) -> None:
        stdout = procs[index].stdout
        assert stdout is not None
        for line in stdout:
            lines.put((index, json.loads(line)))

    def until(condition: Any, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {owned}"
            with contextlib.suppress(queue.Empty):
                index, event = lines.get(timeout=0.1)
                if event["event"] == "owned":
                    owned[index] = set(event["owned"])

    def type_in(index: int, command: str) -> None:
        stdin = procs[index].stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    for index in range(2):
        threading.Thread(target=read, args=(index,), daemon=True).start()
    try:
        every = {f"poller-{i:02d}" for i in range(4)}
        until(lambda: owned[0] | owned[1] == every and not owned[0] & owned[1] and owned[0] and owned[1], "the split")
        type_in(0, "add poller-99")
        every.add("poller-99")
        until(lambda: owned[0] | owned[1] == every and not owned[0] & owned[1], "poller-99 running once")
        type_in(1, "remove poller-01")
        every.discard("poller-01")
        until(lambda: owned[0] | owned[1] == every, "poller-01 stopped")
        type_in(1, "capacity 0")
        until(lambda: owned[0] == every and not owned[1], "the second process drained")
    finally:
        for proc in procs:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()  # end of input: each exits cleanly
        for proc in procs:
            try:
                assert proc.wait(30) == 0
            finally:
                proc.kill()


def test_instance_manager_refuses_other_networks() -> None:
    refused = run("instance_manager.py", "--broadcast", "192.168.1.255")
    assert refused.returncode == 2 and "loopback" in refused.stderr


# -------------------------------------------------------------------- mixed_cluster.py


@pytest.mark.interop
@pytest.mark.timeout(90)
@pytest.mark.parametrize("key", [None, "sekrit"], ids=["plaintext", "legacy-key"])
def test_mixed_cluster_example(key: str | None) -> None:
    reason = node_missing_reason() or node_discover_problem()
    if reason:
        pytest.skip(reason)
    if key and not node_has_legacy_cipher():
        pytest.skip("this Node.js has no crypto.createCipher (removed in Node.js 22): node-discover cannot use a key")
    result = run("mixed_cluster.py", "--duration", "30", *(["--key", key] if key else []), timeout=80)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for name in ("js-4", "js-1", "py-3", "py-2"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert len(re.findall(r"(?:js|py)-\d", line)) == 4, line  # itself and the three others
    assert "master: js-4 (promoted: js-4)" in out
    assert "final views: masters ['js-4']; peers seen by each process [3, 3, 3, 3]" in out
    assert len(re.findall(r"<- ", out)) == 12  # every process heard every other process's line
    assert out.rstrip().endswith("all seen")
