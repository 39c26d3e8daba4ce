"""The demo runs by itself on loopback and shows discovery, election and failover."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import free_udp_port


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pydiscover.demo", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_demo_shows_election_and_failover() -> None:
    result = run_demo("--port", str(free_udp_port()), "--nodes", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "every node sees every other node" in out
    assert "master is node-3" in out
    assert re.search(r"node-2 is master [\d.]+ ms after the stop", out)
    assert out.count("chat from node-1") == 2


def test_demo_over_loopback_multicast() -> None:
    result = run_demo("--port", str(free_udp_port()), "--nodes", "2", "--multicast", "239.255.81.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "master is node-2" in result.stdout


def test_demo_help_and_refuses_non_loopback() -> None:
    assert "--multicast" in run_demo("--help").stdout
    refused = run_demo("--broadcast", "255.255.255.255")
    assert refused.returncode == 2 and "loopback" in refused.stderr

