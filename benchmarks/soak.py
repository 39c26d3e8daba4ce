"""Soak: 20 nodes for 30 minutes, one restarted every 10 s; a long-lived node's resources stay flat.

Twenty processes (``benchmarks/soak_node.py``) on loopback broadcast (127.255.255.255, one
free port shared with ``SO_REUSEADDR``), each an ordinary application: a
``ServiceDiscovery`` with an advertisement, a setup hook for the other role's service, a
``ResourceManager`` sharing 40 resources with health checks, and a channel.  Timings:
hello 0.5 s, node and master timeout :data:`NODE_TIMEOUT` (6 s: short enough that a
SIGKILLed node leaves the table well within the 10 s cadence, long enough that a
2-core machine shared with other work does not miss 12 hellos in a row).

* The **sink** lives the whole run: it is started first, so it is the master (older
  process wins) and computes every resource assignment; it needs the workers' service
  (a setup hook per worker instance), receives every worker's message (one a second each)
  and reports, every ``sample`` seconds, its own resident memory, open file descriptors
  (``/proc/self/fd``), threads (``threading.active_count()``) and asyncio tasks on the
  discovery's loop, plus each ``added`` / ``removed`` event with the node's id.
* The 19 **workers** are restarted round robin, one every :data:`RESTART_EVERY` seconds,
  alternately by SIGTERM (the facade's goodbye, then the process dies of the signal) and
  by SIGKILL; the new process (a new instance id) starts at once.  Each slot thus
  restarts every 190 s, and every second restart of a slot is a crash.

A **false removal** is a ``removed`` event of the sink for an instance whose process had
not been asked to stop at that time (ids are per instance, so every id maps to one
process; times are ``time.monotonic()``, one clock for every process of the machine).
Removing a SIGKILLed or SIGTERMed instance is legitimate.  Also checked: every worker
instance that lived at least :data:`NODE_TIMEOUT` was added by the sink, and every one
stopped at least :data:`NODE_TIMEOUT` + :data:`REMOVAL_MARGIN` before the end was
removed (a deaf sink would have no false removals at all); no worker process exited unasked.

**Slopes**: each metric's samples after the warm-up are cut into equal windows of about
one restart cycle (at least 4), and a least-squares line is fitted through the windows'
medians; the figure is its slope in percent of the metric's mean per 10 minutes (for a
mean under one, of one: the asyncio task count is usually 0, the engine runs on callbacks
and timers).  Medians, because the integer metrics move with the churn: hook threads end
after 30 s idle and start again for the next burst, so a thread count of 6 reads 5 for a
few samples; fitted through every sample, one such dip early in a 5-minute run reads as
+9 % per 10 minutes.  A leak moves every later window's median; a burst does not (the
slope through every sample is in the details too).  The warm-up is one full restart cycle
(19 x 10 s = 190 s; a third of the run in shorter forms): until every slot has restarted
once the process is still reaching its working set, not leaking: hook and health-check
threads grow to the churn's concurrency, the allocator's arenas, the per-peer records and
the replay state see the churn pattern for the first time.

    .venv/bin/python -m benchmarks.soak [--quick]          # 30 min; --quick: 2 min
    PYDISCOVER_SOAK_MINUTES=5 .venv/bin/python -m benchmarks.soak

Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import REPO, Figure, cli, python_env
from testbed.ports import free_udp_port

NAME = "soak"
NODES = 20
RESTART_EVERY = 10.0
HELLO_INTERVAL = 0.5
NODE_TIMEOUT = 6.0
#: A stopped instance must have left the sink's table by stop + NODE_TIMEOUT + this.
REMOVAL_MARGIN = 4.0
FULL_MINUTES = 30.0
QUICK_MINUTES = 2.0
#: Overrides the run's length in minutes (both forms), e.g. 5 to try the full form quickly.
MINUTES_ENV = "PYDISCOVER_SOAK_MINUTES"
#: One full round of restarts: every worker slot once.
CYCLE = (NODES - 1) * RESTART_EVERY
SLOPE_GOAL = 1.0
#: The fewest windows the slope is fitted through (shorter runs have shorter windows).
MIN_WINDOWS = 4
METRICS = ("rss", "fds", "threads", "tasks")
LOOPBACK_BROADCAST = "127.255.255.255"
#: Bounds on every wait (a loaded 2-core machine starts 20 Pythons slowly).
START_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
#: Worker processes that may die unasked (each replaced at once) before the run gives up.
MAX_DEATHS = 20
#: Every node exits by itself this long after the planned end, whatever the parent does.
LIFETIME_MARGIN = 300.0


@dataclass(eq=False)
class Instance:
    """One process of one slot (slot -1: the sink)."""

    slot: int
    generation: int
    popen: subprocess.Popen[str]
    spawned_at: float
    id: str = ""
    started_at: float = 0.0
    stop_at: float | None = None
    stop_kind: str | None = None
    #: SIGTERM did not end it within STOP_TIMEOUT (then it was SIGKILLed).
    stop_timed_out: bool = False
    #: Found dead without having been asked to stop (time it was noticed).
    died_unasked_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


def slope_percent(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares slope of ``(t, value)`` -> (% of the mean per 10 min, units per 10 min, mean)."""
    if len(points) < 2:
        raise ValueError(f"too few points after the warm-up to fit a slope ({len(points)})")
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - mt) ** 2 for t in ts)
    per_s = sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0
    per_10min = per_s * 600.0
    return per_10min / max(abs(mv), 1.0) * 100.0, per_10min, mv


