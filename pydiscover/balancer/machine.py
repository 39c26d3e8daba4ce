"""What the balancer's state machines speak: inputs in, actions out, no I/O and no clock.

:class:`~pydiscover.balancer.resource_machine.ResourceMachine` and
:class:`~pydiscover.balancer.task_machine.TaskMachine` have the shape of the discovery
core and of :class:`~pydiscover.services.ServiceState`: every input is a method taking
``now`` (seconds, any monotonic origin) and returning a list of actions; the next time
they want to be woken is :meth:`Machine.next_deadline`.  Who carries the actions out is
a *driver*: :class:`~pydiscover.balancer.driver.Driver` on a discovery's event loop, or
``testbed.balancer_sim`` in a fake-clock simulation of a whole cluster.  Because both
feed the same machines the same inputs, what the simulation shows (never two owners,
every task settled once) is what the runtime does.

What a machine may ask of the node it runs on is :class:`Cluster`: read-only questions
answered at once (an :class:`~pydiscover.AsyncDiscovery` is one; so is a thin view of a
simulated core).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..core import Emit
from ..errors import PacketTooLarge

if TYPE_CHECKING:
    from ..config import Options

log = logging.getLogger("pydiscover.balancer")


class Cluster(Protocol):
    """The node a machine runs on, as the machine may see it (never changed through this)."""

    @property
    def id(self) -> str:
        """This node's instance id."""
        ...

    @property
    def is_master(self) -> bool: ...

    @property
    def running(self) -> bool: ...

    @property
    def options(self) -> Options:
        """The settings in effect (``hello_interval`` and ``node_timeout`` pace the machines)."""
        ...

    @property
    def fencing_token(self) -> int | None:
        """With a coordinator, while master: its leader key's revision (``None`` otherwise)."""
        ...

    def has_node(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live member of this node's table."""
        ...

    def max_payload(self, channel: str) -> int:
        """The largest JSON text (bytes) one message on ``channel`` can carry: the one budget rule."""
        ...


class Cancelled(BaseException):
    """What ``hook_done`` reports for a call cancelled or abandoned before it answered.

    A ``BaseException``, like :class:`asyncio.CancelledError`: no failure of the hook.
    Drivers report this for every cancellation, whatever its cause, so a machine needs
    no ``asyncio`` to recognise one.
    """


def message_kind(data: Any) -> Any:
    """A balancer message's kind: its ``"type"`` (or ``"t"``, from a 0.1 resource manager)."""
    if not isinstance(data, dict):
        return None
    return data["type"] if "type" in data else data.get("t")


@dataclass(frozen=True, slots=True)
class Send:
    """Broadcast ``data`` (JSON) on the machine's channel."""

    data: Any


@dataclass(frozen=True, slots=True)
class Run:
    """Call the user's hook named ``hook`` with ``args``; report with ``hook_done(now, call, value, error)``.

    ``call`` is unique per machine.  Names are the machine's own (``"start"``, ``"stop"``,
    ``"healthcheck"``, ``"resources"``; ``"handler"``).  A driver reports every call it
    ran exactly once, also when the hook raised (``error``) or was cancelled.
    """

    call: int
    hook: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Cancel:
    """The machine no longer wants call ``call``: cancel it if it has not begun or can be
    interrupted (a coroutine); a blocking hook already running finishes unheard."""

    call: int


@dataclass(frozen=True, slots=True)
class Settle:
    """A submitted task ended: its future gets ``value``, or ``error`` if that is not ``None``."""

    task_id: int
    value: Any = None
    error: BaseException | None = None
    #: The worker whose answer settled it (``None`` for a timeout or an abandon).
    worker: str | None = None
    #: The counter this outcome counts in (``completed``, ``failed``, ``timed_out``, ``abandoned``).
    outcome: str = "completed"


@dataclass(frozen=True, slots=True)
class Assigned:
    """Task ``task_id`` went out as attempt ``attempt`` (tasks only): its future shows the count.

    Informational: a driver hands it to whoever tracks the futures (``on_action``); a
    simulation may ignore it.
    """

    task_id: int
    attempt: int


Action = Send | Run | Cancel | Settle | Assigned | Emit


def json_size(data: Any) -> int:
    """Bytes ``data`` takes as JSON in a message (raises ``TypeError`` if it is not JSON)."""
    return len(orjson.dumps(data))


def check_fits(data: Any, budget: int, what: str) -> bytes:
    """``data`` as JSON if it fits ``budget`` (:meth:`Cluster.max_payload`); else :class:`PacketTooLarge`.

    The balancer's one "does it fit in a datagram" rule.  Callers size ``data`` with its
    numbers at their largest, so it still fits when sent later.
    """
    raw = orjson.dumps(data)
    if len(raw) > budget:
        raise PacketTooLarge(what, len(raw), budget)
    return raw


class Machine:
    """The inputs every balancer machine takes (no-ops here) and its wake-up time.

    Subclasses override what they react to.  Every method returns the actions to carry
    out, in order; none blocks, sleeps or reads a clock.
    """

    #: The discovery channel the machine's messages travel on.
    channel: str

    def next_deadline(self) -> float | None:
        """When :meth:`tick` should run next (``None``: only when an input arrives)."""
        return None

    def tick(self, now: float) -> list[Action]:
        return []

    def started(self, now: float) -> list[Action]:
        """The discovery started (or started again): begin the rounds."""
        return []

    def stopped(self, now: float) -> list[Action]:
        """The discovery stopped: no more sending until :meth:`started`."""
        return []

    def message(self, now: float, sender: str, data: Any) -> list[Action]:
        """``data`` arrived on the channel from node ``sender``."""
        return []

    def node_added(self, now: float, node_id: str) -> list[Action]:
        return []

    def node_removed(self, now: float, node_id: str) -> list[Action]:
        return []

    def promoted(self, now: float) -> list[Action]:
        """This node became master."""
        return []

    def fence_lost(self, now: float) -> list[Action]:
        """With a coordinator: this node's lease may not be acted on any more (stop what needs it)."""
        return []

    def fence_ready(self, now: float) -> list[Action]:
        """With a coordinator: this node's lease is good again."""
        return []

    def hook_done(self, now: float, call: int, value: Any, error: BaseException | None) -> list[Action]:
        """Call ``call`` of a :class:`Run` returned ``value`` (or raised ``error``)."""
        return []

    def close(self, now: float) -> list[Action]:
        """The user (or the discovery's stop) closed this machine: release and say goodbye.

        A machine that must wait for calls before its goodbye returns them from
        :meth:`close_waits_for`; the driver calls :meth:`close_finished` once they are done
        (or it gave up waiting).
        """
        return []

    def close_waits_for(self) -> frozenset[int]:
        """Calls the close must see finish before :meth:`close_finished` (none by default)."""
        return frozenset()

    def close_finished(self, now: float, gave_up: bool) -> list[Action]:
        """What to do once the close waited (``gave_up``: some calls did not finish in time)."""
        return []

    def packable(self, data: Any) -> bool:
        """Whether a :class:`Send` of ``data`` may wait for the end of the loop's turn to be packed."""
        return False

    def pack(self, messages: list[Any]) -> list[Any]:
        """``messages`` (all :meth:`packable`, in order) as fewer messages carrying the same.

        Pure; every result must fit :meth:`Cluster.max_payload`.  The default packs nothing.
        """
        return messages


class Outbox:
    """Sends held until the end of a loop turn, so that a machine can pack them (:meth:`Machine.pack`).

    Under load a master assigns many tasks, and a worker finishes many, in one turn of
    the loop: one datagram each costs every node on the channel a receive.  A driver
    passes every :class:`Send` through :meth:`post` and sends what it returns; when
    :attr:`holding`, it calls :meth:`flush` once the turn is over (``loop.call_soon``; the
    simulation, at the end of the step).  A message that is not packable first flushes
    what is held, so the order in which messages leave never changes.
    """

    __slots__ = ("_held", "_machine")

    def __init__(self, machine: Machine) -> None:
        self._machine = machine
        self._held: list[Any] = []

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def post(self, data: Any) -> list[Any]:
        """What to send now for a :class:`Send` of ``data``, in order (nothing while it is held)."""
        if self._machine.packable(data):
            self._held.append(data)
            return []
        held = self.flush()
        held.append(data)
        return held

    def flush(self) -> list[Any]:
        """Everything held, packed, in order; the outbox is empty after."""
        held, self._held = self._held, []
        if len(held) < 2:
            return held
        try:
            return self._machine.pack(held)
        except Exception:  # a bug in pack() must not lose the messages: send them as they are
            log.exception("packing %d messages on %r failed; sending them one by one", len(held),
                          self._machine.channel)
            return held

    def clear(self) -> None:
        """Drop what is held (the discovery stopped: nothing can be sent)."""
        self._held.clear()


__all__ = [
    "Action", "Assigned", "Cancel", "Cancelled", "Cluster", "Emit", "Machine", "Outbox", "Run", "Send", "Settle",
    "check_fits", "json_size", "message_kind",
]
