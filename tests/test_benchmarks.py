"""The benchmark suite's plumbing still works: the runner, the table, one real blast.

No performance is asserted here (claims live in ``python -m benchmarks`` and
benchmarks/RESULTS.md); only that the harness measures what it says.  Loopback only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks import breakdown, flood, scale
from benchmarks._harness import REPO, Figure, table
from benchmarks.hello_cpu import INSTANCES, measure
from testbed.node_discover import node_discover_available


def fake_benchmark(met: bool) -> types.ModuleType:
    module = types.ModuleType("fake_benchmark")
    module.run = lambda quick: [  # type: ignore[attr-defined]
        Figure("fake", "speed", "x/s", 4.0, 2.0, better="higher", goal=">= 3", met=met, detail={"quick": quick})
    ]
    return module


@pytest.mark.parametrize("met", [True, False])
def test_runner_prints_a_table_writes_json_and_fails_on_a_missed_goal(
    met: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fake_benchmark", fake_benchmark(met))
    monkeypatch.setattr(runner, "BENCHMARKS", {"fake": "fake_benchmark"})
    out = tmp_path / "r.json"
    assert runner.main(["--quick", "--json", str(out)]) == (0 if met else 1)
    assert "speed" in capsys.readouterr().out
    report = json.loads(out.read_text())
    (figure,) = report["figures"]
    assert figure["ratio"] == 2.0 and figure["detail"] == {"quick": True} and report["quick"] is True
    assert report["machine"]["cores"] >= 1 and not report["failures"]


def test_a_failing_benchmark_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = types.ModuleType("broken_benchmark")
    broken.run = lambda quick: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "broken_benchmark", broken)
    monkeypatch.setitem(sys.modules, "fake_benchmark", fake_benchmark(True))
    monkeypatch.setattr(runner, "BENCHMARKS", {"broken": "broken_benchmark", "fake": "fake_benchmark"})
    assert runner.main([]) == 1
    captured = capsys.readouterr()
    assert "speed" in captured.out and "ZeroDivisionError" in captured.err


def test_table_lines_up_and_shows_missing_values() -> None:
    text = table([Figure("b", "f", "µs", 1.5, None, goal="g", met=False)])
    _header, rule, row = text.splitlines()
    assert row.split() == ["b", "f", "µs", "1.5", "-", "-", "g", "NO"]
    assert len(rule) >= len(row.rstrip())


def test_module_help_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--quick" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["pydiscover", "node-discover"])
def test_hello_blast_fills_the_table_and_counts_every_hello(impl: str) -> None:
    if impl == "node-discover" and not node_discover_available():
        pytest.skip("node-discover 1.2.1 is not installed (./scripts/test installs it)")
    result = measure(impl, "plain", rate=5_000, seconds=0.5)
    assert result["nodes"] == INSTANCES
    assert result["sent"] == 2_500 and result["share"] >= 0.99
    assert result["cpu_per_hello_us"] is not None and result["cpu_per_hello_us"] > 0


@pytest.mark.slow
def test_a_service_discovery_receiver_tracks_every_peer_as_a_provider() -> None:
    """The ServiceDiscovery row's receiver: every fake peer advertises the service it needs."""
    result = measure("pydiscover", "plain", rate=5_000, seconds=0.5, needs=3)
    assert result["nodes"] == INSTANCES and result["providers"] == INSTANCES
    assert result["share"] >= 0.99 and result["cpu_per_hello_us"] > 0


@pytest.mark.slow
def test_a_flood_fills_a_small_table_no_further_and_spares_the_real_peer() -> None:
    """The flood benchmark in small: 3,000 made-up instances against a table of 100."""
    r = flood.measure(instances=3_000, rate=10_000, max_nodes=100)
    assert r["table_after"] <= 100 and r["table_full"] >= 3_000 * r["read_share"] - 100 - 50
    assert r["read_share"] > 0.9 and not r["real_peer_removed"] and r["real_peer_present"]
    assert r["newcomer_seen_s"] is not None


def test_merge_reruns_only_the_named_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = fake_benchmark(True), types.ModuleType("other_benchmark")
    second.run = lambda quick: [Figure("other", "size", "B", 1.0, goal="", met=None)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_benchmark", first)
    monkeypatch.setitem(sys.modules, "other_benchmark", second)
    monkeypatch.setattr(runner, "BENCHMARKS", {"fake": "fake_benchmark", "other": "other_benchmark"})
    report = tmp_path / "r.json"
    assert runner.main(["--json", str(report)]) == 0
    second.run = lambda quick: [Figure("other", "size", "B", 2.0, goal="", met=None)]  # type: ignore[attr-defined]
    assert runner.main(["--only", "other", "--merge", str(report), "--json", str(report)]) == 0
    figures = json.loads(report.read_text())["figures"]
    assert [(f["benchmark"], f["pydiscover"]) for f in figures] == [("fake", 4.0), ("other", 2.0)]


def test_the_breakdown_times_every_step_and_delivers_every_message() -> None:
    """Smoke form of ``python -m benchmarks --only breakdown``: each step measured, the whole
    receive path costing more than any one of its steps (and every message handled: it asserts)."""
    channel = breakdown.channel_steps(rounds=1, calls=300)
    hello = breakdown.hello_steps(rounds=1, calls=1_000)
    assert all(us > 0 for us in [*channel.values(), *hello.values()])
    whole = channel["datagram_received, whole"]
    assert whole > max(channel["replay check"], channel["Packet for handlers"], channel["orjson.loads"])
    assert channel["datagram_received + emit to one handler"] > channel["orjson.loads"]
    assert hello["datagram_received, changed hello (parsed)"] > hello["wire.hello_key"]
    machine = breakdown.machine_step(samples=3)
    assert sorted(machine) == ["a fixed pure-Python loop, warm", "the same loop, first after 20 ms asleep"]
    assert all(us > 0 for us in machine.values())



def test_the_bare_reader_floor_reads_the_whole_blast() -> None:
    """Smoke form of the breakdown's floor row: the bare reader gets every message of a short blast."""
    floor = breakdown.bare_reader_floor(rate=5_000, seconds=0.2)
    assert floor["sent"] == 1_000
    assert 1_000 <= floor["messages"] <= 1_010  # and the sender's own hellos, two a second
    assert floor["bare asyncio reader, CPU per message under the channel blast"] > 0


def test_the_simulation_runs_in_a_child_process_and_elects_the_heaviest() -> None:
    """Its heap (over a gigabyte at 1,000 nodes) must not stay in the process that runs the next benchmark."""
    result = scale.simulate_apart(20, 3.0)  # the first election is at the first check, 2 s
    assert result["pid"] != os.getpid()
    assert result["one_master_is_heaviest"] and result["full_view_at"] is not None
    assert result["deliveries"] > 20 * 19  # every node's first hello reached every other


def test_the_bare_reader_latency_floor_hears_every_stamped_message() -> None:
    """Smoke form of the breakdown's latency floor: each message's stamp read, the sender's hellos not counted."""
    floor = breakdown.bare_reader_latency(messages=100)
    assert floor["sent"] == 100 and floor["messages"] == 100
    assert 0 < floor["bare asyncio reader, one-way latency p50 (one at a time)"] <= floor["p99_us"]


def test_a_simulation_past_its_limit_is_killed_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound must end the child: waiting for it would hang the runner as long as the simulation runs."""
    monkeypatch.setattr(scale, "SIMULATION_LIMIT", 0.5)
    started = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        scale.simulate_apart(500, 60.0)  # minutes of work
    assert time.monotonic() - started < 30
