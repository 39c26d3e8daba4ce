"""``pydiscover.compat.Discover``: node-discover's API on the native engine, and the ports of its examples.

Loopback only: broadcast to 127.255.255.255 on a free port, unicast to 127.0.0.1.  Every
node is stopped at the end of its test, every subprocess runs a bounded time.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, eventually, free_udp_port

from pydiscover import compat
from pydiscover.compat import Discover, translate_options
from testbed.node_discover import node_env, node_has_legacy_cipher, require_node_discover
from testbed.ports import free_udp_ports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "node_discover"
#: Fast node-discover timings (milliseconds) for the tests.
FAST = {"helloInterval": 100, "checkInterval": 200, "nodeTimeout": 1000}
FAST_ARGS = ["--hello-interval", "100", "--check-interval", "200", "--node-timeout", "1000"]
NODE_KEYS = {"isMaster": bool, "isMasterEligible": bool, "weight": float, "address": str, "port": int,
             "hostName": str, "lastSeen": int, "id": str}


@pytest.fixture
def make() -> Iterator[Callable[..., Discover]]:
    """Discover instances on one loopback broadcast port (one process: ignoreProcess off); all stopped after."""
    port = free_udp_port()
    made: list[Discover] = []

    def create(options: dict[str, Any] | None = None, callback: Any = None) -> Discover:
        opts = {"port": port, "broadcast": LOOPBACK_BROADCAST, "ignoreProcess": False, **FAST, **(options or {})}
        d = Discover(opts, callback)
        made.append(d)
        return d

    try:
        yield create
    finally:
        for d in made:
            d.stop()


def assert_node_object(node: dict[str, Any], expected_id: str) -> None:
    for key, kind in NODE_KEYS.items():
        assert isinstance(node[key], kind), (key, node)
    assert "advertisement" in node
    assert node["id"] == expected_id
    assert node["address"] == "127.0.0.1"
    assert abs(node["lastSeen"] - time.time() * 1000) < 5000  # ms since the epoch, as node-discover


# ------------------------------------------------------------------ events


def test_two_nodes_see_each_other_then_one_is_removed(make: Callable[..., Discover]) -> None:
    added: dict[str, list[tuple[Any, ...]]] = {"a": [], "b": []}
    removed: list[dict[str, Any]] = []
    a = make({"advertisement": {"name": "a"}})
    a.on("added", lambda node, obj, rinfo: added["a"].append((node, obj, rinfo)))
    a.on("removed", removed.append)
    b = make()
    b.on("added", lambda *args: added["b"].append(args))
    eventually(lambda: bool(added["a"]) and bool(added["b"]), what="both added")

    node, obj, rinfo = added["a"][0]
    assert_node_object(node, b.broadcast.instanceUuid)
    assert obj["iid"] == b.broadcast.instanceUuid and obj["pid"] == b.broadcast.processUuid
    assert obj["event"] == "hello" and obj["data"]["weight"] == node["weight"]
    assert rinfo == {"address": "127.0.0.1", "family": "IPv4", "port": node["port"]}
    seen_by_b = added["b"][0][0]
    assert_node_object(seen_by_b, a.broadcast.instanceUuid)
    assert seen_by_b["advertisement"] == {"name": "a"}
    assert a.nodes == {b.broadcast.instanceUuid: node}  # the same, live object
    each: list[dict[str, Any]] = []
    a.eachNode(each.append)
    assert each == [node]

    b.stop()
    eventually(lambda: bool(removed), what="removed")
    assert removed[0] is node and a.nodes == {}
    assert len(added["a"]) == 1


def test_hello_received_and_master_arguments(make: Callable[..., Discover]) -> None:
    hellos: list[tuple[Any, ...]] = []
    masters: list[tuple[Any, ...]] = []
    a = make({"weight": 1})
    b = make({"weight": 2})
    a.on("helloReceived", lambda *args: hellos.append(args))
    a.on("master", lambda *args: masters.append(args))
    eventually(lambda: bool(masters), what="b seen as master")
    node, obj, rinfo = masters[0]
    assert node["id"] == b.broadcast.instanceUuid and node["isMaster"] is True
    assert obj["iid"] == node["id"] and rinfo["port"] == node["port"]
    assert all(len(args) == 5 for args in hellos)
    # (node, obj, rinfo, isNew, wasMaster): wasMaster is None for a new node, then whether the
    # node was master before this hello (b is master, and stays: True once b was seen as master).
    assert hellos[0][3] is True and hellos[0][4] is None
    eventually(lambda: any(args[3] is False and args[4] is True for args in hellos), what="wasMaster True")
    # obj.data carries what node-discover adds to it: lastSeen, address, hostName, port, id.
    data = hellos[-1][1]["data"]
    assert {"lastSeen", "address", "hostName", "port", "id", "isMaster", "weight"} <= set(data)


def test_promote_demote_and_stop_emit_as_node_discover(make: Callable[..., Discover]) -> None:
    """node-discover emits promotion/demotion on every call (even with no change of role), and
    stop() emits only ``stopped``."""
    a = make({"weight": 5})
    events: list[str] = []
    for name in ("promotion", "demotion", "stopped"):
        a.on(name, lambda *args, name=name: events.append(name))
    eventually(lambda: a.running and a.me["isMaster"], what="a alone becomes master")
    events.clear()
    a.promote()  # already master: node-discover still emits
    eventually(lambda: events == ["promotion"], what="promotion on a master")
    a.demote()
    eventually(lambda: events == ["promotion", "demotion"], what="demotion")
    assert a.me["isMaster"] is False
    a.demote(True)  # not master any more: still emitted, and no longer eligible
    eventually(lambda: events == ["promotion", "demotion", "demotion"], what="demotion on a non-master")
    assert a.me["isMasterEligible"] is False
    a.promote()
    eventually(lambda: events[-1] == "promotion" and a.me["isMaster"] and a.me["isMasterEligible"], what="back")
    events.clear()
    a.stop()
    assert events == ["stopped"]  # no demotion, though a was master


def test_settings_and_me_are_read_only(make: Callable[..., Discover]) -> None:
    d = make({"start": False})
    with pytest.raises(TypeError):
        d.settings["nodeTimeout"] = 10  # type: ignore[index]
    with pytest.raises(TypeError):
        d.me["advertisement"] = {"x": 1}  # type: ignore[index]
    assert d.settings["nodeTimeout"] == FAST["nodeTimeout"]
    with pytest.raises(AttributeError):
        d.channels.append("x")  # type: ignore[attr-defined]


def test_nodes_and_me_are_live_as_in_node_discover(make: Callable[..., Discover]) -> None:
    """``n = d.nodes`` taken early, ``m = d.me`` before a promotion: both show what is true now."""
    a, b = make(), make()
    nodes, me = a.nodes, a.me
    assert len(nodes) == 0
    eventually(lambda: len(nodes) == 1 and b.broadcast.instanceUuid in nodes, what="b in a's early view")
    assert nodes[b.broadcast.instanceUuid]["id"] == b.broadcast.instanceUuid
    with pytest.raises(TypeError):
        del nodes[b.broadcast.instanceUuid]  # type: ignore[attr-defined]
    a.demote(True)
    eventually(lambda: me["isMaster"] is False and me["isMasterEligible"] is False, what="a demoted, seen in me")
    a.promote()
    eventually(lambda: me["isMaster"] is True, what="a promoted, seen in the same me")
    assert dict(me) == dict(a.me) and "isMaster" in repr(me)
    # Taken in one go: a peer leaving during the loop cannot break it; a plain dict for JSON.
    assert [key for key, _ in nodes.items()] == [b.broadcast.instanceUuid] and len(list(nodes.values())) == 1
    assert json.loads(json.dumps(nodes.copy()))[b.broadcast.instanceUuid]["id"] == b.broadcast.instanceUuid


def test_send_before_the_start_says_so(make: Callable[..., Discover], caplog: pytest.LogCaptureFixture) -> None:
    d = make({"start": False})
    with caplog.at_level(logging.WARNING, logger="pydiscover.compat"):
        assert d.send("chat", 1) is False
    assert "send('chat') before the node started" in caplog.text


def test_a_stop_during_the_automatic_start_is_carried_out(make: Callable[..., Discover]) -> None:
    import pydiscover.compat as compat

    d = make()
    assert d.stop() is True and not d.running  # before the automatic start: cancelled
    time.sleep(compat.START_DELAY * 3)
    assert not d.running
    slow = make()  # starts START_DELAY seconds from now, through slow_start
    original = slow.native.start
    started = threading.Event()

    def slow_start() -> bool:
        started.set()
        time.sleep(0.2)
        return original()

    slow.native.start = slow_start  # type: ignore[method-assign]
    assert started.wait(5)
    assert slow.stop() is True  # the start is under way: the node stops right after it
    eventually(lambda: not slow.native.running and started.is_set(), what="stopped after the start")
    time.sleep(0.3)
    assert not slow.running


def test_destination_edits_from_a_handler_and_another_thread_take_turns(make: Callable[..., Discover]) -> None:
    a = make({"unicast": [], "broadcast": None, "address": "127.0.0.1"})
    b_port = a.settings["port"]
    errors: list[BaseException] = []

    def edit_in_handler(*_: Any) -> None:
        a.broadcast.destination.append({"address": "127.0.0.1", "port": 41950})
        a.broadcast.destination.remove({"address": "127.0.0.1", "port": 41950})

    a.on("helloEmitted", edit_in_handler)
    deadline = time.monotonic() + 1.0
    worst = 0.0
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            a.broadcast.destination.append({"address": "127.0.0.1", "port": 41960})
            a.broadcast.destination.remove({"address": "127.0.0.1", "port": 41960})
        except BaseException as exc:
            errors.append(exc)
        worst = max(worst, time.monotonic() - t)
    assert errors == [] and worst < 2.0, (errors, worst)
    assert list(a.broadcast.destination) == [] and a.native.unicast == () and b_port


def test_three_nodes_with_two_masters_required_elect_exactly_two(make: Callable[..., Discover]) -> None:
    nodes = [make({"mastersRequired": 2, "weight": w}) for w in (1, 2, 3)]
    promoted: list[str] = []
    for d in nodes:
        d.on("promotion", lambda me, d=d: promoted.append(d.broadcast.instanceUuid))

    def masters() -> list[bool]:
        return [d.me["isMaster"] for d in nodes]

    eventually(lambda: sum(masters()) == 2 and all(len(d.nodes) == 2 for d in nodes), what="two masters")
    time.sleep(0.6)  # several check intervals: still two, the heaviest ones
    assert masters() == [False, True, True]
    assert sorted(promoted) == sorted(d.broadcast.instanceUuid for d in nodes[1:])


def test_join_and_send_pass_data_obj_rinfo(make: Callable[..., Discover]) -> None:
    got: list[tuple[Any, ...]] = []
    a = make()
    assert a.join("chat", lambda data, obj, rinfo: got.append((data, obj, rinfo)))
    assert a.join("chat") is False  # already joined
    assert a.join("added") is False and a.send("hello", {}) is False  # node-discover's reserved names
    b = make()
    eventually(lambda: b.running and len(a.nodes) == 1, what="a sees b")
    assert b.send("chat", {"text": "hi"})
    eventually(lambda: bool(got), what="message")
    data, obj, rinfo = got[0]
    assert data == {"text": "hi"}
    assert obj == {"event": "chat", "pid": b.broadcast.processUuid, "iid": b.broadcast.instanceUuid,
                   "hostName": obj["hostName"], "data": {"text": "hi"}}
    assert rinfo["address"] == "127.0.0.1" and rinfo["port"] == b.settings["port"]
    assert a.leave("chat") and a.channels == ()


def test_handlers_registered_after_the_constructor_miss_nothing(make: Callable[..., Discover]) -> None:
    first = make()
    eventually(lambda: first.running, what="first started")
    second = make()
    assert not second.running  # the engine starts only after the caller had its turn
    events: list[str] = []
    started = threading.Event()
    second.on("started", lambda d: (events.append("started"), started.set()))
    second.on("added", lambda node: events.append("added"))
    assert started.wait(5)
    eventually(lambda: "added" in events, what="added after registration")
    assert events[0] == "started"


def test_start_false_then_start_with_callback(make: Callable[..., Discover]) -> None:
    results: list[tuple[Any, bool]] = []
    d = make({"start": False})
    time.sleep(compat.START_DELAY * 3)
    assert not d.running and d.settings["start"] is False
    assert d.start(lambda err, ok: results.append((err, ok))) is True
    assert d.running and results == [(None, True)]
    assert d.start(lambda err, ok: results.append((err, ok))) is False  # already running
    assert results[-1] == (None, False)
    assert d.stop() is True and d.stop() is False


def test_hello_sends_one_now_between_beats(make: Callable[..., Discover]) -> None:
    emitted: list[float] = []
    d = make({"helloInterval": 5000, "nodeTimeout": 20000, "masterTimeout": 20000})
    d.on("helloEmitted", lambda: emitted.append(time.monotonic()))
    eventually(lambda: len(emitted) == 1, 3, "the first hello, at start")
    d.hello()
    eventually(lambda: len(emitted) == 2, 1, "a hello now, not at the next beat (5 s away)")


def test_constructor_callback_reports_the_start(make: Callable[..., Discover]) -> None:
    done = threading.Event()
    results: list[tuple[Any, bool]] = []
    make(callback=lambda err, ok: (results.append((err, ok)), done.set()))
    assert done.wait(5) and results == [(None, True)]


def test_destination_list_changes_where_packets_go(make: Callable[..., Discover]) -> None:
    d = make({"start": False})
    port = d.settings["port"]
    dest = d.broadcast.destination
    assert dest == [{"address": LOOPBACK_BROADCAST, "port": port}]
    dest.append({"address": "127.0.0.2", "port": 4000})
    dest.push("127.0.0.3:4001")  # node-discover's spelling, and its "host:port" form
    assert d.native.unicast == ("127.0.0.2:4000", "127.0.0.3:4001")
    d.broadcast.destination = [e for e in dest if e["port"] != 4000]
    assert d.native.unicast == ("127.0.0.3:4001",)
    assert d.broadcast.destination is dest and len(dest) == 2
    with pytest.raises(ValueError, match="cannot be removed"):
        dest.pop(0)
    assert dest[0]["address"] == LOOPBACK_BROADCAST  # refused: nothing changed
    with pytest.raises(TypeError):
        dest.append({"port": 1})
    assert len(dest) == 2


# ------------------------------------------------------------------ options


def test_options_translate_camel_case_milliseconds() -> None:
    settings, native = translate_options({
        "helloInterval": 250, "checkInterval": 500, "nodeTimeout": 1500, "port": 41299, "multicastTTL": 3,
        "multicast": "239.1.2.3", "key": "sekrit", "mastersRequired": 2, "weight": 5, "reuseAddr": False,
        "ignoreProcess": False, "hostName": "h", "exclusive": True,
    })
    assert (native["hello_interval"], native["check_interval"], native["node_timeout"]) == (0.25, 0.5, 1.5)
    assert native["master_timeout"] == 1.5 and settings["masterTimeout"] == 1500  # node-discover's default
    assert native["multicast"] == "239.1.2.3" and native["multicast_ttl"] == 3 and native["broadcast"] is None
    assert native["key"] == "sekrit" and native["encryption"] == "node-discover"
    assert native["masters_required"] == 2 and native["weight"] == 5 and native["reuse_addr"] is False
    assert native["ignore_process"] is False and native["ignore_instance"] is True and native["hostname"] == "h"
    assert native["client"] is False and native["learn_peers"] is False
    assert settings["helloInterval"] == 250 and settings["exclusive"] is True

    settings, native = translate_options({"unicast": [], "client": True})
    assert native["unicast"] == [] and native["broadcast"] is None and native["client"] is True
    assert settings["server"] is False
    _, native = translate_options(None)  # node-discover's defaults
    assert (native["hello_interval"], native["node_timeout"], native["port"]) == (1.0, 2.0, 12345)
    assert native["key"] is None and native["encryption"] is None and native["weight"] < 0


def test_unknown_options_are_ignored_with_a_warning_and_bad_ones_named(caplog: pytest.LogCaptureFixture) -> None:
    """As node-discover: basic-argv.js hands it optimist's argv whole (``_``, ``$0``, strings).

    A near miss of one of its options is still an error: ignoring a misspelt ``key``
    would run the node unencrypted.
    """
    with caplog.at_level(logging.WARNING, logger="pydiscover.compat"):
        settings, native = translate_options({"bogus": 1, "_": [], "$0": "x", "port": "42603",
                                              "helloInterval": "500", "weight": "5", "multicastTTL": "2e0"})
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "unknown option 'bogus' ignored" in warned and "its options are" in warned
    assert "'_'" in warned and "'$0'" in warned
    assert native["port"] == 42603 and native["hello_interval"] == 0.5  # numbers written as strings
    assert native["weight"] == 5 and settings["multicastTTL"] == 2 and "bogus" not in settings
    for misspelt, meant in (("hello_interval", "helloInterval"), ("helloIntervall", "helloInterval"), ("kye", "key")):
        with pytest.raises(TypeError, match=f"unknown option '{misspelt}'; did you mean '{meant}'"):
            translate_options({misspelt: 1})
    with pytest.raises(ValueError, match="nodeTimeout must be greater than or equal to checkInterval"):
        Discover({"nodeTimeout": 1000, "checkInterval": 2000})
    with pytest.raises(TypeError, match="helloInterval must be a number of milliseconds"):
        Discover({"helloInterval": "soon"})
    with pytest.raises(ValueError, match="leadershipElector"):
        Discover({"leadershipElector": object()})


def test_handlers_take_only_the_arguments_they_declare() -> None:
    emitter = compat.EventEmitter()
    got: list[Any] = []
    emitter.on("x", lambda a: got.append(a))
    emitter.on("x", lambda *args: got.append(args))
    emitter.once("x", lambda a, b, c: got.append((a, b, c)))
    emitter.emit("x", 1, 2, 3)
    emitter.emit("x", 4, 5, 6)
    assert got == [1, (1, 2, 3), (1, 2, 3), 4, (4, 5, 6)]


# ------------------------------------------------------------------ the ports of node-discover's examples


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(EXAMPLES / script), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs: list[str] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, out + err
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def own_id(out: str) -> str:
    return next(line[5:].strip() for line in out.splitlines() if line.startswith("I am "))


def printed_nodes(out: str, title: str) -> list[dict[str, Any]]:
    """The node objects printed (one line each) after the line ``title``."""
    lines = out.splitlines()
    return [ast.literal_eval(lines[i + 1]) for i, line in enumerate(lines) if line == title]


def test_basic_port_two_processes_added_then_removed() -> None:
    port = str(free_udp_port())
    a = spawn("basic.py", "--port", port, *FAST_ARGS, "--duration", "4")
    time.sleep(0.3)
    b = spawn("basic.py", "--port", port, *FAST_ARGS, "--duration", "2")
    out_a, out_b = finish([a, b])
    added_a, added_b = printed_nodes(out_a, "New node added to the network."), \
        printed_nodes(out_b, "New node added to the network.")
    assert [n["id"] for n in added_a] == [own_id(out_b)] and [n["id"] for n in added_b] == [own_id(out_a)]
    assert_node_object(added_a[0], own_id(out_b))
    removed = printed_nodes(out_a, "Node removed from the network.")
    assert [n["id"] for n in removed] == [own_id(out_b)]


def test_basic_advert_port_carries_the_advertisement() -> None:
    port = str(free_udp_port())
    outs = finish([spawn("basic_advert.py", "--port", port, *FAST_ARGS, "--duration", "2.5") for _ in range(2)])
    for me, other in ((0, 1), (1, 0)):
        (node,) = printed_nodes(outs[me], "New node added to the network.")
        assert node["id"] == own_id(outs[other])
        assert node["advertisement"]["http"] == "80" and isinstance(node["advertisement"]["random"], float)


def test_master_port_three_processes_two_masters() -> None:
    port = str(free_udp_port())
    procs = []
    for _ in range(3):
        procs.append(spawn("master.py", "--port", port, *FAST_ARGS, "--duration", "4"))
        time.sleep(0.2)  # distinct ages: the two oldest are the masters
    time.sleep(2.2)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("me\nlist\n")
        proc.stdin.flush()
    outs = finish(procs)
    mes = [ast.literal_eval(next(line[line.index("{'isMaster'"):] for line in out.splitlines()
                                 if "{'isMaster'" in line)) for out in outs]
    assert [me["isMaster"] for me in mes] == [True, True, False], outs
    assert all("I was promoted" in out for out in outs[:2])  # the third may be, once a master has left


def test_unicast_port_forms_a_full_three_node_cluster() -> None:
    ports = [str(p) for p in free_udp_ports(3)]
    procs = [spawn("unicast.py", "--port", ports[0], *FAST_ARGS, "--duration", "4")]
    for i in (1, 2):
        time.sleep(0.3)
        procs.append(spawn("unicast.py", "--port", ports[i], "--address", f"127.0.0.1:{ports[i - 1]}",
                           *FAST_ARGS, "--duration", str(4 - 0.3 * i)))
    outs = finish(procs)
    ids = [own_id(out) for out in outs]
    for me, out in enumerate(outs):
        seen = {n["id"] for n in printed_nodes(out, "New node added to the network.")}
        assert seen == set(ids) - {ids[me]}, out
        assert "adding destination" in out


# ------------------------------------------------------------------ a real node-discover 1.2.1

NODE_SCRIPT = """
var Discover = require('node-discover');
var opts = JSON.parse(process.argv[1]);
var d = new Discover(opts);
function out(o) { console.log(JSON.stringify(o)); }
out({ev: 'id', id: d.broadcast.instanceUuid});
d.on('added', function (node) { out({ev: 'added', id: node.id}); });
d.join('chat', function (data, obj) {
  out({ev: 'chat', data: data, from: obj.iid});
  d.send('chat', {reply: data.text, from: 'js'});
});
setTimeout(function () { d.stop(); process.exit(0); }, 8000);
"""


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_with_a_real_node_discover_and_a_key() -> None:
    require_node_discover()
    if not node_has_legacy_cipher():
        pytest.skip("this Node.js has no crypto.createCipher: node-discover cannot use a key")
    py_port, js_port = free_udp_ports(2)
    js_opts = {"port": js_port, "address": "127.0.0.1", "unicast": f"127.0.0.1:{py_port}", "key": "sekrit",
               **FAST}
    js = subprocess.Popen(["node", "-e", NODE_SCRIPT, json.dumps(js_opts)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=node_env())
    replies: list[tuple[Any, ...]] = []
    added: list[dict[str, Any]] = []
    d = Discover({"port": py_port, "address": "127.0.0.1", "unicast": [f"127.0.0.1:{js_port}"], "key": "sekrit",
                  **FAST})
    d.on("added", added.append)
    d.join("chat", lambda data, obj, rinfo: replies.append((data, obj, rinfo)))
    try:
        eventually(lambda: bool(added), timeout=10, what="node-discover seen")
        for _ in range(50):  # bounded: 50 messages over 10 s at most
            d.send("chat", {"text": "from python"})
            if replies:
                break
            time.sleep(0.2)
        assert replies, "no reply from node-discover"
    finally:
        d.stop()
        out, err = js.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    js_id = next(e["id"] for e in events if e["ev"] == "id")
    assert added[0]["id"] == js_id and added[0]["port"] == js_port
    assert {"ev": "added", "id": d.broadcast.instanceUuid} in events, out + err
    assert {"ev": "chat", "data": {"text": "from python"}, "from": d.broadcast.instanceUuid} in events
    data, obj, rinfo = replies[0]
    assert data == {"reply": "from python", "from": "js"} and obj["iid"] == js_id and rinfo["port"] == js_port
