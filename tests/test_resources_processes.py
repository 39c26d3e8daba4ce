"""Three processes share 30 resources; one is killed; one joins (the issue's acceptance check)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "instance_manager.py")


class Proc:
    def __init__(self, port: int, weight: int, events: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
        self.weight = weight
        self.owned: set[str] = set()
        self.popen = subprocess.Popen(
            [sys.executable, EXAMPLE, "--port", str(port), "--weight", str(weight), "--json", "--duration", "60"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.thread.start()

    def _read(self, events: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            events.put((self.weight, json.loads(line)))


def pump(procs: dict[int, Proc], events: queue.Queue[tuple[int, dict[str, Any]]], until: Any, timeout: float) -> float:
    start = time.monotonic()
    while not until():
        remaining = timeout - (time.monotonic() - start)
        if remaining <= 0:
            raise AssertionError(f"timed out; owned: { {w: len(p.owned) for w, p in procs.items()} }")
        try:
            weight, event = events.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if event["event"] == "owned" and weight in procs:
            procs[weight].owned = set(event["owned"])
    return time.monotonic() - start


@pytest.mark.slow
def test_three_processes_kill_one_then_join(port: int) -> None:
    events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    procs = {w: Proc(port, w, events) for w in (1, 2, 3)}
    try:
        def split(counts: list[int]) -> bool:
            owned = [p.owned for p in procs.values()]
            every = set().union(*owned)
            return sorted(len(o) for o in owned) == counts and len(every) == 30 and sum(map(len, owned)) == 30

        pump(procs, events, lambda: split([10, 10, 10]), 15)
        victim = procs.pop(3)
        victim.popen.send_signal(signal.SIGKILL)
        took = pump(procs, events, lambda: split([15, 15]), 8)
        assert took < 8
        before = {w: set(p.owned) for w, p in procs.items()}
        procs[4] = Proc(port, 4, events)
        pump(procs, events, lambda: split([10, 10, 10]), 10)
        moved_off = sum(len(before[w] - procs[w].owned) for w in before)
        assert moved_off <= 11
    finally:
        for p in [*procs.values()]:
            p.popen.kill()
            p.popen.wait()
