"""The task balancer's rules as a state machine: inputs with ``now`` in, actions out.

Every rule of :class:`~pydiscover.balancer.tasks.TaskBalancer` lives here, so the
runtime (a :class:`~pydiscover.balancer.driver.Driver` on a discovery's loop) and the
fake-clock simulation (``testbed.balancer_sim``) run the same protocol:

* workers announce ``{"type": "worker"}`` at once, a few jittered ms after a node joins,
  and every ``hello_interval``; every node keeps the table, so any master knows them;
* the master picks a live worker by strategy and sends ``{"type": "task", "id", "to",
  "from", "attempt", "payload"}``; the worker answers ``{"type": "result", ..., "ok",
  "value" | "error"}`` (``"retry": true`` when it has no handler); ``{"type": "bye"}``
  says a worker stopped;
* delivery is at least once: an attempt whose worker leaves or stays silent for
  ``timeout`` is sent again, preferring untried workers, up to ``attempts`` times, then
  settles with ``TimeoutError``; a task with no live worker waits up to ``timeout``;
* a worker runs each (submitter, id, attempt) once and at most ``concurrency`` at once
  (the rest queue here, in arrival order); a handler that raised is a failure, not retried;
* with a coordinator, a task carries its master's fencing token (``"token"``) and a worker
  refuses one older than the newest it has seen (a deposed master's), with ``"retry"``;
* under load, what one turn of the loop sends to one node is packed (:meth:`TaskMachine.pack`)
  into ``{"type": "tasks", "to", "from", ["token",] "tasks": [[id, attempt, payload], ...]}``
  and ``{"type": "results", "to", "from", "results": [[id, attempt, ok, value | error
  (, 1 to retry)], ...]}``: only to workers that announced ``"batch": 1`` and to masters
  that sent a batch, so older nodes keep getting one message per task.

A task ends with exactly one :class:`~.machine.Settle`; each assignment is announced with
:class:`~.machine.Assigned` so the submitter's future can show its attempts.  Pure: no
clock, no I/O, randomness from the ``rng`` given.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import DiscoveryError, PacketTooLarge
from .assignment import rendezvous
from .machine import Action, Assigned, Cancel, Cancelled, Cluster, Machine, Run, Send, Settle, check_fits

log = logging.getLogger("pydiscover.balancer.tasks")  # the runtime's name: log filters keep working

#: The ways the master picks a worker (see :class:`~pydiscover.balancer.tasks.TaskBalancer`).
STRATEGIES = ("round_robin", "random", "least_loaded", "hash")
#: How many (submitter, task, attempt) keys a worker remembers to refuse duplicates.
SEEN_TASKS = 4096
#: Masters a worker remembers as reading packed results (more than a cluster has at once).
MAX_BATCH_MASTERS = 64
#: Remote error texts are cut to this many characters so a failure always fits a datagram.
MAX_ERROR_TEXT = 400
#: The counters of :attr:`TaskMachine.stats`, in their documented order.
STAT_KEYS = (
    "submitted",  # accepted by submit()
    "completed",  # settled with a value
    "failed",  # settled with TaskError (the handler raised, or its result could not be sent)
    "timed_out",  # settled with TimeoutError (attempts used up, or no worker within timeout)
    "cancelled",  # the caller cancelled the future
    "abandoned",  # close() or a discovery stop while pending
    "reassigned",  # assignments after the first (a worker left or was silent)
    "dropped_results",  # results nobody waits for: late duplicates, unknown ids
    "executed",  # tasks this node ran as a worker
    "duplicate_tasks",  # the same task id and attempt received again (not run twice)
    "dropped_messages",  # malformed channel messages
    "stale_master",  # tasks refused: their master's fencing token is older than one seen (coordinator)
)


class TaskError(DiscoveryError):
    """The worker's handler raised (or its result could not be sent back).

    ``error`` is the remote text (``"ValueError: bad input"``), ``worker`` the instance
    id of the node that ran the task, ``task_id`` the task.
    """

    def __init__(self, task_id: int, worker: str, error: str) -> None:
        self.task_id = task_id
        self.worker = worker
        self.error = error
        super().__init__(f"task {task_id} failed on worker {worker}: {error}")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a handler taking a second argument receives about the task it runs."""

    #: The task id (unique per submitting node).
    id: int
    #: 1 for the first assignment, 2 for the first reassignment, ...
    attempt: int
    #: Instance id of the node that submitted the task (its result goes there).
    master: str