def window_medians(points: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """``points`` cut into equal windows of about one restart cycle (at least :data:`MIN_WINDOWS`):
    each window's middle time and median value.  A thread that lives for a burst, or one idle
    thread ended, moves a few samples, not a window's median; a leak moves every later window."""
    count = max(MIN_WINDOWS, int((end - start) // CYCLE))
    width = (end - start) / count
    out: list[tuple[float, float]] = []
    for i in range(count):
        lo, hi = start + i * width, start + (i + 1) * width
        inside = [v for t, v in points if lo <= t < hi or (i == count - 1 and t == hi)]
        if inside:
            out.append(((lo + hi) / 2, float(statistics.median(inside))))
    return out


class Cluster:
    """The sink and the workers' current instances; :meth:`close` ends every process it started."""

    def __init__(self, port: int, minutes: float, sample_every: float, logdir: Path) -> None:
        self.port = port
        self.sample_every = sample_every
        self.lifetime = minutes * 60 + LIFETIME_MARGIN
        self.logdir = logdir
        self.instances: list[Instance] = []
        self.current: dict[int, Instance] = {}
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.sink: Instance | None = None
        self.sink_closed = False

    # ------------------------------------------------------------ processes
    def spawn(self, slot: int) -> Instance:
        role = "sink" if slot < 0 else "worker"
        argv = [sys.executable, "-m", "benchmarks.soak_node", "--role", role, "--port", str(self.port),
                "--broadcast", LOOPBACK_BROADCAST, "--hello-interval", str(HELLO_INTERVAL),
                "--node-timeout", str(NODE_TIMEOUT), "--sample", str(self.sample_every),
                "--lifetime", str(self.lifetime)]
        generation = sum(1 for i in self.instances if i.slot == slot)
        with open(self.logdir / f"{role}{max(slot, 0):02d}.log", "a") as log:  # the child keeps its own copy
            log.write(f"--- generation {generation}\n")
            log.flush()
            popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=python_env(), cwd=REPO, start_new_session=True)
        inst = Instance(slot, generation, popen, time.monotonic())
        self.instances.append(inst)
        if slot >= 0:
            self.current[slot] = inst
        return inst

    def read_id(self, inst: Instance, timeout: float = START_TIMEOUT) -> None:
        """The instance's first line (``{"id", "pid", "t"}``); a worker's stdout is closed after it."""
        stdout = inst.popen.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, inst.spawned_at + timeout - time.monotonic())):
                raise TimeoutError(f"soak node (slot {inst.slot}) did not start within {timeout:g} s{self.tail(inst)}")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"soak node (slot {inst.slot}) exited ({inst.popen.wait()}) at start{self.tail(inst)}")
        first = json.loads(line)
        inst.id, inst.started_at = str(first["id"]), float(first["t"])
        if inst.slot >= 0:
            stdout.close()  # a worker prints nothing else

    def start_sink(self) -> Instance:
        sink = self.sink = self.spawn(-1)
        self.read_id(sink)
        threading.Thread(target=self._read_sink, args=(sink,), name="soak-sink-reader", daemon=True).start()
        return sink

    def _read_sink(self, sink: Instance) -> None:
        assert sink.popen.stdout is not None
        try:
            for line in sink.popen.stdout:
                with contextlib.suppress(ValueError):
                    self.lines.put(json.loads(line))
        except (OSError, ValueError):  # closed under us at the end
            pass
        self.lines.put(None)

    def stop(self, inst: Instance, kind: str) -> None:
        """SIGTERM (wait up to STOP_TIMEOUT, then SIGKILL) or SIGKILL one worker instance."""
        inst.stop_at, inst.stop_kind = time.monotonic(), kind
        if inst.popen.poll() is None:
            if kind == "term":
                inst.popen.send_signal(signal.SIGTERM)
                try:
                    inst.popen.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    inst.stop_timed_out = True
            kill_group(inst.popen)
        close_pipes(inst.popen)

    def restart(self, slot: int, kind: str) -> Instance:
        self.stop(self.current[slot], kind)
        fresh = self.spawn(slot)
        self.read_id(fresh)
        return fresh

    def check_children(self, now: float) -> None:
        """A worker found dead unasked is recorded and replaced; a dead sink ends the run."""
        assert self.sink is not None
        if self.sink.popen.poll() is not None and not self.sink_closed:
            raise RuntimeError(f"the long-lived node exited ({self.sink.popen.returncode}){self.tail(self.sink)}")
        for slot, inst in list(self.current.items()):
            if inst.stop_at is None and inst.popen.poll() is not None:
                if sum(1 for i in self.instances if i.died_unasked_at is not None) >= MAX_DEATHS:
                    raise RuntimeError(f"{MAX_DEATHS} worker processes died unasked; the last:{self.tail(inst)}")
                inst.died_unasked_at = now
                inst.stop_at, inst.stop_kind = now, "died"
                close_pipes(inst.popen)
                self.read_id(self.spawn(slot))

    def pump(self, until: float) -> None:
        """Take the sink's lines until ``until`` (monotonic), checking the children twice a second."""
        while True:
            now = time.monotonic()
            self.check_children(now)
            if now >= until:
                return
            try:
                line = self.lines.get(timeout=min(0.5, until - now))
            except queue.Empty:
                continue
            if line is None:
                continue  # EOF: check_children reports the exit
            (self.samples if line.get("sample") else self.events).append(line)

    def wait_converged(self, ids: set[str], timeout: float) -> None:
        """Until the sink has reported ``added`` for every id in ``ids``."""
        deadline = time.monotonic() + timeout
        while not ids <= {e.get("id") for e in self.events if e.get("event") == "added"}:
            if time.monotonic() > deadline:
                seen = {e.get("id") for e in self.events if e.get("event") == "added"}
                raise TimeoutError(f"the long-lived node saw {len(ids & seen)} of {len(ids)} workers "
                                   f"after {timeout:g} s{self.tail(self.sink)}")
            self.pump(min(deadline, time.monotonic() + 0.5))

    def tail(self, inst: Instance | None, chars: int = 2000) -> str:
        if inst is None:
            return ""
        name = f"{'sink' if inst.slot < 0 else 'worker'}{max(inst.slot, 0):02d}.log"
        try:
            text = (self.logdir / name).read_text()
        except OSError:
            return ""
        return f"\n{name}:\n{text[-chars:]}" if text.strip() else ""

    def close(self) -> None:
        """The sink first (its stdin closes: it stops), then every worker (graceful, then SIGKILL)."""
        live = [i for i in self.instances if i.popen.poll() is None]
        if self.sink is not None:
            self.sink_closed = True
        for inst in live:  # stdin closed: each node stops itself (goodbye)
            with contextlib.suppress(OSError):
                if inst.popen.stdin is not None:
                    inst.popen.stdin.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for inst in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.popen.wait(max(0.1, deadline - time.monotonic()))
        for inst in self.instances:  # whatever is left, and each one's process group
            kill_group(inst.popen)
            close_pipes(inst.popen)


