"""Work distribution on top of discovery and election.

* :class:`TaskBalancer`: the master assigns tasks to live workers and collects results
  (``pydiscover.balancer.tasks``).
* :class:`ResourceManager`: every resource owned by exactly one live node, spread
  evenly, moved as little as possible (``pydiscover.balancer.resources``).
"""

from __future__ import annotations

from .assignment import rebalance
from .resources import ResourceManager
from .tasks import AsyncTaskFuture, TaskBalancer, TaskError, TaskFuture, TaskInfo

__all__ = [
    "AsyncTaskFuture",
    "ResourceManager",
    "TaskBalancer",
    "TaskError",
    "TaskFuture",
    "TaskInfo",
    "rebalance",
]