@dataclass(eq=False, slots=True)
class _Task:
    """One submitted task, owned by the node that submitted it."""

    id: int
    payload: Any
    key: bytes | None
    timeout: float
    max_attempts: int
    attempt: int = 0
    #: The worker of the current attempt; ``None`` while waiting for a live worker.
    worker: str | None = None
    tried: set[str] = field(default_factory=set)
    #: The generation of the task's one live timer (heap entries of another are stale).
    timer: int = 0


def describe(exc: BaseException) -> str:
    """``"ValueError: bad input"``, cut to :data:`MAX_ERROR_TEXT` so a failure always fits."""
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described if len(described) <= MAX_ERROR_TEXT else described[: MAX_ERROR_TEXT - 3] + "..."


class TaskMachine(Machine):
    """One node's task balancer (master and worker sides); see the module docstring.

    ``strategy`` is one of :data:`STRATEGIES`.  Inputs beyond :class:`~.machine.Machine`'s:
    :meth:`set_worker`, :meth:`submit`, :meth:`forget`.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        channel: str = "tasks",
        strategy: str = "round_robin",
        rng: random.Random | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")
        self.cluster = cluster
        self.channel = channel
        self.strategy = strategy
        self.rng = rng if rng is not None else random.Random()
        self.me = cluster.id
        self.closed = False
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        # Worker side.
        self._concurrency = 0  # 0: not a worker
        self._calls = itertools.count(1)
        self._running: dict[int, tuple[str, int, int]] = {}  # call -> (submitter, task id, attempt)
        self._queue: deque[tuple[str, int, int, Any]] = deque()  # accepted, waiting for a free slot
        self._seen: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._newest_token = -1  # the newest master fencing token a task carried (coordinator)
        self._closing: frozenset[int] = frozenset()
        # Master side (every node keeps the worker table: any of them may become master).
        self._presence: dict[str, float] = {}
        self._batch_workers: set[str] = set()  # announced "batch": 1 (a subset of _presence's keys)
        #: Nodes that sent us a batch of tasks (they read a batch of results), most recent last.
        self._batch_masters: OrderedDict[str, None] = OrderedDict()
        self._tasks: dict[int, _Task] = {}
        self._waiting: dict[int, None] = {}  # tasks with no live worker, oldest first
        #: Tasks in flight per worker, from this master (``least_loaded`` reads it).
        self.inflight: dict[str, int] = {}
        self._last_pick: dict[str, int] = {}
        self._picks = itertools.count()
        self._rr_last: str | None = None
        self._ids = itertools.count(1)
        # Deadlines: the announce round, the jittered announce after a join, the tasks' timers.
        self._round_at: float | None = None
        self._announce_at: float | None = None
        self._timers: list[tuple[float, int, int]] = []  # heap of (when, generation, task id)
        self._generations = itertools.count(1)

    # ---------------------------------------------------------------- views
    @property
    def is_worker(self) -> bool:
        return self._concurrency > 0

    @property
    def pending(self) -> int:
        """Tasks submitted here that are not settled yet."""
        return len(self._tasks)

    @property
    def running(self) -> int:
        """Handler calls in flight on this node (queued ones not counted)."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Tasks accepted by this worker and waiting for a free slot."""
        return len(self._queue)

    def live_workers(self, now: float) -> list[str]:
        """Instance ids of the live workers, sorted (this node's own included if it is one)."""
        if self.closed or not self.cluster.running:
            return []
        fresh = now - self.cluster.options.node_timeout
        has_node = self.cluster.has_node
        live = [w for w, seen in self._presence.items() if seen >= fresh and has_node(w)]
        if self._concurrency:
            live.append(self.me)
        live.sort()
        return live

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        best = self._round_at
        if self._announce_at is not None and (best is None or self._announce_at < best):
            best = self._announce_at
        timers = self._timers
        while timers:  # stale entries (settled tasks, replaced timers) leave as they surface
            when, generation, task_id = timers[0]
            task = self._tasks.get(task_id)
            if task is None or task.timer != generation:
                heapq.heappop(timers)
                continue
            if best is None or when < best:
                best = when
            break
        return best

    # --------------------------------------------------------------- inputs
    def tick(self, now: float) -> list[Action]:
        if self.closed:
            return []
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, generation, task_id = heapq.heappop(timers)
            task = self._tasks.get(task_id)
            if task is None or task.timer != generation:
                continue
            task.timer = 0
            if task_id in self._waiting:
                after = f" after {task.attempt} attempt(s)" if task.attempt else ""
                error = TimeoutError(
                    f"task {task_id}: no live worker on channel {self.channel!r} for {task.timeout:g}s{after}"
                )
                actions += self._settle(task, error=error, outcome="timed_out")
            elif task.worker is not None:
                actions += self._retry(now, task, f"no result from worker {task.worker} within {task.timeout:g}s")
        if self._announce_at is not None and self._announce_at <= now:
            actions += self._announce()
        if self._round_at is not None and self._round_at <= now:
            self._round_at = now + self.cluster.options.hello_interval
            if self.cluster.running:
                if self._concurrency:
                    actions += self._announce()
                stale = now - self.cluster.options.node_timeout
                for worker, seen in list(self._presence.items()):
                    if seen < stale:
                        del self._presence[worker]
                        self._batch_workers.discard(worker)
                        self._last_pick.pop(worker, None)
                actions += self._pump(now)
        return actions

    def started(self, now: float) -> list[Action]:
        if self.closed:
            return []
        actions = self._announce() if self._concurrency else []
        if self._round_at is None:
            self._round_at = now + self.cluster.options.hello_interval
        return actions

    def stopped(self, now: float) -> list[Action]:
        """Pending tasks fail (``abandoned``); tasks running here are dropped (their masters reassign them)."""
        self._round_at = self._announce_at = None
        self._presence.clear()
        self._batch_workers.clear()
        self._last_pick.clear()
        self._batch_masters.clear()
        actions = self._abandon("discovery stopped")
        actions += self._drop_calls()
        return actions

    def node_added(self, now: float, node_id: str) -> list[Action]:
        if self.closed:
            return []
        if self._concurrency and self._announce_at is None:
            # A newcomer (maybe the next master) learns us in milliseconds; one announce
            # for a burst of joins, jittered so a big join causes no storm.
            self._announce_at = now + self.rng.uniform(0, min(0.05, self.cluster.options.hello_interval / 4))
        return self._pump(now)

    def node_removed(self, now: float, node_id: str) -> list[Action]:
        self._presence.pop(node_id, None)
        self._batch_workers.discard(node_id)
        self._last_pick.pop(node_id, None)
        self._batch_masters.pop(node_id, None)
        return self._worker_gone(now, node_id, "left the cluster")

    def message(self, now: float, sender: str, data: Any) -> list[Action]:
        if self.closed or sender == self.me:  # our own only arrive with ignore_instance=False
            return []
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "worker":
            self._presence[sender] = now
            if data.get("batch") == 1:
                self._batch_workers.add(sender)
            else:
                self._batch_workers.discard(sender)
            return self._pump(now) if self._waiting else []
        if kind == "bye":
            self._presence.pop(sender, None)
            self._batch_workers.discard(sender)
            self._last_pick.pop(sender, None)
            return self._worker_gone(now, sender, "stopped working")
        if kind in ("tasks", "results"):
            return self._unpack(now, sender, kind, data)
        if kind not in ("task", "result"):
            self.stats["dropped_messages"] += 1
            return []
        assert isinstance(data, dict)
        if data.get("to") != self.me:
            return []  # for another node (everyone hears everything)
        task_id, attempt = data.get("id"), data.get("attempt")
        if type(task_id) is not int or type(attempt) is not int or attempt < 1 or data.get("from") != sender:
            self.stats["dropped_messages"] += 1
            return []
        if kind == "task":
            if "payload" not in data:
                self.stats["dropped_messages"] += 1
                return []
            token = data.get("token")
            if type(token) is int:
                if token < self._newest_token:
                    self.stats["stale_master"] += 1
                    return self._reply(now, sender, task_id, attempt, ok=False,
                                       error=f"refused: master token {token} is older than {self._newest_token}",
                                       retry=True)
                self._newest_token = token
            return self._execute(now, sender, task_id, attempt, data["payload"])
        ok, error = data.get("ok"), data.get("error")
        if not isinstance(ok, bool) or (not ok and not isinstance(error, str)):
            self.stats["dropped_messages"] += 1
            return []
        return self._on_result(now, sender, data)

    def hook_done(self, now: float, call: int, value: Any, error: BaseException | None) -> list[Action]:
        job = self._running.pop(call, None)
        if job is None or self.closed:
            return []  # cancelled (close, stop): nobody waits for its answer
        submitter, task_id, attempt = job
        if isinstance(error, Cancelled):
            actions: list[Action] = []  # cancelled by someone else: silence, so the master reassigns it
        elif error is not None:
            log.debug("task %s from %s raised", task_id, submitter, exc_info=error)
            actions = self._reply(now, submitter, task_id, attempt, ok=False, error=describe(error))
        else:
            actions = self._reply(now, submitter, task_id, attempt, ok=True, value=value)
        return actions + self._fill()

    def close(self, now: float) -> list[Action]:
        """Say ``bye`` (the master reassigns our tasks now), abandon pending tasks, cancel our calls."""
        if self.closed:
            return []
        actions: list[Action] = []
        if self._concurrency and self.cluster.running:
            actions.append(Send({"type": "bye"}))
        self.closed = True
        self._concurrency = 0
        self._round_at = self._announce_at = None
        actions += self._abandon("TaskBalancer closed")
        self._closing = frozenset(self._running)
        actions += self._drop_calls()
        self._timers.clear()
        return actions

    def close_waits_for(self) -> frozenset[int]:
        """The handler calls cancelled by the close (the driver waits for those it can: coroutines)."""
        return self._closing

    # -------------------------------------------------- inputs of this machine
    def set_worker(self, now: float, concurrency: int) -> list[Action]:
        """This node runs tasks from now on, at most ``concurrency`` at once (the rest queue here)."""
        if self.closed:
            raise RuntimeError("TaskBalancer is closed")
        if concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        first = not self._concurrency
        self._concurrency = concurrency
        actions = self._fill()
        if first:
            actions += self._announce()
            actions += self._pump(now)  # tasks of our own waiting for a worker can run here now
        return actions

    def submit(
        self, now: float, payload: Any, timeout: float, attempts: int, key: bytes | None, *,
        task_id: int | None = None, checked: bool = False,
    ) -> tuple[int, list[Action]]:
        """A new task from this node (the master); its id and the actions assigning it.

        Raises ``RuntimeError`` when closed or not the master, :class:`PacketTooLarge` or
        ``TypeError`` when the payload cannot travel.  The payload is kept as the network
        would deliver it (through JSON), so a local worker sees what a remote one would.
        ``task_id`` is a new id from the caller (default: the next of the machine's own);
        ``checked`` says the payload is what :meth:`check_payload` returned for it already.
        """
        self.check_submitter()
        if task_id is None:
            task_id = next(self._ids)
        if not checked:
            payload = self.check_payload(task_id, payload, attempts)
        task = _Task(task_id, payload, key, timeout, attempts)
        self._tasks[task_id] = task
        self.stats["submitted"] += 1
        return task_id, self._dispatch(now, task)

    def check_submitter(self) -> None:
        """Raise ``RuntimeError`` unless this node may submit now (open, and the master)."""
        if self.closed:
            raise RuntimeError("TaskBalancer is closed")
        if not self.cluster.is_master:
            raise RuntimeError(
                "tasks are assigned by the master: this node is not the master "
                "(submit from the master, e.g. once is_master is true or after the 'promotion' event)"
            )

    def check_payload(self, task_id: int, payload: Any, attempts: int) -> Any:
        """``payload`` as a worker will receive it (through JSON), if a task message can carry it.

        Reads only the datagram budget, so a caller may check on its own thread before
        handing the task to the loop.  Raises :class:`PacketTooLarge` or ``TypeError``.
        """
        probe = {"type": "task", "id": task_id, "to": self.me, "from": self.me, "attempt": attempts,
                 "payload": payload}  # the largest attempt number it will carry
        if self.cluster.fencing_token is not None:
            probe["token"] = 2**53  # room for any token
        raw = self._encode(probe, f"task {task_id} payload (in its message)")
        return orjson.loads(raw)["payload"]

    def forget(self, now: float, task_id: int) -> list[Action]:
        """The caller cancelled the task's future: stop tracking it (a late result is dropped)."""
        task = self._tasks.pop(task_id, None)
        if task is not None:
            self._release(task)
            self._waiting.pop(task_id, None)
            self.stats["cancelled"] += 1
        return []

    # ------------------------------------------------------------- packing
    def packable(self, data: Any) -> bool:
        """A task for a worker that takes batches, or a result for a master that sends them."""
        if type(data) is not dict:
            return False
        kind = data.get("type")
        if kind == "task":
            return data["to"] in self._batch_workers
        return kind == "result" and data["to"] in self._batch_masters

    def pack(self, messages: list[Any]) -> list[Any]:
        """The tasks (or results) for one node as ``"tasks"`` (``"results"``) messages, each within the budget.

        Grouped by destination in the order of each one's first message (a message only
        ever leaves earlier than it would have); a group of one stays as it was.
        """
        groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
        for message in messages:
            groups.setdefault((message["type"], message["to"], message.get("token")), []).append(message)
        budget = self.cluster.max_payload(self.channel)
        packed: list[Any] = []
        for (kind, to, token), group in groups.items():
            if len(group) == 1:
                packed.append(group[0])
                continue
            header: dict[str, Any] = {"type": kind + "s", "to": to, "from": self.me}
            if token is not None:
                header["token"] = token
            if kind == "task":
                items = [[m["id"], m["attempt"], m["payload"]] for m in group]
            else:
                items = [_result_item(m) for m in group]
            packed += _fill_datagrams(header, kind + "s", items, group, budget)
        return packed

    def _unpack(self, now: float, sender: str, kind: str, data: dict[str, Any]) -> list[Action]:
        """A batch, one message at a time through the same checks as a single one."""
        if data.get("to") != self.me:
            return []  # for another node
        items = data.get(kind)
        if data.get("from") != sender or not isinstance(items, list):
            self.stats["dropped_messages"] += 1
            return []
        token = data.get("token")
        actions: list[Action] = []
        if kind == "tasks":  # it reads a batch of results too (perhaps before its hello reached us)
            self._batch_masters[sender] = None
            self._batch_masters.move_to_end(sender)
            if len(self._batch_masters) > MAX_BATCH_MASTERS:
                self._batch_masters.popitem(last=False)
        for item in items:
            single = _unpacked(kind, sender, self.me, token, item)
            if single is None:
                self.stats["dropped_messages"] += 1
                continue
            actions += self.message(now, sender, single)
        return actions

    # ---------------------------------------------------------- the worker
    def _announce(self) -> list[Action]:
        self._announce_at = None
        return [Send({"type": "worker", "batch": 1})] if self.cluster.running else []

    def _execute(self, now: float, submitter: str, task_id: int, attempt: int, payload: Any) -> list[Action]:
        key = (submitter, task_id, attempt)
        if key in self._seen:
            self.stats["duplicate_tasks"] += 1
            return []
        self._seen[key] = None
        if len(self._seen) > SEEN_TASKS:
            self._seen.popitem(last=False)
        if not self._concurrency:
            return self._reply(now, submitter, task_id, attempt, ok=False, error="this node has no task handler",
                               retry=True)
        self.stats["executed"] += 1
        self._queue.append((submitter, task_id, attempt, payload))
        return self._fill()

    def _fill(self) -> list[Action]:
        """Start queued tasks while fewer than ``concurrency`` run."""
        actions: list[Action] = []
        while self._queue and len(self._running) < self._concurrency:
            submitter, task_id, attempt, payload = self._queue.popleft()
            call = next(self._calls)
            self._running[call] = (submitter, task_id, attempt)
            actions.append(Run(call, "handler", (payload, TaskInfo(task_id, attempt, submitter))))
        return actions

    def _drop_calls(self) -> list[Action]:
        actions: list[Action] = [Cancel(call) for call in self._running]
        self._running.clear()
        self._queue.clear()  # never given to the driver: nothing to cancel
        return actions

    def _reply(
        self,
        now: float,
        to: str,
        task_id: int,
        attempt: int,
        *,
        ok: bool,
        value: Any = None,
        error: str = "",
        retry: bool = False,
    ) -> list[Action]:
        message: dict[str, Any] = {"type": "result", "id": task_id, "to": to, "from": self.me, "attempt": attempt}
        if ok:
            message["ok"], message["value"] = True, value
        else:
            message["ok"], message["error"] = False, error
        if retry:
            message["retry"] = True
        try:
            raw = self._encode(message, f"result of task {task_id}")
        except PacketTooLarge as exc:
            problem = (
                f"result of task {task_id} encodes to {exc.size} bytes, over the {exc.budget}-byte datagram "
                f"budget; return less (e.g. a reference to where the data is)"
            )
        except TypeError as exc:
            problem = f"{exc}"
        else:
            if to == self.me:  # our own task: no network, but the same rules as if it had one
                return self._on_result(now, self.me, orjson.loads(raw))
            return [Send(message)]
        log.warning("%s", problem)
        return self._reply(now, to, task_id, attempt, ok=False, error=problem[:MAX_ERROR_TEXT])

    def _encode(self, data: dict[str, Any], what: str) -> bytes:
        """``data`` as JSON if one message on the channel can carry it (the one budget rule).

        Errors read as the discovery's own do: sizes of the whole datagram, and
        ``TypeError("... is not JSON-serializable: ...")``.
        """
        budget = self.cluster.max_payload(self.channel)
        try:
            return check_fits(data, budget, what)
        except PacketTooLarge as exc:
            limit = self.cluster.options.max_datagram  # the figure users set and see elsewhere
            raise PacketTooLarge(what, exc.size + limit - budget, limit) from None
        except TypeError as exc:
            raise TypeError(f"{what} is not JSON-serializable: {exc}") from None

    # ---------------------------------------------------------- the master
    def _choose(self, candidates: list[str], task: _Task) -> str:
        if self.strategy == "round_robin":
            start = 0 if self._rr_last is None else bisect.bisect_right(candidates, self._rr_last)
            chosen = candidates[start % len(candidates)]
            self._rr_last = chosen
        elif self.strategy == "random":
            chosen = self.rng.choice(candidates)
        elif self.strategy == "least_loaded":
            chosen = min(candidates, key=lambda w: (self.inflight.get(w, 0), self._last_pick.get(w, -1)))
            self._last_pick[chosen] = next(self._picks)
        else:
            key = task.key
            assert key is not None  # the runtime requires a key for "hash"
            chosen = max(candidates, key=lambda w: rendezvous(key, w))
        return chosen

    def _arm(self, task: _Task, when: float) -> None:
        task.timer = next(self._generations)
        heapq.heappush(self._timers, (when, task.timer, task.id))

    def _dispatch(self, now: float, task: _Task) -> list[Action]:
        """Assign ``task`` (a new attempt) to a live worker, preferring one not tried yet; or wait for one."""
        live = self.live_workers(now)
        candidates = [w for w in live if w not in task.tried] or live
        if not candidates:
            self._waiting[task.id] = None
            self._arm(task, now + task.timeout)
            return []
        self._waiting.pop(task.id, None)
        worker = self._choose(candidates, task)
        task.attempt += 1
        task.worker = worker
        task.tried.add(worker)
        self.inflight[worker] = self.inflight.get(worker, 0) + 1
        if task.attempt > 1:
            self.stats["reassigned"] += 1
        self._arm(task, now + task.timeout)
        actions: list[Action] = [Assigned(task.id, task.attempt)]
        if worker == self.me:
            actions += self._execute(now, self.me, task.id, task.attempt, task.payload)
        else:
            message = {"type": "task", "id": task.id, "to": worker, "from": self.me, "attempt": task.attempt,
                       "payload": task.payload}
            token = self.cluster.fencing_token
            if token is not None:
                message["token"] = token
            actions.append(Send(message))
        return actions

    def _pump(self, now: float) -> list[Action]:
        """Dispatch waiting tasks, oldest first, if a worker is live now."""
        if not self._waiting or not self.live_workers(now):
            return []
        actions: list[Action] = []
        for task_id in list(self._waiting):
            task = self._tasks.get(task_id)
            if task is None:
                self._waiting.pop(task_id, None)
            else:
                actions += self._dispatch(now, task)
        return actions

    def _release(self, task: _Task) -> None:
        """The current attempt is over: its worker has one task fewer in flight, its timer is void."""
        task.timer = 0
        if task.worker is not None:
            left = self.inflight.get(task.worker, 0) - 1
            if left > 0:
                self.inflight[task.worker] = left
            else:
                self.inflight.pop(task.worker, None)
            task.worker = None

    def _settle(
        self, task: _Task, value: Any = None, error: BaseException | None = None, *, outcome: str,
        worker: str | None = None,
    ) -> list[Action]:
        self._release(task)
        self._tasks.pop(task.id, None)
        self._waiting.pop(task.id, None)
        self.stats[outcome] += 1
        return [Settle(task.id, value, error, worker, outcome)]

    def _abandon(self, why: str) -> list[Action]:
        actions: list[Action] = []
        for task in list(self._tasks.values()):
            error = RuntimeError(f"{why} before task {task.id} finished")
            actions += self._settle(task, error=error, outcome="abandoned")
        self._timers.clear()
        return actions

    def _retry(self, now: float, task: _Task, reason: str) -> list[Action]:
        self._release(task)
        if task.attempt >= task.max_attempts:
            error = TimeoutError(f"task {task.id}: {reason}; gave up after {task.attempt} attempt(s)")
            return self._settle(task, error=error, outcome="timed_out")
        log.info("task %s: %s; reassigning (attempt %d of %d)", task.id, reason, task.attempt + 1, task.max_attempts)
        return self._dispatch(now, task)

    def _worker_gone(self, now: float, worker: str, why: str) -> list[Action]:
        actions: list[Action] = []
        for task in [t for t in self._tasks.values() if t.worker == worker]:
            actions += self._retry(now, task, f"worker {worker} {why}")
        return actions

    def _on_result(self, now: float, sender: str, message: dict[str, Any]) -> list[Action]:
        task = self._tasks.get(message["id"])
        if task is None or sender not in task.tried:
            self.stats["dropped_results"] += 1
            log.debug("dropped a result for task %s from %s: nobody waits for it", message["id"], sender)
            return []
        if not message["ok"] and message.get("retry") is True:
            if task.worker == sender:
                return self._retry(now, task, f"worker {sender} has no handler")
            return []
        if message["ok"]:
            return self._settle(task, message.get("value"), outcome="completed", worker=sender)
        return self._settle(task, error=TaskError(task.id, sender, message["error"]), outcome="failed", worker=sender)