def kill_group(popen: subprocess.Popen[str]) -> None:
    """SIGKILL the child's process group (it leads its own session) and reap the child."""
    if popen.returncode is None:  # not reaped yet, so its pid (the group's id) is still its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(STOP_TIMEOUT)


def close_pipes(popen: subprocess.Popen[str]) -> None:
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def minutes_for(quick: bool) -> float:
    raw = os.environ.get(MINUTES_ENV, "").strip()
    if raw:
        minutes = float(raw)
        if not 0.5 <= minutes <= 24 * 60:
            raise ValueError(f"{MINUTES_ENV}={raw!r}: give minutes between 0.5 and 1440")
        return minutes
    return QUICK_MINUTES if quick else FULL_MINUTES


def measure(minutes: float, sample_every: float | None = None, warmup: float | None = None) -> dict[str, Any]:
    """One soak of ``minutes``; the sink samples itself every ``sample_every`` s (2 s up to 10 min, else 5 s)."""
    seconds = minutes * 60.0
    sample_every = sample_every or (2.0 if minutes <= 10 else 5.0)
    warmup = min(CYCLE, seconds / 3) if warmup is None else warmup
    with tempfile.TemporaryDirectory(prefix="pydiscover-soak-") as logdir:
        cluster = Cluster(free_udp_port(), minutes, sample_every, Path(logdir))
        try:
            wall = time.monotonic()
            sink = cluster.start_sink()
            for slot in range(NODES - 1):
                cluster.spawn(slot)
            for slot in range(NODES - 1):
                cluster.read_id(cluster.current[slot])
            cluster.wait_converged({cluster.current[s].id for s in range(NODES - 1)}, CONVERGE_TIMEOUT)
            startup = time.monotonic() - wall
            t0 = time.monotonic()
            t_end = t0 + seconds
            restarts = 0
            for k in range(1, int(seconds // RESTART_EVERY) + 2):  # bounded: one restart per period
                due = t0 + k * RESTART_EVERY
                cluster.pump(min(due, t_end))
                if time.monotonic() >= t_end:
                    break
                cluster.restart((k - 1) % (NODES - 1), "term" if k % 2 else "kill")
                restarts += 1
            cluster.pump(t_end)
            # The last samples and events already written (the sink writes them as they happen).
            cluster.pump(time.monotonic() + min(1.0, sample_every))
            result = analyse(cluster, sink, t0, t_end, warmup, restarts)
            result.update(minutes=minutes, sample_every=sample_every, startup_s=startup)
            return result
        finally:
            cluster.close()


def analyse(cluster: Cluster, sink: Instance, t0: float, t_end: float, warmup: float,
            restarts: int) -> dict[str, Any]:
    workers = [i for i in cluster.instances if i.slot >= 0 and i.id]
    by_id = {i.id: i for i in workers}
    events = [e for e in cluster.events if e.get("t", t_end + 1) <= t_end]
    added: dict[str, float] = {}
    removed: dict[str, float] = {}
    false_removals: list[dict[str, Any]] = []
    resurrected: list[str] = []
    latency: dict[str, list[float]] = {"term": [], "kill": []}
    for e in events:
        node_id, t = e.get("id"), float(e["t"])
        if e["event"] == "added" and isinstance(node_id, str):
            if node_id in removed:
                resurrected.append(node_id)
            added.setdefault(node_id, t)
        elif e["event"] == "removed" and isinstance(node_id, str):
            removed.setdefault(node_id, t)
            inst = by_id.get(node_id)
            if inst is None or inst.stop_at is None or (t < inst.stop_at and inst.died_unasked_at is None):
                false_removals.append({"id": node_id, "at_s": round(t - t0, 3),
                                       "slot": None if inst is None else inst.slot,
                                       "alive_since_s": None if inst is None else round(inst.started_at - t0, 3)})
            elif inst.stop_kind in latency:
                latency[inst.stop_kind].append(t - inst.stop_at)
    never_seen = [i.id for i in workers
                  if i.id not in added and (i.stop_at or t_end) - i.started_at >= NODE_TIMEOUT]
    never_removed = [i.id for i in workers
                     if i.stop_at is not None and i.stop_at <= t_end - NODE_TIMEOUT - REMOVAL_MARGIN
                     and i.id not in removed]
    died = [{"slot": i.slot, "generation": i.generation, "returncode": i.popen.returncode,
             "noticed_at_s": round((i.died_unasked_at or t0) - t0, 3)} for i in workers if i.died_unasked_at]
    samples = [s for s in cluster.samples if t0 <= s["t"] <= t_end]
    steady = [s for s in samples if s["t"] >= t0 + warmup]
    slopes: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        points = [(s["t"] - t0, float(s[metric])) for s in steady]
        medians = window_medians(points, warmup, t_end - t0)
        pct, per_10min, mean = slope_percent(medians)
        raw_pct, _, _ = slope_percent(points)
        values = [s[metric] for s in steady]
        head, tail = values[: max(3, len(values) // 10)], values[-max(3, len(values) // 10):]
        slopes[metric] = {
            "percent_per_10min": pct, "units_per_10min": per_10min, "mean": mean,
            "percent_per_10min_every_sample": raw_pct, "window_medians": [m for _, m in medians],
            "min": min(values), "max": max(values),
            "first": statistics.median(head), "last": statistics.median(tail),
        }
    masters = [e for e in events if e["event"] in ("promotion", "demotion")]

    def summary(values: list[float]) -> dict[str, float] | None:
        return None if not values else {"median_s": statistics.median(values), "max_s": max(values)}

    return {
        "nodes": NODES, "restart_every_s": RESTART_EVERY, "hello_interval_s": HELLO_INTERVAL,
        "node_timeout_s": NODE_TIMEOUT, "warmup_s": warmup, "restarts": restarts,
        "instances": len(workers), "sink": sink.id,
        "false_removals": false_removals, "removals": len(removed),
        "never_seen": never_seen, "never_removed": never_removed, "resurrected": resurrected,
        "died_unasked": died, "stop_timed_out": sum(1 for i in workers if i.stop_timed_out),
        "removal_after_sigterm": summary(latency["term"]), "removal_after_sigkill": summary(latency["kill"]),
        "sink_master_changes": [{"event": e["event"], "at_s": round(e["t"] - t0, 3)} for e in masters],
        "sink_peers": {"min": min((s["nodes"] for s in steady), default=None),
                       "max": max((s["nodes"] for s in steady), default=None)},
        "messages_received": samples[-1]["messages"] - samples[0]["messages"] if samples else 0,
        "setup_hooks_run": samples[-1]["setups"] if samples else 0,
        "slopes": slopes,
        "samples": [{k: (round(v - t0, 3) if k == "t" else v) for k, v in s.items() if k != "sample"}
                    for s in samples],
    }


def run(quick: bool) -> list[Figure]:
    minutes = minutes_for(quick)
    r = measure(minutes)
    where = f"{NODES} nodes, {minutes:g} min, a restart every {RESTART_EVERY:g} s"
    brief = {k: v for k, v in r.items() if k != "samples"}

    def fig(name: str, unit: str, value: float, goal: str, met: bool, detail: dict[str, Any]) -> Figure:
        return Figure(NAME, f"{name} ({where})", unit, value, None, goal=goal, met=met, detail=detail)

    figures = [fig("false removals", "removals", len(r["false_removals"]), "0", not r["false_removals"], r)]
    names = {"rss": "resident memory", "fds": "open file descriptors", "threads": "threads", "tasks": "asyncio tasks"}
    for metric, label in names.items():
        pct = r["slopes"][metric]["percent_per_10min"]
        figures.append(fig(f"{label} slope after {r['warmup_s']:g} s warm-up", "% per 10 min", pct,
                           f"< {SLOPE_GOAL:g} %", pct < SLOPE_GOAL, brief))
    missed = len(r["never_seen"]) + len(r["never_removed"])
    figures.append(fig("joins or leaves the long-lived node missed", "instances", missed, "0", missed == 0, brief))
    died = len(r["died_unasked"])
    figures.append(fig("node processes that died unasked", "processes", died, "0", died == 0, brief))
    return figures


if __name__ == "__main__":
    cli(run, __doc__)
