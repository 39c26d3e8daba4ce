"""Helpers shared by the tests and the benchmarks (never shipped in the wheel).

One module per job: :mod:`testbed.ports` (free ports), :mod:`testbed.node_discover` (where
node-discover is installed), :mod:`testbed.proc_cluster` (clusters of child processes on
loopback), :mod:`testbed.netns` (private LANs in network namespaces), :mod:`testbed.redis_server`
(a private ``redis-server``), :mod:`testbed.sim` (the fake-clock simulator),
:mod:`testbed.balancer_sim` (balancer state machines on simulated nodes).  Importable from
the repository root, which pytest (``pythonpath`` in pyproject.toml) and ``python -m
benchmarks`` put on ``sys.path``; child processes that need it run with ``cwd`` or
``PYTHONPATH`` set to :data:`ROOT`.  Everything here sends only on loopback (127.0.0.0/8)
or inside network namespaces it creates itself.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (or, under ``scripts/test``, the copy of the suite): the folder
#: holding ``testbed/``, ``tests/``, ``benchmarks/`` and ``examples/``.
ROOT = Path(__file__).resolve().parent.parent