def _result_item(message: dict[str, Any]) -> list[Any]:
    item = [message["id"], message["attempt"], message["ok"], message["value"] if message["ok"] else message["error"]]
    if message.get("retry") is True:
        item.append(1)
    return item


def _unpacked(kind: str, sender: str, me: str, token: Any, item: Any) -> dict[str, Any] | None:
    """One item of a ``"tasks"``/``"results"`` batch as the single message it stands for (``None``: malformed)."""
    if type(item) is not list:
        return None
    if kind == "tasks":
        if len(item) != 3:
            return None
        task = {"type": "task", "id": item[0], "to": me, "from": sender, "attempt": item[1], "payload": item[2]}
        if token is not None:
            task["token"] = token
        return task
    if len(item) not in (4, 5) or (len(item) == 5 and item[4] != 1):
        return None
    result = {"type": "result", "id": item[0], "to": me, "from": sender, "attempt": item[1], "ok": item[2]}
    result["value" if item[2] is True else "error"] = item[3]
    if len(item) == 5:
        result["retry"] = True
    return result


def _fill_datagrams(header: dict[str, Any], key: str, items: list[list[Any]], singles: list[dict[str, Any]],
                    budget: int) -> list[dict[str, Any]]:
    """``items`` under ``header[key]``, as few messages as fit ``budget`` each (a lone item: its single message)."""
    base = len(orjson.dumps({**header, key: []}))
    out: list[dict[str, Any]] = []
    start, size = 0, base
    for i, item in enumerate(items):
        grow = len(orjson.dumps(item)) + (1 if i > start else 0)
        if i > start and size + grow > budget:
            out.append(singles[start] if i - start == 1 else {**header, key: items[start:i]})
            start, size, grow = i, base, grow - 1
        size += grow
    out.append(singles[start] if len(items) - start == 1 else {**header, key: items[start:]})
    return out


__all__ = ["MAX_ERROR_TEXT", "SEEN_TASKS", "STRATEGIES", "TaskError", "TaskInfo", "TaskMachine", "describe"]
